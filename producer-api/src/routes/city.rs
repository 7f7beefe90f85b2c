//! `POST /city` and `GET /city/{name}`.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use citypop_schemas::{CityKey, CityName, Population};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Serialize;
use serde_json::Value;

use super::{AppState, json_body};
use crate::problem::{FieldError, Problem};
use crate::publisher::PublishError;

/// Characters escaped in a path segment of `Location`: all but RFC 3986 unreserved.
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Seconds a client should wait before retrying a write Kafka could not take.
const RETRY_AFTER_SECS: u64 = 1;

/// A valid `{"name", "population"}` body.
#[derive(Debug)]
pub struct CityUpdate {
    pub name: CityName,
    pub population: Population,
}

impl TryFrom<&Value> for CityUpdate {
    type Error = Vec<FieldError>;

    /// Checks every field and reports every problem at once, so a client fixes its
    /// request in one round trip.
    fn try_from(body: &Value) -> Result<Self, Self::Error> {
        let Some(object) = body.as_object() else {
            return Err(vec![FieldError::new("", "the body must be a JSON object")]);
        };
        let mut errors: Vec<FieldError> = object
            .keys()
            .filter(|k| !matches!(k.as_str(), "name" | "population"))
            .map(|k| FieldError::new(k.as_str(), "unknown field"))
            .collect();
        let name = match object.get("name") {
            None => Err(FieldError::new("name", "is required")),
            Some(Value::String(raw)) => {
                CityName::parse(raw).map_err(|e| FieldError::new("name", e))
            }
            Some(_) => Err(FieldError::new("name", "must be a string")),
        };
        let population = match object.get("population") {
            None => Err(FieldError::new("population", "is required")),
            Some(value) => {
                Population::from_json(value).map_err(|e| FieldError::new("population", e))
            }
        };
        match (name, population) {
            (Ok(name), Ok(population)) if errors.is_empty() => Ok(Self { name, population }),
            (name, population) => {
                errors.extend(name.err());
                errors.extend(population.err());
                Err(errors)
            }
        }
    }
}

pub async fn upsert(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let body = json_body::parse(&headers, body)?;
    let update = CityUpdate::try_from(&body).map_err(Problem::validation)?;
    let accepted = state
        .publisher
        .publish_update(&update.name, update.population)
        .await
        .map_err(|error| match error {
            PublishError::QueueFull | PublishError::NotAcknowledged(_) => {
                tracing::warn!(%error, "write not acknowledged");
                Problem::unavailable(error.to_string(), RETRY_AFTER_SECS)
            }
            PublishError::Encode(e) => Problem::internal(e.to_string()),
        })?;
    let location = format!("/city/{}", utf8_percent_encode(&accepted.key, PATH_SEGMENT));
    let mut response = (StatusCode::ACCEPTED, Json(accepted)).into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    Ok(response)
}

/// The latest indexed state of a city.
#[derive(Debug, Serialize)]
pub struct CityView {
    pub name: String,
    pub key: String,
    pub population: i64,
    pub updated_at: String,
    pub version: i64,
}

pub async fn get(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<CityView>, Problem> {
    let key =
        CityKey::parse(&name).map_err(|e| Problem::validation(vec![FieldError::new("name", e)]))?;
    let document = state.index.get(&key).await.map_err(|error| {
        tracing::warn!(error = format!("{error:#}"), "index read failed");
        Problem::unavailable(
            format!("the search index cannot be read: {error}"),
            RETRY_AFTER_SECS,
        )
    })?;
    match document {
        Some(doc) => Ok(Json(CityView {
            name: doc.name.unwrap_or_default(),
            key: doc.key,
            population: doc.population.unwrap_or_default(),
            updated_at: doc.updated_at,
            version: doc.version,
        })),
        None => Err(Problem::not_found(format!("no city with key {key:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(body: Value) -> Vec<String> {
        CityUpdate::try_from(&body)
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    #[test]
    fn a_valid_update_parses() {
        let update =
            CityUpdate::try_from(&json!({"name": " Paris ", "population": 2_102_650})).unwrap();
        assert_eq!(update.name.as_str(), "Paris");
        assert_eq!(update.population.get(), 2_102_650);
    }

    #[test]
    fn every_invalid_field_is_reported() {
        assert_eq!(fields(json!({})), ["name", "population"]);
        assert_eq!(
            fields(json!({"name": 1, "population": 1.5, "x": 0})),
            ["x", "name", "population"]
        );
        assert_eq!(
            fields(json!({"name": "", "population": -1})),
            ["name", "population"]
        );
        assert_eq!(fields(json!([1])), [""]);
    }
}
