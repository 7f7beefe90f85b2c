//! `GET /docs` in a real browser: the page lists every operation of `/openapi.json`,
//! and its own "Try it out" writes a city and then reads it back.

use std::collections::BTreeSet;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use citypop_schemas::CityKey;
use citypop_tests::api_client::ApiClient;
use citypop_tests::browser::Browser;
use citypop_tests::{
    Names, Readiness, Stack, spawn_indexer, spawn_producer_api, spawn_producer_api_with,
};
use fantoccini::Locator;
use fantoccini::elements::Element;
use futures::FutureExt;
use serde_json::Value;

/// How long the page may take to render the document, or to show an answer.
const PAGE_WAIT: Duration = Duration::from_secs(30);

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docs_page_lists_every_operation_and_its_try_it_out_writes_and_reads_a_city() {
    let stack = Stack::from_env();
    let names = Names::unique("docs");
    let _indexer = spawn_indexer(&stack, &names).await;
    let api = spawn_producer_api(&stack, &names).await;
    let client = ApiClient::of(&api);

    let document = client.get("/openapi.json").await;
    assert_eq!(document.status, 200, "{}", document.text);
    let mut documented = BTreeSet::new();
    for (path, item) in document.body["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("a path item").keys() {
            if METHODS.contains(&method.as_str()) {
                documented.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    assert!(
        documented.contains(&("POST".into(), "/city".into())),
        "{documented:?}"
    );

    let browser = Browser::start().await;
    let page = &browser.client;
    page.goto(&format!("{}/docs/", api.base_url))
        .await
        .expect("opening /docs");
    // The screenshot is taken whatever happens: a failure is what it is most useful for.
    let outcome = AssertUnwindSafe(async {
        // Every operation is an .opblock once the UI has fetched and rendered the
        // document; the same operation may appear under several tags.
        page.wait()
            .at_most(PAGE_WAIT)
            .for_element(Locator::Css(".opblock"))
            .await
            .expect("the page renders the document's operations");
        let listed: Vec<(String, String)> = serde_json::from_value(
            page.execute(
                "return Array.from(document.querySelectorAll('.opblock')).map(op => [
                    op.querySelector('.opblock-summary-method').textContent.trim(),
                    op.querySelector('.opblock-summary-path').getAttribute('data-path')])",
                vec![],
            )
            .await
            .expect("reading the listed operations"),
        )
        .expect("pairs of method and path");
        let listed: BTreeSet<(String, String)> = listed.into_iter().collect();
        assert_eq!(
            listed, documented,
            "the page lists exactly the document's operations"
        );
        let title = page
            .find(Locator::Css(".info .title"))
            .await
            .expect("the title");
        let title = title.text().await.expect("the title's text");
        assert!(title.contains("citypop producer-api"), "{title}");

        // POST /city through the page's own form.
        let name = realistic_name();
        let post = operation(page, "post", "/city").await;
        try_it_out(&post).await;
        let body = post
            .find(Locator::Css("textarea.body-param__text"))
            .await
            .expect("the request body editor");
        body.clear().await.expect("clearing the example body");
        body.send_keys(&format!(r#"{{"name": "{name}", "population": 4242}}"#))
            .await
            .expect("typing the body");
        let (status, reply) = execute(&post).await;
        assert_eq!(status, 202, "{reply}");
        let reply: Value = serde_json::from_str(&reply).expect("the 202 body is JSON");
        let key = CityKey::parse(&name).expect("a valid name");
        assert_eq!(reply["key"], key.as_str(), "{reply}");
        let offset = reply["offset"].as_i64().expect("the write's offset");

        // GET /city/{name} through the page, waiting for the indexer to catch up with
        // the write (read-your-writes).
        let get = operation(page, "get", "/city/{name}").await;
        try_it_out(&get).await;
        for (parameter, value) in [
            ("name", name.clone()),
            ("min_version", offset.to_string()),
            ("wait_ms", "10000".to_owned()),
        ] {
            get.find(Locator::Css(&format!(
                "tr[data-param-name='{parameter}'] input"
            )))
            .await
            .unwrap_or_else(|e| panic!("the {parameter} field: {e}"))
            .send_keys(&value)
            .await
            .expect("typing a parameter");
        }
        let (status, reply) = execute(&get).await;
        assert_eq!(status, 200, "{reply}");
        let city: Value = serde_json::from_str(&reply).expect("the 200 body is JSON");
        assert_eq!(city["population"], 4242, "{city}");
        assert_eq!(city["name"], name, "{city}");

        // And the API agrees with the page.
        let direct = client.read_version(&name, offset).await;
        assert_eq!(direct.status, 200, "{}", direct.text);
        assert_eq!(direct.body["population"], 4242, "{}", direct.text);
    })
    .catch_unwind()
    .await;
    let shot = browser.screenshot("docs-page").await;
    eprintln!("screenshot of /docs: {}", shot.display());
    browser.close().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

#[tokio::test]
async fn citypop_api_docs_false_turns_the_page_off() {
    let stack = Stack::from_env();
    let names = Names::unique("docs-off");
    let _indexer = spawn_indexer(&stack, &names).await;
    let api = spawn_producer_api_with(
        &stack,
        &names,
        &[("CITYPOP_API_DOCS", "false".into())],
        Readiness::Ready,
    )
    .await;
    let client = ApiClient::of(&api);
    client
        .get("/docs/")
        .await
        .assert_problem(404, "unknown-route");
    assert_eq!(client.get("/openapi.json").await.status, 200);
}

/// The operation's block, expanded.
async fn operation(page: &fantoccini::Client, method: &str, path: &str) -> Element {
    let selector = format!(".opblock-{method}:has(.opblock-summary-path[data-path='{path}'])");
    let block = page
        .find(Locator::Css(&selector))
        .await
        .unwrap_or_else(|e| panic!("{method} {path} on the page: {e}"));
    block
        .find(Locator::Css(".opblock-summary"))
        .await
        .expect("the operation's summary")
        .click()
        .await
        .expect("expanding the operation");
    block
}

async fn try_it_out(block: &Element) {
    let button = wait_in(block, ".try-out__btn").await;
    button.click().await.expect("clicking Try it out");
}

/// Clicks Execute and returns the status and body the page shows.
async fn execute(block: &Element) -> (u16, String) {
    wait_in(block, "button.execute")
        .await
        .click()
        .await
        .expect("clicking Execute");
    let status = wait_in(
        block,
        ".live-responses-table .response .response-col_status",
    )
    .await;
    let status = status.text().await.expect("the status text");
    let body = block
        .find(Locator::Css(
            ".live-responses-table .response-col_description pre",
        ))
        .await
        .expect("the response body");
    let body = body.text().await.expect("the body text");
    let status = status
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a status code, not {status:?}"));
    (status, body)
}

/// Waits for a descendant of `block`: the UI renders after each click.
async fn wait_in(block: &Element, selector: &str) -> Element {
    let deadline = tokio::time::Instant::now() + PAGE_WAIT;
    loop {
        if let Ok(element) = block.find(Locator::Css(selector)).await {
            return element;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{selector} did not appear within {PAGE_WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A unique name with what real names hold: digits, capitals, letters `a`-`f` and
/// non-ASCII letters. The page's own validation must let it through: it once
/// refused every name holding a digit, `A`-`U` or `a`-`f`, as it read the document's
/// Python-dialect `\U0001xxxx` escapes as those letters and digits.
fn realistic_name() -> String {
    format!("Aachen-Düren 2 {}", uuid::Uuid::now_v7().simple())
}
