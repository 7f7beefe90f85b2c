//! Liveness and readiness.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::AppState;

/// The process is up and serving; says nothing about dependencies, so a Kafka
/// outage never gets the pod restarted.
pub async fn livez() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Ready when both Kafka (with the topic) and the search engine answer.
pub async fn readyz(State(state): State<Arc<AppState>>) -> (StatusCode, Json<Value>) {
    let (kafka, engine) = tokio::join!(state.publisher.check_kafka(), state.index.check_engine());
    let ready = kafka.is_ok() && engine.is_ok();
    let check = |result: Result<(), String>| match result {
        Ok(()) => json!({"status": "up"}),
        Err(error) => json!({"status": "down", "error": error}),
    };
    let body = json!({
        "status": if ready { "ready" } else { "not ready" },
        "checks": {"kafka": check(kafka), "elasticsearch": check(engine)},
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}
