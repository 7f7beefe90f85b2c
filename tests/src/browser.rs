//! A real browser for the tests of pages: headless Chromium driven over WebDriver by
//! Debian's `chromedriver` (packages `chromium` and `chromium-driver`), one browser
//! per test. Missing packages fail the test with the command that installs them.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;

const HOW_TO_INSTALL: &str = "install Chromium and its WebDriver with `apt-get install chromium chromium-driver` \
(make test does), or set CITYPOP_CHROMIUM and CITYPOP_CHROMEDRIVER to their paths";

/// How long chromedriver may take to answer.
const DRIVER_START: Duration = Duration::from_secs(30);

/// A headless Chromium; the browser and its driver end when this is dropped.
pub struct Browser {
    pub client: Client,
    driver: Child,
}

impl Browser {
    pub async fn start() -> Self {
        let chromium = tool("CITYPOP_CHROMIUM", "/usr/bin/chromium");
        let chromedriver = tool("CITYPOP_CHROMEDRIVER", "/usr/bin/chromedriver");
        let port = crate::unused_port();
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, so that the browsers it starts end with it.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", chromedriver.display()));
        let capabilities = json!({
            "goog:chromeOptions": {
                "binary": chromium,
                // --no-sandbox: CI runs as root, where Chromium's sandbox refuses to
                // start; the pages are our own. A tall window shows every operation
                // in the screenshot.
                "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                         "--disable-gpu", "--window-size=1280,3000"],
            }
        });
        let capabilities = match capabilities {
            serde_json::Value::Object(map) => map,
            _ => unreachable!("a JSON object literal"),
        };
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + DRIVER_START;
        let client = loop {
            match ClientBuilder::new(HttpConnector::new())
                .capabilities(capabilities.clone())
                .connect(&url)
                .await
            {
                Ok(client) => break client,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "no browser session from chromedriver at {url}: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        Self { client, driver }
    }

    /// Ends the browser session; the driver ends when dropped.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }

    /// Saves a PNG of the window under the test output folder and returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("a screenshot");
        let dir = crate::test_output_dir();
        std::fs::create_dir_all(&dir).expect("creating the test output folder");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("writing the screenshot");
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The whole group: chromedriver and the Chromium processes it started, which
        // would outlive a failed test otherwise.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.driver.id())])
            .status();
        let _ = self.driver.wait();
    }
}

fn tool(variable: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(variable).map_or_else(|| PathBuf::from(default), PathBuf::from);
    assert!(
        Path::new(&path).exists(),
        "{} is missing: {HOW_TO_INSTALL}",
        path.display()
    );
    path
}
