//! `POST /city` (the original API's shape) and `PUT /cities/{name}` (the RESTful
//! one): one upsert, published to Kafka.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use citypop_schemas::{CityName, Population};
use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::api_key::{KeyRefusals, WriteAccess};
use super::json_body::JsonRefusals;
use super::{AppState, MAX_UPDATE_BODY_BYTES, accepted_response, json_body, publish_problem};
use crate::new_name;
use crate::problem::{FieldError, Problem};
use crate::publisher::Accepted;
use crate::trace_context::TraceContext;

/// The body of `POST /city`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // documents the body; parsing goes through `CityUpdate`
pub struct CityUpdateBody {
    /// 1–200 characters after NFC normalisation and trimming, no control
    /// characters, no invisible format characters (Unicode category Cf) nor line or
    /// paragraph separators, not `.` or `..`; its key is at most 512 bytes of UTF-8.
    #[schema(min_length = 1, max_length = 200, example = "São Paulo")]
    name: String,
    /// A JSON integer; floats (even `1.0`), strings, booleans and null are refused.
    #[schema(minimum = 0, maximum = 10_000_000_000_i64, example = 12_325_232)]
    population: i64,
}

/// The body of `PUT /cities/{name}`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // documents the body; parsing goes through `CityUpdate`
pub struct PopulationBody {
    /// A JSON integer; floats (even `1.0`), strings, booleans and null are refused.
    #[schema(minimum = 0, maximum = 10_000_000_000_i64, example = 2_102_650)]
    population: i64,
}

/// A valid update.
#[derive(Debug)]
pub struct CityUpdate {
    pub name: CityName,
    pub population: Population,
}

impl TryFrom<&Value> for CityUpdate {
    type Error = Vec<FieldError>;

    /// A `{"name", "population"}` object. Checks every field and reports every
    /// problem at once, so a client fixes its request in one round trip.
    fn try_from(body: &Value) -> Result<Self, Self::Error> {
        let object = as_object(body)?;
        let mut errors = unknown_fields(object, &["name", "population"]);
        let name = match object.get("name") {
            None => Err(FieldError::new("name", "is required")),
            Some(Value::String(raw)) => {
                new_name::parse(raw).map_err(|e| FieldError::new("name", e))
            }
            Some(_) => Err(FieldError::new("name", "must be a string")),
        };
        let population = population(object);
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

impl CityUpdate {
    /// The name from a path segment and a `{"population"}` object.
    fn from_path(name: &str, body: &Value) -> Result<Self, Vec<FieldError>> {
        let name = new_name::parse(name).map_err(|e| FieldError::new("name", e));
        let (mut errors, population) = match as_object(body) {
            Ok(object) => (unknown_fields(object, &["population"]), population(object)),
            Err(errors) => return Err(name.err().into_iter().chain(errors).collect()),
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

fn as_object(body: &Value) -> Result<&Map<String, Value>, Vec<FieldError>> {
    body.as_object()
        .ok_or_else(|| vec![FieldError::new("", "the body must be a JSON object")])
}

fn unknown_fields(object: &Map<String, Value>, known: &[&str]) -> Vec<FieldError> {
    object
        .keys()
        .filter(|k| !known.contains(&k.as_str()))
        .map(|k| FieldError::new(k.as_str(), "unknown field"))
        .collect()
}

fn population(object: &Map<String, Value>) -> Result<Population, FieldError> {
    match object.get("population") {
        None => Err(FieldError::new("population", "is required")),
        Some(value) => Population::from_json(value).map_err(|e| FieldError::new("population", e)),
    }
}

/// Upsert a city's population.
///
/// Answers 202 once Kafka acknowledged the event (`acks=all`); the index shows it
/// shortly after. Wait for it with `GET /city/{name}?min_version={offset}`.
#[utoipa::path(
    post,
    path = "/city",
    tag = "writes",
    request_body(content = CityUpdateBody, content_type = "application/json"),
    security((), ("api_key" = [])),
    responses(
        KeyRefusals, JsonRefusals,
        (status = 202, description = "Kafka acknowledged the update", body = Accepted,
            headers(("location" = String, description = "`/city/{key}`, where the city can be read"))),
        (status = 413, description = "Body over 64 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields, each in `errors`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Kafka did not acknowledge within the publish timeout, or the producer queue is full; retry after `Retry-After` seconds", body = Problem, content_type = "application/problem+json",
            headers(("retry-after" = u64, description = "Seconds to wait before retrying"))),
    )
)]
pub async fn post_city(
    _: WriteAccess,
    State(state): State<Arc<AppState>>,
    TraceContext(trace): TraceContext,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let body = json_body::read(&headers, body, MAX_UPDATE_BODY_BYTES).await?;
    let update = CityUpdate::try_from(&body).map_err(Problem::validation)?;
    publish(&state, &update, &trace).await
}

/// Upsert a city's population, RESTfully: the name in the path.
#[utoipa::path(
    put,
    path = "/cities/{name}",
    tag = "writes",
    params(("name" = String, Path, description = "The city's name in any spelling: case, Unicode form and surrounding whitespace do not matter")),
    request_body(content = PopulationBody, content_type = "application/json"),
    security((), ("api_key" = [])),
    responses(
        KeyRefusals, JsonRefusals,
        (status = 202, description = "Kafka acknowledged the update", body = Accepted,
            headers(("location" = String, description = "`/city/{key}`, where the city can be read"))),
        (status = 413, description = "Body over 64 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid name or fields, each in `errors`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Kafka did not acknowledge within the publish timeout, or the producer queue is full", body = Problem, content_type = "application/problem+json",
            headers(("retry-after" = u64, description = "Seconds to wait before retrying"))),
    )
)]
pub async fn put_city(
    access: WriteAccess,
    State(state): State<Arc<AppState>>,
    trace: TraceContext,
    name: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let Path(name) = name.map_err(|e| Problem::bad_request(e.body_text()))?;
    put(access, &state, trace, &name, &headers, body).await
}

/// Upsert the population of the city named `bulk`.
///
/// `PUT /cities/{name}` for the name `bulk`, whose path is also the bulk route's: a
/// router takes the fixed path first, so this operation serves it.
#[utoipa::path(
    put,
    path = "/cities/bulk",
    tag = "writes",
    request_body(content = PopulationBody, content_type = "application/json"),
    security((), ("api_key" = [])),
    responses(
        KeyRefusals, JsonRefusals,
        (status = 202, description = "Kafka acknowledged the update", body = Accepted,
            headers(("location" = String, description = "`/city/bulk`, where the city can be read"))),
        (status = 413, description = "Body over 64 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields, each in `errors`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Kafka did not acknowledge within the publish timeout, or the producer queue is full", body = Problem, content_type = "application/problem+json",
            headers(("retry-after" = u64, description = "Seconds to wait before retrying"))),
    )
)]
pub async fn put_city_named_bulk(
    access: WriteAccess,
    State(state): State<Arc<AppState>>,
    trace: TraceContext,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    put(access, &state, trace, "bulk", &headers, body).await
}

async fn put(
    _: WriteAccess,
    state: &AppState,
    TraceContext(trace): TraceContext,
    name: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let body = json_body::read(headers, body, MAX_UPDATE_BODY_BYTES).await?;
    let update = CityUpdate::from_path(name, &body).map_err(Problem::validation)?;
    publish(state, &update, &trace).await
}

async fn publish(
    state: &AppState,
    update: &CityUpdate,
    trace: &crate::trace_context::RequestTrace,
) -> Result<Response, Problem> {
    let accepted = state
        .publisher
        .update(&update.name, update.population, trace)
        .acknowledged()
        .await
        .map_err(|error| publish_problem(&error))?;
    tracing::debug!(key = %accepted.key, partition = accepted.partition, offset = accepted.offset, "update accepted");
    Ok(accepted_response(accepted, true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(result: Result<CityUpdate, Vec<FieldError>>) -> Vec<String> {
        result.unwrap_err().into_iter().map(|e| e.field).collect()
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
        let post = |body: Value| fields(CityUpdate::try_from(&body));
        assert_eq!(post(json!({})), ["name", "population"]);
        assert_eq!(
            post(json!({"name": 1, "population": 1.5, "x": 0})),
            ["x", "name", "population"]
        );
        assert_eq!(
            post(json!({"name": "", "population": -1})),
            ["name", "population"]
        );
        assert_eq!(post(json!([1])), [""]);
    }

    #[test]
    fn a_put_takes_the_name_from_the_path() {
        let update = CityUpdate::from_path("ZÜRICH", &json!({"population": 443_037})).unwrap();
        assert_eq!(update.name.key().as_str(), "zürich");
        let put = |name: &str, body: Value| fields(CityUpdate::from_path(name, &body));
        assert_eq!(
            put("Paris", json!({"name": "Paris", "population": 1})),
            ["name"]
        );
        assert_eq!(
            put("a\u{7}b", json!({"population": "1"})),
            ["name", "population"]
        );
        assert_eq!(put(" ", json!(null)), ["name", ""]);
    }
}

/// The write path's own per-request work, measured in instructions rather than time
/// (the machine is shared): run under callgrind, collecting only inside
/// [`cost::one_post`], and divide by [`cost::POSTS`]:
///
/// ```text
/// cargo test --release -p citypop-producer-api --lib --no-run
/// valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*cost*one_post*' \
///     target/release/deps/citypop_producer_api-* --exact routes::upsert::cost::write_path_cost
/// ```
///
/// The producer points at a closed port, so events stay in its queue: what is
/// counted is this service's work up to the hand-over to librdkafka, not Kafka's.
#[cfg(test)]
mod cost {
    use std::sync::Arc;

    use clap::Parser;

    use super::*;
    use crate::Config;
    use crate::metrics::Metrics;
    use crate::metrics::RouteLabel;
    use crate::publisher::{ProducerSettings, Publisher};
    use crate::trace_context::RequestTrace;

    pub const POSTS: usize = 2_000;

    /// What `POST /city` does between hyper and librdkafka, in order.
    #[inline(never)]
    fn one_post(publisher: &Publisher, metrics: &Metrics, body: &[u8], traceparent: &str) {
        let trace = RequestTrace::from_traceparent(traceparent);
        let body: Value = serde_json::from_slice(body).expect("valid body");
        let update = CityUpdate::try_from(&body).expect("valid update");
        let pending = publisher.update(&update.name, update.population, &trace);
        assert!(!pending.refused());
        let accepted = Accepted {
            event_id: String::new(),
            key: update.name.as_key().as_str().to_owned(),
            partition: 0,
            offset: 0,
        };
        metrics.published(0.001);
        let response = super::super::accepted_response(accepted, true);
        let route = RouteLabel::Static("/city");
        metrics.request_answered("POST", route, response.status().as_u16(), 0.001);
        std::hint::black_box(response);
    }

    /// [`one_post`] with traces exported and every request sampled: the request span
    /// and the produce span are made and ended (the exporter's own work, on its
    /// thread, is not counted). Measured like `one_post`, with
    /// `--toggle-collect='*cost*one_traced_post*' --exact routes::upsert::cost::write_path_cost_traced`.
    #[inline(never)]
    fn one_traced_post(publisher: &Publisher, metrics: &Metrics, body: &[u8], traceparent: &str) {
        let span = tracing::info_span!("request", otel.name = "POST /city", route = "/city");
        let _entered = span.enter();
        let trace = RequestTrace::in_current_span(traceparent);
        assert!(trace.exported);
        let body: Value = serde_json::from_slice(body).expect("valid body");
        let update = CityUpdate::try_from(&body).expect("valid update");
        let pending = publisher.update(&update.name, update.population, &trace);
        assert!(!pending.refused());
        metrics.published(0.001);
        let accepted = Accepted {
            event_id: String::new(),
            key: update.name.as_key().as_str().to_owned(),
            partition: 0,
            offset: 0,
        };
        let response = super::super::accepted_response(accepted, true);
        metrics.request_answered(
            "POST",
            RouteLabel::Static("/city"),
            response.status().as_u16(),
            0.001,
        );
        std::hint::black_box(response);
        // The produce span ends with its acknowledgement, which never comes here.
        drop(pending);
    }

    /// A publisher whose broker never answers: each POST is handed to librdkafka and
    /// stays queued, as the measurement wants.
    fn publisher() -> (Publisher, Arc<Metrics>) {
        let config =
            Config::try_parse_from(["producer-api", "--kafka-bootstrap-servers", "127.0.0.1:1"])
                .unwrap();
        let metrics = Arc::new(Metrics::new());
        let publisher = Publisher::new(
            &config.kafka,
            &ProducerSettings::from_config(&config),
            metrics.clone(),
        )
        .unwrap();
        (publisher, metrics)
    }

    #[test]
    fn write_path_cost_traced() {
        use opentelemetry::trace::TracerProvider as _;
        use tracing_subscriber::layer::SubscriberExt as _;
        let (publisher, metrics) = publisher();
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_sampler(opentelemetry_sdk::trace::Sampler::AlwaysOn)
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("cost")));
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        tracing::subscriber::with_default(subscriber, || {
            for i in 0..POSTS {
                let body = format!(r#"{{"name": "Traced {i}", "population": {}}}"#, 1_000 + i);
                one_traced_post(&publisher, &metrics, body.as_bytes(), traceparent);
            }
        });
    }

    /// Runs with the other tests, so the measurement keeps compiling and working (each
    /// POST is handed to the producer); under callgrind it is the measurement.
    #[test]
    fn write_path_cost() {
        let (publisher, metrics) = publisher();
        let bodies: Vec<Vec<u8>> = (0..POSTS)
            .map(|i| {
                let name = ["São Paulo", "Zürich", "東京", "Paris"][i % 4];
                format!(r#"{{"name": "{name} {i}", "population": {}}}"#, 1_000 + i).into_bytes()
            })
            .collect();
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        for body in &bodies {
            one_post(&publisher, &metrics, body, traceparent);
        }
    }
}
