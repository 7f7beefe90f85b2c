//! Turning a request body into JSON, with a precise problem for each way it fails.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};

use crate::problem::Problem;

/// The answers of [`parse`] that do not depend on the route's body limit, for the
/// OpenAPI document.
#[derive(utoipa::IntoResponses)]
// Never built: the answers themselves are `Problem`s; this only documents them.
#[allow(dead_code)]
pub enum JsonRefusals {
    #[response(
        status = 400,
        description = "Malformed JSON",
        content_type = "application/problem+json"
    )]
    Malformed(Problem),
    #[response(
        status = 415,
        description = "Content type is not JSON",
        content_type = "application/problem+json"
    )]
    NotJson(Problem),
}

/// The body as a JSON value: 415 for a non-JSON content type, 413 past the body
/// limit, 400 for malformed JSON.
pub fn parse(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<serde_json::Value, Problem> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !is_json(content_type) {
        return Err(Problem::unsupported_media_type(format!(
            "expected content-type application/json, got {:?}",
            content_type
        )));
    }
    let body = body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => Problem::payload_too_large(rejection.body_text()),
        _ => Problem::bad_request(rejection.body_text()),
    })?;
    serde_json::from_slice(&body).map_err(|e| Problem::malformed_json(e.to_string()))
}

fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
        || (essence.len() > 5
            && essence[..essence.len() - 5].contains('/')
            && essence.to_ascii_lowercase().ends_with("+json"))
}

#[cfg(test)]
mod tests {
    use super::is_json;

    #[test]
    fn json_content_types() {
        assert!(is_json("application/json"));
        assert!(is_json("Application/JSON; charset=utf-8"));
        assert!(is_json("application/merge-patch+json"));
        assert!(!is_json("text/plain"));
        assert!(!is_json(""));
        assert!(!is_json("+json"));
    }
}
