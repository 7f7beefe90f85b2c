//! Query strings, read strictly: an unknown or repeated parameter is a 422 that
//! names it, because a typo (`min_pop=`) silently ignored returns the wrong answer.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::str::FromStr;

use axum::extract::Query;
use axum::extract::rejection::QueryRejection;

use crate::problem::{FieldError, Problem};

/// The parameters of one request, taken one by one; every problem is collected so
/// the client sees all of them at once.
pub struct Params {
    values: HashMap<String, String>,
    pub errors: Vec<FieldError>,
}

/// The query string as the extractor gives it.
pub type RawQuery = Result<Query<Vec<(String, String)>>, QueryRejection>;

impl Params {
    pub fn new(query: RawQuery, known: &[&str]) -> Result<Self, Problem> {
        let Query(pairs) =
            query.map_err(|rejection| Problem::bad_request(rejection.body_text()))?;
        let mut values = HashMap::new();
        let mut errors = Vec::new();
        for (name, value) in pairs {
            if !known.contains(&name.as_str()) {
                errors.push(FieldError::new(
                    name,
                    format!("unknown query parameter; known are {}", known.join(", ")),
                ));
            } else {
                match values.entry(name) {
                    Entry::Occupied(entry) => {
                        errors.push(FieldError::new(entry.key(), "given more than once"));
                    }
                    Entry::Vacant(entry) => {
                        entry.insert(value);
                    }
                }
            }
        }
        Ok(Self { values, errors })
    }

    pub fn text(&mut self, name: &str) -> Option<String> {
        self.values.remove(name)
    }

    /// An integer parameter that `check` accepts; `expected` says what it must be.
    pub fn integer<T: FromStr>(
        &mut self,
        name: &str,
        expected: &str,
        check: impl Fn(&T) -> bool,
    ) -> Option<T> {
        let raw = self.values.remove(name)?;
        // `str::parse` takes a leading `+`; a plain run of digits (and a minus) is the
        // integer syntax everyone expects.
        let plain = !raw.is_empty()
            && raw
                .strip_prefix('-')
                .unwrap_or(&raw)
                .bytes()
                .all(|b| b.is_ascii_digit());
        match raw.parse::<T>() {
            Ok(value) if plain && check(&value) => Some(value),
            _ => {
                self.errors.push(FieldError::new(
                    name,
                    format!("must be {expected}, got {raw:?}"),
                ));
                None
            }
        }
    }

    /// The collected problems as a 422, if any.
    pub fn finish(self) -> Result<(), Problem> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(Problem::validation(self.errors))
        }
    }
}
