//! Reading the rest of a body the answer did not need.
//!
//! Many refusals are judged from the request's head alone (a content type that is not
//! JSON, an unknown route, a method the route does not take, a missing API key, a
//! full server), and are answered at once. A client that sent its request in one go
//! still has the body on the wire. hyper closes a connection whose request body is
//! left unread, and when the body then lands on the closed socket the kernel resets
//! the connection: a client that had not yet read the answer loses it and sees
//! "connection reset by peer" instead of its problem+json. So a body left unread is
//! read after the answer and thrown away, which keeps the connection and the answer.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt as _;
use tokio::sync::oneshot;

use super::MAX_BULK_BODY_BYTES;

/// The most of a body read after its answer: the largest body any route accepts.
/// A client sending more has been refused anyway, and its connection is closed.
const MOST_READ_AFTER_THE_ANSWER: usize = MAX_BULK_BODY_BYTES;

/// Hands the request on with its body watched, and reads what the answer left of
/// it. The reading happens beside the answer, which goes out at once; the body's read
/// timeout bounds it, as it bounds every body.
pub async fn read_after_the_answer(request: Request, next: Next) -> Response {
    // A client that asked to be told before sending its body has not sent it, and
    // reading would invite it to; one that declared more than would be read is cut off.
    if expects_continue(request.headers())
        || declared_length(request.headers()).is_some_and(|n| n > MOST_READ_AFTER_THE_ANSWER)
    {
        return next.run(request).await;
    }
    let (left_unread, mut unread) = oneshot::channel();
    let request = request.map(|body| {
        Body::new(Watched {
            body: Some(body),
            finished: false,
            left_unread: Some(left_unread),
        })
    });
    let response = next.run(request).await;
    // Empty only if something still holds the body; it is dropped with it then.
    if let Ok(body) = unread.try_recv() {
        tokio::spawn(read_and_discard(body));
    }
    response
}

async fn read_and_discard(mut body: Body) {
    let mut read = 0;
    while let Some(Ok(frame)) = body.frame().await {
        read += frame.data_ref().map_or(0, Bytes::len);
        if read > MOST_READ_AFTER_THE_ANSWER {
            return;
        }
    }
}

fn expects_continue(headers: &HeaderMap) -> bool {
    headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

fn declared_length(headers: &HeaderMap) -> Option<usize> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// A request body that, dropped before its end, is handed back to be read.
struct Watched {
    body: Option<Body>,
    /// Whether the body ended or failed: nothing is left to read then.
    finished: bool,
    left_unread: Option<oneshot::Sender<Body>>,
}

impl HttpBody for Watched {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let Some(body) = self.body.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(body).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            self.finished = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        let (Some(body), Some(left_unread)) = (self.body.take(), self.left_unread.take()) else {
            return;
        };
        if !self.finished && !body.is_end_stream() {
            // The receiver is gone only if the request was abandoned, and then so
            // is the connection.
            let _ = left_unread.send(body);
        }
    }
}
