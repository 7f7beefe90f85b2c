//! Stages 5 and 6, bulk write and classify: the `_bulk` request with external
//! versions, and the judgement of its response item by item.

use bytes::Bytes;
use citypop_schemas::document::CityDocument;
use elasticsearch::{BulkParts, Elasticsearch};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::decode::Write;

/// The final outcome of one document: nothing here is to be tried again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemOutcome {
    Created,
    Updated,
    Deleted,
    /// A version conflict: the index already holds this event or a newer one.
    Stale,
    /// The engine refused the document itself (a document error): dead-letter it.
    Rejected(String),
}

/// What one bulk request did to one document: a final outcome, or a reason to send
/// it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemAttempt {
    Done(ItemOutcome),
    /// The engine is overloaded, failing, or refuses for a reason that is not the
    /// document's (429, 5xx, a write block, rights, a missing index or write index):
    /// send the item again.
    Retry(String),
}

/// The whole request failed: nothing is known about any item, so all are retried.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct RequestFailed(pub String);

/// How many documents go into one bulk request, and how many requests are in
/// flight at once.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct BulkLimits {
    /// Most documents in one bulk request.
    #[arg(
        long = "bulk-max-documents",
        env = "CITYPOP_BULK_MAX_DOCUMENTS",
        default_value_t = 5000
    )]
    pub documents: usize,

    /// Bulk requests in flight at once. Two keep the engine busy while the next
    /// request is built. A batch holds one write per city, so its requests never
    /// race on a document.
    #[arg(
        long = "bulk-concurrency",
        env = "CITYPOP_BULK_CONCURRENCY",
        default_value_t = 2
    )]
    pub concurrency: usize,
}

/// The engine as the indexer writes to it: one bulk request of versioned writes,
/// answered with one attempt result per write, in the same order.
pub(crate) trait BulkSink {
    async fn send(&self, writes: &[&Write]) -> Result<Vec<ItemAttempt>, RequestFailed>;
}

/// The real engine, written to through an alias or an index.
pub struct BulkWriter {
    client: Elasticsearch,
    target: String,
}

impl BulkWriter {
    pub fn new(client: Elasticsearch, target: String) -> Self {
        Self { client, target }
    }
}

impl BulkSink for BulkWriter {
    async fn send(&self, writes: &[&Write]) -> Result<Vec<ItemAttempt>, RequestFailed> {
        let body = encode(writes);
        let response = self
            .client
            .bulk(BulkParts::Index(&self.target))
            // Only what `classify` reads: the full answer repeats the index name,
            // shard counts and sequence numbers for every item, which the engine
            // spends time writing and the indexer reading.
            .filter_path(&RESPONSE_FIELDS)
            .body(vec![body])
            .send()
            .await
            .map_err(|e| RequestFailed(format!("bulk request failed: {e}")))?;
        let status = response.status_code();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            return Err(RequestFailed(format!(
                "bulk request answered {status}: {}",
                truncate(&text)
            )));
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| RequestFailed(format!("unreadable bulk response: {e}")))?;
        parse_response(&body, writes)
    }
}

/// Judges a successful `_bulk` answer item by item, in the order of `writes`.
pub fn parse_response(body: &[u8], writes: &[&Write]) -> Result<Vec<ItemAttempt>, RequestFailed> {
    let parsed = match plain_answer(body) {
        Some(parsed) => parsed,
        None => serde_json::from_slice(body)
            .map_err(|e| RequestFailed(format!("unreadable bulk response: {e}")))?,
    };
    if parsed.items.len() != writes.len() {
        return Err(RequestFailed(format!(
            "bulk response has {} items for {} writes",
            parsed.items.len(),
            writes.len()
        )));
    }
    Ok(parsed
        .items
        .iter()
        .zip(writes)
        .map(|(item, write)| classify(&item.result, write.document.deleted))
        .collect())
}

/// Reads the answer nearly every request gets, `filter_path`-trimmed with no item in
/// error, `{"items":[{"index":{"status":201}},...]}`, byte by byte: serde_json's
/// generic reading of each item's two objects took about 1,100 instructions per
/// document, the most of any step of the indexer's per-event harness. Anything else
/// (an error, another action, whitespace, an untrimmed answer) gives `None`, and
/// serde_json reads the whole answer; the tests hold the two to the same result.
fn plain_answer(body: &[u8]) -> Option<BulkResponse> {
    const OPEN: &[u8] = br#"{"items":["#;
    const ITEM: &[u8] = br#"{"index":{"status":"#;
    let mut rest = body.strip_prefix(OPEN)?;
    let mut items = Vec::new();
    if rest == b"]}" {
        return Some(BulkResponse { items });
    }
    loop {
        rest = rest.strip_prefix(ITEM)?;
        // A status is three digits, the first not 0 (JSON has no leading zeros).
        let (&[first, second, third], after) = rest.split_first_chunk::<3>()?;
        if !(b'1'..=b'9').contains(&first) || !second.is_ascii_digit() || !third.is_ascii_digit() {
            return None;
        }
        let digit = |byte: u8| u16::from(byte - b'0');
        items.push(Item {
            result: ItemResult {
                status: digit(first) * 100 + digit(second) * 10 + digit(third),
                error: None,
            },
        });
        match after.strip_prefix(b"}}")?.split_first()? {
            (b',', next) => rest = next,
            (b']', end) if end == b"}" => return Some(BulkResponse { items }),
            _ => return None,
        }
    }
}

/// The parts of each item's answer that `classify` reads.
const RESPONSE_FIELDS: [&str; 2] = ["items.*.status", "items.*.error"];

/// The NDJSON body: per write, an `index` action carrying the offset as external
/// version, then the document, each on its own line. One buffer sized for the
/// whole request: a pair of buffers per event was a fifth of the body's cost, and
/// the client copies the body once more anyway.
pub fn encode(writes: &[&Write]) -> Bytes {
    let mut body = Vec::with_capacity(writes.len() * BODY_BYTES_PER_WRITE);
    for write in writes {
        write_action(&mut body, write.key(), write.version());
        write_document(&mut body, &write.document);
    }
    Bytes::from(body)
}

// The two lines are written field by field, the names as the constant bytes they
// are: serialised through serde, each of a write's 12 field names went through
// serde_json's string escaping, which with the 6 values was 9% of the indexer's
// CPU in a live profile. The values still go through serde_json. The tests hold
// both lines byte for byte to what serde writes.

/// `{"index":{"_id":<key>,"version":<offset>,"version_type":"external"}}`
fn write_action(body: &mut Vec<u8>, id: &str, version: i64) {
    body.extend_from_slice(br#"{"index":{"_id":"#);
    json_str(body, id);
    body.extend_from_slice(br#","version":"#);
    json_value(body, &version);
    body.extend_from_slice(b",\"version_type\":\"external\"}}\n");
}

/// The document as `CityDocument`'s `Serialize` writes it: its fields in order,
/// `None` fields left out.
fn write_document(body: &mut Vec<u8>, document: &CityDocument) {
    // Every field named: a field added to the document does not compile here until
    // it is written.
    let CityDocument {
        key,
        name,
        population,
        updated_at,
        version,
        partition,
        event_id,
        deleted,
    } = document;
    body.extend_from_slice(br#"{"key":"#);
    json_str(body, key);
    if let Some(name) = name {
        body.extend_from_slice(br#","name":"#);
        json_str(body, name);
    }
    if let Some(population) = population {
        body.extend_from_slice(br#","population":"#);
        json_value(body, population);
    }
    body.extend_from_slice(br#","updated_at":"#);
    json_str(body, updated_at);
    body.extend_from_slice(br#","version":"#);
    json_value(body, version);
    body.extend_from_slice(br#","partition":"#);
    json_value(body, partition);
    if let Some(event_id) = event_id {
        body.extend_from_slice(br#","event_id":"#);
        json_str(body, event_id);
    }
    body.extend_from_slice(if *deleted {
        b",\"deleted\":true}\n"
    } else {
        b",\"deleted\":false}\n"
    });
}

/// A JSON string as serde_json writes it. Keys, names, timestamps and event ids
/// almost never hold a byte JSON escapes (a control character, `"` or `\`), and
/// such a string is its own bytes between quotes: copied, not escaped byte by byte
/// (serde_json's escaping was a tenth of the indexer's instructions per event).
/// Any other string goes through serde_json.
fn json_str(body: &mut Vec<u8>, text: &str) {
    // A fold over every byte, with no early exit: measured cheaper in the per-event
    // harness than `any` (9,035 against 8,532 Ir/event) or `filter().count()`.
    let escapes = text.bytes().fold(false, |any, b| {
        any | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if escapes {
        json_value(body, text);
    } else {
        body.push(b'"');
        body.extend_from_slice(text.as_bytes());
        body.push(b'"');
    }
}

fn json_value(body: &mut Vec<u8>, value: &(impl Serialize + ?Sized)) {
    // A string or a number written into memory cannot fail.
    let _ = serde_json::to_writer(&mut *body, value);
}

/// A write's two lines are about 270 bytes with a city name of a few words; a
/// little more up front saves growing the buffer.
const BODY_BYTES_PER_WRITE: usize = 320;

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ItemResult {
    #[serde(default)]
    status: u16,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct BulkResponse {
    items: Vec<Item>,
}

/// One item's answer, under the name of its action. The indexer only sends
/// `index` actions; reading the one field by name rather than into a map per item
/// saves a map, a string and a copy per document (3.8k of 26k instructions per
/// event before). An item without it has status 0 and is retried.
#[derive(Deserialize)]
struct Item {
    #[serde(
        default,
        rename = "index",
        alias = "create",
        alias = "update",
        alias = "delete"
    )]
    result: ItemResult,
}

pub fn classify(item: &ItemResult, is_delete: bool) -> ItemAttempt {
    use ItemAttempt::{Done, Retry};
    let error = || match &item.error {
        // `type: reason` is what an operator needs; the nested `caused_by` can echo
        // the whole request back.
        Some(e) if e["type"].is_string() && e["reason"].is_string() => truncate(&format!(
            "{}: {}",
            e["type"].as_str().unwrap_or_default(),
            e["reason"].as_str().unwrap_or_default()
        ))
        .to_owned(),
        Some(e) => truncate(&e.to_string()).to_owned(),
        None => format!("status {}", item.status),
    };
    match item.status {
        200..=299 if is_delete => Done(ItemOutcome::Deleted),
        // Both engines answer an `index` action that created its document with 201
        // and one that replaced it with 200: the status says what `result` would,
        // without the engine writing and the indexer reading a string per document.
        201 => Done(ItemOutcome::Created),
        200..=299 => Done(ItemOutcome::Updated),
        409 => Done(ItemOutcome::Stale),
        // Only the document itself is poison. Any other failure of an item (a
        // role without rights on a new index, a missing index, an alias without a
        // write index, 429/5xx, a write block, no status at all) says nothing about
        // the document: dead-lettering it would drain the whole stream into the
        // dead-letter topic, so it is retried like a failed request.
        429 => Retry(error()),
        400..=499 if is_document_error(item.error.as_ref()) => Done(ItemOutcome::Rejected(error())),
        _ => Retry(error()),
    }
}

/// Error types that blame the document (its JSON, a field's value, a field the
/// strict mapping does not know), as Elasticsearch and OpenSearch name them.
const DOCUMENT_ERRORS: [&str; 3] = [
    "mapper_parsing_exception",
    "document_parsing_exception",
    "strict_dynamic_mapping_exception",
];

fn is_document_error(error: Option<&Value>) -> bool {
    error
        .and_then(|e| e["type"].as_str())
        .is_some_and(|kind| DOCUMENT_ERRORS.contains(&kind))
}

/// Error bodies can be large; the first KiB says what went wrong.
fn truncate(text: &str) -> &str {
    match text.char_indices().nth(1024) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// The action line as serde writes it, which [`write_action`] must match.
    #[derive(Serialize)]
    struct Action<'a> {
        index: IndexAction<'a>,
    }

    #[derive(Serialize)]
    struct IndexAction<'a> {
        #[serde(rename = "_id")]
        id: &'a str,
        version: i64,
        version_type: &'static str,
    }

    #[test]
    fn the_body_is_byte_for_byte_what_serde_writes() {
        let strings = [
            "",
            "oslo",
            "São Paulo",
            "quote \" and backslash \\",
            "tab\tnew line\ncarriage\rnul\u{0}bell\u{7}",
            "\u{1f}\u{7f}\u{2028}\u{2029}",
            "東京 🏙️ ﷺ",
            "</script>",
            // Each byte JSON escapes alone, and its neighbours that it does not.
            "\"",
            "\\",
            "\u{0}",
            "\u{1f}",
            " ",
            "\u{7f}",
        ];
        let mut writes = Vec::new();
        for (i, text) in strings.iter().enumerate() {
            for shape in 0..8 {
                let present = |bit: usize| shape & (1 << bit) != 0;
                writes.push(Write {
                    document: CityDocument {
                        key: text.to_string(),
                        name: present(0).then(|| format!("{text} name")),
                        population: present(1).then_some(if i % 2 == 0 { i64::MAX } else { -7 }),
                        updated_at: format!("2026-12-04T00:00:0{i}Z{text}"),
                        version: [0, 1, i64::MAX][i % 3],
                        partition: [0, 11, i32::MAX][i % 3],
                        event_id: present(2).then(|| format!("{text}-id")),
                        deleted: i % 2 == 1,
                    },
                    occurred_at_micros: 0,
                    redriven: false,
                });
            }
        }
        let refs: Vec<&Write> = writes.iter().collect();
        let mut expected = Vec::new();
        for write in &writes {
            let action = Action {
                index: IndexAction {
                    id: write.key(),
                    version: write.version(),
                    version_type: "external",
                },
            };
            serde_json::to_writer(&mut expected, &action).unwrap();
            expected.push(b'\n');
            serde_json::to_writer(&mut expected, &write.document).unwrap();
            expected.push(b'\n');
        }
        let body = encode(&refs);
        assert_eq!(
            String::from_utf8_lossy(&body),
            String::from_utf8_lossy(&expected)
        );
        assert_eq!(&body[..], &expected[..]);
    }

    fn item(status: u16) -> ItemResult {
        ItemResult {
            status,
            error: (status >= 300).then(|| json!({"type": "mapper_parsing_exception"})),
        }
    }

    #[test]
    fn items_are_classified_by_status() {
        let done = |outcome| ItemAttempt::Done(outcome);
        assert_eq!(classify(&item(201), false), done(ItemOutcome::Created));
        assert_eq!(classify(&item(200), false), done(ItemOutcome::Updated));
        assert_eq!(classify(&item(200), true), done(ItemOutcome::Deleted));
        assert_eq!(classify(&item(409), false), done(ItemOutcome::Stale));
        assert!(matches!(classify(&item(429), false), ItemAttempt::Retry(_)));
        assert!(matches!(classify(&item(503), false), ItemAttempt::Retry(_)));
        assert!(matches!(
            classify(&item(400), false),
            ItemAttempt::Done(ItemOutcome::Rejected(_))
        ));
        let write_block = ItemResult {
            status: 403,
            error: Some(json!({"type": "cluster_block_exception"})),
        };
        assert!(matches!(
            classify(&write_block, false),
            ItemAttempt::Retry(_)
        ));
    }

    #[test]
    fn responses_are_read_item_by_item_in_order() {
        let document = |deleted| Write {
            document: CityDocument {
                deleted,
                ..CityDocument::deleted("k", None, 0, 0, 1)
            },
            occurred_at_micros: 0,
            redriven: false,
        };
        let (kept, gone) = (document(false), document(true));
        let body = br#"{"items":[{"index":{"status":201}},{"index":{"status":409,"error":{"type":"version_conflict_engine_exception","reason":"r"}}},{"index":{"status":200}},{},{"index":{"status":200}}]}"#;
        let attempts = parse_response(body, &[&kept, &kept, &gone, &kept, &kept]).unwrap();
        assert_eq!(attempts[0], ItemAttempt::Done(ItemOutcome::Created));
        assert_eq!(attempts[1], ItemAttempt::Done(ItemOutcome::Stale));
        assert_eq!(attempts[2], ItemAttempt::Done(ItemOutcome::Deleted));
        assert!(
            matches!(attempts[3], ItemAttempt::Retry(_)),
            "no answer: retried"
        );
        assert_eq!(attempts[4], ItemAttempt::Done(ItemOutcome::Updated));
        assert!(
            parse_response(body, &[&kept]).is_err(),
            "item count must match"
        );
    }

    #[test]
    fn the_engine_s_usual_answer_is_read_without_serde() {
        let answer = br#"{"items":[{"index":{"status":201}},{"index":{"status":200}}]}"#;
        let statuses: Vec<u16> = plain_answer(answer)
            .expect("the usual answer takes the plain path")
            .items
            .iter()
            .map(|item| item.result.status)
            .collect();
        assert_eq!(statuses, [201, 200]);
        assert!(plain_answer(br#"{"items":[]}"#).is_some());
    }

    /// One item of an answer, in a shape the plain reader takes or one it leaves
    /// to serde_json (valid JSON or not).
    fn answer_item() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => (100u16..1000).prop_map(|status| format!(r#"{{"index":{{"status":{status}}}}}"#)),
            // A leading zero: not JSON.
            1 => (0u16..100).prop_map(|status| format!(r#"{{"index":{{"status":{status:03}}}}}"#)),
            1 => (1000u16..10000).prop_map(|status| format!(r#"{{"index":{{"status":{status}}}}}"#)),
            1 => Just(r#"{"index":{"status":409,"error":{"type":"version_conflict_engine_exception","reason":"r"}}}"#.to_owned()),
            1 => Just(r#"{"index":{"status":400,"error":{"type":"mapper_parsing_exception","reason":"r"}}}"#.to_owned()),
            1 => Just(r#"{"create":{"status":201}}"#.to_owned()),
            1 => Just(r#"{ "index" : { "status" : 201 } }"#.to_owned()),
            1 => Just(r#"{"index":{"status":201,"result":"created"}}"#.to_owned()),
            1 => Just("{}".to_owned()),
            1 => Just(r#"{"index":{"status":2010}}"#.to_owned()),
            1 => Just(r#"{"index":{"status":20}}"#.to_owned()),
        ]
    }

    proptest! {
        #[test]
        fn the_plain_reader_agrees_with_serde_json(
            items in proptest::collection::vec(answer_item(), 0..8),
            deleted in proptest::collection::vec(any::<bool>(), 8),
            cut in any::<proptest::sample::Index>(),
            tail in prop_oneof![Just(""), Just(" "), Just("}"), Just(",")],
        ) {
            let writes: Vec<Write> = deleted[..items.len()]
                .iter()
                .map(|&deleted| Write {
                    document: CityDocument { deleted, ..CityDocument::deleted("k", None, 0, 0, 1) },
                    occurred_at_micros: 0,
                    redriven: false,
                })
                .collect();
            let writes: Vec<&Write> = writes.iter().collect();
            let answer = format!(r#"{{"items":[{}]}}{tail}"#, items.join(","));
            let through_serde = |body: &[u8]| {
                serde_json::from_slice::<BulkResponse>(body).ok().map(|parsed| {
                    parsed
                        .items
                        .iter()
                        .zip(&writes)
                        .map(|(item, write)| classify(&item.result, write.document.deleted))
                        .collect::<Vec<_>>()
                })
            };
            for body in [answer.as_bytes(), &answer.as_bytes()[..cut.index(answer.len() + 1)]] {
                let read = parse_response(body, &writes).ok();
                prop_assert_eq!(read, through_serde(body), "{}", String::from_utf8_lossy(body));
            }
        }
    }

    /// An answer that was not trimmed (a proxy dropping `filter_path`, an engine
    /// ignoring it) carries `result` and much more; the status alone decides.
    #[test]
    fn a_full_answer_is_read_by_its_status() {
        let write = Write {
            document: CityDocument {
                deleted: false,
                ..CityDocument::deleted("k", None, 0, 0, 1)
            },
            occurred_at_micros: 0,
            redriven: false,
        };
        let body = br#"{"took":3,"errors":false,"items":[{"index":{"_index":"cities-1","_id":"k","_version":7,"result":"created","_shards":{"total":2,"successful":1,"failed":0},"_seq_no":0,"_primary_term":1,"status":201}},{"index":{"_index":"cities-1","_id":"k","_version":9,"result":"updated","_shards":{"total":2,"successful":1,"failed":0},"_seq_no":1,"_primary_term":1,"status":200}}]}"#;
        assert_eq!(
            parse_response(body, &[&write, &write]).unwrap(),
            [
                ItemAttempt::Done(ItemOutcome::Created),
                ItemAttempt::Done(ItemOutcome::Updated)
            ]
        );
    }

    fn failed(status: Option<u16>, error: Value) -> ItemResult {
        ItemResult {
            status: status.unwrap_or_default(),
            error: Some(error),
        }
    }

    #[test]
    fn only_document_errors_are_poison() {
        for kind in [
            "mapper_parsing_exception",
            "document_parsing_exception",
            "strict_dynamic_mapping_exception",
        ] {
            let item = failed(
                Some(400),
                json!({"type": kind, "reason": "field [population]"}),
            );
            assert!(
                matches!(classify(&item, false), ItemAttempt::Done(ItemOutcome::Rejected(e)) if e.starts_with(kind)),
                "{kind} is the document's fault"
            );
        }
    }

    #[test]
    fn infrastructure_errors_of_an_item_are_retried_never_dead_lettered() {
        let cases = [
            (
                Some(403),
                json!({"type": "security_exception", "reason": "action [indices:data/write/bulk[s]] is unauthorized"}),
            ),
            (
                Some(404),
                json!({"type": "index_not_found_exception", "reason": "no such index [cities-2]"}),
            ),
            (
                Some(400),
                json!({"type": "illegal_argument_exception", "reason": "no write index is defined for alias [cities]"}),
            ),
            (None, json!({"type": "some_new_exception", "reason": "?"})),
        ];
        for (status, error) in cases {
            let kind = error["type"].as_str().unwrap().to_owned();
            let attempt = classify(&failed(status, error), false);
            assert!(
                matches!(&attempt, ItemAttempt::Retry(e) if e.starts_with(&kind)),
                "{kind}: {attempt:?}"
            );
        }
    }

    #[test]
    fn actions_carry_the_offset_as_external_version() {
        let write = Write {
            document: CityDocument::deleted("paris", None, 0, 3, 42),
            occurred_at_micros: 0,
            redriven: false,
        };
        let body = encode(&[&write]);
        assert!(body.ends_with(b"\n"), "NDJSON ends with a newline");
        let lines: Vec<&[u8]> = body[..body.len() - 1].split(|&b| b == b'\n').collect();
        assert_eq!(lines.len(), 2);
        let action: Value = serde_json::from_slice(lines[0]).unwrap();
        assert_eq!(
            action,
            json!({"index": {"_id": "paris", "version": 42, "version_type": "external"}})
        );
        let document: Value = serde_json::from_slice(lines[1]).unwrap();
        assert_eq!(document["deleted"], true);
    }
}
