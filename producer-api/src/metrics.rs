//! producer-api's metrics, exported on `/metrics`: HTTP rate, errors and duration per
//! route, and how publishing to Kafka goes.

use std::fmt::{self, Write};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The `route` label of a request no route matched: raw paths would give every
/// scanner's probe its own time series.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Every `reason` of `citypop_publish_failures_total`; `PublishError::reason` names
/// one of them.
pub const PUBLISH_FAILURE_REASONS: [&str; 4] = ["queue_full", "timeout", "kafka_error", "encode"];

/// The `method` label of a request whose method is none of HTTP's own: a client
/// may send any token as a method, and each would otherwise be a new time series.
pub const OTHER_METHOD: &str = "other";

/// The `method` label: one of HTTP's methods (RFC 9110, and PATCH), else
/// [`OTHER_METHOD`]. With routes bounded by the router's templates and statuses by
/// what this service answers, every label has a known, small set of values.
fn method_label(method: &axum::http::Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "OPTIONS" => "OPTIONS",
        "TRACE" => "TRACE",
        "CONNECT" => "CONNECT",
        _ => OTHER_METHOD,
    }
}

/// The `route` label: the router's template, shared with the router rather than
/// copied, so counting a request allocates nothing.
#[derive(Debug, Clone)]
pub(crate) enum RouteLabel {
    Matched(MatchedPath),
    /// A route known without the router: [`UNMATCHED_ROUTE`], or one in a test.
    Static(&'static str),
}

impl RouteLabel {
    fn as_str(&self) -> &str {
        match self {
            Self::Matched(path) => path.as_str(),
            Self::Static(route) => route,
        }
    }
}

impl PartialEq for RouteLabel {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for RouteLabel {}

impl Hash for RouteLabel {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl EncodeLabelValue for RouteLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    route: RouteLabel,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: RouteLabel,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// What a lookup in the read cache found.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum CacheResult {
    Hit,
    Miss,
}

// By hand rather than derived: the derive writes the variant's name as it is
// spelled, and label values are lower-case.
impl EncodeLabelValue for CacheResult {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
        })
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    result: CacheResult,
}

/// Ids in one `_mget`: 1 to 512, by powers of two.
fn batch_size_buckets() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 10))
}

/// 1 ms to about 16 s: a read, a publish, and a read-your-writes wait of up to 10 s
/// all land inside.
fn latency_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

pub struct Metrics {
    registry: Registry,
    http_requests: Family<RequestLabels, Counter>,
    http_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    publish_duration: Histogram,
    publish_failures: Family<ReasonLabels, Counter>,
    api_key_refusals: Family<ReasonLabels, Counter>,
    read_your_writes_polls: Counter,
    read_cache_lookups: Family<CacheLabels, Counter>,
    read_batch_ids: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut metrics = Self {
            registry: Registry::default(),
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(latency_buckets),
            publish_duration: latency_buckets(),
            publish_failures: Family::default(),
            api_key_refusals: Family::default(),
            read_your_writes_polls: Counter::default(),
            read_cache_lookups: Family::default(),
            read_batch_ids: batch_size_buckets(),
        };
        // Counters get their `_total` suffix from the encoder.
        metrics.registry.register(
            "http_requests",
            "HTTP requests answered, by method, route template and status",
            metrics.http_requests.clone(),
        );
        metrics.registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request, by route template",
            metrics.http_duration.clone(),
        );
        metrics.registry.register(
            "citypop_publish_duration_seconds",
            "Time from handing an event to the producer to Kafka's acknowledgement",
            metrics.publish_duration.clone(),
        );
        // Every reason starts at 0, so a rate over it exists before the first
        // failure and alerts need no `absent()`.
        for reason in PUBLISH_FAILURE_REASONS {
            // Creating the series is the point; the guard it returns is not needed.
            drop(
                metrics
                    .publish_failures
                    .get_or_create(&ReasonLabels { reason }),
            );
        }
        metrics.registry.register(
            "citypop_publish_failures",
            "Events Kafka did not acknowledge, by reason: queue_full, timeout, kafka_error, encode",
            metrics.publish_failures.clone(),
        );
        for reason in ["missing", "wrong"] {
            drop(
                metrics
                    .api_key_refusals
                    .get_or_create(&ReasonLabels { reason }),
            );
        }
        metrics.registry.register(
            "citypop_api_key_refusals",
            "Writes refused for their API key, by reason: missing, wrong",
            metrics.api_key_refusals.clone(),
        );
        metrics.registry.register(
            "citypop_read_your_writes_polls",
            "Engine reads of read-your-writes waits; waiters for one city share them",
            metrics.read_your_writes_polls.clone(),
        );
        for result in [CacheResult::Hit, CacheResult::Miss] {
            drop(
                metrics
                    .read_cache_lookups
                    .get_or_create(&CacheLabels { result }),
            );
        }
        metrics.registry.register(
            "citypop_read_cache_lookups",
            "Reads looked up in the in-process read cache, by result: hit, miss (none while it is off)",
            metrics.read_cache_lookups.clone(),
        );
        metrics.registry.register(
            "citypop_read_batch_ids",
            "Distinct city ids in each _mget of batched reads",
            metrics.read_batch_ids.clone(),
        );
        metrics
    }

    pub fn read_cache_looked_up(&self, result: CacheResult) {
        self.read_cache_lookups
            .get_or_create(&CacheLabels { result })
            .inc();
    }

    pub fn read_batch_sent(&self, ids: usize) {
        self.read_batch_ids.observe(ids as f64);
    }

    pub fn read_your_writes_polled(&self) {
        self.read_your_writes_polls.inc();
    }

    pub fn api_key_refused(&self, reason: &'static str) {
        self.api_key_refusals
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn published(&self, seconds: f64) {
        self.publish_duration.observe(seconds);
    }

    pub fn publish_failed(&self, reason: &'static str) {
        self.publish_failures
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub(crate) fn request_answered(
        &self,
        method: &'static str,
        route: RouteLabel,
        status: u16,
        seconds: f64,
    ) {
        self.http_duration
            .get_or_create(&RouteLabels {
                route: route.clone(),
            })
            .observe(seconds);
        self.http_requests
            .get_or_create(&RequestLabels {
                method,
                route,
                status,
            })
            .inc();
    }
}

/// Middleware: counts and times every request under its route template
/// (`/city/{name}`, not `/city/paris`).
pub async fn track(State(metrics): State<Arc<Metrics>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(RouteLabel::Static(UNMATCHED_ROUTE), |p| {
            RouteLabel::Matched(p.clone())
        });
    let response = next.run(request).await;
    metrics.request_answered(
        method,
        route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels_are_as_documented() {
        let metrics = Metrics::new();
        metrics.request_answered("GET", RouteLabel::Static("/city/{name}"), 200, 0.01);
        metrics.published(0.002);
        metrics.publish_failed("timeout");
        metrics.read_cache_looked_up(CacheResult::Hit);
        metrics.read_batch_sent(3);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, metrics.registry()).unwrap();
        for expected in [
            r#"http_requests_total{method="GET",route="/city/{name}",status="200"} 1"#,
            r#"http_request_duration_seconds_count{route="/city/{name}"} 1"#,
            "citypop_publish_duration_seconds_count 1",
            r#"citypop_publish_failures_total{reason="timeout"} 1"#,
            r#"citypop_publish_failures_total{reason="queue_full"} 0"#,
            r#"citypop_read_cache_lookups_total{result="hit"} 1"#,
            r#"citypop_read_cache_lookups_total{result="miss"} 0"#,
            r#"citypop_read_batch_ids_bucket{le="4.0"} 1"#,
            "citypop_read_batch_ids_count 1",
        ] {
            assert!(text.contains(expected), "{expected} missing from\n{text}");
        }
    }
}
