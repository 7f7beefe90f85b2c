//! W3C Trace Context (`traceparent`, `tracestate`), carried from the HTTP request into
//! the Kafka headers of every event it publishes, through OpenTelemetry's
//! `TraceContextPropagator`.
//!
//! With traces exported (`CITYPOP_OTLP_ENDPOINT`), the request span continues the
//! caller's trace and each event carries its produce span's context. Without, the
//! service is still one hop of the trace: it keeps the caller's trace id, flags and
//! `tracestate` and puts a span id of its own in the parent-id field; a request without
//! a valid `traceparent` starts a trace.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The request's context as the caller sent it (empty without a valid `traceparent`),
/// and the span context this service uses when it exports no spans.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub caller: opentelemetry::Context,
    fallback: SpanContext,
}

impl Incoming {
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let caller = TraceContextPropagator::new().extract(&HttpExtractor(headers));
        let fallback = {
            let span = caller.span();
            let parent = span.span_context();
            if parent.is_valid() {
                SpanContext::new(
                    parent.trace_id(),
                    nonzero_span_id(),
                    parent.trace_flags(),
                    false,
                    parent.trace_state().clone(),
                )
            } else {
                // With no tracer to decide, a started trace asks to be recorded.
                SpanContext::new(
                    nonzero_trace_id(),
                    nonzero_span_id(),
                    TraceFlags::SAMPLED,
                    false,
                    TraceState::default(),
                )
            }
        };
        Self { caller, fallback }
    }

    /// A request's context from its `traceparent` alone (tests and the cost
    /// measurement).
    #[cfg(test)]
    fn from_traceparent(traceparent: &str) -> Self {
        let mut headers = HeaderMap::new();
        if let Ok(value) = traceparent.parse() {
            headers.insert("traceparent", value);
        }
        Self::from_headers(&headers)
    }

    /// The span context of the request: the exported request span's when there is
    /// one, else the fallback.
    fn own(&self, span: &tracing::Span) -> (SpanContext, bool) {
        let context = span.context();
        let exported = context.span().span_context().clone();
        if exported.is_valid() {
            (exported, true)
        } else {
            (self.fallback.clone(), false)
        }
    }
}

/// The trace context of the request being served.
#[derive(Debug, Clone)]
pub struct TraceContext(pub RequestTrace);

/// What a handler passes to the publisher: the request's span context, whether the
/// request span is exported (then each event gets a produce span), and the headers
/// for events that get no span of their own, formatted once.
#[derive(Debug, Clone)]
pub struct RequestTrace {
    pub exported: bool,
    headers: Arc<[(String, String)]>,
}

impl RequestTrace {
    fn new(span_context: SpanContext, exported: bool) -> Self {
        let context = opentelemetry::Context::new().with_remote_span_context(span_context);
        Self {
            exported,
            headers: citypop_runtime::telemetry::trace_headers(&context).into(),
        }
    }

    /// A request that came with `traceparent` (tests and the cost measurement).
    #[cfg(test)]
    pub fn from_traceparent(traceparent: &str) -> Self {
        Self::new(Incoming::from_traceparent(traceparent).fallback, false)
    }

    /// What a handler gets for a request with `traceparent`, inside the current span,
    /// as [`TraceContext`]'s extractor makes it (the traced cost measurement).
    #[cfg(test)]
    pub fn in_current_span(traceparent: &str) -> Self {
        let incoming = Incoming::from_traceparent(traceparent);
        let span = tracing::Span::current();
        let _ = span.set_parent(incoming.caller.clone());
        let (span_context, exported) = incoming.own(&span);
        Self::new(span_context, exported)
    }

    /// The `traceparent`/`tracestate` headers of events with no produce span.
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }
}

/// The request's trace id, for its span: the span must already have its parent.
pub fn trace_id_of(span: &tracing::Span, incoming: Option<&Incoming>) -> String {
    incoming.map_or_else(String::new, |i| i.own(span).0.trace_id().to_string())
}

struct HttpExtractor<'a>(&'a HeaderMap);

impl Extractor for HttpExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

fn nonzero_trace_id() -> TraceId {
    loop {
        let bytes: [u8; 16] = rand::random();
        // All zeros is the specification's "invalid" value.
        if bytes != [0; 16] {
            return TraceId::from_bytes(bytes);
        }
    }
}

fn nonzero_span_id() -> SpanId {
    loop {
        let bytes: [u8; 8] = rand::random();
        if bytes != [0; 8] {
            return SpanId::from_bytes(bytes);
        }
    }
}

/// Middleware: reads the caller's trace context once, before the request span is
/// made, so the log line and the Kafka headers agree.
pub async fn layer(mut request: Request, next: Next) -> Response {
    let incoming = Incoming::from_headers(request.headers());
    request.extensions_mut().insert(incoming);
    next.run(request).await
}

impl<S: Send + Sync> FromRequestParts<S> for TraceContext {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        // Without the middleware (it is always installed) a request still gets a trace.
        let incoming = parts
            .extensions
            .get::<Incoming>()
            .cloned()
            .unwrap_or_else(|| Incoming::from_headers(&HeaderMap::new()));
        // The handler runs inside the request span.
        let (span_context, exported) = incoming.own(&tracing::Span::current());
        Ok(TraceContext(RequestTrace::new(span_context, exported)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn header(trace: &RequestTrace, name: &str) -> Option<String> {
        trace
            .headers()
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }

    #[test]
    fn a_child_keeps_trace_flags_and_state_with_a_new_span() {
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", EXAMPLE.parse().unwrap());
        headers.insert("tracestate", "vendor=abc".parse().unwrap());
        let incoming = Incoming::from_headers(&headers);
        let (own, exported) = incoming.own(&tracing::Span::none());
        assert!(!exported);
        let trace = RequestTrace::new(own, exported);
        let child = header(&trace, "traceparent").unwrap();
        assert!(child.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(child.ends_with("-01"));
        assert_ne!(child, EXAMPLE);
        assert_eq!(header(&trace, "tracestate").as_deref(), Some("vendor=abc"));
    }

    #[test]
    fn invalid_or_missing_headers_start_a_sampled_trace() {
        for value in [
            None,
            Some("garbage"),
            Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            Some("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ] {
            let mut headers = HeaderMap::new();
            if let Some(value) = value {
                headers.insert("traceparent", value.parse().unwrap());
            }
            let trace = RequestTrace::new(Incoming::from_headers(&headers).fallback, false);
            let started = header(&trace, "traceparent").unwrap();
            assert!(started.starts_with("00-"), "{started}");
            assert!(started.ends_with("-01"), "{started}");
            assert!(!started.contains("4bf92f3577b34da6a3ce929d0e0e4736"));
        }
    }
}
