//! Population counts.

use std::fmt;

/// The largest population accepted: well above any city, low enough that a typo
/// with three extra zeros is caught.
pub const MAX_POPULATION: i64 = 10_000_000_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PopulationError {
    #[error("must be an integer, got {0}")]
    NotAnInteger(&'static str),
    #[error("must be between 0 and {MAX_POPULATION}, got {0}")]
    OutOfRange(String),
}

/// A population count, 0 ≤ p ≤ [`MAX_POPULATION`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Population(i64);

impl Population {
    pub fn new(value: i64) -> Result<Self, PopulationError> {
        if (0..=MAX_POPULATION).contains(&value) {
            Ok(Self(value))
        } else {
            Err(PopulationError::OutOfRange(value.to_string()))
        }
    }

    /// Accepts only a JSON integer: floats (even `1.0`), strings, booleans and null
    /// are refused, so a client's type confusion is reported, not guessed at.
    pub fn from_json(value: &serde_json::Value) -> Result<Self, PopulationError> {
        use serde_json::Value;
        match value {
            Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    Self::new(i)
                } else if n.is_u64() {
                    Err(PopulationError::OutOfRange(n.to_string()))
                } else {
                    Err(PopulationError::NotAnInteger("a number with a fraction"))
                }
            }
            Value::String(_) => Err(PopulationError::NotAnInteger("a string")),
            Value::Bool(_) => Err(PopulationError::NotAnInteger("a boolean")),
            Value::Null => Err(PopulationError::NotAnInteger("null")),
            Value::Array(_) => Err(PopulationError::NotAnInteger("an array")),
            Value::Object(_) => Err(PopulationError::NotAnInteger("an object")),
        }
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

impl fmt::Display for Population {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn accepts_integers_in_range() {
        assert_eq!(Population::from_json(&json!(0)).unwrap().get(), 0);
        assert_eq!(
            Population::from_json(&json!(MAX_POPULATION)).unwrap().get(),
            MAX_POPULATION
        );
    }

    #[test]
    fn refuses_everything_else() {
        for bad in [
            json!(-1),
            json!(MAX_POPULATION + 1),
            json!(u64::MAX),
            json!(1.0),
            json!(2.5),
            json!("12"),
            json!(true),
            json!(null),
            json!([1]),
            json!({"n": 1}),
        ] {
            assert!(Population::from_json(&bad).is_err(), "{bad} was accepted");
        }
    }
}
