//! Delays between retries of transient failures.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub min_delay: Duration,
    pub max_delay: Duration,
    /// 0 retries forever.
    pub max_attempts: usize,
}

impl RetryPolicy {
    /// Exponential delays capped at `max_delay`, with full jitter: each delay is
    /// drawn uniformly from zero to the exponential value, so indexers that failed
    /// together do not retry together. (backon's own jitter only adds on top of the
    /// delay, so the draw is done here.)
    pub fn delays(&self) -> impl Iterator<Item = Duration> + use<> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
