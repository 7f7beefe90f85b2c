//! `GET /metrics`: Prometheus text.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;

use super::AppState;

/// Metrics in the OpenMetrics text format, for Prometheus.
///
/// `http_requests_total{method,route,status}`,
/// `http_request_duration_seconds{route}`, `citypop_publish_duration_seconds` and
/// `citypop_publish_failures_total{reason}`. Routes are labelled by template
/// (`/city/{name}`); requests no route matched by `unmatched`.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses(
        (status = 200, description = "The metrics", body = String,
            content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8"),
    )
)]
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    citypop_runtime::metrics_response(state.metrics.registry())
}
