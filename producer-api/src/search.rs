//! A listing of cities: its filters, its order, and the opaque cursor that continues
//! it on the next page.
//!
//! The cursor carries the filters and the order with the position (`search_after`
//! values), so the next page needs only `cursor`; a request that passes both a
//! cursor and different filters is refused rather than answered with a page of
//! another listing.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use citypop_schemas::{CityKey, Population};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// The order of a listing. Every order ends with the city key, which is unique, so
/// pages neither repeat nor skip a city.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
pub enum SortOrder {
    /// By name, ignoring case and Unicode form (the city key's order).
    #[default]
    #[serde(rename = "name")]
    Name,
    /// Smallest population first.
    #[serde(rename = "population")]
    Population,
    /// Largest population first.
    #[serde(rename = "-population")]
    PopulationDesc,
}

impl SortOrder {
    pub const ALL: [(&str, SortOrder); 3] = [
        ("name", SortOrder::Name),
        ("population", SortOrder::Population),
        ("-population", SortOrder::PopulationDesc),
    ];

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL
            .iter()
            .find(|(name, _)| *name == raw)
            .map(|(_, order)| *order)
    }

    /// Whether `values` are search_after values of this order, each one a value a
    /// city can have: the engine would refuse anything else, or answer a page of
    /// nothing, and a client could not tell why.
    fn fits(self, values: &[Value]) -> bool {
        match (self, values) {
            (Self::Name, [key]) => is_key(key),
            (Self::Population | Self::PopulationDesc, [population, key]) => {
                population
                    .as_i64()
                    .is_some_and(|p| Population::new(p).is_ok())
                    && is_key(key)
            }
            _ => false,
        }
    }
}

/// Whether `value` is a city key exactly as the index holds it.
fn is_key(value: &Value) -> bool {
    value.as_str().is_some_and(is_normalised_key)
}

/// Whether `text` is its own city key: normalised, and within the key's limits.
fn is_normalised_key(text: &str) -> bool {
    CityKey::parse(text).is_ok_and(|key| key.as_str() == text)
}

/// The longest cursor this API issues: a prefix and a position of at most
/// `MAX_KEY_BYTES` each, in JSON, in base64, with room to spare. Anything longer
/// was not issued here, and is refused before it is decoded.
pub const MAX_CURSOR_CHARS: usize = 4096;

/// What to list, and from where.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Search {
    /// A normalised key prefix.
    #[serde(rename = "p", default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(rename = "min", default, skip_serializing_if = "Option::is_none")]
    pub min_population: Option<i64>,
    #[serde(rename = "max", default, skip_serializing_if = "Option::is_none")]
    pub max_population: Option<i64>,
    #[serde(rename = "s")]
    pub sort: SortOrder,
    /// The sort values of the last city of the previous page.
    #[serde(rename = "a", default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Vec<Value>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("is not a cursor this API issued")]
pub struct BadCursor;

impl Search {
    /// The cursor that continues this listing after the city with sort values `after`.
    pub fn cursor_after(&self, after: Vec<Value>) -> String {
        let next = Self {
            after: Some(after),
            ..self.clone()
        };
        // A struct of strings and numbers always serialises.
        let json = serde_json::to_vec(&next).unwrap_or_default();
        URL_SAFE_NO_PAD.encode(json)
    }

    /// The listing a cursor continues.
    ///
    /// A cursor is opaque to clients but not trusted: every field is checked as the
    /// query parameters it stands for would be, so a crafted one is a 422 rather than
    /// an engine error.
    pub fn from_cursor(cursor: &str) -> Result<Self, BadCursor> {
        if cursor.len() > MAX_CURSOR_CHARS {
            return Err(BadCursor);
        }
        let json = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| BadCursor)?;
        let search: Self = serde_json::from_slice(&json).map_err(|_| BadCursor)?;
        let population_ok = |p: Option<i64>| p.is_none_or(|p| Population::new(p).is_ok());
        let valid = search.after.as_ref().is_some_and(|a| search.sort.fits(a))
            && search.prefix.as_deref().is_none_or(is_normalised_key)
            && population_ok(search.min_population)
            && population_ok(search.max_population)
            && match (search.min_population, search.max_population) {
                (Some(min), Some(max)) => min <= max,
                _ => true,
            };
        if valid { Ok(search) } else { Err(BadCursor) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_cursor_round_trips() {
        let search = Search {
            prefix: Some("s\u{e3}o".into()),
            min_population: Some(10),
            max_population: None,
            sort: SortOrder::PopulationDesc,
            after: None,
        };
        let cursor = search.cursor_after(vec![json!(12_325_232), json!("são paulo")]);
        assert!(
            cursor
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        let resumed = Search::from_cursor(&cursor).unwrap();
        assert_eq!(resumed.prefix, search.prefix);
        assert_eq!(resumed.sort, SortOrder::PopulationDesc);
        assert_eq!(
            resumed.after,
            Some(vec![json!(12_325_232), json!("são paulo")])
        );
    }

    #[test]
    fn foreign_cursors_are_refused() {
        let encode = |v: Value| URL_SAFE_NO_PAD.encode(v.to_string());
        for bad in [
            "not base64!".to_owned(),
            URL_SAFE_NO_PAD.encode("not json"),
            encode(json!({"s": "name"})),
            encode(json!({"s": "name", "a": [1]})),
            encode(json!({"s": "population", "a": ["x"]})),
            encode(json!({"s": "-name", "a": ["x"]})),
            encode(json!({"s": "name", "a": ["x"], "script": "boom"})),
        ] {
            assert_eq!(Search::from_cursor(&bad), Err(BadCursor), "{bad}");
        }
    }
}
