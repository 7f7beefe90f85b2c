//! The `X-API-Key` check every write route starts with.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use super::AppState;
use crate::api_keys::Refusal;
use crate::problem::Problem;

pub const HEADER: &str = "x-api-key";

/// The answers of [`WriteAccess`], for the OpenAPI document of every write route.
#[derive(utoipa::IntoResponses)]
// Never built: the answers themselves are `Problem`s; this only documents them.
#[allow(dead_code)]
pub enum KeyRefusals {
    #[response(
        status = 401,
        description = "Keys are configured and `X-API-Key` is missing",
        content_type = "application/problem+json"
    )]
    Missing(Problem),
    #[response(
        status = 403,
        description = "`X-API-Key` is not a configured key",
        content_type = "application/problem+json"
    )]
    Wrong(Problem),
}

/// Proof that the request may write: it carries a configured key, or no keys are
/// configured. As an extractor it runs before the body is read, so a client without
/// a key learns so before uploading a large body.
pub struct WriteAccess;

impl FromRequestParts<Arc<AppState>> for WriteAccess {
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let keys = state.api_keys.current();
        if !keys.required() {
            return Ok(Self);
        }
        let refused = |refusal: Refusal| {
            state.metrics.api_key_refused(refusal.reason());
            state.api_keys.refused(refusal);
        };
        // An empty header is as good as none: 401, which tells the client what to add.
        let Some(presented) = parts.headers.get(HEADER).filter(|v| !v.is_empty()) else {
            refused(Refusal::Missing);
            return Err(Problem::missing_api_key());
        };
        if keys.accepts(presented.as_bytes()) {
            Ok(Self)
        } else {
            refused(Refusal::Wrong);
            Err(Problem::wrong_api_key())
        }
    }
}
