//! Retrying: the one helper for everything the indexer retries (bulk requests,
//! dead-letter writes, admin calls), built on `backon`, with exponential delays,
//! full jitter, and an abort signal that ends the wait at once.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder, Retryable};
use tokio::sync::watch;

/// The delays between retries of transient failures.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct RetryPolicy {
    /// First delay before retrying a failed bulk request.
    #[arg(long = "retry-min-delay", env = "CITYPOP_RETRY_MIN_DELAY", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub min_delay: Duration,

    /// Cap on the delay between retries (exponential, full jitter).
    #[arg(long = "retry-max-delay", env = "CITYPOP_RETRY_MAX_DELAY", default_value = "30s", value_parser = humantime::parse_duration)]
    pub max_delay: Duration,

    /// Retries of one bulk request before the indexer exits (0 = retry forever).
    /// Exiting loses nothing: uncommitted events are consumed again on restart.
    #[arg(
        long = "retry-max-attempts",
        env = "CITYPOP_RETRY_MAX_ATTEMPTS",
        default_value_t = 0
    )]
    pub max_attempts: usize,
}

impl RetryPolicy {
    /// Exponential delays capped at `max_delay`, with full jitter: each delay is
    /// drawn uniformly from zero to the exponential value, so indexers that failed
    /// together do not retry together. (backon's own jitter only adds on top of the
    /// delay, so the draw is done here.)
    pub fn delays(&self) -> impl Iterator<Item = Duration> + Send + Sync + Unpin + use<> {
        let builder = ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay);
        let builder = match self.max_attempts {
            0 => builder.without_max_times(),
            n => builder.with_max_times(n),
        };
        builder.build().map(|delay| delay.mul_f64(fastrand::f64()))
    }
}

/// Why work was given up before it was finished.
#[derive(Debug, thiserror::Error)]
pub enum Interrupted {
    #[error("stopped before the batch was finished; it is left uncommitted")]
    Aborted,
    #[error("gave up after the configured retries: {0}")]
    RetriesExhausted(String),
}

/// A retry policy bound to the signal that ends all waiting.
#[derive(Debug, Clone)]
pub struct Retry {
    policy: RetryPolicy,
    abort: watch::Receiver<bool>,
}

impl Retry {
    pub fn new(policy: RetryPolicy, abort: watch::Receiver<bool>) -> Self {
        Self { policy, abort }
    }

    /// Retries that no signal ends, for work with no shutdown handler of its own (a
    /// `dlq` command: Ctrl-C ends the process) or work that must not be left undone.
    pub fn without_abort(policy: RetryPolicy) -> Self {
        // The sender is dropped at once: an abort signal that can never be set.
        let (_, never) = watch::channel(false);
        Self::new(policy, never)
    }

    /// Runs `attempt` until it succeeds. Before each retry `failed` hears the error
    /// and the delay. Ends with [`Interrupted::RetriesExhausted`] once the policy's
    /// attempts are used up, and with [`Interrupted::Aborted`] as soon as the abort
    /// signal is set, whether an attempt or a delay is under way.
    pub async fn run<T, E, Fut>(
        &self,
        what: &str,
        attempt: impl FnMut() -> Fut,
        mut failed: impl FnMut(&E, Duration),
    ) -> Result<T, Interrupted>
    where
        E: Display,
        Fut: Future<Output = Result<T, E>>,
    {
        let retrying = attempt
            .retry(self.policy.delays())
            .sleep(tokio::time::sleep)
            .notify(|error: &E, delay| {
                tracing::warn!(%error, retry_in = ?delay, "{what} failed, retrying");
                failed(error, delay);
            });
        tokio::select! {
            result = retrying => result.map_err(|error| Interrupted::RetriesExhausted(format!("{what}: {error}"))),
            () = until_set(&self.abort) => Err(Interrupted::Aborted),
        }
    }

    /// Resolves once the abort signal is set.
    pub async fn aborted(&self) {
        until_set(&self.abort).await
    }
}

/// Resolves once `signal` is true (at once if it already is).
pub async fn until_set(signal: &watch::Receiver<bool>) {
    let mut signal = signal.clone();
    // An error means the sender is gone: the signal can no longer be set.
    if signal.wait_for(|set| *set).await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn policy(max_attempts: usize) -> RetryPolicy {
        RetryPolicy {
            min_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
            max_attempts,
        }
    }

    #[test]
    fn delays_are_jittered_capped_and_counted() {
        let policy = RetryPolicy {
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            max_attempts: 20,
        };
        let delays: Vec<_> = policy.delays().collect();
        assert_eq!(delays.len(), 20);
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(1)));
        assert!(
            delays.iter().any(|d| *d < Duration::from_millis(900)),
            "no jitter"
        );

        let forever = RetryPolicy {
            max_attempts: 0,
            ..policy
        };
        assert_eq!(forever.delays().take(1000).count(), 1000);
    }

    #[tokio::test]
    async fn retries_until_the_attempt_succeeds() {
        let (_abort, aborted) = watch::channel(false);
        let calls = AtomicUsize::new(0);
        let mut heard = Vec::new();
        let result = Retry::new(policy(0), aborted)
            .run(
                "test",
                || async {
                    match calls.fetch_add(1, Ordering::SeqCst) {
                        0 | 1 => Err("not yet"),
                        n => Ok(n),
                    }
                },
                |error, _| heard.push(error.to_string()),
            )
            .await;
        assert_eq!(result.unwrap(), 2);
        assert_eq!(heard, ["not yet", "not yet"]);
    }

    #[tokio::test]
    async fn gives_up_after_the_configured_attempts() {
        let (_abort, aborted) = watch::channel(false);
        let calls = AtomicUsize::new(0);
        let result: Result<(), _> = Retry::new(policy(3), aborted)
            .run(
                "bulk write",
                || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err("down")
                },
                |_, _| {},
            )
            .await;
        assert!(
            matches!(&result, Err(Interrupted::RetriesExhausted(e)) if e == "bulk write: down"),
            "{result:?}"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 4, "one attempt and 3 retries");
    }

    #[tokio::test]
    async fn the_abort_signal_ends_a_retry_at_once() {
        let (abort, aborted) = watch::channel(false);
        let slow = RetryPolicy {
            min_delay: Duration::from_secs(3600),
            max_delay: Duration::from_secs(3600),
            max_attempts: 0,
        };
        let retry = Retry::new(slow, aborted);
        let waiting = retry.run(
            "test",
            || async { Err::<(), _>("down") },
            |_, _| {
                let _ = abort.send(true);
            },
        );
        let result = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the abort ends the hour-long delay");
        assert!(matches!(result, Err(Interrupted::Aborted)));
    }
}
