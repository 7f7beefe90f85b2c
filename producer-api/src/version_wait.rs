//! Read-your-writes waits that share their reads: every request waiting for the
//! same city's `min_version` watches one poll loop, rather than each polling the
//! engine on its own, so a crowd of waiters costs the engine what one does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use citypop_schemas::CityKey;
use citypop_schemas::document::CityDocument;
use tokio::sync::watch;

use crate::city_index::{CityIndex, IndexError};
use crate::metrics::Metrics;

/// The first pause between two reads of a loop; pauses double up to
/// [`MAX_POLL_INTERVAL`], so a fresh write is seen within milliseconds and a long
/// wait costs few reads.
const FIRST_POLL_INTERVAL: Duration = Duration::from_millis(20);
const MAX_POLL_INTERVAL: Duration = Duration::from_millis(250);

/// What the last read of a city found; `None` until the first read is done.
pub type Seen = Option<Result<Option<CityDocument>, IndexError>>;

/// The poll loops running now, one per city somebody waits for.
#[derive(Default)]
pub struct VersionWaits {
    loops: Mutex<HashMap<CityKey, Arc<watch::Sender<Seen>>>>,
}

impl VersionWaits {
    /// What the poll loop of `key` sees, starting one when none runs. The loop
    /// ends once its last watcher is gone.
    pub fn watch(
        self: &Arc<Self>,
        key: &CityKey,
        index: &Arc<CityIndex>,
        metrics: &Arc<Metrics>,
    ) -> watch::Receiver<Seen> {
        let mut loops = self.loops.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(sender) = loops.get(key) {
            return sender.subscribe();
        }
        let (sender, receiver) = watch::channel(None);
        let sender = Arc::new(sender);
        loops.insert(key.clone(), sender.clone());
        let (waits, key, index, metrics) =
            (self.clone(), key.clone(), index.clone(), metrics.clone());
        tokio::spawn(async move {
            let mut pause = FIRST_POLL_INTERVAL;
            loop {
                let seen = index.get(&key).await;
                metrics.read_your_writes_polled();
                sender.send_replace(Some(seen));
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_POLL_INTERVAL);
                // Checked under the lock, so no watcher joins a loop that is ending.
                let mut loops = waits.loops.lock().unwrap_or_else(|p| p.into_inner());
                if sender.receiver_count() == 0 {
                    loops.remove(&key);
                    return;
                }
            }
        });
        receiver
    }
}
