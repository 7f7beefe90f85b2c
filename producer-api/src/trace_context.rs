//! W3C Trace Context (`traceparent`), carried from the HTTP request into the Kafka
//! headers of every event it publishes.
//!
//! producer-api is one hop of the trace: it keeps the caller's trace id and flags and
//! puts its own span id in the parent-id field, so the indexer's side of the trace
//! hangs off this request. A request without a valid `traceparent` starts a trace.

use std::fmt;

use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;

/// The header, in HTTP and in Kafka alike.
pub const HEADER: &str = "traceparent";

/// The only version this code writes; later versions are read by their first four
/// fields, as the specification asks.
const VERSION: u8 = 0;
/// `sampled`: with no tracer to decide, a started trace asks to be recorded.
const FLAG_SAMPLED: u8 = 1;

/// Length of a version-00 `traceparent`: 2 + 1 + 32 + 1 + 16 + 1 + 2.
const HEADER_LEN: usize = 55;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    trace_id: [u8; 16],
    parent_id: [u8; 8],
    flags: u8,
    /// The header this span sends on, formatted once when the span is made: every
    /// event a request publishes carries it, and a bulk request publishes many.
    header: [u8; HEADER_LEN],
}

impl TraceParent {
    /// Parses a `traceparent` value; `None` when it is not a valid one (the caller then
    /// starts a new trace, as the specification says).
    pub fn parse(value: &str) -> Option<Self> {
        let value = value.trim();
        let bytes = value.as_bytes();
        // version "-" trace-id "-" parent-id "-" flags: 2 + 1 + 32 + 1 + 16 + 1 + 2.
        // Checking the fields are ASCII first keeps the slicing below on character
        // boundaries.
        if bytes.len() < HEADER_LEN
            || !bytes[..HEADER_LEN].is_ascii()
            || [2, 35, 52].iter().any(|&i| bytes[i] != b'-')
        {
            return None;
        }
        let version = hex_byte(&value[0..2])?;
        // Version ff is forbidden; version 00 has exactly four fields; a later
        // version may append fields after another dash.
        match version {
            0xff => return None,
            VERSION if bytes.len() != HEADER_LEN => return None,
            _ if bytes.len() > HEADER_LEN && bytes[HEADER_LEN] != b'-' => return None,
            _ => {}
        }
        let trace_id: [u8; 16] = hex_bytes(&value[3..35])?;
        let parent_id: [u8; 8] = hex_bytes(&value[36..52])?;
        let flags = hex_byte(&value[53..55])?;
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(Self::new(trace_id, parent_id, flags))
    }

    fn new(trace_id: [u8; 16], parent_id: [u8; 8], flags: u8) -> Self {
        let mut header = *b"00-00000000000000000000000000000000-0000000000000000-00";
        // Each field is written into its exact slot of the template, whose length
        // is twice the bytes': encoding cannot fail.
        hex::encode_to_slice([VERSION], &mut header[0..2]).expect("2 hex digits");
        hex::encode_to_slice(trace_id, &mut header[3..35]).expect("32 hex digits");
        hex::encode_to_slice(parent_id, &mut header[36..52]).expect("16 hex digits");
        hex::encode_to_slice([flags], &mut header[53..55]).expect("2 hex digits");
        Self {
            trace_id,
            parent_id,
            flags,
            header,
        }
    }

    /// A new trace, with this request as its root span.
    pub fn start() -> Self {
        Self::new(nonzero_random(), nonzero_random(), FLAG_SAMPLED)
    }

    /// This service's span within the caller's trace.
    pub fn child(&self) -> Self {
        Self::new(self.trace_id, nonzero_random(), self.flags)
    }

    /// The trace id as 32 lowercase hex digits, for logs.
    pub fn trace_id(&self) -> String {
        self.as_header()[3..35].to_owned()
    }

    /// The `traceparent` value this span sends on.
    pub fn as_header(&self) -> &str {
        // Only ASCII hex digits and dashes are ever written into it.
        std::str::from_utf8(&self.header).expect("a traceparent is ASCII")
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_header())
    }
}

/// Two lowercase hex digits (the specification refuses uppercase).
fn hex_byte(digits: &str) -> Option<u8> {
    if digits.len() != 2
        || !digits
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    u8::from_str_radix(digits, 16).ok()
}

fn hex_bytes<const N: usize>(digits: &str) -> Option<[u8; N]> {
    let mut out = [0; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = hex_byte(digits.get(2 * i..2 * i + 2)?)?;
    }
    Some(out)
}

fn nonzero_random<const N: usize>() -> [u8; N] {
    loop {
        let bytes: [u8; N] = rand::random();
        // All zeros is the specification's "invalid" value.
        if bytes != [0; N] {
            return bytes;
        }
    }
}

/// The trace context of the request being served: the request's own span.
#[derive(Debug, Clone, Copy)]
pub struct TraceContext(pub TraceParent);

/// Middleware: derives the request's span from its `traceparent` (or starts a trace)
/// once, before the request is logged, so the log line and the Kafka headers agree.
pub async fn layer(mut request: Request, next: Next) -> Response {
    let incoming = request
        .headers()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(TraceParent::parse);
    let own = match incoming {
        Some(parent) => parent.child(),
        None => TraceParent::start(),
    };
    request.extensions_mut().insert(TraceContext(own));
    next.run(request).await
}

impl<S: Send + Sync> FromRequestParts<S> for TraceContext {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        // Without the middleware (it is always installed) a request still gets a trace.
        Ok(parts
            .extensions
            .get::<TraceContext>()
            .copied()
            .unwrap_or_else(|| TraceContext(TraceParent::start())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_header_round_trips() {
        let parsed = TraceParent::parse(EXAMPLE).unwrap();
        assert_eq!(parsed.to_string(), EXAMPLE);
        assert_eq!(parsed.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn a_child_keeps_trace_and_flags_with_a_new_span() {
        let parent = TraceParent::parse(EXAMPLE).unwrap();
        let child = parent.child().to_string();
        assert!(child.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(child.ends_with("-01"));
        assert_ne!(child, EXAMPLE);
        assert_eq!(
            TraceParent::parse(&child).unwrap().trace_id,
            parent.trace_id
        );
    }

    #[test]
    fn invalid_headers_are_refused() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "0é-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(TraceParent::parse(bad).is_none(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn a_later_version_is_read_by_its_first_fields() {
        let future = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next";
        let parsed = TraceParent::parse(future).unwrap();
        assert_eq!(parsed.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(TraceParent::parse(&future[..55]).is_some());
    }

    #[test]
    fn the_header_is_formatted_as_the_specification_writes_it() {
        let span = TraceParent::new([0xab; 16], [0x01; 8], 0x00);
        assert_eq!(
            span.as_header(),
            "00-abababababababababababababababab-0101010101010101-00"
        );
        assert_eq!(span.to_string(), span.as_header());
        assert_eq!(span.trace_id(), "abababababababababababababababab");
    }

    #[test]
    fn a_started_trace_is_valid() {
        let started = TraceParent::start().to_string();
        assert_eq!(TraceParent::parse(&started).unwrap().to_string(), started);
    }
}
