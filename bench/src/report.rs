//! The results: one row per figure, each sampled once per round, summarised as
//! median and spread (min–max); written as a markdown table and a JSON file.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// Extra columns: CPU time per operation (event, write or read), from
/// `/proc/<pid>/stat` over the run. They do not depend on the number of cores.
pub const CPU_ENGINE: &str = "engine CPU µs/op";
pub const CPU_CITYPOP: &str = "citypop CPU µs/op";
pub const CPU_TOTAL: &str = "total CPU µs/op";
pub const CPU_CEILING: &str = "ceiling's engine CPU µs/op";

#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// The median of `value / ceiling` must reach this.
    RatioAtLeast(f64),
    /// The median of `value / ceiling` must not exceed this (a cost against another's).
    RatioAtMost(f64),
    /// The median of `value` must not exceed this.
    AtMost(f64),
    /// Reported, not judged.
    None,
}

impl Target {
    fn describe(self) -> String {
        match self {
            Target::RatioAtLeast(t) => format!("ratio ≥ {t}"),
            Target::RatioAtMost(t) => format!("ratio ≤ {t}"),
            Target::AtMost(t) => format!("≤ {t}"),
            Target::None => String::new(),
        }
    }
}

/// One round's figures for one row.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sample {
    pub value: f64,
    pub ceiling: Option<f64>,
    pub extra: Vec<(&'static str, f64)>,
    pub note: String,
}

impl Sample {
    pub fn new(value: f64) -> Self {
        Self {
            value,
            ..Self::default()
        }
    }

    pub fn ceiling(mut self, ceiling: f64) -> Self {
        self.ceiling = Some(ceiling);
        self
    }

    /// An extra column; `None` (a process whose CPU could not be read) is left out.
    pub fn extra(mut self, column: &'static str, value: Option<f64>) -> Self {
        if let Some(value) = value {
            self.extra.push((column, value));
        }
        self
    }

    pub fn note(mut self, note: String) -> Self {
        self.note = note;
        self
    }

    fn ratio(&self) -> Option<f64> {
        Some(self.value / self.ceiling?.max(1e-9))
    }
}

/// Median and range of one figure over the rounds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Self> {
        let mut values: Vec<f64> = values.into_iter().collect();
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        let n = values.len();
        let median = if n % 2 == 1 {
            values[n / 2]
        } else {
            (values[n / 2 - 1] + values[n / 2]) / 2.0
        };
        Some(Self {
            median,
            min: values[0],
            max: values[n - 1],
        })
    }

    fn show(&self) -> String {
        if self.min == self.max {
            number(self.median)
        } else {
            format!(
                "{} ({}–{})",
                number(self.median),
                number(self.min),
                number(self.max)
            )
        }
    }
}

/// Large figures without decimals, small ones with enough to compare.
fn number(x: f64) -> String {
    if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

#[derive(Debug, Serialize)]
pub struct Row {
    pub id: String,
    pub measure: String,
    pub ceiling_name: Option<String>,
    pub target: Target,
    pub samples: Vec<Sample>,
    pub value: Option<Spread>,
    pub ceiling: Option<Spread>,
    pub ratio: Option<Spread>,
    pub extra: Vec<(&'static str, Spread)>,
    pub met: Option<bool>,
}

impl Row {
    fn summarise(&mut self) {
        self.value = Spread::of(self.samples.iter().map(|s| s.value));
        self.ceiling = Spread::of(self.samples.iter().filter_map(|s| s.ceiling));
        self.ratio = Spread::of(self.samples.iter().filter_map(Sample::ratio));
        let mut columns: Vec<&'static str> = Vec::new();
        for (column, _) in self.samples.iter().flat_map(|s| &s.extra) {
            if !columns.contains(column) {
                columns.push(column);
            }
        }
        self.extra = columns
            .into_iter()
            .filter_map(|column| {
                let values = self
                    .samples
                    .iter()
                    .flat_map(|s| &s.extra)
                    .filter(|(c, _)| *c == column)
                    .map(|(_, v)| *v);
                Some((column, Spread::of(values)?))
            })
            .collect();
        self.met = match self.target {
            Target::RatioAtLeast(t) => self.ratio.map(|r| r.median >= t),
            Target::RatioAtMost(t) => self.ratio.map(|r| r.median <= t),
            Target::AtMost(t) => self.value.map(|v| v.median <= t),
            Target::None => None,
        };
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub started_at: String,
    pub machine: serde_json::Value,
    pub versions: serde_json::Value,
    /// The bench's own settings.
    pub settings: serde_json::Value,
    /// Settings the bench gave the services it started.
    pub services: serde_json::Value,
    /// Rounds measured, warm-up excluded.
    pub rounds: usize,
    pub rows: Vec<Row>,
    pub details: Vec<serde_json::Value>,
}

impl Report {
    pub fn new(settings: serde_json::Value, versions: serde_json::Value) -> Self {
        Self {
            started_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            machine: machine(),
            versions,
            settings,
            services: serde_json::Value::Null,
            rounds: 0,
            rows: Vec::new(),
            details: Vec::new(),
        }
    }

    /// Adds one round's sample to the row `id`/`measure`, created on first use.
    pub fn record(
        &mut self,
        id: &str,
        measure: &str,
        ceiling_name: Option<&str>,
        target: Target,
        sample: Sample,
    ) {
        let index = match self
            .rows
            .iter()
            .position(|r| r.id == id && r.measure == measure)
        {
            Some(index) => index,
            None => {
                self.rows.push(Row {
                    id: id.to_owned(),
                    measure: measure.to_owned(),
                    ceiling_name: ceiling_name.map(str::to_owned),
                    target,
                    samples: Vec::new(),
                    value: None,
                    ceiling: None,
                    ratio: None,
                    extra: Vec::new(),
                    met: None,
                });
                self.rows.len() - 1
            }
        };
        self.rows[index].samples.push(sample);
    }

    pub fn finish(&mut self) {
        for row in &mut self.rows {
            row.summarise();
        }
    }

    pub fn markdown(&self) -> String {
        let mut columns: Vec<&'static str> = Vec::new();
        for (column, _) in self.rows.iter().flat_map(|r| &r.extra) {
            if !columns.contains(column) {
                columns.push(column);
            }
        }
        let show = |s: &Option<Spread>| s.as_ref().map(Spread::show).unwrap_or_default();
        let mut out = format!(
            "Run {} on {}; {}; {} round(s), median (min–max).\n\n",
            self.started_at,
            self.machine["summary"].as_str().unwrap_or_default(),
            self.versions["summary"].as_str().unwrap_or_default(),
            self.rounds,
        );
        out.push_str("| | measure | citypop | ceiling | ratio | target | met |");
        for column in &columns {
            out.push_str(&format!(" {column} |"));
        }
        out.push_str(" notes |\n|---|---|---|---|---|---|---|");
        out.push_str(&"---|".repeat(columns.len() + 1));
        out.push('\n');
        for row in &self.rows {
            let ceiling = match (&row.ceiling, &row.ceiling_name) {
                (Some(c), Some(name)) => format!("{} {name}", c.show()),
                _ => String::new(),
            };
            let met = match row.met {
                Some(true) => "yes",
                Some(false) => "no",
                None => "",
            };
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} |",
                row.id,
                row.measure,
                show(&row.value),
                ceiling,
                show(&row.ratio),
                row.target.describe(),
                met
            ));
            for column in &columns {
                let cell = row
                    .extra
                    .iter()
                    .find(|(c, _)| c == column)
                    .map(|(_, s)| s.show())
                    .unwrap_or_default();
                out.push_str(&format!(" {cell} |"));
            }
            let notes: Vec<&str> = row
                .samples
                .last()
                .map(|s| s.note.as_str())
                .into_iter()
                .filter(|n| !n.is_empty())
                .collect();
            out.push_str(&format!(" {} |\n", notes.join("")));
        }
        out.push_str("\nTargets (medians):\n");
        for row in self.rows.iter().filter(|r| r.met.is_some()) {
            let (figure, spread) = match row.target {
                Target::RatioAtLeast(_) | Target::RatioAtMost(_) => ("ratio", &row.ratio),
                _ => ("value", &row.value),
            };
            out.push_str(&format!(
                "- {} {}: {} ({}), {figure} {} over {} round(s)\n",
                row.id,
                row.measure,
                if row.met == Some(true) {
                    "met"
                } else {
                    "NOT met"
                },
                row.target.describe(),
                show(spread),
                row.samples.len(),
            ));
        }
        out.push_str(&format!(
            "\nSettings: {}\nServices: {}\n",
            self.settings, self.services
        ));
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

/// This machine: cores, memory, CPU model.
fn machine() -> serde_json::Value {
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
    serde_json::json!({
        "nproc": cores, "cpu_model": model, "memory_gib": (mem_gib * 10.0).round() / 10.0,
        "summary": format!("{cores} cores, {mem_gib:.0} GiB, {model}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_the_median_and_range() {
        let s = Spread::of([3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Spread::of([1.0, 4.0]).unwrap().median, 2.5);
        assert!(Spread::of([]).is_none());
    }

    #[test]
    fn targets_are_judged_on_the_median_ratio() {
        let mut report = Report::new(serde_json::Value::Null, serde_json::Value::Null);
        for (value, ceiling) in [(80.0, 100.0), (95.0, 100.0), (91.0, 100.0)] {
            report.record(
                "P1",
                "drain",
                Some("raw"),
                Target::RatioAtLeast(0.9),
                Sample::new(value)
                    .ceiling(ceiling)
                    .extra(CPU_ENGINE, Some(40.0)),
            );
        }
        report.finish();
        let row = &report.rows[0];
        assert_eq!(row.ratio.unwrap().median, 0.91);
        assert_eq!(row.met, Some(true));
        let markdown = report.markdown();
        assert!(markdown.contains("0.91 (0.80–0.95)"), "{markdown}");
        assert!(markdown.contains(CPU_ENGINE), "{markdown}");
    }
}
