//! The one HTTP client of producer-api that every end-to-end test uses, and the
//! answers it reads whole.

use std::time::{Duration, Instant};

use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use crate::Service;

/// The media type of every error answer.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// The longest read-your-writes wait the API allows.
pub const MAX_WAIT_MS: u64 = 10_000;

/// How long the index's searchable view may take to show a write (refresh is 1 s).
pub const SEARCH_VISIBLE: Duration = Duration::from_secs(20);

/// One answer, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
    pub text: String,
    pub elapsed: Duration,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts a problem+json answer with this status and problem type, and returns
    /// the fields its `errors` name.
    pub fn assert_problem(&self, status: u16, kind: &str) -> Vec<String> {
        assert_eq!(self.status, status, "{}", self.text);
        assert_eq!(
            self.header("content-type"),
            Some(PROBLEM_JSON),
            "{}",
            self.text
        );
        assert_eq!(self.body["status"], status, "{}", self.text);
        assert_eq!(
            self.body["type"],
            format!("urn:citypop:problem:{kind}"),
            "{}",
            self.text
        );
        assert!(self.body["title"].is_string() && self.body["detail"].is_string());
        self.body["errors"]
            .as_array()
            .map(|errors| {
                errors
                    .iter()
                    .map(|e| e["field"].as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Asserts a 202 of a write and returns its (key, partition, offset).
    pub fn assert_accepted(&self) -> (String, i32, i64) {
        assert_eq!(self.status, 202, "{}", self.text);
        let event_id = self.body["event_id"].as_str().expect("event_id");
        let event_id = uuid::Uuid::parse_str(event_id).expect("event_id is a uuid");
        assert_eq!(event_id.get_version_num(), 7, "event ids are UUID v7");
        (
            self.body["key"].as_str().expect("key").to_owned(),
            self.body["partition"].as_i64().expect("partition") as i32,
            self.body["offset"].as_i64().expect("offset"),
        )
    }
}

/// A client of one producer-api.
#[derive(Clone)]
pub struct ApiClient {
    pub http: reqwest::Client,
    pub base: String,
}

impl ApiClient {
    pub fn of(api: &Service) -> Self {
        Self::at(&api.base_url)
    }

    pub fn at(base_url: &str) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: base_url.to_owned(),
        }
    }

    /// `{base}{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `/city/{name}` or `/cities/{name}` with the name as one escaped path segment.
    /// Every byte but RFC 3986's unreserved ones is escaped: a URL parser drops a raw
    /// tab or newline, which would send another name than the test meant.
    pub fn city_path(&self, collection: &str, name: &str) -> String {
        let segment: String = name
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    char::from(b).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        format!("{}/{collection}/{segment}", self.base.trim_end_matches('/'))
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        let started = Instant::now();
        // The whole error chain: "error sending request" alone cannot tell a refused
        // connection from a pooled one the server had closed.
        let response = request
            .send()
            .await
            .unwrap_or_else(|error| panic!("request: {error:?}"));
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.expect("body");
        Reply {
            status,
            headers,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
            elapsed: started.elapsed(),
        }
    }

    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.url(path))
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.http.get(self.url(path))).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.send(self.http.post(self.url(path)).json(body)).await
    }

    pub async fn post_city(&self, name: &str, population: i64) -> Reply {
        self.post("/city", &json!({"name": name, "population": population}))
            .await
    }

    pub async fn put_city(&self, name: &str, population: i64) -> Reply {
        self.send(
            self.http
                .put(self.city_path("cities", name))
                .json(&json!({"population": population})),
        )
        .await
    }

    pub async fn get_city(&self, name: &str, query: &str) -> Reply {
        self.send(
            self.http
                .get(format!("{}{query}", self.city_path("city", name))),
        )
        .await
    }

    pub async fn delete_city(&self, name: &str) -> Reply {
        self.send(self.http.delete(self.city_path("city", name)))
            .await
    }

    /// Reads the city once the index holds `version` or later.
    pub async fn read_version(&self, name: &str, version: i64) -> Reply {
        self.get_city(
            name,
            &format!("?min_version={version}&wait_ms={MAX_WAIT_MS}"),
        )
        .await
    }

    /// Every item of a listing, following `next_cursor` to the end; the first page
    /// takes `query`, the next ones only the cursor.
    pub async fn list_all(&self, query: &str) -> Vec<Value> {
        let mut items = Vec::new();
        let mut reply = self.get(&format!("/cities?{query}")).await;
        loop {
            assert_eq!(reply.status, 200, "{}", reply.text);
            items.extend(reply.body["items"].as_array().expect("items").clone());
            match reply.body["next_cursor"].as_str() {
                Some(cursor) => {
                    let limit = query
                        .split('&')
                        .find(|p| p.starts_with("limit="))
                        .unwrap_or("limit=50");
                    reply = self.get(&format!("/cities?cursor={cursor}&{limit}")).await;
                }
                None => return items,
            }
            assert!(items.len() < 100_000, "paging does not end");
        }
    }

    /// Polls a listing until `done` holds for its keys.
    pub async fn wait_listing(&self, query: &str, what: &str, done: impl Fn(&[String]) -> bool) {
        let deadline = Instant::now() + SEARCH_VISIBLE;
        loop {
            let keys = keys(&self.list_all(query).await);
            if done(&keys) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: after {SEARCH_VISIBLE:?} /cities?{query} lists {keys:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The keys of listed items, in order.
pub fn keys(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|item| item["key"].as_str().expect("key").to_owned())
        .collect()
}
