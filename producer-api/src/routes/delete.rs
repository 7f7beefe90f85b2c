//! `DELETE /city/{name}`: a tombstone on the city's key.

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::Response;
use citypop_schemas::CityKey;

use super::api_key::{KeyRefusals, WriteAccess};
use super::{AppState, accepted_response, publish_problem};
use crate::problem::Problem;
use crate::publisher::Accepted;
use crate::trace_context::TraceContext;

/// Delete a city.
///
/// Publishes a tombstone (the key with a null value). Once indexed, reads answer 404
/// and listings leave the city out; a later upsert brings it back. Deleting a city
/// that does not exist is accepted too: the write path never reads the index.
#[utoipa::path(
    delete,
    path = "/city/{name}",
    tag = "writes",
    params(("name" = String, Path, description = "The city's name in any spelling")),
    security((), ("api_key" = [])),
    responses(
        KeyRefusals,
        (status = 202, description = "Kafka acknowledged the tombstone; wait for it with `GET /city/{name}?min_version={offset}`, which then answers 404", body = Accepted),
        (status = 400, description = "Unreadable path", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The name cannot be a city's", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Kafka did not acknowledge within the publish timeout, or the producer queue is full", body = Problem, content_type = "application/problem+json",
            headers(("retry-after" = u64, description = "Seconds to wait before retrying"))),
    )
)]
pub async fn delete_city(
    _: WriteAccess,
    State(state): State<Arc<AppState>>,
    TraceContext(trace): TraceContext,
    name: Result<Path<String>, PathRejection>,
) -> Result<Response, Problem> {
    let Path(name) = name.map_err(|e| Problem::bad_request(e.body_text()))?;
    let key = CityKey::parse(&name).map_err(|e| Problem::invalid("name", e))?;
    let accepted = state
        .publisher
        .delete(&key, &trace)
        .acknowledged()
        .await
        .map_err(|error| publish_problem(&error))?;
    tracing::debug!(key = %accepted.key, partition = accepted.partition, offset = accepted.offset, "delete accepted");
    Ok(accepted_response(accepted, false))
}
