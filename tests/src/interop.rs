//! The other side of the interop tests, code citypop does not share:
//! - `tests/interop/Interop.java`, a reader and writer of the topic built on the
//!   Apache Avro reference library for Java and the Kafka client, run with Java's
//!   source-file launcher. Its classpath is collected once by Maven (as the local
//!   stack does for Kafka), into `tests/interop/target/lib`.
//! - `tests/interop/read.py`, README's Python reader (fastavro and kafka-python),
//!   run in a venv the harness makes once under `.tools/` (or `CITYPOP_TOOLS_DIR`),
//!   as `make lint-deploy` does for its own tools.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;

/// How long one run of the Java tool may take (it reads a topic to its end).
const RUN_TIMEOUT: Duration = Duration::from_secs(180);

const HOW_TO_INSTALL: &str = "the interop tests need Java 17+, Maven and python3 with venv on PATH \
(e.g. apt-get install openjdk-17-jdk-headless maven python3-venv), and Maven Central and PyPI \
reachable on first use";

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
pub struct ToolRun {
    pub success: bool,
    pub lines: Vec<Value>,
    pub stderr: String,
}

/// Runs `Interop.java` with `args`; panics if it cannot be started or hangs.
pub async fn run_java(args: &[&str]) -> ToolRun {
    let mut command = tokio::process::Command::new("java");
    command
        .arg("-Dorg.slf4j.simpleLogger.defaultLogLevel=warn")
        .arg("-cp")
        .arg(classpath())
        .arg(interop_dir().join("Interop.java"))
        .args(args);
    run("Interop.java", command, args).await
}

/// Runs `read.py` with `args` (`<bootstrap> <topic> <schema dir>`).
pub async fn run_python_reader(args: &[&str]) -> ToolRun {
    let mut command = tokio::process::Command::new(python());
    command.arg(interop_dir().join("read.py")).args(args);
    run("read.py", command, args).await
}

async fn run(name: &str, mut command: tokio::process::Command, args: &[&str]) -> ToolRun {
    command.stdin(Stdio::null()).kill_on_drop(true);
    let output = tokio::time::timeout(RUN_TIMEOUT, command.output())
        .await
        .unwrap_or_else(|_| panic!("{name} {args:?} did not finish within {RUN_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("starting {name}: {e}; {HOW_TO_INSTALL}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines = stdout
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{name} printed {line:?}, not json: {e}"))
        })
        .collect();
    ToolRun {
        success: output.status.success(),
        lines,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The venv's python, with `tests/interop/requirements.txt` installed on first use;
/// a stamp of the requirements it was made from keeps it current.
fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let tools = std::env::var_os("CITYPOP_TOOLS_DIR").map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools"),
            PathBuf::from,
        );
        let venv = tools.join("interop-venv");
        let python = venv.join("bin/python");
        let requirements_file = interop_dir().join("requirements.txt");
        let requirements =
            std::fs::read(&requirements_file).expect("reading tests/interop/requirements.txt");
        let stamp = venv.join(".requirements");
        if python.exists() && std::fs::read(&stamp).ok().as_ref() == Some(&requirements) {
            return python;
        }
        let _ = std::fs::remove_dir_all(&venv);
        let steps: [(&str, Vec<&std::ffi::OsStr>); 2] = [
            (
                "python3",
                vec!["-m".as_ref(), "venv".as_ref(), venv.as_os_str()],
            ),
            (
                python.to_str().expect("a utf-8 tools path"),
                vec![
                    "-m".as_ref(),
                    "pip".as_ref(),
                    "install".as_ref(),
                    "--quiet".as_ref(),
                    "--disable-pip-version-check".as_ref(),
                    "-r".as_ref(),
                    requirements_file.as_os_str(),
                ],
            ),
        ];
        for (program, args) in steps {
            let output = Command::new(program)
                .args(&args)
                .stdin(Stdio::null())
                .output()
                .unwrap_or_else(|e| panic!("starting {program}: {e}; {HOW_TO_INSTALL}"));
            assert!(
                output.status.success(),
                "{program} {args:?} failed ({HOW_TO_INSTALL}):\n{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::fs::write(&stamp, &requirements).expect("writing the venv stamp");
        python
    })
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
