//! The faults that need the multi-node cluster (a broker killed, an engine node
//! stopped), done by the cluster script's own verbs (`deploy/local/cluster.sh kill
//! kafka 2`, ...). On the single-node stack there is no script: those faults are
//! reported as not run, never silently passed over.

use std::path::PathBuf;

use anyhow::{Context, bail};

pub struct Cluster {
    script: Option<PathBuf>,
}

impl Cluster {
    pub fn new(script: Option<PathBuf>) -> Self {
        Self { script }
    }

    pub fn is_multi_node(&self) -> bool {
        self.script.is_some()
    }

    /// Runs one verb of the script (`kill kafka 2`), to its end; `Ok(false)` when
    /// there is no cluster to run it on.
    pub async fn run(&self, verb: &[&str]) -> anyhow::Result<bool> {
        let Some(script) = &self.script else {
            return Ok(false);
        };
        let output = tokio::process::Command::new(script)
            .args(verb)
            .output()
            .await
            .with_context(|| format!("running {} {}", script.display(), verb.join(" ")))?;
        if !output.status.success() {
            bail!(
                "{} {} failed with {}: {}{}",
                script.display(),
                verb.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(true)
    }
}
