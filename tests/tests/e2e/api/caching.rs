//! HTTP caching of `GET /city/{name}`: `ETag` is the version, `If-None-Match`
//! answers 304, `Cache-Control` is a setting; and the optional in-process cache,
//! stale for at most its TTL and bypassed by `min_version`.

use std::time::Duration;

use citypop_tests::api_client::{ApiClient, Reply};
use citypop_tests::{Names, Readiness, Stack, spawn_indexer, spawn_producer_api_with};
use reqwest::Method;
use tokio::time::Instant;

use super::batching::index_city;
use super::start;

/// `GET /city/{name}` with `If-None-Match: tags`.
async fn get_if_none_match(client: &ApiClient, name: &str, tags: &str) -> Reply {
    let url = client.city_path("city", name);
    client
        .send(
            client
                .http
                .request(Method::GET, url)
                .header("if-none-match", tags),
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_etag_is_the_version_and_if_none_match_answers_304() {
    let (_stack, _names, _indexer, api) = start("etag").await;
    let client = ApiClient::of(&api);
    let (_, _, offset) = client.post_city("Gdansk", 486_000).await.assert_accepted();
    let read = client.read_version("gdansk", offset).await;
    assert_eq!(read.status, 200, "{}", read.text);
    let version = read.body["version"].as_i64().expect("version");
    let etag = format!("\"{version}\"");
    assert_eq!(read.header("etag"), Some(etag.as_str()));
    assert_eq!(read.header("cache-control"), Some("no-cache"));

    let plain = client.get_city("GDANSK", "").await;
    assert_eq!(plain.status, 200);
    assert_eq!(plain.header("etag"), Some(etag.as_str()));
    assert_eq!(plain.header("cache-control"), Some("no-cache"));

    // The current version, alone, in a list, weakly, or any: 304, no body.
    for tags in [
        etag.clone(),
        format!("\"{}\", {etag}", version + 7),
        format!("W/{etag}"),
        "*".to_owned(),
    ] {
        let reply = get_if_none_match(&client, "gdansk", &tags).await;
        assert_eq!(reply.status, 304, "If-None-Match: {tags}");
        assert!(reply.text.is_empty(), "a 304 with a body: {}", reply.text);
        assert_eq!(reply.header("etag"), Some(etag.as_str()), "{tags}");
        assert_eq!(reply.header("cache-control"), Some("no-cache"));
    }
    // Another version: the city, as without the header.
    for tags in [format!("\"{}\"", version + 1), "\"gdansk\"".to_owned()] {
        let reply = get_if_none_match(&client, "gdansk", &tags).await;
        assert_eq!(reply.status, 200, "If-None-Match: {tags}");
        assert_eq!(reply.body["population"], 486_000);
    }
    // A newer write changes the tag, so the client's old one no longer matches.
    let (_, _, later) = client.post_city("Gdansk", 487_000).await.assert_accepted();
    let newer = client.read_version("gdansk", later).await;
    assert_ne!(newer.header("etag"), Some(etag.as_str()));
    let reply = get_if_none_match(&client, "gdansk", &etag).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body["population"], 487_000);
    // Nothing to match: no city, no 304.
    get_if_none_match(&client, "Sopot", "*")
        .await
        .assert_problem(404, "not-found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_control_is_the_setting() {
    let stack = Stack::from_env();
    let names = Names::unique("cachecontrol");
    let _indexer = spawn_indexer(&stack, &names).await;
    let api = spawn_producer_api_with(
        &stack,
        &names,
        &[("CITYPOP_CACHE_CONTROL", "public, max-age=5".into())],
        Readiness::Ready,
    )
    .await;
    let client = ApiClient::of(&api);
    index_city(&stack, &names, "Tallinn", 454_000, 3).await;
    let read = client.get_city("tallinn", "").await;
    assert_eq!(read.status, 200, "{}", read.text);
    assert_eq!(read.header("cache-control"), Some("public, max-age=5"));
    let unchanged = get_if_none_match(&client, "tallinn", "\"3\"").await;
    assert_eq!(unchanged.status, 304);
    assert_eq!(unchanged.header("cache-control"), Some("public, max-age=5"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_cache_serves_stale_reads_for_its_ttl_and_never_to_min_version() {
    const TTL: Duration = Duration::from_secs(6);
    let stack = Stack::from_env();
    let names = Names::unique("readcache");
    let _indexer = spawn_indexer(&stack, &names).await;
    let api = spawn_producer_api_with(
        &stack,
        &names,
        &[("CITYPOP_READ_CACHE_TTL", "6s".into())],
        Readiness::Ready,
    )
    .await;
    let client = ApiClient::of(&api);
    index_city(&stack, &names, "Riga", 605_000, 10).await;
    // An absent city is not cached: it shows as soon as it is indexed.
    client
        .get_city("Jurmala", "")
        .await
        .assert_problem(404, "not-found");
    index_city(&stack, &names, "Jurmala", 50_000, 11).await;
    assert_eq!(client.get_city("jurmala", "").await.status, 200);

    let cached_at = Instant::now();
    let first = client.get_city("riga", "").await;
    assert_eq!(first.body["population"], 605_000, "{}", first.text);
    let cached_by = Instant::now();
    let misses = api
        .metric(r#"citypop_read_cache_lookups_total{result="miss"}"#)
        .await;
    index_city(&stack, &names, "Riga", 606_000, 12).await;

    // Within the TTL a plain read gets the cached, older city, with its ETag...
    let stale = client.get_city("riga", "").await;
    let stale_304 = get_if_none_match(&client, "riga", "\"10\"").await;
    // ...while `min_version` reads the index.
    let fresh = client.get_city("riga", "?min_version=12").await;
    assert!(
        cached_at.elapsed() < TTL,
        "the test was too slow to see the cache: {:?}",
        cached_at.elapsed()
    );
    assert_eq!(stale.status, 200);
    assert_eq!(stale.body["population"], 605_000, "{}", stale.text);
    assert_eq!(stale.header("etag"), Some("\"10\""));
    assert_eq!(stale_304.status, 304);
    assert_eq!(fresh.status, 200, "{}", fresh.text);
    assert_eq!(fresh.body["population"], 606_000);
    assert_eq!(fresh.header("etag"), Some("\"12\""));
    let hits = api
        .metric(r#"citypop_read_cache_lookups_total{result="hit"}"#)
        .await;
    assert!(hits >= 2.0, "{hits} hits");
    assert!(
        (api.metric(r#"citypop_read_cache_lookups_total{result="miss"}"#)
            .await
            - misses)
            .abs()
            < f64::EPSILON,
        "min_version looked in the cache"
    );

    // Past the TTL the entry is gone and the read is fresh.
    tokio::time::sleep_until(cached_by + TTL + Duration::from_millis(300)).await;
    let after = client.get_city("riga", "").await;
    assert_eq!(after.body["population"], 606_000, "{}", after.text);
    assert_eq!(after.header("etag"), Some("\"12\""));
}
