//! The results: one row per measure, as a markdown table and a JSON file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::load::LoadResult;

#[derive(Debug, Serialize)]
pub struct Row {
    pub id: &'static str,
    pub measure: String,
    pub value: f64,
    pub ceiling: Option<f64>,
    pub ceiling_name: Option<String>,
    pub ratio: Option<f64>,
    pub target: String,
    pub met: bool,
    pub note: String,
}

impl Row {
    /// `value / ceiling` must reach `target`.
    pub fn ratio(
        id: &'static str,
        measure: &str,
        value: f64,
        ceiling: f64,
        ceiling_name: &str,
        target: f64,
    ) -> Self {
        let ratio = value / ceiling.max(1e-9);
        Self {
            id,
            measure: measure.into(),
            value,
            ceiling: Some(ceiling),
            ceiling_name: Some(ceiling_name.into()),
            ratio: Some(ratio),
            target: format!("ratio ≥ {target}"),
            met: ratio >= target,
            note: String::new(),
        }
    }

    /// `value / reference` must not exceed `target` (a cost against another's).
    pub fn ratio_at_most(
        id: &'static str,
        measure: &str,
        value: f64,
        reference: f64,
        reference_name: &str,
        target: f64,
    ) -> Self {
        let ratio = value / reference.max(1e-9);
        Self {
            target: format!("ratio ≤ {target}"),
            met: ratio <= target,
            ..Self::ratio(id, measure, value, reference, reference_name, target)
        }
    }

    /// `value` must not exceed `limit`.
    pub fn at_most(id: &'static str, measure: &str, value: f64, limit: f64) -> Self {
        Self {
            id,
            measure: measure.into(),
            value,
            ceiling: None,
            ceiling_name: None,
            ratio: None,
            target: format!("≤ {limit}"),
            met: value <= limit,
            note: String::new(),
        }
    }

    pub fn with_latency(mut self, ours: &LoadResult, theirs: &LoadResult) -> Self {
        self.note = format!(
            "p50 {:.1} ms, p99 {:.1} ms (engine: p50 {:.1} ms, p99 {:.1} ms)",
            ours.p50_ms, ours.p99_ms, theirs.p50_ms, theirs.p99_ms
        );
        self
    }

    pub fn with_note(mut self, note: String) -> Self {
        self.note = note;
        self
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub started_at: String,
    pub machine: String,
    pub settings: serde_json::Value,
    pub rows: Vec<Row>,
    pub details: serde_json::Value,
}

impl Report {
    pub fn new(
        events: &usize,
        cities: &usize,
        concurrency: usize,
        duration: Duration,
        bulk_size: usize,
        smoke: bool,
    ) -> Self {
        Self {
            started_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            machine: machine(),
            settings: serde_json::json!({
                "events": events, "cities": cities, "concurrency": concurrency,
                "duration_seconds": duration.as_secs_f64(), "bulk_size": bulk_size, "smoke": smoke,
            }),
            rows: Vec::new(),
            details: serde_json::Value::Null,
        }
    }

    pub fn push(&mut self, row: Row) {
        self.rows.push(row);
    }

    pub fn markdown(&self) -> String {
        let mut out = format!(
            "Run {} on {}; {}\n\n| | measure | citypop | ceiling | ratio | target | met | notes |\n|---|---|---|---|---|---|---|---|\n",
            self.started_at, self.machine, self.settings
        );
        for row in &self.rows {
            let ceiling = match (&row.ceiling, &row.ceiling_name) {
                (Some(c), Some(name)) => format!("{c:.0} {name}"),
                _ => "".into(),
            };
            let ratio = row.ratio.map(|r| format!("{r:.2}")).unwrap_or_default();
            out.push_str(&format!(
                "| {} | {} | {:.1} | {} | {} | {} | {} | {} |\n",
                row.id,
                row.measure,
                row.value,
                ceiling,
                ratio,
                row.target,
                if row.met { "yes" } else { "no" },
                row.note
            ));
        }
        out
    }

    /// Writes `<timestamp>.md` and `<timestamp>.json` under `dir`, and the same as
    /// `latest.*`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
        std::fs::create_dir_all(dir)?;
        let stamp = self.started_at.replace(':', "");
        let markdown = dir.join(format!("{stamp}.md"));
        let json = dir.join(format!("{stamp}.json"));
        std::fs::write(&markdown, self.markdown())?;
        std::fs::write(&json, serde_json::to_string_pretty(self)?)?;
        std::fs::copy(&markdown, dir.join("latest.md"))?;
        std::fs::copy(&json, dir.join("latest.json"))?;
        Ok((markdown, json))
    }
}

/// A one-line description of this machine: cores, memory, CPU model.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    format!("{cores} cores, {mem_gib:.0} GiB, {model}")
}
