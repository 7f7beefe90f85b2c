//! `POST /cities/bulk`: each item judged on its own.

use citypop_tests::api_client::ApiClient;
use serde_json::{Value, json};

use super::{chunked_post, key, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_requests_judge_each_item() {
    let (_stack, _names, _indexer, api) = start("bulk").await;
    let client = ApiClient::of(&api);

    let mixed = json!([
        {"name": "Lyon", "population": 522_250},
        {"name": "Marseille", "population": "873k"},
        {"name": "ZÜRICH", "population": 400_000},
        {"name": "Nice", "population": 342_669, "region": "PACA"},
        "Toulouse",
        {"name": "zürich", "population": 443_037},
        {"name": "", "population": -5},
    ]);
    let reply = client.post("/cities/bulk", &mixed).await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(
        (
            reply.body["accepted"].clone(),
            reply.body["rejected"].clone(),
            reply.body["failed"].clone()
        ),
        (json!(3), json!(4), json!(0))
    );
    let items = reply.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 7);
    let expected = [
        ("accepted", 202, vec![]),
        ("rejected", 422, vec!["population"]),
        ("accepted", 202, vec![]),
        ("rejected", 422, vec!["region"]),
        ("rejected", 422, vec![""]),
        ("accepted", 202, vec![]),
        ("rejected", 422, vec!["name", "population"]),
    ];
    for (index, (item, (result, status, fields))) in items.iter().zip(&expected).enumerate() {
        assert_eq!(item["index"], index, "{item}");
        assert_eq!(item["result"], *result, "{item}");
        assert_eq!(item["status"], *status, "{item}");
        let named: Vec<&str> = item["errors"]
            .as_array()
            .map(|e| e.iter().map(|e| e["field"].as_str().unwrap()).collect())
            .unwrap_or_default();
        assert_eq!(named, *fields, "{item}");
        if *result == "accepted" {
            assert!(
                item["offset"].is_i64() && item["partition"].is_i64(),
                "{item}"
            );
        } else {
            assert!(item.get("offset").is_none(), "{item}");
        }
    }
    // Items of one city keep their order: the later ZÜRICH item wins.
    assert_eq!(items[2]["key"], "zürich");
    assert_eq!(items[2]["partition"], items[5]["partition"]);
    assert!(items[5]["offset"].as_i64() > items[2]["offset"].as_i64());
    let read = client
        .read_version("zu\u{308}rich", items[5]["offset"].as_i64().unwrap())
        .await;
    assert_eq!(read.body["population"], 443_037, "{}", read.text);
    let read = client
        .read_version("lyon", items[0]["offset"].as_i64().unwrap())
        .await;
    assert_eq!(read.body["population"], 522_250, "{}", read.text);

    // Nothing valid: 422, with every error named by index and every item's result.
    let invalid = client
        .post(
            "/cities/bulk",
            &json!([{"name": "A", "population": 1.5}, 7]),
        )
        .await;
    assert_eq!(
        invalid.assert_problem(422, "validation"),
        ["[0].population", "[1]"]
    );
    assert_eq!(invalid.body["items"].as_array().unwrap().len(), 2);
    assert_eq!(invalid.body["items"][1]["result"], "rejected");

    // Not a list, or an empty one.
    for body in [json!({"name": "A", "population": 1}), json!([])] {
        client
            .post("/cities/bulk", &body)
            .await
            .assert_problem(422, "validation");
    }
    // More than 1000 items, or more than 4 MiB.
    let too_many: Vec<Value> = (0..1001)
        .map(|i| json!({"name": format!("Many {i}"), "population": i}))
        .collect();
    client
        .post("/cities/bulk", &Value::Array(too_many))
        .await
        .assert_problem(413, "payload-too-large");
    // Without a Content-Length (chunked), the limit is found while reading. Over raw
    // TCP: the server may answer and close before the whole body is sent, which an
    // HTTP client reports as a failed write rather than the answer.
    let answer = chunked_post(&client.base, "/cities/bulk", 4 * 1024 * 1024 + 1).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.contains("urn:citypop:problem:payload-too-large"),
        "{answer}"
    );

    // Exactly 1000 items, over the 64 KiB single-write limit, all accepted.
    let padding = "x".repeat(120);
    let thousand: Vec<Value> = (0..1000)
        .map(|i| json!({"name": format!("Bulk {i} {padding}"), "population": i}))
        .collect();
    let body = Value::Array(thousand);
    assert!(body.to_string().len() > 64 * 1024);
    let reply = client.post("/cities/bulk", &body).await;
    assert_eq!(
        reply.status,
        202,
        "{}",
        &reply.text[..reply.text.len().min(500)]
    );
    assert_eq!(reply.body["accepted"], 1000);
    let items = reply.body["items"].as_array().unwrap();
    for (index, item) in items.iter().enumerate() {
        assert_eq!(item["index"], index);
        assert_eq!(item["key"], key(&format!("Bulk {index} {padding}")));
    }
    let last = &items[999];
    let read = client
        .read_version(
            last["key"].as_str().unwrap(),
            last["offset"].as_i64().unwrap(),
        )
        .await;
    assert_eq!(read.body["population"], 999, "{}", read.text);
}
