//! CPU time of processes, from the kernel's own accounting: the figures that do not
//! depend on how many cores the machine has.

use std::time::Duration;

pub use citypop_tests::cpu_time;

/// CPU time of a set of processes over a span: start it, run the work, `stop` it.
/// A process that is not known (`None`) or is gone counts as nothing.
pub struct CpuMeter {
    pids: Vec<Option<u32>>,
    start: Vec<Option<Duration>>,
}

impl CpuMeter {
    pub fn start(pids: &[Option<u32>]) -> Self {
        Self {
            pids: pids.to_vec(),
            start: pids.iter().map(|p| p.and_then(cpu_time)).collect(),
        }
    }

    /// CPU used by each process since `start`, in the order given; `None` where
    /// it could not be read.
    pub fn stop(&self) -> Vec<Option<Duration>> {
        self.pids
            .iter()
            .zip(&self.start)
            .map(|(pid, start)| Some(cpu_time((*pid)?)?.saturating_sub((*start)?)))
            .collect()
    }
}

/// Microseconds of `cpu` per operation.
pub fn micros_per(cpu: Duration, operations: usize) -> f64 {
    cpu.as_secs_f64() * 1e6 / operations.max(1) as f64
}
