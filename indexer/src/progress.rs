//! Replay's progress on stderr: a bar with events done, total, rate and ETA on a
//! terminal, a log line every few seconds elsewhere.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often progress is logged when stderr is not a terminal.
const PROGRESS_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// Progress on stderr: a bar on a terminal, a log line every few seconds elsewhere.
pub struct Progress {
    bar: ProgressBar,
    interactive: bool,
    last_log: Instant,
}

impl Progress {
    pub fn new(total: u64) -> Self {
        let interactive = std::io::stderr().is_terminal();
        let bar = if interactive {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template(
                "{bar:40} {human_pos}/{human_len} events  {per_sec}  eta {eta}",
            ) {
                bar.set_style(style);
            }
            bar
        } else {
            ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden())
        };
        Self {
            bar,
            interactive,
            last_log: Instant::now(),
        }
    }

    pub fn grow(&self, more: u64) {
        self.bar.inc_length(more);
    }

    pub fn advance(&mut self, events: u64) {
        self.bar.inc(events);
        if !self.interactive && self.last_log.elapsed() >= PROGRESS_LOG_INTERVAL {
            self.last_log = Instant::now();
            tracing::info!(
                done = self.bar.position(),
                total = self.bar.length().unwrap_or(0),
                rate = format!("{:.0}/s", self.bar.per_sec()),
                eta = ?self.bar.eta(),
                "replay progress"
            );
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
