//! The report: markdown for a person, JSON for a program, written under
//! `bench/results/` like the bench's.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::checks::{Check, Poison, Rss};
use crate::faults::Executed;
use crate::schedule::Planned;

#[derive(Debug, Serialize)]
pub struct Report {
    pub seed: u64,
    pub duration_s: f64,
    pub on_cluster: bool,
    pub settings: serde_json::Value,
    pub planned: Vec<Planned>,
    pub executed: Vec<Executed>,
    pub checks: Vec<Check>,
    /// What kept the run itself from going as planned (a fault that errored, the
    /// indexers not catching up): each fails the run.
    pub run_errors: Vec<String>,
    pub rss: Vec<Rss>,
    pub poison: Vec<Poison>,
    pub writes: usize,
    pub reads: usize,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.run_errors.is_empty() && self.checks.iter().all(|c| c.passed)
    }

    /// The checks, one line each, with their failures.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for check in &self.checks {
            out.push_str(&format!(
                "{} {}: {}\n",
                if check.passed { "PASS" } else { "FAIL" },
                check.name,
                check.summary
            ));
            for failure in &check.failures {
                out.push_str(&format!("     {failure}\n"));
            }
        }
        for error in &self.run_errors {
            out.push_str(&format!("FAIL run: {error}\n"));
        }
        out
    }

    fn markdown(&self) -> String {
        let mut out = format!(
            "# Chaos soak, seed {}: {}\n\n{} s of load {}, {} writes, {} reads.\n\n## Checks\n\n```\n{}```\n\n## Faults as they ran\n\n| planned s | started s | ended s | fault | outcome |\n|---|---|---|---|---|\n",
            self.seed,
            if self.passed() { "passed" } else { "FAILED" },
            self.duration_s,
            if self.on_cluster {
                "on the cluster"
            } else {
                "on the single-node stack"
            },
            self.writes,
            self.reads,
            self.summary()
        );
        for e in &self.executed {
            out.push_str(&format!(
                "| {:.1} | {:.1} | {:.1} | {} | {} |\n",
                e.planned_ms as f64 / 1000.0,
                e.started_ms as f64 / 1000.0,
                e.ended_ms as f64 / 1000.0,
                e.fault,
                e.outcome.replace('|', "\\|").replace('\n', " ")
            ));
        }
        out.push_str("\n## Peak RSS\n\n| process | MiB | target MiB |\n|---|---|---|\n");
        for r in &self.rss {
            out.push_str(&format!(
                "| {} | {:.1} | {} |\n",
                r.service, r.peak_mib, r.target_mib
            ));
        }
        out.push_str(&format!("\nSettings: {}\n", self.settings));
        out
    }

    /// Writes `chaos-<time>.md` and `.json` under `dir`, and the same as
    /// `chaos-latest.*`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
        std::fs::create_dir_all(dir)?;
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
        let markdown = dir.join(format!("chaos-{stamp}.md"));
        let json = dir.join(format!("chaos-{stamp}.json"));
        std::fs::write(&markdown, self.markdown())?;
        std::fs::write(&json, serde_json::to_string_pretty(self)?)?;
        std::fs::copy(&markdown, dir.join("chaos-latest.md"))?;
        std::fs::copy(&json, dir.join("chaos-latest.json"))?;
        Ok((markdown, json))
    }
}
