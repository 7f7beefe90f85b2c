//! OpenTelemetry traces: export over OTLP when an endpoint is set, and the W3C trace
//! context (`traceparent`, `tracestate`) carried in Kafka headers.
//!
//! The propagator is installed whether or not traces are exported, so a caller's trace
//! context still travels from the HTTP request through Kafka to the indexer.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use rdkafka::message::{BorrowedHeaders, Header, Headers, OwnedHeaders};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OtlpProtocol {
    /// OTLP over gRPC (a collector's or Jaeger's port 4317).
    Grpc,
    /// OTLP over HTTP with protobuf bodies (port 4318); `/v1/traces` is appended to the
    /// endpoint unless it already ends so.
    #[value(name = "http/protobuf")]
    HttpProtobuf,
}

#[derive(Debug, Clone, clap::Args)]
pub struct TraceArgs {
    /// Where to export traces with OTLP, e.g. `http://127.0.0.1:4317`. Unset (the
    /// default): no traces are exported, but a request's `traceparent`/`tracestate`
    /// still travel in the Kafka headers.
    #[arg(long, env = "CITYPOP_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// OTLP transport: `grpc` or `http/protobuf`.
    #[arg(long, env = "CITYPOP_OTLP_PROTOCOL", value_enum, default_value_t = OtlpProtocol::Grpc)]
    pub otlp_protocol: OtlpProtocol,

    /// Share of new traces recorded, 0.0 to 1.0. A request that comes with a
    /// `traceparent` follows its caller's sampled flag instead.
    #[arg(long, env = "CITYPOP_TRACE_SAMPLING_RATIO", default_value_t = 0.1, value_parser = parse_ratio)]
    pub trace_sampling_ratio: f64,

    /// The service name traces are exported under. Default: the service's own name
    /// (`citypop-producer-api`, `citypop-indexer`).
    #[arg(long, env = "CITYPOP_SERVICE_NAME")]
    pub service_name: Option<String>,
}

fn parse_ratio(value: &str) -> Result<f64, String> {
    let ratio: f64 = value.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&ratio) {
        Ok(ratio)
    } else {
        Err(format!("{ratio} is not between 0.0 and 1.0"))
    }
}

/// The exporter of an installed subscriber; [`Telemetry::shutdown`] flushes the spans
/// still queued, so a SIGTERM does not lose the last ones.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    pub(crate) fn new(provider: Option<SdkTracerProvider>) -> Self {
        Self { provider }
    }

    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            // The subscriber may be the one failing to export: say it on stderr too.
            eprintln!("flushing traces at shutdown: {e}");
        }
    }
}

impl TraceArgs {
    /// No export (what an unset endpoint means).
    pub fn off() -> Self {
        Self {
            otlp_endpoint: None,
            otlp_protocol: OtlpProtocol::Grpc,
            trace_sampling_ratio: 0.1,
            service_name: None,
        }
    }

    pub fn service_name<'a>(&'a self, default: &'a str) -> &'a str {
        self.service_name.as_deref().unwrap_or(default)
    }

    /// Builds the tracer provider; `None` when no endpoint is set. Must run inside the
    /// tokio runtime: the gRPC channel starts its worker there.
    pub(crate) fn provider(
        &self,
        default_service: &str,
    ) -> anyhow::Result<Option<SdkTracerProvider>> {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let Some(endpoint) = self.otlp_endpoint.as_deref().filter(|e| !e.is_empty()) else {
            return Ok(None);
        };
        let exporter = match self.otlp_protocol {
            OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()?,
            OtlpProtocol::HttpProtobuf => {
                // Given in code, the endpoint is used as it is, without the signal path
                // OTEL_EXPORTER_OTLP_ENDPOINT would get.
                let endpoint = if endpoint.ends_with("/v1/traces") {
                    endpoint.to_owned()
                } else {
                    format!("{}/v1/traces", endpoint.trim_end_matches('/'))
                };
                opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_protocol(Protocol::HttpBinary)
                    .with_endpoint(endpoint)
                    .build()?
            }
        };
        let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            self.trace_sampling_ratio,
        )));
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(sampler)
            .with_resource(
                Resource::builder()
                    .with_service_name(self.service_name(default_service).to_owned())
                    .build(),
            )
            .build();
        Ok(Some(provider))
    }
}

/// The `tracing` layer that turns spans into OpenTelemetry spans for `provider`.
pub(crate) fn layer<S>(
    provider: &SdkTracerProvider,
) -> tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_opentelemetry::layer().with_tracer(provider.tracer("citypop"))
}

/// Writes a context's `traceparent` and `tracestate` into Kafka headers.
pub struct KafkaInjector<'a>(pub &'a mut Vec<(String, String)>);

impl Injector for KafkaInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.push((key.to_owned(), value));
    }
}

/// The trace headers of `context` (empty when it carries no valid span context), to
/// add to a Kafka record.
pub fn trace_headers(context: &opentelemetry::Context) -> Vec<(String, String)> {
    let mut headers = Vec::new();
    TraceContextPropagator::new().inject_context(context, &mut KafkaInjector(&mut headers));
    headers
}

/// Appends `headers` (from [`trace_headers`]) to a record's headers.
pub fn add_trace_headers(mut to: OwnedHeaders, headers: &[(String, String)]) -> OwnedHeaders {
    for (key, value) in headers {
        to = to.insert(Header {
            key,
            value: Some(value.as_bytes()),
        });
    }
    to
}

/// Reads the trace context from a consumed record's headers.
pub struct KafkaExtractor<'a>(pub Option<&'a BorrowedHeaders>);

impl Extractor for KafkaExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        let headers = self.0?;
        headers
            .iter()
            .find(|h| h.key == key)
            .and_then(|h| h.value)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .map(|h| h.iter().map(|h| h.key).collect())
            .unwrap_or_default()
    }
}

/// The producing span's context of a consumed record (an empty context when it has no
/// valid `traceparent`).
pub fn context_from_headers(headers: Option<&BorrowedHeaders>) -> opentelemetry::Context {
    TraceContextPropagator::new().extract(&KafkaExtractor(headers))
}

/// The span context of a consumed record, for a span link; `None` without a valid one.
pub fn span_context_from_headers(
    headers: Option<&BorrowedHeaders>,
) -> Option<opentelemetry::trace::SpanContext> {
    use opentelemetry::trace::TraceContextExt as _;
    let context = context_from_headers(headers);
    let span = context.span();
    let span_context = span.span_context();
    span_context.is_valid().then(|| span_context.clone())
}

/// The trace id of the current `tracing` span as 32 hex digits, when it has one.
pub fn current_trace_id() -> Option<String> {
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let context = tracing::Span::current().context();
    let span = context.span();
    let span_context = span.span_context();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use opentelemetry::trace::TraceContextExt as _;

    #[derive(Parser)]
    struct Args {
        #[command(flatten)]
        traces: TraceArgs,
    }

    #[test]
    fn defaults_export_nothing() {
        let args = Args::try_parse_from(["x"]).unwrap().traces;
        assert_eq!(args.otlp_endpoint, None);
        assert_eq!(args.otlp_protocol, OtlpProtocol::Grpc);
        assert_eq!(args.trace_sampling_ratio, 0.1);
        assert_eq!(args.service_name("citypop-indexer"), "citypop-indexer");
    }

    #[test]
    fn protocol_and_ratio_are_checked() {
        let args = Args::try_parse_from([
            "x",
            "--otlp-protocol",
            "http/protobuf",
            "--trace-sampling-ratio",
            "1",
        ])
        .unwrap()
        .traces;
        assert_eq!(args.otlp_protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(args.trace_sampling_ratio, 1.0);
        assert!(Args::try_parse_from(["x", "--trace-sampling-ratio", "1.5"]).is_err());
        assert!(Args::try_parse_from(["x", "--otlp-protocol", "http/json"]).is_err());
    }

    #[test]
    fn traceparent_and_tracestate_round_trip_through_kafka_headers() {
        let incoming: std::collections::HashMap<String, String> = [
            (
                "traceparent".to_owned(),
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
            ),
            ("tracestate".to_owned(), "vendor=abc,other=1".to_owned()),
        ]
        .into();
        let context = TraceContextPropagator::new().extract(&incoming);
        let headers = trace_headers(&context);
        let owned = add_trace_headers(OwnedHeaders::new(), &headers);
        let borrowed = owned.as_borrowed();
        let back = span_context_from_headers(Some(borrowed)).unwrap();
        assert_eq!(
            back.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(back.span_id().to_string(), "00f067aa0ba902b7");
        assert!(back.is_sampled());
        assert_eq!(back.trace_state().header(), "vendor=abc,other=1");
    }

    #[test]
    fn no_context_no_headers() {
        assert!(trace_headers(&opentelemetry::Context::new()).is_empty());
        assert!(span_context_from_headers(None).is_none());
        assert!(!context_from_headers(None).span().span_context().is_valid());
    }
}
