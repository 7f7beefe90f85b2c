//! The API keys writes must present, and the check against them.
//!
//! Keys never appear in logs, `Debug` output or `--help`: the configured list prints
//! as a count, and only SHA-256 digests are kept after start-up.

use std::fmt;
use std::path::Path;

use anyhow::Context;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

/// Keys as given in `CITYPOP_API_KEYS`: comma-separated, surrounding whitespace and
/// empty entries ignored.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ApiKeyList(Vec<String>);

impl ApiKeyList {
    /// Never fails: clap prints a refused value in its error message, and that value
    /// would be a key. Keys are checked in [`ApiKeys::load`] instead.
    pub fn parse(raw: &str) -> Result<Self, std::convert::Infallible> {
        Ok(Self(split_keys(raw.split(','))))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for ApiKeyList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKeyList({} redacted)", self.0.len())
    }
}

fn split_keys<'a>(parts: impl Iterator<Item = &'a str>) -> Vec<String> {
    parts
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The keys writes are checked against. Empty means writes are open.
pub struct ApiKeys {
    /// SHA-256 of each key: comparing digests of equal length keeps the comparison
    /// constant-time even in the key's length.
    digests: Vec<[u8; 32]>,
}

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKeys({} configured)", self.digests.len())
    }
}

impl ApiKeys {
    /// The keys of `CITYPOP_API_KEYS` and of `CITYPOP_API_KEYS_FILE` together (one key
    /// a line; blank lines and lines starting with `#` are skipped). A key file that
    /// holds no key is an error: whoever pointed at it meant to require keys.
    pub fn load(list: Option<&ApiKeyList>, file: Option<&Path>) -> anyhow::Result<Self> {
        let mut keys = list.map(|l| l.0.clone()).unwrap_or_default();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the api key file {}", path.display()))?;
            let from_file = split_keys(text.lines().filter(|l| !l.trim_start().starts_with('#')));
            anyhow::ensure!(
                !from_file.is_empty(),
                "the api key file {} holds no key",
                path.display()
            );
            keys.extend(from_file);
        }
        for (index, key) in keys.iter().enumerate() {
            // A key a client cannot send in a header could never match. The message
            // names the key's position, never the key.
            anyhow::ensure!(
                key.bytes().all(|b| b.is_ascii_graphic()),
                "api key {} of {} has characters other than visible ascii",
                index + 1,
                keys.len()
            );
        }
        Ok(Self {
            digests: keys.iter().map(|k| digest(k.as_bytes())).collect(),
        })
    }

    /// Whether writes need a key.
    pub fn required(&self) -> bool {
        !self.is_empty()
    }

    pub fn len(&self) -> usize {
        self.digests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// Whether `presented` is one of the keys. Every key is compared, and each
    /// comparison takes the same time, so timing reveals neither which key matched
    /// nor how much of one did.
    pub fn accepts(&self, presented: &[u8]) -> bool {
        let presented = digest(presented);
        let matched = self
            .digests
            .iter()
            .fold(Choice::from(0), |acc, key| acc | key.ct_eq(&presented));
        matched.into()
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_keys_are_split_and_trimmed() {
        let list = ApiKeyList::parse(" k1 ,k2,, ").unwrap();
        let keys = ApiKeys::load(Some(&list), None).unwrap();
        assert_eq!(keys.len(), 2);
        assert!(keys.accepts(b"k1"));
        assert!(keys.accepts(b"k2"));
        assert!(!keys.accepts(b"k3"));
        assert!(!keys.accepts(b""));
        assert!(!keys.accepts(b"k1,k2"));
    }

    #[test]
    fn no_keys_means_open() {
        let keys = ApiKeys::load(Some(&ApiKeyList::parse(" , ").unwrap()), None).unwrap();
        assert!(!keys.required());
        assert!(!ApiKeys::load(None, None).unwrap().required());
    }

    #[test]
    fn file_keys_join_inline_keys() {
        let dir = std::env::temp_dir().join(format!("citypop-keys-{}", uuid::Uuid::now_v7()));
        std::fs::write(&dir, "# rotated 2026-11\nfile-key-1\n\n  file-key-2  \n").unwrap();
        let keys = ApiKeys::load(Some(&ApiKeyList::parse("inline").unwrap()), Some(&dir)).unwrap();
        assert_eq!(keys.len(), 3);
        assert!(keys.accepts(b"file-key-2"));
        assert!(!keys.accepts(b"# rotated 2026-11"));

        std::fs::write(&dir, "# nothing here\n\n").unwrap();
        assert!(ApiKeys::load(None, Some(&dir)).is_err());
        std::fs::remove_file(&dir).unwrap();
        assert!(ApiKeys::load(None, Some(&dir)).is_err());
    }

    #[test]
    fn debug_output_never_shows_a_key() {
        let list = ApiKeyList::parse("super-secret-1,super-secret-2").unwrap();
        let keys = ApiKeys::load(Some(&list), None).unwrap();
        for shown in [format!("{list:?}"), format!("{keys:?}")] {
            assert!(!shown.contains("super-secret"), "{shown}");
            assert!(shown.contains('2'), "{shown}");
        }
    }

    #[test]
    fn unsendable_keys_are_refused_without_being_named() {
        let list = ApiKeyList::parse("good,bad key").unwrap();
        let error = ApiKeys::load(Some(&list), None).unwrap_err().to_string();
        assert!(!error.contains("bad key"), "{error}");
        assert!(error.contains("2 of 2"), "{error}");
    }
}
