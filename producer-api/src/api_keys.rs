//! The API keys writes must present, and the check against them.
//!
//! Keys never appear in logs, `Debug` output or `--help`: the configured list prints
//! as a count, and only SHA-256 digests are kept after start-up.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

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

/// How often refused writes are reported in the log at most: a client guessing keys
/// must not be able to flood the log, one line per attempt.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// The keys in force, re-read from the key file when it changes, so a rotated
/// Secret takes effect without a restart.
pub struct WriteKeys {
    current: RwLock<Arc<ApiKeys>>,
    list: Option<ApiKeyList>,
    file: Option<PathBuf>,
    refusals: Mutex<Refusals>,
}

/// Refusals not yet reported in the log.
struct Refusals {
    missing: u64,
    wrong: u64,
    last_report: Option<Instant>,
}

/// Why a write was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Missing,
    Wrong,
}

impl Refusal {
    /// The `reason` label of `citypop_api_key_refusals_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Wrong => "wrong",
        }
    }
}

impl WriteKeys {
    pub fn load(list: Option<&ApiKeyList>, file: Option<&Path>) -> anyhow::Result<Self> {
        let keys = ApiKeys::load(list, file)?;
        Ok(Self {
            current: RwLock::new(Arc::new(keys)),
            list: list.cloned(),
            file: file.map(Path::to_path_buf),
            refusals: Mutex::new(Refusals {
                missing: 0,
                wrong: 0,
                last_report: None,
            }),
        })
    }

    /// The keys in force now.
    pub fn current(&self) -> Arc<ApiKeys> {
        // A poisoned lock still holds a whole `Arc`: the writer only swaps it.
        self.current.read().map_or_else(
            |poisoned| poisoned.into_inner().clone(),
            |keys| keys.clone(),
        )
    }

    /// Reads the key file again and puts its keys in force when they changed. A file
    /// that cannot be read or holds no valid key leaves the keys in force: a Secret
    /// caught half-way through an update must not open writes or lock everyone out.
    pub fn reload(&self) {
        if self.file.is_none() {
            return;
        }
        let keys = match ApiKeys::load(self.list.as_ref(), self.file.as_deref()) {
            Ok(keys) => keys,
            Err(error) => {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "api keys not reloaded; the keys in force stay"
                );
                return;
            }
        };
        if keys.digests == self.current().digests {
            return;
        }
        tracing::info!(keys = keys.len(), "api keys reloaded");
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        *current = Arc::new(keys);
    }

    /// Re-reads the key file every `interval`, for as long as the process runs.
    /// Polling rather than file events: a Kubernetes Secret is updated by swapping a
    /// symlink, which inotify on the file itself does not see.
    pub fn reload_every(self: &Arc<Self>, interval: Duration) {
        if self.file.is_none() {
            return;
        }
        let keys = Arc::downgrade(self);
        tokio::spawn(async move {
            // A zero interval would make `interval` panic; a tenth of a second is as
            // eager as anyone needs.
            let mut ticks = tokio::time::interval(interval.max(Duration::from_millis(100)));
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let Some(keys) = keys.upgrade() else { return };
                // File reads block; keep them off the async workers.
                let reloaded = tokio::task::spawn_blocking(move || keys.reload()).await;
                if let Err(error) = reloaded {
                    tracing::error!(%error, "reloading api keys failed");
                }
            }
        });
    }

    /// Notes a refused write; the log hears of refusals at most once per
    /// [`REFUSAL_LOG_INTERVAL`], with how many there were.
    pub fn refused(&self, refusal: Refusal) {
        let mut refusals = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        match refusal {
            Refusal::Missing => refusals.missing += 1,
            Refusal::Wrong => refusals.wrong += 1,
        }
        let due = refusals
            .last_report
            .is_none_or(|last| last.elapsed() >= REFUSAL_LOG_INTERVAL);
        if due {
            // Neither a key nor a hint of one goes to the log: only counts.
            tracing::info!(
                missing = refusals.missing,
                wrong = refusals.wrong,
                "writes refused for a missing or wrong api key since the last report"
            );
            refusals.missing = 0;
            refusals.wrong = 0;
            refusals.last_report = Some(Instant::now());
        }
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
