//! Harness for citypop's end-to-end tests: real Kafka, a real search engine, and
//! the real `producer-api` and `indexer` binaries started as child processes, each
//! test with its own topic, consumer group and index alias so tests run in parallel.
//!
//! Endpoints come from `KAFKA_BOOTSTRAP_SERVERS` and `ELASTICSEARCH_URL`. When they
//! are unset or unreachable the tests fail and say how to start the stack.

pub mod api_client;
pub mod browser;
pub mod engine;
pub mod fault_proxy;
pub mod interop;
pub mod kafka;

use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const HOW_TO_START: &str = "start the local stack with `make stack-up` and export \
KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 ELASTICSEARCH_URL=http://127.0.0.1:9200, or run `make test`, which does both";

/// How long a spawned service may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// The real services the tests run against.
#[derive(Debug, Clone)]
pub struct Stack {
    pub kafka: String,
    pub elasticsearch: String,
}

impl Stack {
    /// Reads the endpoints and checks that both answer; panics with instructions
    /// otherwise, so a missing stack is a failure, never a silent pass.
    pub fn from_env() -> Self {
        let kafka = std::env::var("KAFKA_BOOTSTRAP_SERVERS")
            .unwrap_or_else(|_| panic!("KAFKA_BOOTSTRAP_SERVERS is not set: {HOW_TO_START}"));
        let elasticsearch = std::env::var("ELASTICSEARCH_URL")
            .unwrap_or_else(|_| panic!("ELASTICSEARCH_URL is not set: {HOW_TO_START}"));
        let first_broker = kafka.split(',').next().unwrap_or_default().to_owned();
        assert!(
            reachable(&first_broker),
            "kafka at {kafka} is unreachable: {HOW_TO_START}"
        );
        let engine_host = host_of(&elasticsearch);
        assert!(
            reachable(engine_host),
            "the search engine at {elasticsearch} is unreachable: {HOW_TO_START}"
        );
        Self {
            kafka,
            elasticsearch,
        }
    }

    /// The engine's `host:port`, as a TCP proxy in front of it needs it.
    pub fn engine_host(&self) -> &str {
        host_of(&self.elasticsearch)
    }
}

fn host_of(url: &str) -> &str {
    url.trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_end_matches('/')
}

fn reachable(host_port: &str) -> bool {
    host_port
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .is_some_and(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok())
}

/// Names no other test uses.
#[derive(Debug, Clone)]
pub struct Names {
    pub topic: String,
    pub alias: String,
    pub group: String,
}

impl Names {
    pub fn unique(test: &str) -> Self {
        let id = uuid::Uuid::now_v7().simple().to_string();
        let base = format!("citypop-e2e-{test}-{}", &id[id.len() - 12..]);
        Self {
            topic: base.clone(),
            alias: base.clone(),
            group: base,
        }
    }

    /// These names with another alias.
    pub fn with_alias(&self, alias: &str) -> Self {
        Self {
            alias: alias.to_owned(),
            ..self.clone()
        }
    }

    /// The same topic, read by another group into another index.
    pub fn rebuild(&self, suffix: &str) -> Self {
        Self {
            topic: self.topic.clone(),
            alias: format!("{}-{suffix}", self.alias),
            group: format!("{}-{suffix}", self.group),
        }
    }
}

/// A spawned service; killed when dropped so a failing test leaves nothing behind.
/// Its log goes to a file; a failing test prints the end of it.
pub struct Service {
    name: &'static str,
    child: Child,
    pub base_url: String,
    log_path: PathBuf,
}

impl Service {
    /// Kills the process without warning (SIGKILL), as a crash or OOM kill would.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The process id, to read its memory use from `/proc`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the service logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The value of one series on `/metrics`, e.g.
    /// `citypop_indexer_documents_indexed_total{result="stale"}`; 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = reqwest::get(format!("{}/metrics", self.base_url))
            .await
            .and_then(reqwest::Response::error_for_status)
            .unwrap_or_else(|e| panic!("GET {}/metrics: {e}", self.base_url))
            .text()
            .await
            .expect("metrics body");
        text.lines()
            .find_map(|line| {
                let (name, value) = line.rsplit_once(' ')?;
                (name == series).then(|| value.parse().ok()).flatten()
            })
            .unwrap_or(0.0)
    }

    /// The status `/readyz` answers now.
    pub async fn readiness(&self) -> u16 {
        match reqwest::get(format!("{}/readyz", self.base_url)).await {
            Ok(response) => response.status().as_u16(),
            Err(_) => 0,
        }
    }

    /// Asks the service to stop (SIGTERM) and waits for it to exit.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not stop within 60 s of SIGTERM",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!(
                "--- last lines of {} ({}) ---",
                self.name,
                self.log_path.display()
            );
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// User plus system CPU time of `pid` so far (all its threads), from
/// `/proc/<pid>/stat`; `None` once the process is gone.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat, ticks_per_second())
}

/// utime and stime are fields 14 and 15; the command name (field 2) is in
/// parentheses and may itself hold spaces or parentheses, so fields are counted
/// from the last `)`.
fn parse_stat(stat: &str, ticks_per_second: u64) -> Option<Duration> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_secs_f64(
        (utime + stime) as f64 / ticks_per_second.max(1) as f64,
    ))
}

fn ticks_per_second() -> u64 {
    // SAFETY: sysconf reads a constant of the running system and has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|&t| t > 0).unwrap_or(100)
}

/// Peak resident set size (`VmHWM`) of `pid` in bytes, while it still runs: the
/// kernel's own high-water mark, for the bench's and the soak's memory targets.
pub fn peak_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// A port nothing listens on when returned (for a service pointed at a dependency
/// that is not there).
pub fn unused_port() -> u16 {
    free_port()
}

fn free_port() -> u16 {
    // The port is free when returned; the service binds it a moment later.
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding an ephemeral port");
    listener.local_addr().expect("local address").port()
}

/// Where tests leave files for a person to look at (screenshots): `CITYPOP_TEST_OUTPUT`,
/// else `target/test-output`.
pub fn test_output_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CITYPOP_TEST_OUTPUT") {
        return PathBuf::from(dir);
    }
    // Test executables live in target/<profile>/deps.
    let exe = std::env::current_exe().expect("test executable path");
    exe.ancestors()
        .nth(3)
        .expect("target directory")
        .join("test-output")
}

/// The path of a service binary, for tests that run it directly (`--help`).
pub fn binary_path(name: &str) -> PathBuf {
    binary(name)
}

fn binary(name: &str) -> PathBuf {
    // `CITYPOP_BIN_DIR` picks the build (the benchmark runs release binaries).
    // Otherwise: test executables live in target/<profile>/deps, the services beside it.
    let dir = match std::env::var_os("CITYPOP_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().expect("test executable path");
            exe.parent()
                .and_then(|p| p.parent())
                .expect("target directory")
                .to_path_buf()
        }
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the services first with `cargo build --workspace --bins` (make test does)",
        path.display()
    );
    path
}

async fn spawn(
    name: &'static str,
    envs: &[(&str, String)],
    health_urls: Vec<String>,
    base_url: String,
) -> Service {
    let mut command = Command::new(binary(name));
    let log_path = std::env::temp_dir().join(format!(
        "citypop-{name}-{}.log",
        uuid::Uuid::now_v7().simple()
    ));
    let log_file = std::fs::File::create(&log_path).expect("creating the service log file");
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "CITYPOP_LOG",
            std::env::var("CITYPOP_TEST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("log file handle"))
        .stderr(log_file);
    for (key, value) in envs {
        command.env(key, value);
    }
    let child = command
        .spawn()
        .unwrap_or_else(|e| panic!("starting {name}: {e}"));
    let mut service = Service {
        name,
        child,
        base_url,
        log_path,
    };
    for url in &health_urls {
        wait_ready(&mut service, url).await;
    }
    service
}

async fn wait_ready(service: &mut Service, url: &str) {
    let deadline = Instant::now() + READY_TIMEOUT;
    let client = reqwest::Client::new();
    loop {
        if let Ok(Some(status)) = service.child.try_wait() {
            panic!("{} exited during start-up with {status}", service.name);
        }
        if let Ok(response) = client.get(url).send().await
            && response.status().is_success()
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} not ready at {url} after {READY_TIMEOUT:?}",
            service.name
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts an indexer for `names` and waits until it is ready.
pub async fn spawn_indexer(stack: &Stack, names: &Names) -> Service {
    spawn_indexer_with(stack, names, &[], Readiness::Ready).await
}

/// What a spawned service must show before the test goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// `/readyz` answers 200; for producer-api, both `/readyz/writes` and
    /// `/readyz/reads` (its `/readyz` needs only one of them).
    Ready,
    /// `/livez` answers 200: the process serves, its dependencies may not.
    Live,
}

impl Readiness {
    /// The URLs that answer 200 once this readiness is reached.
    fn probes(self, base_url: &str, halves: &[&str]) -> Vec<String> {
        match self {
            Self::Ready if halves.is_empty() => vec![format!("{base_url}/readyz")],
            Self::Ready => halves
                .iter()
                .map(|half| format!("{base_url}/readyz/{half}"))
                .collect(),
            Self::Live => vec![format!("{base_url}/livez")],
        }
    }
}

/// The settings every indexer of a test gets.
fn indexer_env(stack: &Stack, names: &Names) -> Vec<(&'static str, String)> {
    vec![
        ("CITYPOP_KAFKA_BOOTSTRAP_SERVERS", stack.kafka.clone()),
        ("CITYPOP_ELASTICSEARCH_URL", stack.elasticsearch.clone()),
        ("CITYPOP_TOPIC", names.topic.clone()),
        ("CITYPOP_INDEX_ALIAS", names.alias.clone()),
        ("CITYPOP_CONSUMER_GROUP", names.group.clone()),
        // One node: replicas could never be assigned.
        ("CITYPOP_INDEX_REPLICAS", "0".into()),
        ("CITYPOP_COMMIT_INTERVAL", "1s".into()),
    ]
}

/// Runs an indexer admin command (`replay`, `dlq list`, ...) to completion and
/// returns its output; panics if it fails or takes over `timeout`.
pub async fn run_indexer_command(
    stack: &Stack,
    names: &Names,
    args: &[&str],
    extra: &[(&str, String)],
    timeout: Duration,
) -> String {
    let output = indexer_command(stack, names, args, extra, timeout).await;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "indexer {args:?} failed with {}:\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Runs an indexer admin command to completion, whether it succeeds or not, and
/// returns its exit status and output; panics if it takes over `timeout`.
pub async fn indexer_command(
    stack: &Stack,
    names: &Names,
    args: &[&str],
    extra: &[(&str, String)],
    timeout: Duration,
) -> std::process::Output {
    let mut command = indexer_command_builder(stack, names, args, extra);
    tokio::time::timeout(timeout, command.output())
        .await
        .unwrap_or_else(|_| panic!("indexer {args:?} did not finish within {timeout:?}"))
        .unwrap_or_else(|e| panic!("running indexer {args:?}: {e}"))
}

/// An indexer admin command, ready to run or spawn (to signal it while it runs);
/// stdout and stderr are piped.
pub fn indexer_command_builder(
    stack: &Stack,
    names: &Names,
    args: &[&str],
    extra: &[(&str, String)],
) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(binary("indexer"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CITYPOP_LOG", "warn")
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for (key, value) in indexer_env(stack, names) {
        command.env(key, value);
    }
    for (key, value) in extra {
        command.env(key, value);
    }
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    command
}

/// Starts an indexer with extra settings (they override the defaults here).
pub async fn spawn_indexer_with(
    stack: &Stack,
    names: &Names,
    extra: &[(&str, String)],
    wait_for: Readiness,
) -> Service {
    let port = free_port();
    let base_url = format!("http://127.0.0.1:{port}");
    let mut envs = indexer_env(stack, names);
    envs.push(("CITYPOP_HEALTH_LISTEN", format!("127.0.0.1:{port}")));
    envs.extend(extra.iter().map(|(k, v)| (*k, v.clone())));
    spawn("indexer", &envs, wait_for.probes(&base_url, &[]), base_url).await
}

/// Starts a producer-api for `names` and waits until it is ready (which needs the
/// topic, so start an indexer first).
pub async fn spawn_producer_api(stack: &Stack, names: &Names) -> Service {
    spawn_producer_api_with(stack, names, &[], Readiness::Ready).await
}

/// Starts a producer-api with extra settings (they override the defaults here).
/// `Readiness::Live` is for an API whose Kafka is unreachable on purpose, which never
/// becomes ready.
pub async fn spawn_producer_api_with(
    stack: &Stack,
    names: &Names,
    extra: &[(&str, String)],
    wait_for: Readiness,
) -> Service {
    let port = free_port();
    let base_url = format!("http://127.0.0.1:{port}");
    let mut envs = vec![
        ("CITYPOP_KAFKA_BOOTSTRAP_SERVERS", stack.kafka.clone()),
        ("CITYPOP_ELASTICSEARCH_URL", stack.elasticsearch.clone()),
        ("CITYPOP_TOPIC", names.topic.clone()),
        ("CITYPOP_INDEX_ALIAS", names.alias.clone()),
        ("CITYPOP_LISTEN", format!("127.0.0.1:{port}")),
    ];
    envs.extend(extra.iter().map(|(k, v)| (*k, v.clone())));
    spawn(
        "producer-api",
        &envs,
        wait_for.probes(&base_url, &["writes", "reads"]),
        base_url,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_utime_and_stime_past_a_name_with_spaces_and_parentheses() {
        let stat = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 7 0 0";
        assert_eq!(parse_stat(stat, 100), Some(Duration::from_secs(3)));
    }

    #[test]
    fn this_process_has_used_some_cpu() {
        let spin: u64 = (0..2_000_000u64).fold(0, |a, b| a.wrapping_add(b * b));
        assert!(spin > 0);
        assert!(cpu_time(std::process::id()).is_some());
    }
}
