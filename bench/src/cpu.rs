//! CPU time of processes, from the kernel's own accounting: the figures that do not
//! depend on how many cores the machine has.

use std::time::Duration;

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
