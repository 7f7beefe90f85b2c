//! Liveness, readiness, and the detailed health report.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use crate::city_index::EngineStatus;
use crate::publisher::KafkaStatus;

/// A probe's answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Probe {
    /// `ok`, `ready`, or why not.
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The process is up and serving. It says nothing about dependencies, so a Kafka
/// outage never gets the pod restarted; it fails only when the producer hit a fatal
/// error, which only a restart clears.
#[utoipa::path(
    get,
    path = "/livez",
    tag = "operations",
    responses(
        (status = 200, description = "Serving", body = Probe),
        (status = 503, description = "The Kafka producer failed for good; restart the process", body = Probe),
    )
)]
pub async fn livez(State(state): State<Arc<AppState>>) -> (StatusCode, Json<Probe>) {
    match state.publisher.fatal_error() {
        None => (
            StatusCode::OK,
            Json(Probe {
                status: "ok",
                error: None,
            }),
        ),
        Some(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Probe {
                status: "failed",
                error: Some(error),
            }),
        ),
    }
}

/// One dependency's state.
#[derive(Debug, Serialize, ToSchema)]
pub struct Check<T> {
    /// `up` or `down`.
    pub status: &'static str,
    /// What was seen, when up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<T>,
    /// What is down, in words that name no host or user (the log has the cause).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl<T> Check<T> {
    /// The check's answer for a report. A raw error may name hosts, URLs or user
    /// names, so it goes to the log only; the report says what is down.
    fn judged(dependency: &'static str, result: Result<T, String>, summary: &str) -> Self {
        match result {
            Ok(detail) => Self {
                status: "up",
                detail: Some(detail),
                error: None,
            },
            Err(error) => {
                tracing::warn!(dependency, error, "dependency check failed");
                Self {
                    status: "down",
                    detail: None,
                    error: Some(format!("{summary}; the service's log says why")),
                }
            }
        }
    }
}

impl<T> Check<T> {
    fn is_up(&self) -> bool {
        self.error.is_none()
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Checks {
    pub kafka: Check<KafkaStatus>,
    pub elasticsearch: Check<EngineStatus>,
}

/// Readiness, of the whole API or of one half of it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `not ready`.
    pub status: &'static str,
    pub checks: Checks,
}

/// The longest one dependency check may take. Past it the dependency counts as down,
/// so a hung engine or broker makes a probe say so in time, rather than a probe that
/// Kubernetes times out and counts against the half that works.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Both dependencies, checked at once, each within [`CHECK_TIMEOUT`].
async fn checks(state: &AppState) -> Checks {
    let (kafka, engine) = tokio::join!(
        bounded(state.publisher.check_kafka()),
        bounded(state.index.check_engine())
    );
    Checks {
        kafka: Check::judged("kafka", kafka, "kafka does not answer, or lacks the topic"),
        elasticsearch: Check::judged(
            "elasticsearch",
            engine,
            "the index behind the alias cannot be read",
        ),
    }
}

async fn bounded<T>(check: impl Future<Output = Result<T, String>>) -> Result<T, String> {
    tokio::time::timeout(CHECK_TIMEOUT, check)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {CHECK_TIMEOUT:?}")))
}

/// Which half of the API a readiness probe asks about.
#[derive(Debug, Clone, Copy)]
enum Half {
    /// Either half: the pod serves something.
    Any,
    Writes,
    Reads,
}

async fn readiness(state: &AppState, half: Half) -> (StatusCode, Json<Readiness>) {
    let checks = checks(state).await;
    let (writes, reads) = (checks.kafka.is_up(), checks.elasticsearch.is_up());
    let ready = match half {
        Half::Any => writes || reads,
        Half::Writes => writes,
        Half::Reads => reads,
    };
    let body = Readiness {
        status: if ready { "ready" } else { "not ready" },
        checks,
    };
    (status_code(ready), Json(body))
}

/// Ready while either half of the API can serve: writes need Kafka (with the topic),
/// reads need the index behind the alias (at least yellow). One dependency down never
/// takes the other half out of the load balancer; each route answers 503 with
/// `Retry-After` for its own dependency.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Kafka or the engine answers; `checks` says which", body = Readiness),
        (status = 503, description = "Neither Kafka nor the engine answers", body = Readiness),
    )
)]
pub async fn readyz(State(state): State<Arc<AppState>>) -> (StatusCode, Json<Readiness>) {
    readiness(&state, Half::Any).await
}

/// Ready to serve writes: Kafka answers and has the topic. The probe of pods that
/// only take writes.
#[utoipa::path(
    get,
    path = "/readyz/writes",
    tag = "operations",
    responses(
        (status = 200, description = "Kafka answers and has the topic", body = Readiness),
        (status = 503, description = "Kafka does not answer, or lacks the topic", body = Readiness),
    )
)]
pub async fn readyz_writes(State(state): State<Arc<AppState>>) -> (StatusCode, Json<Readiness>) {
    readiness(&state, Half::Writes).await
}

/// Ready to serve reads: the index behind the alias is at least yellow. The probe of
/// pods that only take reads.
#[utoipa::path(
    get,
    path = "/readyz/reads",
    tag = "operations",
    responses(
        (status = 200, description = "The index behind the alias is green or yellow", body = Readiness),
        (status = 503, description = "The engine does not answer, or the index is red or missing", body = Readiness),
    )
)]
pub async fn readyz_reads(State(state): State<Arc<AppState>>) -> (StatusCode, Json<Readiness>) {
    readiness(&state, Half::Reads).await
}

/// The detailed health report. `status` and `elasticsearch` keep the keys and values
/// of the original API's health endpoint (`{"status": "ok", "elasticsearch":
/// "connected"}`); `kafka` and `checks` add the rest.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok` when every dependency is up, else `error`.
    pub status: &'static str,
    /// `connected` or `disconnected`.
    pub elasticsearch: &'static str,
    /// `connected` or `disconnected`.
    pub kafka: &'static str,
    pub version: &'static str,
    pub checks: Checks,
}

/// Health of the service and each dependency, with latency and detail.
#[utoipa::path(
    get,
    path = "/health",
    tag = "operations",
    responses(
        (status = 200, description = "Every dependency is up", body = Health,
            example = json!({"status": "ok", "elasticsearch": "connected", "kafka": "connected", "version": "0.1.0",
                "checks": {"kafka": {"status": "up", "detail": {"topic": "city-updates", "partitions": 12, "brokers": 1, "in_flight": 0, "latency_ms": 2}},
                           "elasticsearch": {"status": "up", "detail": {"cluster_name": "elasticsearch", "cluster_status": "green", "alias": "cities", "latency_ms": 3}}}})),
        (status = 503, description = "A dependency is down", body = Health),
    )
)]
pub async fn health(State(state): State<Arc<AppState>>) -> (StatusCode, Json<Health>) {
    let checks = checks(&state).await;
    let connected = |up: bool| if up { "connected" } else { "disconnected" };
    let healthy = checks.kafka.is_up() && checks.elasticsearch.is_up();
    let body = Health {
        status: if healthy { "ok" } else { "error" },
        elasticsearch: connected(checks.elasticsearch.is_up()),
        kafka: connected(checks.kafka.is_up()),
        version: env!("CARGO_PKG_VERSION"),
        checks,
    };
    (status_code(healthy), Json(body))
}

fn status_code(up: bool) -> StatusCode {
    if up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}
