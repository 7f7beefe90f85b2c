//! City names and the city key derived from them.

use std::borrow::Cow;
use std::fmt;

use unicode_normalization::{IsNormalized, UnicodeNormalization, is_nfc_quick};

/// `text` in NFC, borrowed when it already is. Names are checked on every event the
/// indexer reads, and almost all are ASCII or already NFC, so the quick check saves
/// the full decomposition and recomposition.
fn nfc(text: &str) -> Cow<'_, str> {
    if text.is_ascii() || is_nfc_quick(text.chars()) == IsNormalized::Yes {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(text.nfc().collect())
    }
}

/// The longest display name accepted, in Unicode scalar values, after normalisation.
pub const MAX_NAME_CHARS: usize = 200;

/// The longest key accepted, in bytes of UTF-8: the key is the search engine's
/// document id, which the engine caps at 512 bytes.
pub const MAX_KEY_BYTES: usize = 512;

/// Why a string is not a city name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CityNameError {
    #[error("must not be empty or only whitespace")]
    Empty,
    #[error("must be at most {MAX_NAME_CHARS} characters, got {0}")]
    TooLong(usize),
    #[error("must not contain control characters")]
    ControlCharacter,
    #[error("its key must be at most {MAX_KEY_BYTES} bytes of UTF-8, got {0}")]
    KeyTooLong(usize),
}

/// A city's display name as submitted: NFC-normalised and trimmed, otherwise untouched.
///
/// A valid name always has a valid [`CityKey`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CityName {
    name: String,
    /// Derived once at parse: a write needs it for its own checks, the Kafka key
    /// and the answer, and deriving it allocates several times.
    key: CityKey,
}

impl CityName {
    pub fn parse(raw: &str) -> Result<Self, CityNameError> {
        // Control characters are refused anywhere, even where trimming would drop
        // them: a name with a newline in it is a client bug worth reporting.
        if raw.chars().any(char::is_control) {
            return Err(CityNameError::ControlCharacter);
        }
        let name = nfc(raw).trim().to_owned();
        if name.is_empty() {
            return Err(CityNameError::Empty);
        }
        let chars = name.chars().count();
        if chars > MAX_NAME_CHARS {
            return Err(CityNameError::TooLong(chars));
        }
        let key = CityKey::derive(&name);
        if key.len() > MAX_KEY_BYTES {
            return Err(CityNameError::KeyTooLong(key.len()));
        }
        Ok(Self {
            name,
            key: CityKey(key),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.name
    }

    pub fn key(&self) -> CityKey {
        self.key.clone()
    }

    /// The key, borrowed.
    pub fn as_key(&self) -> &CityKey {
        &self.key
    }
}

impl fmt::Display for CityName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// The identity of a city: the Kafka message key and the search document id.
///
/// `"  PARIS "`, `"paris"` and `"Paris"` are one city. The key is the name
/// NFC-normalised, trimmed, inner whitespace collapsed to one space, lower-cased.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CityKey(String);

impl CityKey {
    /// The key of a raw name, with the same rules as [`CityName::parse`].
    pub fn parse(raw: &str) -> Result<Self, CityNameError> {
        CityName::parse(raw).map(|name| name.key)
    }

    /// The key as a string, without a copy.
    pub fn into_string(self) -> String {
        self.0
    }

    /// The key of a name that is already NFC and trimmed (a [`CityName`]).
    fn derive(name: &str) -> String {
        let mut collapsed = String::with_capacity(name.len());
        for word in name.split_whitespace() {
            if !collapsed.is_empty() {
                collapsed.push(' ');
            }
            collapsed.push_str(word);
        }
        // Lower-casing can leave a string that is no longer in NFC (a capital letter
        // with a dot above lowers to a letter plus a combining mark), so normalise
        // again to keep the key a fixed point.
        let lower = collapsed.to_lowercase();
        match nfc(&lower) {
            Cow::Borrowed(_) => lower,
            Cow::Owned(normalised) => normalised,
        }
    }

    /// Whether `key` is the key of the raw name `raw`: the same answer as comparing
    /// [`CityKey::parse`] of `raw` with `key`, without allocating when `raw` is
    /// ASCII. The indexer checks every event's city against its message key, and
    /// parsing allocated three strings per event for a key it already had.
    pub fn matches(raw: &str, key: &str) -> bool {
        if !raw.is_ascii() {
            return Self::parse(raw).is_ok_and(|parsed| parsed.0 == key);
        }
        // ASCII is already NFC, lower-cases byte by byte, and with control
        // characters refused its only whitespace is the space; a byte is a character,
        // so the name's limit is its length, and its key (no longer) fits the key's.
        if raw.bytes().any(|b| b.is_ascii_control()) {
            return false;
        }
        let name = raw.trim_matches(' ');
        if name.is_empty() || name.len() > MAX_NAME_CHARS {
            return false;
        }
        let mut expected = key.bytes();
        for (i, word) in name.split(' ').filter(|w| !w.is_empty()).enumerate() {
            if i > 0 && expected.next() != Some(b' ') {
                return false;
            }
            if !word
                .bytes()
                .all(|b| expected.next() == Some(b.to_ascii_lowercase()))
            {
                return false;
            }
        }
        expected.next().is_none()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for CityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn spellings_of_one_city_share_a_key() {
        let key = CityKey::parse("paris").unwrap();
        for raw in ["  PARIS ", "Paris", "pArIs"] {
            assert_eq!(CityKey::parse(raw).unwrap(), key, "{raw:?}");
        }
    }

    #[test]
    fn composed_and_decomposed_forms_share_a_key() {
        let composed = "S\u{e3}o Paulo";
        let decomposed = "Sa\u{303}o Paulo";
        assert_eq!(
            CityKey::parse(composed).unwrap(),
            CityKey::parse(decomposed).unwrap()
        );
        assert_eq!(CityName::parse(decomposed).unwrap().as_str(), composed);
        assert_eq!(
            CityKey::parse("ZÜRICH").unwrap(),
            CityKey::parse("zürich").unwrap()
        );
    }

    #[test]
    fn dotted_capital_i_lowers_to_i_with_combining_dot() {
        assert_eq!(
            CityKey::parse("İstanbul").unwrap().as_str(),
            "i\u{307}stanbul"
        );
    }

    #[test]
    fn inner_whitespace_collapses_in_the_key_but_not_the_name() {
        let name = CityName::parse(" New   York ").unwrap();
        assert_eq!(name.as_str(), "New   York");
        assert_eq!(name.key().as_str(), "new york");
    }

    #[test]
    fn limits_are_enforced() {
        assert_eq!(CityName::parse("   "), Err(CityNameError::Empty));
        assert_eq!(CityName::parse(""), Err(CityNameError::Empty));
        assert_eq!(
            CityName::parse("a\u{7}b"),
            Err(CityNameError::ControlCharacter)
        );
        assert_eq!(
            CityName::parse("a\nb"),
            Err(CityNameError::ControlCharacter)
        );
        assert!(CityName::parse(&"a".repeat(MAX_NAME_CHARS)).is_ok());
        assert_eq!(
            CityName::parse(&"a".repeat(MAX_NAME_CHARS + 1)),
            Err(CityNameError::TooLong(MAX_NAME_CHARS + 1))
        );
        // 200 four-byte characters make an 800-byte key.
        assert_eq!(
            CityName::parse(&"𝔸".repeat(MAX_NAME_CHARS)),
            Err(CityNameError::KeyTooLong(800))
        );
    }

    proptest! {
        #[test]
        fn the_quick_path_agrees_with_full_normalisation(raw in "\\PC{0,40}") {
            prop_assert_eq!(nfc(&raw).into_owned(), raw.nfc().collect::<String>());
        }

        #[test]
        fn key_is_idempotent(raw in "\\PC{1,60}") {
            if let Ok(key) = CityKey::parse(&raw) {
                prop_assert_eq!(CityKey::parse(key.as_str()).unwrap(), key.clone());
            }
        }

        #[test]
        fn key_ignores_case_and_surrounding_whitespace(
            raw in "[a-zA-Zà-ÿ]{1,20}( {1,3}[a-zA-Zà-ÿ]{1,20}){0,3}",
            pad_left in "[ \u{a0}\u{2003}]{0,3}",
            pad_right in "[ \u{a0}\u{2003}]{0,3}",
        ) {
            let key = CityKey::parse(&raw).unwrap();
            let padded = format!("{pad_left}{}{pad_right}", raw.to_uppercase());
            prop_assert_eq!(CityKey::parse(&padded).unwrap(), key.clone());
            let spaced = raw.replace(' ', "  ");
            prop_assert_eq!(CityKey::parse(&spaced).unwrap(), key);
        }

        #[test]
        fn matching_a_key_agrees_with_parsing(
            raw in prop_oneof![
                "[ -~]{0,30}",
                "[ A-Za-z\t\n]{0,30}",
                "[a-z ]{195,205}",
                "\\PC{0,30}",
                "[ a-zA-Z\u{a0}\u{130}\u{e3}\u{303}]{0,20}",
            ],
            other in "[ -~]{0,10}",
        ) {
            let parsed = CityKey::parse(&raw);
            let mut candidates = vec![
                raw.clone(),
                raw.to_lowercase(),
                raw.trim().to_lowercase(),
                other,
                String::new(),
            ];
            if let Ok(key) = &parsed {
                candidates.push(key.as_str().to_owned());
                candidates.push(format!("{} ", key.as_str()));
                let mut shorter = key.as_str().to_owned();
                shorter.pop();
                candidates.push(shorter);
            }
            for candidate in candidates {
                prop_assert_eq!(
                    CityKey::matches(&raw, &candidate),
                    parsed.as_ref().is_ok_and(|key| key.as_str() == candidate),
                    "{:?} against {:?}", raw, candidate
                );
            }
        }

        #[test]
        fn valid_names_have_valid_keys(raw in "\\PC{0,80}") {
            if let Ok(name) = CityName::parse(&raw) {
                let key = name.key();
                prop_assert!(!key.is_empty());
                prop_assert!(key.len() <= MAX_KEY_BYTES);
                prop_assert!(!key.as_str().starts_with(' ') && !key.as_str().ends_with(' '));
            }
        }
    }
}
