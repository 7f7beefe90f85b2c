//! The rules a name must meet to be written through the API, on top of
//! [`CityName`]'s: the name must be readable back by URL, and must not look like
//! another city's.
//!
//! They live here, at the edge, rather than in `CityName`: the indexer and replay
//! parse names of events already in Kafka, which must stay readable forever, so the
//! schema's rules can never be tightened. Reads and deletes take any valid name, so a
//! city written before these rules can still be read and removed.

use citypop_schemas::CityName;
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

/// A name that may be written: a valid [`CityName`] that also meets the API's rules.
pub fn parse(raw: &str) -> Result<CityName, String> {
    let name = CityName::parse(raw).map_err(|e| e.to_string())?;
    // Invisible characters make look-alike cities: `par\u{200b}is` would be a city
    // distinct from `paris`, and a bidi override can make a name read backwards.
    if let Some(c) = name.as_str().chars().find(|c| invisible(*c)) {
        return Err(format!(
            "must not contain invisible format characters or line separators, got U+{:04X}",
            u32::from(c)
        ));
    }
    // Every URL parser resolves `.` and `..` path segments away, so
    // `/city/..` can never reach the city: refused rather than written unreadable.
    if matches!(name.as_key().as_str(), "." | "..") {
        return Err("must not be `.` or `..`, which no URL can name".to_owned());
    }
    Ok(name)
}

/// Unicode format characters (category Cf: zero-width space and joiners, bidi
/// marks and overrides, soft hyphen, byte order mark) and the line and paragraph
/// separators.
fn invisible(c: char) -> bool {
    matches!(
        c.general_category(),
        GeneralCategory::Format
            | GeneralCategory::LineSeparator
            | GeneralCategory::ParagraphSeparator
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn look_alikes_are_refused() {
        for raw in [
            "par\u{200b}is",
            "\u{202e}sirap",
            "pa\u{2066}ris\u{2069}",
            "par\u{ad}is",
            "\u{feff}paris",
            "par\u{2028}is",
            "par\u{2029}is",
            "ab\u{e0041}",
        ] {
            assert!(parse(raw).is_err(), "{raw:?} was accepted");
        }
    }

    #[test]
    fn dot_segments_are_refused_and_other_dots_kept() {
        for raw in [".", "..", " .. ", "\u{3000}.\u{3000}"] {
            assert!(parse(raw).is_err(), "{raw:?} was accepted");
        }
        for raw in ["...", ". .", "St. Gallen", ".a", "a/.."] {
            assert!(parse(raw).is_ok(), "{raw:?} was refused");
        }
    }

    #[test]
    fn ordinary_names_pass() {
        for raw in [
            "Paris",
            "São Paulo",
            "القاهرة",
            "תל אביב",
            "東京",
            "😀 town",
            "Straße",
        ] {
            assert_eq!(parse(raw).unwrap().as_str(), raw);
        }
    }
}
