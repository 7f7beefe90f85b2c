//! The HTTP API, one file per route, and the router that joins them.
//!
//! Every route is registered through `utoipa_axum::routes!`, which adds it to the
//! router and to the OpenAPI document at once, so the two cannot drift apart.

mod api_key;
pub mod bulk;
mod constraints;
mod delete;
pub mod get;
mod health;
mod json_body;
mod list;
mod metrics;
mod openapi;
mod query;
mod unread_body;
mod upsert;

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use citypop_schemas::document::CityDocument;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Serialize;
use tower::ServiceBuilder;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::load_shed::LoadShedLayer;
use tower::timeout::TimeoutLayer;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::map_request_body::MapRequestBodyLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::timeout::RequestBodyTimeoutLayer;
use tower_http::trace::{DefaultOnFailure, DefaultOnResponse, OnResponse as _, TraceLayer};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api_keys::WriteKeys;
use crate::city_index::{CityIndex, IndexError};
use crate::metrics::Metrics;
use crate::problem::Problem;
use crate::publisher::{Accepted, PublishError, Publisher};
use crate::trace_context;
use crate::version_wait::VersionWaits;

/// The largest single-update body accepted: a name of 200 characters fits many
/// times over; anything larger is not a city update.
pub const MAX_UPDATE_BODY_BYTES: usize = 64 * 1024;

/// The largest bulk body accepted: 1,000 items of generous size, and a bound on
/// what one request can make the server buffer.
pub const MAX_BULK_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Seconds a client should wait before retrying what a dependency could not take.
const RETRY_AFTER_SECS: u64 = 1;

/// The request id header: taken from the client when it sends one, else a UUID;
/// echoed in the response and logged with every request.
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Characters escaped in a path segment of `Location`: all but RFC 3986 unreserved.
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

pub struct AppState {
    pub publisher: Publisher,
    pub index: Arc<CityIndex>,
    pub version_waits: Arc<VersionWaits>,
    pub reads: get::ReadPath,
    pub api_keys: Arc<WriteKeys>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    /// Whether `/docs` serves the API reference page.
    pub api_docs: bool,
}

/// Bounds on what one request may take.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest time to receive a body; past it, 408.
    pub body_read_timeout: Duration,
    /// Longest time to answer a request of the API's routes; past it, 503.
    pub request_timeout: Duration,
    /// Requests of the API's routes served at once; past it, 503 at once.
    pub max_concurrent_requests: usize,
}

/// Every route, as the router and as the OpenAPI document, without limits.
#[cfg(test)]
fn api() -> OpenApiRouter<Arc<AppState>> {
    routes_within(None)
}

/// Every route; with `limits`, the API's routes (not the probes and metrics, which
/// must answer under any load, or Kubernetes would restart a pod for being busy)
/// get a concurrency limit that sheds load and a time limit.
fn routes_within(limits: Option<Limits>) -> OpenApiRouter<Arc<AppState>> {
    let single_writes = OpenApiRouter::new()
        .routes(routes!(upsert::post_city))
        .routes(routes!(upsert::put_city))
        .routes(routes!(upsert::put_city_named_bulk))
        .layer(DefaultBodyLimit::max(MAX_UPDATE_BODY_BYTES));
    let bulk_writes = OpenApiRouter::new()
        .routes(routes!(bulk::post_bulk))
        .layer(DefaultBodyLimit::max(MAX_BULK_BODY_BYTES));
    let mut served = OpenApiRouter::with_openapi(openapi::base())
        .merge(single_writes)
        .merge(bulk_writes)
        .routes(routes!(get::get_city, delete::delete_city))
        .routes(routes!(list::list_cities))
        .routes(routes!(health::health))
        .routes(routes!(openapi::openapi_json));
    if let Some(limits) = limits {
        // Outermost first: the answer to an error below; shedding when every slot is
        // taken, rather than queueing; one pool of slots for all routes (a layer
        // is applied to each route apart); the time limit of one request.
        served = served.layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(limit_problem))
                .layer(LoadShedLayer::new())
                .layer(GlobalConcurrencyLimitLayer::new(
                    limits.max_concurrent_requests,
                ))
                .layer(TimeoutLayer::new(limits.request_timeout)),
        );
    }
    served
        .routes(routes!(health::livez))
        .routes(routes!(health::readyz))
        .routes(routes!(health::readyz_writes))
        .routes(routes!(health::readyz_reads))
        .routes(routes!(metrics::metrics))
        // Bodies of routes that take none are refused past this size too.
        .layer(DefaultBodyLimit::max(MAX_UPDATE_BODY_BYTES))
}

pub fn router(state: Arc<AppState>) -> Router {
    let (mut router, document) = routes_within(Some(state.limits)).split_for_parts();
    if state.api_docs {
        // Beside the API's routes, not among them: the page is not part of the
        // contract, and the document does not list it.
        router = router.merge(openapi::docs(&document));
    }
    let document = openapi::Document::new(&document, constraints::Reader::Tools);
    let middleware = ServiceBuilder::new()
        // Outermost first. Marking the key header sensitive keeps it out of any
        // log or debug output of the request.
        .layer(SetSensitiveRequestHeadersLayer::new([
            HeaderName::from_static("x-api-key"),
            header::AUTHORIZATION,
            header::COOKIE,
        ]))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(axum::middleware::from_fn(trace_context::layer))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                // A 503 while Kafka is down is the API working as designed; the
                // handlers log its cause, so the access log only warns.
                .on_failure(DefaultOnFailure::new().level(tracing::Level::WARN))
                .on_response(
                    |response: &Response, latency: std::time::Duration, span: &tracing::Span| {
                        span.record(
                            "http.response.status_code",
                            i64::from(response.status().as_u16()),
                        );
                        DefaultOnResponse::new().on_response(response, latency, span);
                    },
                ),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        // A body that stops arriving fails its read (a 408) instead of holding the
        // request open.
        .layer(RequestBodyTimeoutLayer::new(state.limits.body_read_timeout))
        .layer(MapRequestBodyLayer::new(Body::new))
        // Inside the body timeout, which then bounds reading what an answer left.
        .layer(axum::middleware::from_fn(
            unread_body::read_after_the_answer,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            crate::metrics::track,
        ))
        // Innermost: a panic in a handler becomes a 500 problem, not a dropped
        // connection, and the layers above log and count it like any answer.
        .layer(CatchPanicLayer::custom(panic_problem));
    router
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::Extension(document))
        .layer(middleware)
        .with_state(state)
}

/// The span every request's logs carry: route template, request id and trace id, so
/// a log line leads to the Kafka event and back.
fn request_span(request: &Request<Body>) -> tracing::Span {
    let header = |name: &HeaderName| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(crate::metrics::UNMATCHED_ROUTE, MatchedPath::as_str);
    let incoming = request.extensions().get::<trace_context::Incoming>();
    let span = tracing::info_span!(
        "request",
        otel.name = format!("{} {route}", request.method()),
        otel.kind = "server",
        method = %request.method(),
        uri = %request.uri(),
        route,
        http.response.status_code = tracing::field::Empty,
        request_id = header(&REQUEST_ID),
        trace_id = tracing::field::Empty,
    );
    if let Some(incoming) = incoming {
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        // A no-op when spans are not exported.
        let _ = span.set_parent(incoming.caller.clone());
    }
    span.record("trace_id", trace_context::trace_id_of(&span, incoming));
    span
}

/// The answer when a request was shed or took too long.
async fn limit_problem(error: tower::BoxError) -> Response {
    if error.is::<tower::load_shed::error::Overloaded>() {
        Problem::overloaded(RETRY_AFTER_SECS).into_response()
    } else if error.is::<tower::timeout::error::Elapsed>() {
        tracing::warn!("a request ran out of time");
        Problem::unavailable("the request took too long to answer", RETRY_AFTER_SECS)
            .into_response()
    } else {
        tracing::error!(%error, "a request failed in the middleware");
        Problem::internal("the request failed on a bug in this service").into_response()
    }
}

/// The answer to a request whose handler panicked: a problem that says nothing of
/// the panic, which is logged instead.
fn panic_problem(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    tracing::error!(panic = message, "a request handler panicked");
    Problem::internal("the request failed on a bug in this service").into_response()
}

async fn unknown_route(request: Request) -> Problem {
    Problem::unknown_route(request.uri().path())
}

async fn method_not_allowed(request: Request) -> Problem {
    Problem::method_not_allowed(request.method().as_str(), request.uri().path())
}

/// The latest indexed state of a city.
#[derive(Debug, Serialize, ToSchema)]
pub struct CityView {
    /// The display name as last submitted (NFC, trimmed).
    pub name: String,
    /// The city key: NFC, trimmed, inner whitespace collapsed, lower-cased.
    pub key: String,
    pub population: i64,
    /// When the update was accepted, RFC 3339 UTC.
    pub updated_at: String,
    /// The Kafka offset of the update: compare with `offset` of a write.
    pub version: i64,
}

impl From<CityDocument> for CityView {
    fn from(doc: CityDocument) -> Self {
        Self {
            name: doc.name.unwrap_or_default(),
            key: doc.key,
            population: doc.population.unwrap_or_default(),
            updated_at: doc.updated_at,
            version: doc.version,
        }
    }
}

/// `202 Accepted` with where the event lives, and `Location` of the city when the
/// write leaves one to read.
fn accepted_response(accepted: Accepted, with_location: bool) -> Response {
    let location = format!("/city/{}", utf8_percent_encode(&accepted.key, PATH_SEGMENT));
    let mut response = (StatusCode::ACCEPTED, Json(accepted)).into_response();
    if with_location && let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// What a client hears when Kafka did not take a write.
fn publish_problem(error: &PublishError) -> Problem {
    if error.is_transient() {
        tracing::warn!(%error, reason = error.reason(), "write not acknowledged");
        Problem::unavailable(error.to_string(), RETRY_AFTER_SECS)
    } else {
        tracing::error!(%error, reason = error.reason(), "write not published");
        Problem::internal(error.to_string())
    }
}

/// What a client hears when the index cannot be read. The cause goes to the log
/// only: it names internal hosts and says nothing the client can act on.
fn index_problem(error: &IndexError) -> Problem {
    match error {
        IndexError::Unavailable(_) => {
            tracing::warn!(%error, "index read failed");
            Problem::unavailable("the search index cannot be read now", RETRY_AFTER_SECS)
        }
        IndexError::Broken(_) => {
            tracing::error!(%error, "index read failed for good");
            Problem::internal("the search index answered what this service cannot use")
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use axum::http::Method;
    use citypop_runtime::{EngineArgs, KafkaArgs};
    use serde_json::Value;
    use tower::ServiceExt;

    use super::*;

    /// The routes of the brief's table, which the document must hold at least.
    const CONTRACT: &[(&str, &str)] = &[
        ("post", "/city"),
        ("put", "/cities/{name}"),
        ("post", "/cities/bulk"),
        ("delete", "/city/{name}"),
        ("get", "/city/{name}"),
        ("get", "/cities"),
        ("get", "/livez"),
        ("get", "/readyz"),
        ("get", "/readyz/writes"),
        ("get", "/readyz/reads"),
        ("get", "/health"),
        ("get", "/metrics"),
        ("get", "/openapi.json"),
    ];

    /// A state whose Kafka and engine are nowhere: requests fail fast instead of
    /// reaching anything.
    fn unconnected_state() -> Arc<AppState> {
        let metrics = Arc::new(Metrics::new());
        let kafka = KafkaArgs {
            kafka_bootstrap_servers: "127.0.0.1:1".into(),
            topic: "unit-test".into(),
            security: Default::default(),
        };
        let engine = EngineArgs {
            elasticsearch_url: "http://127.0.0.1:1".parse().unwrap(),
            index_alias: "unit-test".into(),
            elasticsearch_timeout: Duration::from_millis(200),
            elasticsearch_username: None,
            elasticsearch_password: None,
            elasticsearch_api_key: None,
            elasticsearch_ca_file: None,
        };
        Arc::new(AppState {
            publisher: Publisher::new(
                &kafka,
                &crate::publisher::ProducerSettings {
                    publish_timeout: Duration::from_millis(100),
                    queue_messages: 10,
                    linger: Duration::from_millis(5),
                    batch_bytes: 1_000_000,
                    compression: crate::config::Compression::None,
                },
                metrics.clone(),
            )
            .unwrap(),
            index: Arc::new(CityIndex::new(&engine, Duration::from_millis(200)).unwrap()),
            version_waits: Arc::default(),
            reads: get::ReadPath::new(
                Arc::new(CityIndex::new(&engine, Duration::from_millis(200)).unwrap()),
                &get::ReadSettings::default(),
                metrics.clone(),
            ),
            api_keys: Arc::new(WriteKeys::load(None, None).unwrap()),
            metrics,
            limits: Limits {
                body_read_timeout: Duration::from_secs(1),
                request_timeout: Duration::from_secs(5),
                max_concurrent_requests: 16,
            },
            api_docs: true,
        })
    }

    fn documented() -> (Value, BTreeSet<(String, String)>) {
        let (_, document) = api().split_for_parts();
        let document = serde_json::to_value(&document).unwrap();
        let mut routes = BTreeSet::new();
        for (path, item) in document["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                routes.insert((method.clone(), path.clone()));
            }
        }
        (document, routes)
    }

    #[test]
    fn the_document_is_openapi_3_1_with_the_whole_contract() {
        let (document, routes) = documented();
        assert_eq!(document["openapi"], "3.1.0");
        for (method, path) in CONTRACT {
            assert!(
                routes.contains(&((*method).to_owned(), (*path).to_owned())),
                "{method} {path} is not documented"
            );
        }
        // Every error response is a problem (a 304 is no error, and has no body).
        for (path, item) in document["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                for (status, response) in operation["responses"].as_object().unwrap() {
                    let is_probe = [
                        "/livez",
                        "/readyz",
                        "/readyz/writes",
                        "/readyz/reads",
                        "/health",
                    ]
                    .contains(&path.as_str());
                    if status.starts_with('2') || status == "304" || is_probe {
                        continue;
                    }
                    assert!(
                        response["content"]
                            .get("application/problem+json")
                            .is_some(),
                        "{method} {path} {status} is not a problem: {response}"
                    );
                }
            }
        }
        assert!(document["components"]["securitySchemes"]["api_key"].is_object());
        assert_refs_resolve(&document, &document);
    }

    fn assert_refs_resolve(document: &Value, node: &Value) {
        match node {
            Value::Object(map) => {
                if let Some(Value::String(reference)) = map.get("$ref") {
                    let name = reference.trim_start_matches("#/components/schemas/");
                    assert!(
                        document["components"]["schemas"].get(name).is_some(),
                        "{reference} is not in the document"
                    );
                }
                map.values().for_each(|v| assert_refs_resolve(document, v));
            }
            Value::Array(items) => items.iter().for_each(|v| assert_refs_resolve(document, v)),
            _ => {}
        }
    }

    /// Every (method, path) the router serves is in the document and the other way
    /// round. Routes join both through `routes!`, so this guards against a route
    /// added to the router by hand.
    #[tokio::test]
    async fn every_route_in_the_router_is_in_the_document() {
        let (_, documented) = documented();
        let paths: BTreeSet<&str> = documented
            .iter()
            .map(|(_, path)| path.as_str())
            .chain(CONTRACT.iter().map(|(_, path)| *path))
            .collect();
        let router = router(unconnected_state());
        let mut probes = Vec::new();
        for path in &paths {
            for method in [
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::DELETE,
                Method::PATCH,
            ] {
                let request = Request::builder()
                    .method(method.clone())
                    .uri(path.replace("{name}", "paris"))
                    .body(Body::empty())
                    .unwrap();
                let router = router.clone();
                probes.push(async move {
                    let response = router.oneshot(request).await.unwrap();
                    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
                        .await
                        .unwrap();
                    let kind = serde_json::from_slice::<Value>(&body)
                        .ok()
                        .and_then(|v| v["type"].as_str().map(str::to_owned))
                        .unwrap_or_default();
                    let served =
                        !kind.ends_with(":unknown-route") && !kind.ends_with(":method-not-allowed");
                    (method.as_str().to_lowercase(), path.to_string(), served)
                });
            }
        }
        for (method, path, served) in futures::future::join_all(probes).await {
            let is_documented = documented.contains(&(method.clone(), path.clone()));
            assert_eq!(
                served, is_documented,
                "{method} {path}: served {served}, documented {is_documented}"
            );
        }
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_a_problem() {
        let router = Router::new()
            .route(
                "/boom",
                axum::routing::get(|| async {
                    panic!("boom");
                    #[allow(unreachable_code)]
                    ()
                }),
            )
            .layer(CatchPanicLayer::custom(panic_problem));
        let request = Request::builder().uri("/boom").body(Body::empty()).unwrap();
        let response = router.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            crate::problem::CONTENT_TYPE
        );
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["type"], "urn:citypop:problem:internal");
        assert!(!body.to_string().contains("boom"));
    }

    #[tokio::test]
    async fn unknown_routes_and_methods_are_problems() {
        let router = router(unconnected_state());
        for (method, uri, status) in [
            (Method::GET, "/nope", StatusCode::NOT_FOUND),
            (Method::PATCH, "/city/paris", StatusCode::METHOD_NOT_ALLOWED),
        ] {
            let request = Request::builder()
                .method(method)
                .uri(uri)
                .body(Body::empty())
                .unwrap();
            let response = router.clone().oneshot(request).await.unwrap();
            assert_eq!(response.status(), status, "{uri}");
            assert_eq!(
                response.headers()[header::CONTENT_TYPE],
                crate::problem::CONTENT_TYPE
            );
        }
    }
}
