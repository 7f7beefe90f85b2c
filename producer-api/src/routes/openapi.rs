//! `GET /openapi.json`, the parts of the document no route declares (its title, tags
//! and the API key scheme), and `GET /docs`, the document as a page.

use std::sync::Arc;

use axum::Extension;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::OpenApi;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa_swagger_ui::SwaggerUi;

use super::api_key;
use super::constraints::Reader;

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "citypop producer-api",
        description = "Writes city populations to Kafka (202 once acknowledged) and reads them from the search index. Errors are `application/problem+json` (RFC 9457).",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    tags(
        (name = "writes", description = "Upserts and deletes, published to Kafka; need `X-API-Key` when keys are configured"),
        (name = "reads", description = "Straight from the search index; always open"),
        (name = "operations", description = "Probes, health, metrics and this document"),
    ),
    // Types that appear only through `value_type`, which does not register them.
    components(schemas(crate::search::SortOrder)),
    modifiers(&ApiKeyScheme),
)]
struct Base;

struct ApiKeyScheme;

impl utoipa::Modify for ApiKeyScheme {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                api_key::HEADER,
                "One of the keys of CITYPOP_API_KEYS or CITYPOP_API_KEYS_FILE",
            ))),
        );
    }
}

/// The document before the routes add their paths.
pub fn base() -> OpenApi {
    <Base as utoipa::OpenApi>::openapi()
}

/// The finished document, serialised once.
#[derive(Clone)]
pub struct Document(Arc<String>);

impl Document {
    pub fn new(openapi: &OpenApi, reader: Reader) -> Self {
        // The document is built from types that always serialise.
        let mut document = serde_json::to_value(openapi).unwrap_or_default();
        super::constraints::state(&mut document, reader);
        Self(Arc::new(
            serde_json::to_string_pretty(&document).unwrap_or_default(),
        ))
    }
}

/// This API's OpenAPI 3.1 document, generated from the code.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI document", body = Object, content_type = "application/json")),
)]
pub async fn openapi_json(Extension(document): Extension<Document>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        document.0.as_str().to_owned(),
    )
        .into_response()
}

/// `GET /docs`: Swagger UI. Its assets are compiled into the binary (the crate's
/// `vendored` feature), so the page works where no CDN can be reached. It reads
/// `/docs/openapi.json`: the document clients get, except for the name patterns, which
/// leave out the characters JavaScript cannot name (see [`Reader::Browser`]); without
/// that, the page refused any name holding a digit before sending it.
pub fn docs<S>(openapi: &OpenApi) -> axum::Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let document = Document::new(openapi, Reader::Browser);
    let page: axum::Router<S> = SwaggerUi::new("/docs")
        .config(utoipa_swagger_ui::Config::from(BROWSER_DOCUMENT))
        .into();
    page.route(
        BROWSER_DOCUMENT,
        axum::routing::get(openapi_json).layer(Extension(document)),
    )
}

/// Where the page reads its copy of the document.
const BROWSER_DOCUMENT: &str = "/docs/openapi.json";
