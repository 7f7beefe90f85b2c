//! Reads of single cities gathered into `_mget`s: requests that arrive within a
//! short window share one engine request of up to `max_ids` ids, and requests for
//! the same city within it share one lookup and its answer. On two shared cores an
//! engine request costs about as much CPU as the work of answering it, so fewer,
//! larger requests serve more reads.
//!
//! Guarantees: every read is answered by a lookup that started after the read
//! arrived, so it sees every write the engine acknowledged before (the `_mget` is
//! real-time); a failure of the whole `_mget` answers each of its reads with that
//! failure, an error for one document only that document's reads; a read whose
//! client has gone changes nothing for the others.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::time::Duration;

use citypop_schemas::CityKey;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::city_index::{CityIndex, IndexError, Read};
use crate::metrics::Metrics;

/// Reads waiting to be gathered into a batch. Each is a request in flight, which
/// the API's concurrency limit already bounds; this only caps the queue should
/// the gathering task fall behind (a sender then waits its turn).
const QUEUE_CAPACITY: usize = 4096;

/// Where reads come from: the index, or a fake in tests.
pub trait Lookup: Send + Sync + 'static {
    /// One city, on its own (a get by id).
    fn get_one(&self, key: &CityKey) -> impl Future<Output = Read> + Send;
    /// Several cities in one request, answered in the order of `keys`.
    fn get_many(
        &self,
        keys: &[CityKey],
    ) -> impl Future<Output = Result<Vec<Read>, IndexError>> + Send;
}

impl Lookup for CityIndex {
    async fn get_one(&self, key: &CityKey) -> Read {
        self.get(key).await
    }

    async fn get_many(&self, keys: &[CityKey]) -> Result<Vec<Read>, IndexError> {
        CityIndex::get_many(self, keys).await
    }
}

/// How reads are gathered.
#[derive(Debug, Clone, Copy)]
pub struct BatchSettings {
    /// How long the first read of a batch waits for others; zero turns batching off.
    pub window: Duration,
    /// The most distinct ids in one `_mget`; a full batch goes at once.
    pub max_ids: usize,
}

type Waiter = oneshot::Sender<Read>;

/// Reads one city at a time, through batches when a window is set.
pub struct ReadBatcher<L> {
    lookup: Arc<L>,
    /// `None` when batching is off.
    queue: Option<mpsc::Sender<(CityKey, Waiter)>>,
}

impl<L: Lookup> ReadBatcher<L> {
    /// Starts the gathering task when batching is on; it ends once the batcher is
    /// dropped. Needs a tokio runtime.
    pub fn new(lookup: Arc<L>, settings: BatchSettings, metrics: Arc<Metrics>) -> Self {
        if settings.window.is_zero() {
            return Self {
                lookup,
                queue: None,
            };
        }
        let (queue, requests) = mpsc::channel(QUEUE_CAPACITY);
        tokio::spawn(gather(requests, lookup.clone(), settings, metrics));
        Self {
            lookup,
            queue: Some(queue),
        }
    }

    /// The city's current document, as [`CityIndex::get`] reads it.
    pub async fn get(&self, key: &CityKey) -> Read {
        let Some(queue) = &self.queue else {
            return self.lookup.get_one(key).await;
        };
        let (waiter, answer) = oneshot::channel();
        if queue.send((key.clone(), waiter)).await.is_err() {
            return Err(gone());
        }
        answer.await.unwrap_or_else(|_| Err(gone()))
    }
}

/// The gathering task ended (it never does while the batcher lives) or dropped a
/// batch (a panic): the read is not answered, and may be retried.
fn gone() -> IndexError {
    IndexError::Unavailable("the read batch was lost".into())
}

/// Gathers reads into batches: the first read opens a window, which closes when it
/// ends or the batch holds `max_ids` distinct ids; each batch is looked up on its
/// own task, so the next batch gathers while the engine answers.
async fn gather<L: Lookup>(
    mut requests: mpsc::Receiver<(CityKey, Waiter)>,
    lookup: Arc<L>,
    settings: BatchSettings,
    metrics: Arc<Metrics>,
) {
    while let Some((key, waiter)) = requests.recv().await {
        let mut batch = Batch::default();
        batch.add(key, waiter);
        let closes = Instant::now() + settings.window;
        while batch.keys.len() < settings.max_ids {
            match tokio::time::timeout_at(closes, requests.recv()).await {
                Ok(Some((key, waiter))) => batch.add(key, waiter),
                // The window closed, or the batcher is gone: look up what is here.
                Ok(None) | Err(_) => break,
            }
        }
        tokio::spawn(batch.run(lookup.clone(), metrics.clone()));
    }
}

/// The distinct ids of one batch, and who waits for each.
#[derive(Default)]
struct Batch {
    keys: Vec<CityKey>,
    waiters: Vec<Vec<Waiter>>,
    positions: HashMap<CityKey, usize>,
}

impl Batch {
    fn add(&mut self, key: CityKey, waiter: Waiter) {
        match self.positions.entry(key) {
            Entry::Occupied(at) => self.waiters[*at.get()].push(waiter),
            Entry::Vacant(slot) => {
                self.keys.push(slot.key().clone());
                self.waiters.push(vec![waiter]);
                slot.insert(self.keys.len() - 1);
            }
        }
    }

    async fn run<L: Lookup>(mut self, lookup: Arc<L>, metrics: Arc<Metrics>) {
        // Ids whose every client has gone are not asked for.
        for waiters in &mut self.waiters {
            waiters.retain(|w| !w.is_closed());
        }
        let (keys, waiters): (Vec<_>, Vec<_>) = self
            .keys
            .into_iter()
            .zip(self.waiters)
            .filter(|(_, waiters)| !waiters.is_empty())
            .unzip();
        if keys.is_empty() {
            return;
        }
        metrics.read_batch_sent(keys.len());
        match lookup.get_many(&keys).await {
            Ok(reads) => {
                for (read, waiters) in reads.into_iter().zip(waiters) {
                    answer(waiters, &read);
                }
            }
            Err(error) => {
                let failed = Err(error);
                for waiters in waiters {
                    answer(waiters, &failed);
                }
            }
        }
    }
}

/// Sends `read` to everyone waiting for it; a client that has gone meanwhile is
/// skipped.
fn answer(waiters: Vec<Waiter>, read: &Read) {
    for waiter in waiters {
        // The receiver is gone only when its request was: nobody to tell.
        let _ = waiter.send(read.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use citypop_schemas::document::CityDocument;
    use std::sync::Mutex;

    /// Documents by key, the calls made, and failures to inject.
    #[derive(Default)]
    struct Fake {
        calls: Mutex<Vec<Vec<String>>>,
        singles: Mutex<Vec<String>>,
        fail_all: Option<IndexError>,
        fail_one: Option<String>,
        delay: Duration,
    }

    fn document(key: &str) -> CityDocument {
        serde_json::from_value(serde_json::json!({
            "key": key, "name": key, "population": key.len(),
            "updated_at": "2026-12-04T00:00:00Z", "version": 7, "partition": 0,
        }))
        .unwrap()
    }

    fn found(key: &str) -> Option<CityDocument> {
        (!key.starts_with("missing")).then(|| document(key))
    }

    impl Lookup for Fake {
        async fn get_one(&self, key: &CityKey) -> Read {
            self.singles.lock().unwrap().push(key.as_str().to_owned());
            Ok(found(key.as_str()))
        }

        async fn get_many(&self, keys: &[CityKey]) -> Result<Vec<Read>, IndexError> {
            self.calls
                .lock()
                .unwrap()
                .push(keys.iter().map(|k| k.as_str().to_owned()).collect());
            tokio::time::sleep(self.delay).await;
            if let Some(error) = &self.fail_all {
                return Err(error.clone());
            }
            Ok(keys
                .iter()
                .map(|k| {
                    if self.fail_one.as_deref() == Some(k.as_str()) {
                        Err(IndexError::Unavailable("shard down".into()))
                    } else {
                        Ok(found(k.as_str()))
                    }
                })
                .collect())
        }
    }

    fn key(name: &str) -> CityKey {
        CityKey::parse(name).unwrap()
    }

    fn start(fake: Fake, window_ms: u64, max_ids: usize) -> (Arc<Fake>, ReadBatcher<Fake>) {
        let fake = Arc::new(fake);
        let settings = BatchSettings {
            window: Duration::from_millis(window_ms),
            max_ids,
        };
        let batcher = ReadBatcher::new(fake.clone(), settings, Arc::new(Metrics::new()));
        (fake, batcher)
    }

    /// Reads `names` all at once and returns their answers in order.
    async fn read_all(batcher: &ReadBatcher<Fake>, names: &[&str]) -> Vec<Read> {
        let keys: Vec<CityKey> = names.iter().map(|n| key(n)).collect();
        futures::future::join_all(keys.iter().map(|k| batcher.get(k))).await
    }

    #[tokio::test]
    async fn concurrent_reads_share_one_lookup_and_same_keys_one_id() {
        let (fake, batcher) = start(Fake::default(), 20, 100);
        let reads = read_all(&batcher, &["paris", "lyon", "paris", "missing-x", "paris"]).await;
        for (read, name) in reads.iter().zip(["paris", "lyon", "paris"]) {
            assert_eq!(read.as_ref().unwrap().as_ref().unwrap().key, name);
        }
        assert!(reads[3].as_ref().unwrap().is_none());
        assert_eq!(reads[4].as_ref().unwrap().as_ref().unwrap().key, "paris");
        let calls = fake.calls.lock().unwrap().clone();
        assert_eq!(calls, [["paris", "lyon", "missing-x"]]);
        assert!(fake.singles.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_full_batch_goes_at_once_and_the_rest_follows() {
        // A window far longer than the test: only `max_ids` can close the batches.
        let (fake, batcher) = start(Fake::default(), 60_000, 2);
        let started = Instant::now();
        let reads = read_all(&batcher, &["a", "a", "b", "c", "c", "d"]).await;
        assert!(reads.iter().all(|r| r.as_ref().unwrap().is_some()));
        // A repeated id takes no room of its own.
        let calls = fake.calls.lock().unwrap().clone();
        assert_eq!(calls, [["a", "b"], ["c", "d"]]);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_window_of_zero_reads_each_city_by_itself() {
        let (fake, batcher) = start(Fake::default(), 0, 100);
        let reads = read_all(&batcher, &["oslo", "bergen", "oslo"]).await;
        assert!(reads.iter().all(|r| r.as_ref().unwrap().is_some()));
        assert!(fake.calls.lock().unwrap().is_empty());
        assert_eq!(*fake.singles.lock().unwrap(), ["oslo", "bergen", "oslo"]);
    }

    #[tokio::test]
    async fn a_failed_batch_answers_each_read_with_its_error() {
        let fake = Fake {
            fail_all: Some(IndexError::Unavailable("no answer within 5s".into())),
            ..Fake::default()
        };
        let (_, batcher) = start(fake, 20, 100);
        let reads = read_all(&batcher, &["rome", "milan", "rome"]).await;
        for read in reads {
            assert!(
                matches!(&read, Err(IndexError::Unavailable(m)) if m == "no answer within 5s"),
                "{read:?}"
            );
        }
        let fake = Fake {
            fail_all: Some(IndexError::Broken("unreadable".into())),
            ..Fake::default()
        };
        let (_, batcher) = start(fake, 20, 100);
        let reads = read_all(&batcher, &["rome"]).await;
        assert!(matches!(reads[0], Err(IndexError::Broken(_))), "{reads:?}");
    }

    #[tokio::test]
    async fn an_error_for_one_document_is_that_documents_alone() {
        let fake = Fake {
            fail_one: Some("bonn".into()),
            ..Fake::default()
        };
        let (_, batcher) = start(fake, 20, 100);
        let reads = read_all(&batcher, &["berlin", "bonn", "bonn", "munich"]).await;
        assert!(reads[0].as_ref().unwrap().is_some());
        assert!(matches!(reads[1], Err(IndexError::Unavailable(_))));
        assert!(matches!(reads[2], Err(IndexError::Unavailable(_))));
        assert!(reads[3].as_ref().unwrap().is_some());
    }

    #[tokio::test]
    async fn a_read_whose_client_left_does_not_break_the_batch() {
        let fake = Fake {
            delay: Duration::from_millis(50),
            ..Fake::default()
        };
        let (fake, batcher) = start(fake, 30, 100);
        let (kept, left) = (key("kept"), key("left"));
        // One read is dropped while its batch gathers, another while it is looked up.
        let abandoned = tokio::time::timeout(Duration::from_millis(5), batcher.get(&left));
        let late = tokio::time::timeout(Duration::from_millis(60), batcher.get(&left));
        let (kept_read, abandoned, late) = tokio::join!(batcher.get(&kept), abandoned, late);
        assert!(abandoned.is_err() && late.is_err());
        assert_eq!(kept_read.unwrap().unwrap().key, "kept");
        // Later reads are served as usual.
        let again = batcher.get(&left).await;
        assert_eq!(again.unwrap().unwrap().key, "left");
        assert_eq!(fake.calls.lock().unwrap().len(), 2);
    }
}
