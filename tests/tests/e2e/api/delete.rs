//! `DELETE /city/{name}`: a tombstone hides the city until it is written again.

use citypop_tests::api_client::ApiClient;

use super::start;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_city_is_gone_until_written_again() {
    let (_stack, _names, _indexer, api) = start("delete").await;
    let client = ApiClient::of(&api);

    let (_, _, created) = client
        .post_city("Berlin", 3_600_000)
        .await
        .assert_accepted();
    client.post_city("Bern", 134_000).await.assert_accepted();
    assert_eq!(client.read_version("berlin", created).await.status, 200);
    client
        .wait_listing("prefix=ber", "berlin and bern listed", |keys| {
            keys == ["berlin", "bern"]
        })
        .await;

    let (key, _, deleted) = client.delete_city("BERLIN").await.assert_accepted();
    assert_eq!(key, "berlin");
    assert!(deleted > created);
    // Read-your-writes on the delete: the version is reached, the city is gone.
    client
        .read_version("Berlin", deleted)
        .await
        .assert_problem(404, "not-found");
    client
        .get_city("Berlin", "")
        .await
        .assert_problem(404, "not-found");
    client
        .wait_listing("prefix=ber", "berlin no longer listed", |keys| {
            keys == ["bern"]
        })
        .await;
    // A wait for a later version reports the city as absent.
    let waited = client
        .get_city(
            "berlin",
            &format!("?min_version={}&wait_ms=100", deleted + 1),
        )
        .await;
    waited.assert_problem(409, "version-not-reached");
    assert!(waited.body["current_version"].is_null(), "{}", waited.text);

    // An upsert brings it back.
    let (_, _, recreated) = client
        .post_city("Berlin", 3_700_000)
        .await
        .assert_accepted();
    assert!(recreated > deleted);
    let read = client.read_version("berlin", recreated).await;
    assert_eq!(read.status, 200, "{}", read.text);
    assert_eq!(read.body["population"], 3_700_000);
    assert_eq!(read.body["version"], recreated);
    client
        .wait_listing("prefix=ber", "berlin listed again", |keys| {
            keys == ["berlin", "bern"]
        })
        .await;

    // Deleting a city that never existed is accepted: writes do not read the index.
    client.delete_city("Atlantis").await.assert_accepted();
}
