//! Turning a request body into JSON, with a precise problem for each way it fails.

use axum::body::Body;
use axum::http::{HeaderMap, header};

use crate::problem::Problem;

/// The answers of [`parse`] that do not depend on the route's body limit, for the
/// OpenAPI document.
#[derive(utoipa::IntoResponses)]
// Never built: the answers themselves are `Problem`s; this only documents them.
#[allow(dead_code)]
pub enum JsonRefusals {
    #[response(
        status = 400,
        description = "Malformed JSON",
        content_type = "application/problem+json"
    )]
    Malformed(Problem),
    #[response(
        status = 415,
        description = "Content type is not JSON",
        content_type = "application/problem+json"
    )]
    NotJson(Problem),
}

/// The body as a JSON value: 415 for a non-JSON content type, 413 past `limit`
/// bytes, 400 for malformed JSON or a body that breaks off. The content type and a
/// declared `Content-Length` are judged before any of the body is read, so a client
/// learns at once, and the server buffers nothing it would refuse.
pub async fn read(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<serde_json::Value, Problem> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !is_json(content_type) {
        return Err(Problem::unsupported_media_type(format!(
            "expected content-type application/json, got {:?}",
            content_type
        )));
    }
    let too_large = || Problem::payload_too_large(format!("the body is over {limit} bytes"));
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(too_large());
    }
    let body = axum::body::to_bytes(body, limit).await.map_err(|error| {
        // `to_bytes` reports the limit as a `LengthLimitError` somewhere in the chain.
        let over_limit = std::error::Error::source(&error)
            .into_iter()
            .chain(std::iter::successors(
                std::error::Error::source(&error),
                |e| e.source(),
            ))
            .any(|e| e.is::<http_body_util::LengthLimitError>());
        let timed_out =
            std::iter::successors(Some(&error as &(dyn std::error::Error + 'static)), |e| {
                e.source()
            })
            .any(|e| e.is::<tower_http::timeout::TimeoutError>());
        if over_limit {
            too_large()
        } else if timed_out {
            Problem::body_timeout()
        } else {
            Problem::bad_request(format!("the body could not be read: {error}"))
        }
    })?;
    serde_json::from_slice(&body).map_err(|e| Problem::malformed_json(e.to_string()))
}

fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
        || (essence.len() > 5
            && essence[..essence.len() - 5].contains('/')
            && essence.to_ascii_lowercase().ends_with("+json"))
}

#[cfg(test)]
mod tests {
    use super::is_json;

    #[test]
    fn json_content_types() {
        assert!(is_json("application/json"));
        assert!(is_json("Application/JSON; charset=utf-8"));
        assert!(is_json("application/merge-patch+json"));
        assert!(!is_json("text/plain"));
        assert!(!is_json(""));
        assert!(!is_json("+json"));
    }
}
