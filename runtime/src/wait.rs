use std::future::Future;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};

/// The longest pause between two checks of a dependency that is not up yet.
const MAX_WAIT_BETWEEN_CHECKS: Duration = Duration::from_secs(5);

/// Runs `check` until it succeeds, with exponential backoff and jitter and no limit
/// on attempts: a service that starts before Kafka or the engine waits for them
/// rather than crashing into a restart loop.
pub async fn wait_until_ready<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(MAX_WAIT_BETWEEN_CHECKS)
        .with_jitter()
        .without_max_times();
    let result = check
        .retry(backoff)
        .notify(|error, delay| {
            tracing::warn!(dependency = what, error = format!("{error:#}"), retry_in = ?delay, "waiting for dependency");
        })
        .await;
    match result {
        Ok(value) => value,
        // Without a limit on attempts the retry loop only ends in success.
        Err(_) => unreachable!("unlimited retries ended in an error"),
    }
}
