mod city;
mod health;
mod json_body;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use tower_http::trace::TraceLayer;

use crate::city_index::CityIndex;
use crate::publisher::Publisher;

/// The largest single-update body accepted: a name of 200 characters fits many
/// times over; anything larger is not a city update.
pub const MAX_UPDATE_BODY_BYTES: usize = 64 * 1024;

pub struct AppState {
    pub publisher: Publisher,
    pub index: CityIndex,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/city", post(city::upsert))
        .route("/city/{name}", get(city::get))
        .route("/livez", get(health::livez))
        .route("/readyz", get(health::readyz))
        .layer(DefaultBodyLimit::max(MAX_UPDATE_BODY_BYTES))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
