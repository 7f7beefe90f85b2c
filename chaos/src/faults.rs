//! Running the schedule: each fault is a task started at its time, so faults
//! overlap as the schedule says. The services under test live here: the indexers
//! (each behind its own fault proxy to the engine) and their restarts.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex as SyncMutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use citypop_tests::fault_proxy::FaultProxy;
use citypop_tests::kafka::{Kafka, SCHEMA_V2, encode_v2};
use citypop_tests::{
    Names, Readiness, Service, Stack, indexer_command_builder, peak_rss_bytes, spawn_indexer_with,
};
use serde::Serialize;
use tokio::sync::Mutex;

use crate::checks::{Poison, Rss};
use crate::cluster::Cluster;
use crate::schedule::{Fault, Planned};
use crate::topic::DeadLetter;

/// The longest an admin command (replay, redrive) may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(600);
/// Runs of `indexer replay` before its failure fails the soak, and the pause
/// between two.
const REPLAY_ATTEMPTS: u32 = 5;
const REPLAY_RETRY: Duration = Duration::from_secs(15);
/// How long the fix waits for the `schema` poison to be dead-lettered.
const DEAD_LETTERED_TIMEOUT: Duration = Duration::from_secs(300);
const DEAD_LETTERED_POLL: Duration = Duration::from_secs(2);
/// How long a restarted indexer gets to become ready before the next one of a
/// rolling restart goes down.
const ROLLING_READY: Duration = Duration::from_secs(60);

/// A fault as it ran.
#[derive(Debug, Clone, Serialize)]
pub struct Executed {
    pub planned_ms: u64,
    pub started_ms: u64,
    pub ended_ms: u64,
    pub fault: String,
    pub outcome: String,
}

pub struct Settings {
    pub kafka: String,
    pub engine_urls: Vec<String>,
    pub names: Names,
    pub indexer_env: Vec<(&'static str, String)>,
    pub schema_dir: PathBuf,
    pub indexer_rss_target_mib: f64,
}

pub struct Services {
    pub start: Instant,
    pub settings: Settings,
    pub cluster: Cluster,
    pub kafka: Kafka,
    proxies: Vec<FaultProxy>,
    indexers: Vec<Mutex<Option<Service>>>,
    /// Held while an extra indexer runs, and by the fix (so no indexer that does not
    /// know the schema runs during the redrive).
    extra: Mutex<()>,
    /// Replay and redrive one at a time: a replay started before the fix could not
    /// decode redriven events.
    admin_lock: Mutex<()>,
    pub rss: SyncMutex<Vec<Rss>>,
    pub poison: SyncMutex<Vec<Poison>>,
    poison_seq: AtomicUsize,
    pub admin: SyncMutex<Vec<(String, Result<String, String>)>>,
    pub redriven: SyncMutex<Option<u64>>,
    pub executed: SyncMutex<Vec<Executed>>,
    /// A process was killed -9 (an indexer or a broker).
    pub crashed: AtomicBool,
    started_indexers: AtomicUsize,
}

impl Services {
    /// Starts `count` indexers, each behind its own proxy to an engine node, and
    /// waits until they are ready.
    pub async fn start(settings: Settings, cluster: Cluster, count: usize) -> Self {
        let kafka = Kafka::connect(&settings.kafka);
        let mut proxies = Vec::new();
        for i in 0..count {
            let node = Stack {
                kafka: settings.kafka.clone(),
                elasticsearch: settings.engine_urls[i % settings.engine_urls.len()].clone(),
            };
            proxies.push(FaultProxy::start(node.engine_host()).await);
        }
        let services = Self {
            start: Instant::now(),
            settings,
            cluster,
            kafka,
            proxies,
            indexers: (0..count).map(|_| Mutex::new(None)).collect(),
            extra: Mutex::new(()),
            admin_lock: Mutex::new(()),
            rss: SyncMutex::new(Vec::new()),
            poison: SyncMutex::new(Vec::new()),
            poison_seq: AtomicUsize::new(0),
            admin: SyncMutex::new(Vec::new()),
            redriven: SyncMutex::new(None),
            executed: SyncMutex::new(Vec::new()),
            crashed: AtomicBool::new(false),
            started_indexers: AtomicUsize::new(0),
        };
        for slot in 0..count {
            // One after the other: the first creates the topics and the index.
            let indexer = services
                .spawn_indexer(&services.proxies[slot].url(), Readiness::Ready)
                .await;
            *services.indexers[slot].lock().await = Some(indexer);
        }
        services
    }

    pub fn elapsed_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    async fn spawn_indexer(&self, engine: &str, readiness: Readiness) -> Service {
        let stack = Stack {
            kafka: self.settings.kafka.clone(),
            elasticsearch: engine.to_owned(),
        };
        self.started_indexers.fetch_add(1, Ordering::SeqCst);
        spawn_indexer_with(
            &stack,
            &self.settings.names,
            &self.settings.indexer_env,
            readiness,
        )
        .await
    }

    pub fn record_rss(&self, name: String, service: &Service, target_mib: f64) {
        if let Some(bytes) = peak_rss_bytes(service.pid()) {
            let mut rss = self.rss.lock().unwrap_or_else(|e| e.into_inner());
            rss.push(Rss {
                service: name,
                peak_mib: bytes as f64 / 1024.0 / 1024.0,
                target_mib,
            });
        }
    }

    fn log(&self, line: String) {
        println!("[{:>8.1} s] {line}", self.elapsed_ms() as f64 / 1000.0);
    }

    /// Runs one planned fault to its end and records how it went.
    pub async fn run(self: Arc<Self>, planned: Planned) {
        let due = self.start + Duration::from_millis(planned.at_ms);
        tokio::time::sleep_until(due.into()).await;
        let started_ms = self.elapsed_ms();
        self.log(format!("fault starts: {}", planned.fault));
        let outcome = match self.clone().fault(&planned.fault).await {
            Ok(Some(note)) => note,
            Ok(None) => "done".to_owned(),
            Err(e) => format!("error: {e:#}"),
        };
        self.log(format!("fault ends: {} ({outcome})", planned.fault));
        self.executed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Executed {
                planned_ms: planned.at_ms,
                started_ms,
                ended_ms: self.elapsed_ms(),
                fault: planned.fault.to_string(),
                outcome,
            });
    }

    /// Does `fault`; `Ok(Some(note))` when it could not run here, and why.
    async fn fault(self: Arc<Self>, fault: &Fault) -> anyhow::Result<Option<String>> {
        match fault {
            Fault::KillIndexer { indexer, down_ms } => {
                let mut slot = self.indexers[*indexer].lock().await;
                if let Some(service) = slot.take() {
                    self.record_rss(
                        format!("indexer {indexer}"),
                        &service,
                        self.settings.indexer_rss_target_mib,
                    );
                    self.crashed.store(true, Ordering::SeqCst);
                    service.kill();
                }
                tokio::time::sleep(Duration::from_millis(*down_ms)).await;
                // Live, not ready: the engine may be down at this moment.
                *slot = Some(
                    self.spawn_indexer(&self.proxies[*indexer].url(), Readiness::Live)
                        .await,
                );
            }
            Fault::AddIndexer { for_ms } => {
                let _extra = self.extra.lock().await;
                let engine = &self.settings.engine_urls[0];
                let service = self.spawn_indexer(engine, Readiness::Live).await;
                tokio::time::sleep(Duration::from_millis(*for_ms)).await;
                self.record_rss(
                    "indexer (added)".into(),
                    &service,
                    self.settings.indexer_rss_target_mib,
                );
                let status = service.terminate().await;
                self.log(format!("the added indexer exited with {status}"));
            }
            Fault::CutEngine { indexer, for_ms } => {
                self.proxies[*indexer].cut().await;
                tokio::time::sleep(Duration::from_millis(*for_ms)).await;
                self.proxies[*indexer].restore();
            }
            Fault::StopEngine { node, for_ms } => {
                let node = node.to_string();
                if !self.cluster.run(&["stop", "engine", &node]).await? {
                    return Ok(Some(
                        "not run: the single-node stack has no cluster verbs".into(),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(*for_ms)).await;
                self.cluster.run(&["cont", "engine", &node]).await?;
            }
            Fault::KillBroker { broker, down_ms } => {
                let broker = broker.to_string();
                if !self.cluster.run(&["kill", "kafka", &broker]).await? {
                    return Ok(Some(
                        "not run: the single-node stack has no cluster verbs".into(),
                    ));
                }
                self.crashed.store(true, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(*down_ms)).await;
                self.cluster.run(&["start", "kafka", &broker]).await?;
            }
            Fault::Poison { decode, schema } => self.inject_poison(*decode, *schema).await,
            Fault::Replay => {
                let _admin = self.admin_lock.lock().await;
                // As a Job would: replay is a one-shot command that exits when the
                // engine does not answer (a stopped master node), leaving the alias
                // where it was; it is run again until it succeeds. Each failed
                // attempt is in the log and the report.
                let mut outcome = self.admin_command(&["replay", "--json"]).await;
                for attempt in 2..=REPLAY_ATTEMPTS {
                    let Err(e) = &outcome else { break };
                    self.log(format!(
                        "indexer replay attempt {} failed: {e}",
                        attempt - 1
                    ));
                    self.admin.lock().unwrap_or_else(|e| e.into_inner()).push((
                        format!("indexer replay attempt {} (retried)", attempt - 1),
                        Ok(e.clone()),
                    ));
                    tokio::time::sleep(REPLAY_RETRY).await;
                    outcome = self.admin_command(&["replay", "--json"]).await;
                }
                self.record_admin("indexer replay", outcome)?;
            }
            Fault::FixAndRedrive => return self.fix_and_redrive().await.map(|()| None),
        }
        Ok(None)
    }

    async fn inject_poison(&self, decode: usize, schema: usize) {
        let topic = &self.settings.names.topic;
        for (reason, count) in [("decode", decode), ("schema", schema)] {
            for _ in 0..count {
                let seq = self.poison_seq.fetch_add(1, Ordering::SeqCst);
                let city = format!("Chaos Poison {reason} {seq}");
                let key = city.to_lowercase();
                let payload = match reason {
                    // Not single-object encoded: no fix makes it an event.
                    "decode" => format!("chaos poison {seq}: not avro").into_bytes(),
                    // A schema the indexers learn at the fix.
                    _ => encode_v2(&city, seq as i64),
                };
                let (partition, offset) =
                    self.kafka.produce(topic, &key, Some(&payload), &[]).await;
                self.log(format!("poison {reason} {key} at {partition}/{offset}"));
                self.poison
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(Poison {
                        key,
                        reason: if reason == "decode" {
                            "decode"
                        } else {
                            "schema"
                        },
                        partition,
                        offset,
                    });
            }
        }
    }

    /// The fix of `schema` poison, as an operator does it: once the dead letters are
    /// there, teach every indexer the schema (a rolling restart), then redrive.
    async fn fix_and_redrive(&self) -> anyhow::Result<()> {
        let _admin = self.admin_lock.lock().await;
        let _extra = self.extra.lock().await;
        let expected: HashSet<(i32, i64)> = self
            .poison
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|p| p.reason == "schema")
            .map(|p| (p.partition, p.offset))
            .collect();
        let (kafka, dlq) = (
            self.settings.kafka.clone(),
            format!("{}.dlq", self.settings.names.topic),
        );
        wait_dead_lettered(&expected, DEAD_LETTERED_TIMEOUT, DEAD_LETTERED_POLL, || {
            let (kafka, dlq) = (kafka.clone(), dlq.clone());
            async move {
                tokio::task::spawn_blocking(move || crate::topic::dead_letters(&kafka, &dlq))
                    .await?
            }
        })
        .await?;
        std::fs::write(
            self.settings
                .schema_dir
                .join("city_population_updated.v2.avsc"),
            SCHEMA_V2,
        )
        .context("writing the v2 schema")?;
        for (i, slot) in self.indexers.iter().enumerate() {
            let mut slot = slot.lock().await;
            if let Some(service) = slot.take() {
                self.record_rss(
                    format!("indexer {i}"),
                    &service,
                    self.settings.indexer_rss_target_mib,
                );
                let status = service.terminate().await;
                self.log(format!("indexer {i} stopped for the fix with {status}"));
            }
            let service = self
                .spawn_indexer(&self.proxies[i].url(), Readiness::Live)
                .await;
            let ready = Instant::now() + ROLLING_READY;
            while service.readiness().await != 200 && Instant::now() < ready {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            *slot = Some(service);
        }
        let outcome = self
            .admin_command(&["dlq", "redrive", "--reason", "schema", "--json"])
            .await;
        if let Ok(out) = &outcome {
            let counts: serde_json::Value = serde_json::from_str(out.trim())
                .with_context(|| format!("redrive's JSON: {out}"))?;
            *self.redriven.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(counts["redriven"]["schema"].as_u64().unwrap_or(0));
        }
        self.record_admin("indexer dlq redrive --reason schema", outcome)
    }

    fn record_admin(&self, what: &str, outcome: Result<String, String>) -> anyhow::Result<()> {
        self.log(format!(
            "{what}: {}",
            match &outcome {
                Ok(out) => out.trim().to_owned(),
                Err(e) => e.clone(),
            }
        ));
        let failed = outcome.as_ref().err().cloned();
        self.admin
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((what.to_owned(), outcome));
        match failed {
            Some(e) => bail!("{what} failed: {e}"),
            None => Ok(()),
        }
    }

    /// Runs an indexer admin command against the engine directly; its stdout, or
    /// why it failed.
    async fn admin_command(&self, args: &[&str]) -> Result<String, String> {
        let stack = Stack {
            kafka: self.settings.kafka.clone(),
            elasticsearch: self.settings.engine_urls[0].clone(),
        };
        let mut command = indexer_command_builder(
            &stack,
            &self.settings.names,
            args,
            &self.settings.indexer_env,
        );
        match tokio::time::timeout(ADMIN_TIMEOUT, command.output()).await {
            Err(_) => Err(format!("did not finish within {ADMIN_TIMEOUT:?}")),
            Ok(Err(e)) => Err(e.to_string()),
            Ok(Ok(output)) if output.status.success() => {
                Ok(String::from_utf8_lossy(&output.stdout).into_owned())
            }
            Ok(Ok(output)) => Err(format!(
                "exit {}: {}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )),
        }
    }

    /// Records every running indexer's peak RSS and stops it (SIGTERM).
    pub async fn stop_indexers(&self) {
        for (i, slot) in self.indexers.iter().enumerate() {
            if let Some(service) = slot.lock().await.take() {
                self.record_rss(
                    format!("indexer {i}"),
                    &service,
                    self.settings.indexer_rss_target_mib,
                );
                service.terminate().await;
            }
        }
    }

    pub fn indexers_started(&self) -> usize {
        self.started_indexers.load(Ordering::SeqCst)
    }
}

/// Reads the dead letters until each `schema` poison in `expected` (partition,
/// offset) is there, or `timeout` passes. The read runs while other faults do (a
/// broker may be down, and librdkafka then fails metadata and watermark requests
/// until it reconnects), so a failed read counts as one that found nothing yet; a
/// timeout names the last error.
async fn wait_dead_lettered<Read, Letters>(
    expected: &HashSet<(i32, i64)>,
    timeout: Duration,
    poll: Duration,
    mut read: Read,
) -> anyhow::Result<()>
where
    Read: FnMut() -> Letters,
    Letters: Future<Output = anyhow::Result<Vec<DeadLetter>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        // A failed read counts as one that found nothing; its error is kept for
        // the timeout's message.
        let (seen, last_error): (HashSet<(i32, i64)>, _) = match read().await {
            Ok(letters) => (
                letters
                    .iter()
                    .filter(|l| l.reason == "schema")
                    .map(|l| (l.origin.1, l.origin.2))
                    .collect(),
                None,
            ),
            Err(e) => (HashSet::new(), Some(e)),
        };
        if expected.is_subset(&seen) {
            return Ok(());
        }
        if Instant::now() > deadline {
            let missing = expected.difference(&seen).collect::<Vec<_>>();
            match last_error {
                Some(e) => bail!(
                    "the schema poison {missing:?} was not dead-lettered within {timeout:?}; the last read of the DLQ failed: {e:#}"
                ),
                None => {
                    bail!("the schema poison {missing:?} was not dead-lettered within {timeout:?}")
                }
            }
        }
        tokio::time::sleep(poll).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema_letter(partition: i32, offset: i64) -> DeadLetter {
        DeadLetter {
            key: "x".into(),
            reason: "schema".into(),
            error: "unknown schema".into(),
            origin: ("cities".into(), partition, offset),
        }
    }

    /// Found by `make test`'s soak (seed 1796460613): the wait for the dead letters
    /// runs while a broker may be down, and one failed read of the DLQ's watermarks
    /// ended the fault (and failed the soak) although the letters came seconds later.
    #[tokio::test]
    async fn a_failed_read_of_the_dead_letters_is_retried() {
        let expected = HashSet::from([(0, 7)]);
        let mut reads = 0;
        let outcome = wait_dead_lettered(
            &expected,
            Duration::from_secs(5),
            Duration::from_millis(1),
            || {
                reads += 1;
                let first = reads == 1;
                async move {
                    if first {
                        bail!("Meta data fetch error: DestroyBroker")
                    }
                    Ok(vec![schema_letter(0, 7)])
                }
            },
        )
        .await;
        assert!(outcome.is_ok(), "{outcome:?}");
        assert_eq!(reads, 2);
    }

    #[tokio::test]
    async fn reads_that_keep_failing_give_up_at_the_timeout_naming_the_last_error() {
        let expected = HashSet::from([(0, 7)]);
        let started = Instant::now();
        let outcome = wait_dead_lettered(
            &expected,
            Duration::from_millis(50),
            Duration::from_millis(5),
            || async { bail!("Meta data fetch error: DestroyBroker") },
        )
        .await;
        let error = format!("{:#}", outcome.expect_err("every read failed"));
        assert!(
            started.elapsed() >= Duration::from_millis(50),
            "gave up early: {error}"
        );
        assert!(error.contains("(0, 7)"), "{error}");
        assert!(error.contains("DestroyBroker"), "{error}");
    }

    #[tokio::test]
    async fn a_letter_that_never_comes_fails_naming_it() {
        let expected = HashSet::from([(0, 7), (1, 3)]);
        let outcome = wait_dead_lettered(
            &expected,
            Duration::from_millis(20),
            Duration::from_millis(5),
            || async { Ok(vec![schema_letter(0, 7)]) },
        )
        .await;
        let error = format!("{:#}", outcome.expect_err("(1, 3) never came"));
        assert!(
            error.contains("(1, 3)") && !error.contains("(0, 7)"),
            "{error}"
        );
    }
}
