//! `GET /city/{name}`, with read-your-writes: `?min_version=N&wait_ms=T` waits until
//! the index holds the city at version N or later.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use citypop_schemas::CityKey;
use citypop_schemas::document::CityDocument;
use headers::{ETag, HeaderMapExt, IfNoneMatch};
use tokio::time::Instant;
use utoipa::IntoParams;

use super::query::{Params, RawQuery};
use super::{AppState, CityView, index_problem};
use crate::Config;
use crate::city_index::CityIndex;
use crate::metrics::Metrics;
use crate::problem::Problem;
use crate::read_batcher::{BatchSettings, ReadBatcher};
use crate::read_cache::{CacheSettings, ReadCache};

/// The longest read-your-writes wait: long enough for the indexer's batching and a
/// retry or two, short enough that a waiting request never looks hung.
pub const MAX_WAIT_MS: u64 = 10_000;

/// Read-your-writes parameters.
#[derive(Debug, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReadQuery {
    /// Answer only once the indexed version is at least this: the `offset` a write
    /// returned. A delete's version counts too: once it is reached, the answer is 404.
    #[param(minimum = 0)]
    min_version: Option<i64>,
    /// How long to wait for `min_version`, in milliseconds (0 to 10000, default 0:
    /// answer at once). Needs `min_version`.
    #[param(minimum = 0, maximum = 10_000)]
    wait_ms: Option<u64>,
}

impl ReadQuery {
    fn parse(query: RawQuery) -> Result<Self, Problem> {
        let mut params = Params::new(query, &["min_version", "wait_ms"])?;
        let min_version =
            params.integer("min_version", "an integer of 0 or more", |v: &i64| *v >= 0);
        let wait_ms = params.integer("wait_ms", "an integer from 0 to 10000", |v: &u64| {
            *v <= MAX_WAIT_MS
        });
        if wait_ms.is_some() && min_version.is_none() && params.errors.is_empty() {
            params.errors.push(crate::problem::FieldError::new(
                "wait_ms",
                "waits for min_version, which is missing",
            ));
        }
        params.finish()?;
        Ok(Self {
            min_version,
            wait_ms,
        })
    }
}

/// Read a city.
///
/// The latest indexed state, straight from the index (a real-time read: no refresh
/// delay; concurrent reads may share one `_mget`). With `min_version`, it answers
/// only once the index holds that version or a later one, waiting up to `wait_ms`.
/// When the in-process read cache is on (`CITYPOP_READ_CACHE_TTL`), a read without
/// `min_version` may be up to that TTL old.
///
/// `ETag` is the city's version, as a strong tag (`"42"`); `If-None-Match` with
/// that tag (or `*`) answers `304` with no body. `Cache-Control` is
/// `CITYPOP_CACHE_CONTROL` (default `no-cache`: revalidate each time).
#[utoipa::path(
    get,
    path = "/city/{name}",
    tag = "reads",
    params(
        ("name" = String, Path, description = "The city's name in any spelling: case, Unicode normalisation form and surrounding whitespace do not matter"),
        ReadQuery,
        ("if-none-match" = Option<String>, Header, description = "Entity tags (`\"42\"`, a comma-separated list, or `*`): `304` when one names the city's version"),
    ),
    responses(
        (status = 200, description = "The city (at `min_version` or later, when given)", body = CityView,
            headers(
                ("etag" = String, description = "The city's version as a strong entity tag, such as `\"42\"`"),
                ("cache-control" = String, description = "CITYPOP_CACHE_CONTROL, `no-cache` by default"),
            )),
        (status = 304, description = "`If-None-Match` names the city's version: no body",
            headers(
                ("etag" = String, description = "The city's version as a strong entity tag"),
                ("cache-control" = String, description = "CITYPOP_CACHE_CONTROL"),
            )),
        (status = 400, description = "Unreadable path or query string", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such city, or it was deleted", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`wait_ms` passed before the index reached `min_version`; `current_version` is what it holds (null when the city is absent)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The name cannot be a city's, or a query parameter is invalid", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The index cannot be read", body = Problem, content_type = "application/problem+json",
            headers(("retry-after" = u64, description = "Seconds to wait before retrying"))),
    )
)]
pub async fn get_city(
    State(state): State<Arc<AppState>>,
    name: Result<Path<String>, PathRejection>,
    query: RawQuery,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let Path(name) = name.map_err(|e| Problem::bad_request(e.body_text()))?;
    let key = CityKey::parse(&name).map_err(|e| Problem::invalid("name", e))?;
    let query = ReadQuery::parse(query)?;
    let reads = &state.reads;
    let Some(min_version) = query.min_version else {
        if let Some(cached) = reads.cache.get(&key).await {
            return reads.answer(&key, Some(&cached), &headers);
        }
        let document = reads
            .batcher
            .get(&key)
            .await
            .map_err(|e| index_problem(&e))?;
        if let Some(document) = &document {
            reads.cache.keep(&key, document).await;
        }
        return reads.answer(&key, document.as_ref(), &headers);
    };
    let wait = Duration::from_millis(query.wait_ms.unwrap_or(0));
    let document = read_at_least(&state, &key, min_version, wait).await?;
    reads.answer(&key, document.as_ref(), &headers)
}

/// The city once the index holds `min_version` or later, waiting up to `wait`; a
/// 409 past it.
async fn read_at_least(
    state: &AppState,
    key: &CityKey,
    min_version: i64,
    wait: Duration,
) -> Result<Option<CityDocument>, Problem> {
    let started = Instant::now();
    let deadline = started + wait;
    let mut seen = state.version_waits.watch(key, &state.index, &state.metrics);
    loop {
        let last = seen.borrow_and_update().clone();
        if let Some(read) = last {
            let document = read.map_err(|e| index_problem(&e))?;
            if document
                .as_ref()
                .is_some_and(|doc| doc.version >= min_version)
            {
                return Ok(document);
            }
            if Instant::now() >= deadline {
                let current = document.filter(|doc| !doc.deleted).map(|doc| doc.version);
                let waited = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                return Err(Problem::version_not_reached(
                    key.as_str(),
                    min_version,
                    current,
                    waited,
                ));
            }
        }
        // The loop's next read, or the deadline: whichever comes first. Without a
        // first read yet, the wait goes on past the deadline until it comes (the
        // engine read timeout bounds it), so there is something to answer with.
        let read_once = seen.borrow().is_some();
        let next = seen.changed();
        let changed = if read_once {
            tokio::time::timeout_at(deadline, next)
                .await
                .unwrap_or(Ok(()))
        } else {
            next.await
        };
        if changed.is_err() {
            return Err(Problem::internal("the read-your-writes poll loop ended"));
        }
    }
}

/// The read path's settings, from the service's.
#[derive(Debug, Clone)]
pub struct ReadSettings {
    pub batch: BatchSettings,
    pub cache: CacheSettings,
    pub cache_control: HeaderValue,
}

impl Default for ReadSettings {
    /// No batching, no cache, clients revalidate.
    fn default() -> Self {
        Self {
            batch: BatchSettings {
                window: Duration::ZERO,
                max_ids: 1,
            },
            cache: CacheSettings {
                ttl: Duration::ZERO,
                max_entries: 1,
            },
            cache_control: HeaderValue::from_static("no-cache"),
        }
    }
}

impl From<&Config> for ReadSettings {
    fn from(config: &Config) -> Self {
        Self {
            batch: BatchSettings {
                window: config.read_batch_window,
                max_ids: config.read_batch_max_ids as usize,
            },
            cache: CacheSettings {
                ttl: config.read_cache_ttl,
                max_entries: config.read_cache_max_entries,
            },
            cache_control: config.cache_control.clone(),
        }
    }
}

/// How reads of one city without `min_version` are served: from the cache when
/// it holds the city, else through a batch; and how they are answered.
pub struct ReadPath {
    pub batcher: ReadBatcher<CityIndex>,
    pub cache: ReadCache,
    cache_control: HeaderValue,
}

impl ReadPath {
    pub fn new(index: Arc<CityIndex>, settings: &ReadSettings, metrics: Arc<Metrics>) -> Self {
        Self {
            batcher: ReadBatcher::new(index, settings.batch, metrics.clone()),
            cache: ReadCache::new(settings.cache, metrics),
            cache_control: settings.cache_control.clone(),
        }
    }

    /// The answer to a read once the wanted version (if any) is reached: the city
    /// with its version as a strong `ETag`, or `304` with no body when the client's
    /// `If-None-Match` names that version (or is `*`).
    fn answer(
        &self,
        key: &CityKey,
        document: Option<&CityDocument>,
        headers: &HeaderMap,
    ) -> Result<Response, Problem> {
        let Some(doc) = document.filter(|doc| !doc.deleted) else {
            return Err(Problem::not_found(format!("no city with key {key:?}")));
        };
        let etag = entity_tag(doc.version);
        let unchanged = headers
            .typed_get::<IfNoneMatch>()
            .is_some_and(|wanted| !wanted.precondition_passes(&etag));
        let mut response = if unchanged {
            StatusCode::NOT_MODIFIED.into_response()
        } else {
            Json(CityView::from(doc.clone())).into_response()
        };
        response.headers_mut().typed_insert(etag);
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, self.cache_control.clone());
        Ok(response)
    }
}

/// A document's version as a strong entity tag: `"<version>"`. The version is the
/// Kafka offset of the document's last event, so it changes with every change.
fn entity_tag(version: i64) -> ETag {
    format!("\"{version}\"")
        .parse()
        .expect("a quoted integer is an entity tag")
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::Query;
    use axum::response::IntoResponse;

    fn parse(pairs: &[(&str, &str)]) -> Result<ReadQuery, Problem> {
        let pairs = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        ReadQuery::parse(Ok(Query(pairs)))
    }

    #[test]
    fn read_your_writes_parameters_are_checked() {
        let query = parse(&[("min_version", "7"), ("wait_ms", "10000")]).unwrap();
        assert_eq!((query.min_version, query.wait_ms), (Some(7), Some(10_000)));
        assert!(parse(&[]).unwrap().min_version.is_none());
        for bad in [
            &[("min_version", "-1")][..],
            &[("min_version", "1.5")],
            &[("min_version", "+3")],
            &[("min_version", "")],
            &[("min_version", "1"), ("wait_ms", "10001")],
            &[("min_version", "1"), ("wait_ms", "-5")],
            &[("wait_ms", "100")],
            &[("min_version", "1"), ("min_version", "2")],
            &[("minversion", "1")],
        ] {
            let problem = parse(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad:?} was accepted"));
            assert_eq!(problem.into_response().status(), 422, "{bad:?}");
        }
    }
}
