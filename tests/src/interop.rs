//! The other side of the interop tests: `tests/interop/Interop.java`, a reader and
//! writer of the topic built on the Apache Avro reference library for Java and the
//! Kafka client, run with Java's source-file launcher. Its classpath is collected
//! once by Maven (as the local stack does for Kafka), into
//! `tests/interop/target/lib`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;

/// How long one run of the Java tool may take (it reads a topic to its end).
const RUN_TIMEOUT: Duration = Duration::from_secs(180);

const HOW_TO_INSTALL: &str = "the interop tests need Java 17+ and Maven on PATH \
(e.g. apt-get install openjdk-17-jdk-headless maven), and Maven Central reachable on first use";

/// The project directory of the Java tool.
pub fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("interop")
}

/// The published schema files, as other consumers get them.
pub fn published_schema_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/avro")
}

/// What one run printed: each stdout line parsed as JSON, and stderr.
#[derive(Debug)]
pub struct JavaRun {
    pub success: bool,
    pub lines: Vec<Value>,
    pub stderr: String,
}

/// Runs `Interop.java` with `args`; panics if it cannot be started or hangs.
pub async fn run_java(args: &[&str]) -> JavaRun {
    let classpath = classpath();
    let mut command = tokio::process::Command::new("java");
    command
        .arg("-Dorg.slf4j.simpleLogger.defaultLogLevel=warn")
        .arg("-cp")
        .arg(classpath)
        .arg(interop_dir().join("Interop.java"))
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(RUN_TIMEOUT, command.output())
        .await
        .unwrap_or_else(|_| panic!("Interop.java {args:?} did not finish within {RUN_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("starting java: {e}; {HOW_TO_INSTALL}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines = stdout
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("Interop.java printed {line:?}, not json: {e}"))
        })
        .collect();
    JavaRun {
        success: output.status.success(),
        lines,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The classpath of the Java tool, collected on first use. A stamp of the POM it
/// was collected from keeps a changed POM from mixing old and new jars.
fn classpath() -> &'static str {
    static CLASSPATH: OnceLock<String> = OnceLock::new();
    CLASSPATH.get_or_init(|| {
        let dir = interop_dir();
        let lib = dir.join("target/lib");
        let stamp = lib.join(".pom.xml");
        let pom = std::fs::read(dir.join("pom.xml")).expect("reading tests/interop/pom.xml");
        if std::fs::read(&stamp).ok().as_ref() != Some(&pom) {
            let _ = std::fs::remove_dir_all(&lib);
            let output = Command::new("mvn")
                .args(["-q", "-B", "-f"])
                .arg(dir.join("pom.xml"))
                .arg("dependency:copy-dependencies")
                .stdin(Stdio::null())
                .output()
                .unwrap_or_else(|e| panic!("starting mvn: {e}; {HOW_TO_INSTALL}"));
            assert!(
                output.status.success(),
                "mvn could not collect the interop classpath ({HOW_TO_INSTALL}):\n{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            std::fs::write(&stamp, &pom).expect("writing the classpath stamp");
        }
        format!("{}/*", lib.display())
    })
}
