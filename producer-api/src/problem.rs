//! Error responses as `application/problem+json` (RFC 9457).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::routes::bulk::ItemResult;

pub const CONTENT_TYPE: &str = "application/problem+json";

/// The `WWW-Authenticate` challenge of a 401: RFC 9110 requires one, and this names
/// the header the key goes in.
const API_KEY_CHALLENGE: &str = r#"ApiKey header="X-API-Key""#;

/// One invalid field of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    /// The field: `name`, `population`, a query parameter, or `[3].name` for an item of
    /// a bulk request; empty for the body as a whole.
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl ToString) -> Self {
        Self {
            field: field.into(),
            message: message.to_string(),
        }
    }
}

/// A problem detail (RFC 9457). Built through the constructors so every kind of
/// problem has one `type` and one status.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({
    "type": "urn:citypop:problem:validation",
    "title": "Invalid request",
    "status": 422,
    "detail": "1 field(s) failed validation",
    "errors": [{"field": "population", "message": "must be an integer, got a string"}]
}))]
pub struct Problem {
    /// A URN naming the kind of problem; clients branch on it.
    #[serde(rename = "type")]
    kind: &'static str,
    title: &'static str,
    #[serde(serialize_with = "serialize_status")]
    #[schema(value_type = u16)]
    status: StatusCode,
    detail: String,
    /// Every invalid field, for `422`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    errors: Vec<FieldError>,
    /// The extension members of the problems that have some.
    // Boxed: they are rare, and a small `Problem` keeps every `Result<_, Problem>`
    // small.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Extra)]
    extra: Option<Box<Extra>>,
    #[serde(skip)]
    retry_after_secs: Option<u64>,
    #[serde(skip)]
    challenge: bool,
}

/// The extension members of some problems (RFC 9457 §3.2).
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct Extra {
    /// For `409` from read-your-writes: the version the index holds, `null` when the
    /// city is absent (never indexed, or deleted).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<i64>, nullable = true)]
    current_version: Option<Option<i64>>,
    /// For `409` from read-your-writes: the version that was waited for.
    #[serde(skip_serializing_if = "Option::is_none")]
    min_version: Option<i64>,
    /// For a bulk request none of whose items was accepted: the result of each item,
    /// in request order.
    #[serde(skip_serializing_if = "Option::is_none")]
    items: Option<Vec<ItemResult>>,
}

fn serialize_status<S: serde::Serializer>(status: &StatusCode, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u16(status.as_u16())
}

impl Problem {
    fn new(
        status: StatusCode,
        kind: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            kind,
            title,
            status,
            detail: detail.into(),
            errors: Vec::new(),
            extra: None,
            retry_after_secs: None,
            challenge: false,
        }
    }

    pub fn malformed_json(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "urn:citypop:problem:malformed-json",
            "Malformed JSON",
            detail,
        )
    }

    pub fn validation(errors: Vec<FieldError>) -> Self {
        let mut problem = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "urn:citypop:problem:validation",
            "Invalid request",
            format!("{} field(s) failed validation", errors.len()),
        );
        problem.errors = errors;
        problem
    }

    /// One invalid field.
    pub fn invalid(field: impl Into<String>, message: impl ToString) -> Self {
        Self::validation(vec![FieldError::new(field, message)])
    }

    pub fn unsupported_media_type(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "urn:citypop:problem:unsupported-media-type",
            "Unsupported media type",
            detail,
        )
    }

    pub fn payload_too_large(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "urn:citypop:problem:payload-too-large",
            "Payload too large",
            detail,
        )
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "urn:citypop:problem:bad-request",
            "Bad request",
            detail,
        )
    }

    pub fn missing_api_key() -> Self {
        let mut problem = Self::new(
            StatusCode::UNAUTHORIZED,
            "urn:citypop:problem:missing-api-key",
            "API key required",
            "writes need an API key in the X-API-Key header",
        );
        problem.challenge = true;
        problem
    }

    pub fn wrong_api_key() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "urn:citypop:problem:wrong-api-key",
            "API key refused",
            "the key in X-API-Key is not one of the configured keys",
        )
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "urn:citypop:problem:not-found",
            "Not found",
            detail,
        )
    }

    /// No route has this path.
    pub fn unknown_route(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "urn:citypop:problem:unknown-route",
            "Unknown route",
            format!("no route for {path}; GET /openapi.json lists them"),
        )
    }

    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "urn:citypop:problem:method-not-allowed",
            "Method not allowed",
            format!("{path} does not take {method}; GET /openapi.json lists the routes"),
        )
    }

    /// Read-your-writes gave up: the index has not reached `min_version` yet.
    pub fn version_not_reached(
        key: &str,
        min_version: i64,
        current_version: Option<i64>,
        waited_ms: u64,
    ) -> Self {
        let holds = match current_version {
            Some(version) => format!("version {version}"),
            None => "no version".to_owned(),
        };
        let mut problem = Self::new(
            StatusCode::CONFLICT,
            "urn:citypop:problem:version-not-reached",
            "Version not reached",
            format!(
                "after {waited_ms} ms the index holds {holds} of {key:?}, not yet {min_version}"
            ),
        );
        problem.extra = Some(Box::new(Extra {
            current_version: Some(current_version),
            min_version: Some(min_version),
            items: None,
        }));
        problem
    }

    /// A dependency is down or overloaded; the client should retry after a while.
    pub fn unavailable(detail: impl Into<String>, retry_after_secs: u64) -> Self {
        let mut problem = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "urn:citypop:problem:unavailable",
            "Service unavailable",
            detail,
        );
        problem.retry_after_secs = Some(retry_after_secs);
        problem
    }

    /// Every slot for requests is taken: the client should come back shortly.
    pub fn overloaded(retry_after_secs: u64) -> Self {
        let mut problem = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "urn:citypop:problem:overloaded",
            "Overloaded",
            "the service is answering as many requests as it may at once",
        );
        problem.retry_after_secs = Some(retry_after_secs);
        problem
    }

    /// The body did not arrive in time.
    pub fn body_timeout() -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "urn:citypop:problem:body-timeout",
            "Request body timeout",
            "the request body did not arrive in time",
        )
    }

    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "urn:citypop:problem:internal",
            "Internal error",
            detail,
        )
    }

    /// Attaches the per-item results of a bulk request.
    pub fn with_items(mut self, items: Vec<ItemResult>) -> Self {
        self.extra.get_or_insert_with(Box::default).items = Some(items);
        self
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = match serde_json::to_vec(&self) {
            Ok(body) => body,
            // Serialising plain strings and numbers cannot fail.
            Err(_) => b"{}".to_vec(),
        };
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        if let Some(secs) = self.retry_after_secs {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.challenge {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(API_KEY_CHALLENGE),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_problem_says_null_for_an_absent_city() {
        let body =
            serde_json::to_value(Problem::version_not_reached("paris", 4, None, 100)).unwrap();
        assert_eq!(body["status"], 409);
        assert!(body["current_version"].is_null());
        assert!(body.as_object().unwrap().contains_key("current_version"));
        assert_eq!(body["min_version"], 4);
        assert!(body.get("errors").is_none());
    }

    #[test]
    fn a_missing_key_gets_a_challenge() {
        let response = Problem::missing_api_key().into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert!(response.headers().contains_key(header::WWW_AUTHENTICATE));
        assert_eq!(response.headers()[header::CONTENT_TYPE], CONTENT_TYPE);
    }
}
