//! `GET /cities`: list and filter cities, a page at a time.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use citypop_schemas::{CityKey, Population};
use serde::Serialize;
use utoipa::{IntoParams, ToSchema};

use super::query::{Params, RawQuery};
use super::{AppState, CityView, index_problem};
use crate::problem::{FieldError, Problem};
use crate::search::{Search, SortOrder};

pub const DEFAULT_LIMIT: usize = 50;
/// The largest page: enough for any screen, small enough to answer quickly.
pub const MAX_LIMIT: usize = 1000;

/// The query string of `GET /cities`.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // documents the query string; parsing goes through `Params`
pub struct ListQuery {
    /// Only cities whose key starts with this. It is normalised like a name (NFC,
    /// trimmed, whitespace collapsed, lower-cased), so `SÃO` finds `São Paulo`.
    prefix: Option<String>,
    /// Only cities with at least this population.
    #[param(minimum = 0, maximum = 10_000_000_000_i64)]
    min_population: Option<i64>,
    /// Only cities with at most this population.
    #[param(minimum = 0, maximum = 10_000_000_000_i64)]
    max_population: Option<i64>,
    /// The order: `name` (the default), `population` or `-population`.
    #[param(value_type = Option<SortOrder>)]
    sort: Option<String>,
    /// Cities per page, 1 to 1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// `next_cursor` of the previous page. It carries the filters and the order, so
    /// the other parameters may be left out; given, they must match.
    cursor: Option<String>,
}

/// One page of cities.
#[derive(Debug, Serialize, ToSchema)]
pub struct CityList {
    pub items: Vec<CityView>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// The listing a query string asks for, and its page size.
fn parse(query: RawQuery) -> Result<(Search, usize), Problem> {
    let mut params = Params::new(
        query,
        &[
            "prefix",
            "min_population",
            "max_population",
            "sort",
            "limit",
            "cursor",
        ],
    )?;
    // An empty prefix (a form's blank field) is no prefix.
    let prefix =
        params
            .text("prefix")
            .filter(|p| !p.is_empty())
            .and_then(|raw| match CityKey::parse(&raw) {
                Ok(key) => Some(key.as_str().to_owned()),
                Err(e) => {
                    params.errors.push(FieldError::new("prefix", e));
                    None
                }
            });
    let population_range = "an integer from 0 to 10000000000";
    let in_range = |v: &i64| Population::new(*v).is_ok();
    let min_population = params.integer("min_population", population_range, in_range);
    let max_population = params.integer("max_population", population_range, in_range);
    let sort = params
        .text("sort")
        .and_then(|raw| match SortOrder::parse(&raw) {
            Some(order) => Some(order),
            None => {
                params.errors.push(FieldError::new(
                    "sort",
                    format!("must be name, population or -population, got {raw:?}"),
                ));
                None
            }
        });
    let limit = params
        .integer("limit", "an integer from 1 to 1000", |v: &usize| {
            (1..=MAX_LIMIT).contains(v)
        })
        .unwrap_or(DEFAULT_LIMIT);
    let cursor = params.text("cursor");

    let asked = Search {
        prefix,
        min_population,
        max_population,
        sort: sort.unwrap_or_default(),
        after: None,
    };
    let search = match cursor {
        None => asked,
        Some(cursor) => match Search::from_cursor(&cursor) {
            Err(e) => {
                params.errors.push(FieldError::new("cursor", e));
                asked
            }
            Ok(resumed) => {
                let differs = (asked.prefix.is_some() && asked.prefix != resumed.prefix)
                    || (min_population.is_some() && min_population != resumed.min_population)
                    || (max_population.is_some() && max_population != resumed.max_population)
                    || (sort.is_some() && sort != Some(resumed.sort));
                if differs {
                    params.errors.push(FieldError::new(
                        "cursor",
                        "belongs to a listing with other filters or order; leave them out or start without a cursor",
                    ));
                }
                resumed
            }
        },
    };
    if let (Some(min), Some(max)) = (search.min_population, search.max_population)
        && min > max
    {
        params.errors.push(FieldError::new(
            "min_population",
            format!("must not exceed max_population ({max})"),
        ));
    }
    params.finish()?;
    Ok((search, limit))
}

/// List cities.
///
/// Live cities only: deleted ones never appear. Listings read the index's searchable
/// view, which trails writes by up to a second (the index refresh interval); to read
/// one write back at once use `GET /city/{name}?min_version=`.
#[utoipa::path(
    get,
    path = "/cities",
    tag = "reads",
    params(ListQuery),
    responses(
        (status = 200, description = "One page; follow `next_cursor` until it is null to see every city exactly once", body = CityList),
        (status = 400, description = "Unreadable query string", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid parameters, each in `errors`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The index cannot be read", body = Problem, content_type = "application/problem+json",
            headers(("retry-after" = u64, description = "Seconds to wait before retrying"))),
    )
)]
pub async fn list_cities(
    State(state): State<Arc<AppState>>,
    query: RawQuery,
) -> Result<Json<CityList>, Problem> {
    let (search, limit) = parse(query)?;
    // One more than asked tells whether another page exists, so the last page says
    // so instead of leading to an empty one.
    let mut page = state
        .index
        .search(&search, limit + 1)
        .await
        .map_err(|e| index_problem(&e))?;
    let more = page.hits.len() > limit;
    page.hits.truncate(limit);
    let next_cursor = match page.hits.last() {
        Some((_, sort_values)) if more => Some(search.cursor_after(sort_values.clone())),
        _ => None,
    };
    Ok(Json(CityList {
        items: page
            .hits
            .into_iter()
            .map(|(doc, _)| CityView::from(doc))
            .collect(),
        next_cursor,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::Query;
    use axum::response::IntoResponse;
    use serde_json::json;

    fn parse_pairs(pairs: &[(&str, &str)]) -> Result<(Search, usize), Problem> {
        let pairs = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        parse(Ok(Query(pairs)))
    }

    #[test]
    fn defaults() {
        let (search, limit) = parse_pairs(&[]).unwrap();
        assert_eq!(search, Search::default());
        assert_eq!(limit, DEFAULT_LIMIT);
    }

    #[test]
    fn the_prefix_is_normalised_like_a_key() {
        let (search, _) = parse_pairs(&[("prefix", " SA\u{303}O  P")]).unwrap();
        assert_eq!(search.prefix.as_deref(), Some("s\u{e3}o p"));
        let (search, _) = parse_pairs(&[("prefix", "")]).unwrap();
        assert_eq!(search.prefix, None);
    }

    #[test]
    fn invalid_parameters_are_refused() {
        for bad in [
            &[("limit", "0")][..],
            &[("limit", "1001")],
            &[("limit", "ten")],
            &[("sort", "-name")],
            &[("min_population", "-1")],
            &[("max_population", "10000000001")],
            &[("min_population", "5"), ("max_population", "4")],
            &[("prefix", "a\u{1}")],
            &[("cursor", "nope")],
            &[("page", "2")],
        ] {
            let problem = parse_pairs(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad:?} was accepted"));
            assert_eq!(problem.into_response().status(), 422, "{bad:?}");
        }
    }

    #[test]
    fn a_cursor_carries_the_listing() {
        let first = Search {
            prefix: Some("new".into()),
            min_population: Some(1),
            max_population: None,
            sort: SortOrder::Population,
            after: None,
        };
        let cursor = first.cursor_after(vec![json!(5), json!("new york")]);
        let (resumed, limit) = parse_pairs(&[("cursor", &cursor), ("limit", "7")]).unwrap();
        assert_eq!(resumed.prefix.as_deref(), Some("new"));
        assert_eq!(resumed.sort, SortOrder::Population);
        assert_eq!(limit, 7);
        // Repeating the same filters is fine; changing them is not.
        assert!(
            parse_pairs(&[
                ("cursor", &cursor),
                ("prefix", "NEW"),
                ("sort", "population")
            ])
            .is_ok()
        );
        assert!(parse_pairs(&[("cursor", &cursor), ("sort", "name")]).is_err());
        assert!(parse_pairs(&[("cursor", &cursor), ("min_population", "2")]).is_err());
    }
}
