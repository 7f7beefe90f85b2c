//! `GET /city/{name}`, with read-your-writes: `?min_version=N&wait_ms=T` waits until
//! the index holds the city at version N or later.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use citypop_schemas::CityKey;
use citypop_schemas::document::CityDocument;
use tokio::time::Instant;
use utoipa::IntoParams;

use super::query::{Params, RawQuery};
use super::{AppState, CityView, index_problem};
use crate::problem::Problem;

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
/// The latest indexed state, straight from the index (a real-time get: no refresh
/// delay). With `min_version`, it answers only once the index holds that version or
/// a later one, waiting up to `wait_ms`.
#[utoipa::path(
    get,
    path = "/city/{name}",
    tag = "reads",
    params(
        ("name" = String, Path, description = "The city's name in any spelling: case, Unicode normalisation form and surrounding whitespace do not matter"),
        ReadQuery,
    ),
    responses(
        (status = 200, description = "The city (at `min_version` or later, when given)", body = CityView),
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
) -> Result<Json<CityView>, Problem> {
    let Path(name) = name.map_err(|e| Problem::bad_request(e.body_text()))?;
    let key = CityKey::parse(&name).map_err(|e| Problem::invalid("name", e))?;
    let query = ReadQuery::parse(query)?;
    let started = Instant::now();
    let Some(min_version) = query.min_version else {
        let document = state.index.get(&key).await.map_err(|e| index_problem(&e))?;
        return answer(&key, document);
    };
    let deadline = started + Duration::from_millis(query.wait_ms.unwrap_or(0));
    let mut seen = state
        .version_waits
        .watch(&key, &state.index, &state.metrics);
    loop {
        let last = seen.borrow_and_update().clone();
        if let Some(read) = last {
            let document = read.map_err(|e| index_problem(&e))?;
            if document
                .as_ref()
                .is_some_and(|doc| doc.version >= min_version)
            {
                return answer(&key, document);
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

/// The answer to a read once the wanted version (if any) is reached.
fn answer(key: &CityKey, document: Option<CityDocument>) -> Result<Json<CityView>, Problem> {
    match document.filter(|doc| !doc.deleted) {
        Some(doc) => Ok(Json(CityView::from(doc))),
        None => Err(Problem::not_found(format!("no city with key {key:?}"))),
    }
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
