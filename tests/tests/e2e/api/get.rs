//! `GET /city/{name}` with read-your-writes.

use std::time::Duration;

use citypop_tests::api_client::ApiClient;

use super::start;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_your_writes_returns_the_value_just_written() {
    let (_stack, _names, _indexer, api) = start("ryw").await;
    let client = ApiClient::of(&api);

    // Each read right after its write sees it, however fast the writes come.
    let mut last = 0;
    for population in 1..=20 {
        let (_, _, offset) = client
            .post_city("Lisbon", population)
            .await
            .assert_accepted();
        let read = client.read_version("LISBON", offset).await;
        assert_eq!(read.status, 200, "{}", read.text);
        assert_eq!(read.body["population"], population);
        assert!(read.body["version"].as_i64().unwrap() >= offset);
        last = offset;
    }
    // A version already reached answers at once.
    let read = client.read_version("lisbon", last).await;
    assert_eq!(read.status, 200);
    assert!(read.elapsed < Duration::from_secs(2), "{:?}", read.elapsed);

    // A version never reached: 409 after the wait, with the current version.
    let waited = client
        .get_city(
            "lisbon",
            &format!("?min_version={}&wait_ms=400", last + 1_000),
        )
        .await;
    waited.assert_problem(409, "version-not-reached");
    assert_eq!(waited.body["current_version"], last);
    assert_eq!(waited.body["min_version"], last + 1_000);
    assert!(
        waited.elapsed >= Duration::from_millis(400) && waited.elapsed < Duration::from_secs(3),
        "{:?}",
        waited.elapsed
    );
    let absent = client
        .get_city("Nowhere", "?min_version=0&wait_ms=100")
        .await;
    absent.assert_problem(409, "version-not-reached");
    assert!(absent.body["current_version"].is_null(), "{}", absent.text);

    // The wait is bounded and needs a version to wait for.
    for (query, field) in [
        ("?min_version=1&wait_ms=10001", "wait_ms"),
        ("?wait_ms=100", "wait_ms"),
        ("?min_version=-1", "min_version"),
        ("?min_version=abc", "min_version"),
    ] {
        let reply = client.get_city("lisbon", query).await;
        assert_eq!(reply.assert_problem(422, "validation"), [field], "{query}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_for_one_city_share_one_poll_loop() {
    let (_stack, _names, _indexer, api) = start("sharedwait").await;
    let client = ApiClient::of(&api);
    let (_, _, offset) = client.post_city("Porto", 231_962).await.assert_accepted();
    assert_eq!(client.read_version("porto", offset).await.status, 200);
    let before = api.metric("citypop_read_your_writes_polls_total").await;

    // Twenty clients wait two seconds for a version that never comes.
    let waiters: Vec<_> = (0..20)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                client
                    .get_city(
                        "porto",
                        &format!("?min_version={}&wait_ms=2000", offset + 1000),
                    )
                    .await
            })
        })
        .collect();
    for waiter in waiters {
        let reply = waiter.await.unwrap();
        reply.assert_problem(409, "version-not-reached");
        assert_eq!(reply.body["current_version"], offset);
    }
    // One loop polls about every 250 ms: a few dozen reads at most, where twenty
    // loops of their own would have made hundreds.
    let polls = api.metric("citypop_read_your_writes_polls_total").await - before;
    assert!((1.0..=40.0).contains(&polls), "{polls} polls");
}
