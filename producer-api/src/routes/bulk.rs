//! `POST /cities/bulk`: many upserts in one request, each judged on its own.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use citypop_schemas::CityKey;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::api_key::{KeyRefusals, WriteAccess};
use super::json_body::JsonRefusals;
use super::upsert::{CityUpdate, CityUpdateBody};
use super::{AppState, MAX_BULK_BODY_BYTES, RETRY_AFTER_SECS, json_body};
use crate::problem::{FieldError, Problem};
use crate::publisher::{Accepted, PublishError};
use crate::trace_context::TraceContext;

/// The most items one bulk request may carry; larger batches are split by the
/// client, which keeps one request's publish time and response size bounded.
pub const MAX_BULK_ITEMS: usize = 1000;

/// What became of one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Kafka acknowledged it.
    Accepted,
    /// It is invalid; `errors` says why. Sending it again will not help.
    Rejected,
    /// It is valid but Kafka did not acknowledge it; send it again later.
    Failed,
}

/// The result of one item of a bulk request.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ItemResult {
    /// The item's position in the request, from 0.
    pub index: usize,
    pub result: Outcome,
    /// The status the item would have had as a single request: 202, 422, 503 or 500.
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<i64>,
    /// Why a rejected item is invalid.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// Why a failed item was not published.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl ItemResult {
    fn accepted(index: usize, accepted: Accepted) -> Self {
        Self {
            index,
            result: Outcome::Accepted,
            status: StatusCode::ACCEPTED.as_u16(),
            event_id: Some(accepted.event_id),
            key: Some(accepted.key),
            partition: Some(accepted.partition),
            offset: Some(accepted.offset),
            errors: Vec::new(),
            detail: None,
        }
    }

    fn rejected(index: usize, errors: Vec<FieldError>) -> Self {
        Self {
            index,
            result: Outcome::Rejected,
            status: StatusCode::UNPROCESSABLE_ENTITY.as_u16(),
            event_id: None,
            key: None,
            partition: None,
            offset: None,
            errors,
            detail: None,
        }
    }

    fn failed(index: usize, error: &PublishError) -> Self {
        let status = if error.is_transient() {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        Self {
            index,
            result: Outcome::Failed,
            status: status.as_u16(),
            event_id: None,
            key: None,
            partition: None,
            offset: None,
            errors: Vec::new(),
            detail: Some(error.to_string()),
        }
    }
}

/// An item of a bulk request, once handed to the producer or not.
#[derive(Debug)]
enum HandedOver<P> {
    Invalid(Vec<FieldError>),
    /// Not sent: the item at this index, for the same city, was refused first.
    HeldBack(usize),
    Sent(P),
}

/// Hands the valid updates to `send` in request order. Once the producer refuses
/// one city's item at once (its queue is full), that city's later items are held
/// back: were one of them accepted, the client's retry of the refused item would
/// overwrite it with older data.
fn hand_over<P>(
    updates: Vec<Result<CityUpdate, Vec<FieldError>>>,
    mut send: impl FnMut(&CityUpdate) -> P,
    refused: impl Fn(&P) -> bool,
) -> Vec<HandedOver<P>> {
    let mut first_refused: HashMap<CityKey, usize> = HashMap::new();
    updates
        .into_iter()
        .enumerate()
        .map(|(index, update)| match update {
            Err(errors) => HandedOver::Invalid(errors),
            Ok(update) => {
                let key = update.name.key();
                if let Some(first) = first_refused.get(&key) {
                    return HandedOver::HeldBack(*first);
                }
                let pending = send(&update);
                if refused(&pending) {
                    first_refused.insert(key, index);
                }
                HandedOver::Sent(pending)
            }
        })
        .collect()
}

impl ItemResult {
    /// An item not sent because an earlier item for its city failed.
    fn held_back(index: usize, first: usize) -> Self {
        Self {
            index,
            result: Outcome::Failed,
            status: StatusCode::SERVICE_UNAVAILABLE.as_u16(),
            event_id: None,
            key: None,
            partition: None,
            offset: None,
            errors: Vec::new(),
            detail: Some(format!(
                "not sent: item {first} for the same city failed first, and a retry of it \
                 must not overwrite this one; send both again, in order"
            )),
        }
    }
}

/// The answer to a bulk request of which at least one item was accepted.
#[derive(Debug, Serialize, ToSchema)]
pub struct BulkResponse {
    pub accepted: usize,
    pub rejected: usize,
    pub failed: usize,
    /// One result per item, in request order.
    pub items: Vec<ItemResult>,
}

/// Upsert many cities.
///
/// Each item is validated on its own; the valid ones are published concurrently,
/// and items for one city are written in request order. The answer is 202 when at
/// least one item was accepted, with a result per item. When none was: 503 if any
/// failed only because Kafka did not acknowledge it, else 422; both carry the
/// per-item results in `items`.
#[utoipa::path(
    post,
    path = "/cities/bulk",
    tag = "writes",
    request_body(content = Vec<CityUpdateBody>, content_type = "application/json",
        description = "1 to 1000 `{name, population}` objects"),
    security((), ("api_key" = [])),
    responses(
        KeyRefusals, JsonRefusals,
        (status = 202, description = "At least one item was accepted; `items` has the result of each", body = BulkResponse),
        (status = 413, description = "Body over 4 MiB, or more than 1000 items", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The body is not a non-empty array, or every item is invalid (`errors` names them as `[index].field`, `items` has each result)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "No item was accepted and some failed because Kafka did not acknowledge them; `items` has each result", body = Problem, content_type = "application/problem+json",
            headers(("retry-after" = u64, description = "Seconds to wait before retrying"))),
    )
)]
pub async fn post_bulk(
    _: WriteAccess,
    State(state): State<Arc<AppState>>,
    TraceContext(trace): TraceContext,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let body = json_body::read(&headers, body, MAX_BULK_BODY_BYTES).await?;
    let Value::Array(items) = body else {
        return Err(Problem::invalid(
            "",
            "the body must be a JSON array of updates",
        ));
    };
    if items.is_empty() {
        return Err(Problem::invalid(
            "",
            "the body must hold at least one update",
        ));
    }
    if items.len() > MAX_BULK_ITEMS {
        return Err(Problem::payload_too_large(format!(
            "a bulk request holds at most {MAX_BULK_ITEMS} items, got {}",
            items.len()
        )));
    }

    // Every valid item is handed to the producer now, in request order, before any
    // acknowledgement is awaited: the producer batches them, and one city's items
    // keep their order on its partition.
    let updates = items.iter().map(CityUpdate::try_from).collect();
    let handed = hand_over(
        updates,
        |update| {
            state
                .publisher
                .update(&update.name, update.population, &trace)
        },
        |pending| pending.refused(),
    );
    let judged = futures::future::join_all(handed.into_iter().map(|item| async move {
        match item {
            HandedOver::Sent(pending) => Ok(pending.acknowledged().await),
            HandedOver::HeldBack(first) => Err(Err(first)),
            HandedOver::Invalid(errors) => Err(Ok(errors)),
        }
    }))
    .await;

    let mut results = Vec::with_capacity(items.len());
    let mut transient_failure = None;
    for (index, item) in judged.into_iter().enumerate() {
        results.push(match item {
            Err(Ok(errors)) => ItemResult::rejected(index, errors),
            Err(Err(first)) => ItemResult::held_back(index, first),
            Ok(Ok(accepted)) => ItemResult::accepted(index, accepted),
            Ok(Err(error)) => {
                if error.is_transient() && transient_failure.is_none() {
                    transient_failure = Some(error.to_string());
                }
                ItemResult::failed(index, &error)
            }
        });
    }
    let count = |outcome| results.iter().filter(|r| r.result == outcome).count();
    let (accepted, rejected, failed) = (
        count(Outcome::Accepted),
        count(Outcome::Rejected),
        count(Outcome::Failed),
    );
    tracing::debug!(accepted, rejected, failed, "bulk request judged");
    if accepted > 0 {
        let response = BulkResponse {
            accepted,
            rejected,
            failed,
            items: results,
        };
        return Ok((StatusCode::ACCEPTED, Json(response)).into_response());
    }
    // Nothing was accepted, so a 202 would promise what Kafka never acknowledged.
    if let Some(detail) = transient_failure {
        tracing::warn!(failed, detail, "bulk request not acknowledged");
        return Err(Problem::unavailable(
            format!("kafka acknowledged none of the {failed} valid item(s): {detail}"),
            RETRY_AFTER_SECS,
        )
        .with_items(results));
    }
    if failed > 0 {
        return Err(
            Problem::internal(format!("{failed} item(s) could not be published"))
                .with_items(results),
        );
    }
    let errors = results
        .iter()
        .flat_map(|r| {
            r.errors.iter().map(move |e| {
                let field = if e.field.is_empty() {
                    format!("[{}]", r.index)
                } else {
                    format!("[{}].{}", r.index, e.field)
                };
                FieldError::new(field, &e.message)
            })
        })
        .collect();
    Err(Problem::validation(errors).with_items(results))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn after_a_city_fails_its_later_items_are_held_back() {
        let updates = [
            json!({"name": "Paris", "population": 1}),
            json!({"name": "Lyon", "population": 2}),
            json!({"name": "x", "population": -1}),
            json!({"name": " PARIS ", "population": 3}),
            json!({"name": "Nice", "population": 4}),
            json!({"name": "paris", "population": 5}),
        ]
        .iter()
        .map(CityUpdate::try_from)
        .collect();
        // The queue refuses the first item only, as a full queue that drains would.
        let mut calls = 0;
        let handed = hand_over(
            updates,
            |update| {
                calls += 1;
                (update.population.get(), calls > 1)
            },
            |(_, accepted)| !accepted,
        );
        let shown: Vec<String> = handed
            .iter()
            .map(|item| match item {
                HandedOver::Invalid(_) => "invalid".to_owned(),
                HandedOver::HeldBack(first) => format!("held back after {first}"),
                HandedOver::Sent((population, accepted)) => format!("sent {population} {accepted}"),
            })
            .collect();
        assert_eq!(
            shown,
            [
                "sent 1 false",
                "sent 2 true",
                "invalid",
                "held back after 0",
                "sent 4 true",
                "held back after 0",
            ]
        );
        assert_eq!(calls, 3, "held-back items never reach the producer");
    }
}
