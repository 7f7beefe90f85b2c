//! Reads from the search index alias. producer-api never writes to the engine.

use std::time::{Duration, Instant};

use citypop_runtime::EngineArgs;
use citypop_schemas::CityKey;
use citypop_schemas::document::CityDocument;
use elasticsearch::cluster::ClusterHealthParts;
use elasticsearch::http::StatusCode;
use elasticsearch::{Elasticsearch, GetSourceParts, MgetParts, SearchParts};
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::search::{Search, SortOrder};

/// How long the engine may wait for the alias's index to become yellow before it
/// answers a health request: a missing index makes it wait the whole time, and a
/// probe must answer well within Kubernetes' probe timeout.
const HEALTH_WAIT: &str = "1s";

/// Why the index could not be read, by what the client can do about it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IndexError {
    /// The engine is down, slow, overloaded or refuses our credentials: retrying
    /// later may work.
    #[error("the engine is unavailable: {0}")]
    Unavailable(String),
    /// The engine refused the request or answered something unreadable: a bug here
    /// or in the data, which no retry fixes.
    #[error("the engine's answer is unusable: {0}")]
    Broken(String),
}

impl From<elasticsearch::Error> for IndexError {
    fn from(error: elasticsearch::Error) -> Self {
        match error.status_code() {
            Some(status) => judge(status, error.to_string()),
            // No answer at all: connection refused, reset, or timed out.
            None => Self::Unavailable(error.to_string()),
        }
    }
}

/// An error status, by whether a retry may help: 401 and 403 are credentials an
/// operator fixes, 408, 429 and 5xx pass; any other refusal is a request this
/// service should never have sent.
fn judge(status: StatusCode, error: String) -> IndexError {
    match status.as_u16() {
        401 | 403 | 408 | 429 | 500..=599 => IndexError::Unavailable(error),
        _ => IndexError::Broken(error),
    }
}

/// The answer's status as an error, when it is one.
fn checked(
    response: elasticsearch::http::response::Response,
) -> Result<elasticsearch::http::response::Response, IndexError> {
    let status = response.status_code();
    if status.is_client_error() || status.is_server_error() {
        return Err(judge(status, format!("the engine answered {status}")));
    }
    Ok(response)
}

/// The answer's body as `T`: a body cut off mid-way is a transient failure, a whole
/// body that is not what was expected is broken.
async fn decode<T: serde::de::DeserializeOwned>(
    response: elasticsearch::http::response::Response,
) -> Result<T, IndexError> {
    let body = response.bytes().await?;
    serde_json::from_slice(&body).map_err(|e| IndexError::Broken(e.to_string()))
}

/// What one read of a city found: its document (soft-deleted ones included), `None`
/// when it was never indexed, or why the index could not say.
pub type Read = Result<Option<CityDocument>, IndexError>;

pub struct CityIndex {
    client: Elasticsearch,
    alias: String,
    read_timeout: Duration,
}

/// One page of a search: the documents, and the sort values of each to continue
/// after it.
pub struct Page {
    pub hits: Vec<(CityDocument, Vec<Value>)>,
}

/// The engine's state, for `/health`.
#[derive(Debug, Serialize, ToSchema)]
pub struct EngineStatus {
    pub cluster_name: String,
    /// The health of the alias's index: `green` or `yellow`; `red` counts as down.
    pub cluster_status: String,
    pub alias: String,
    pub latency_ms: u64,
}

impl CityIndex {
    /// `read_timeout` bounds each read, answer body included.
    pub fn new(engine: &EngineArgs, read_timeout: Duration) -> anyhow::Result<Self> {
        Ok(Self {
            client: engine.client()?,
            alias: engine.index_alias.clone(),
            read_timeout,
        })
    }

    /// `read` within the read timeout; past it the engine counts as unavailable.
    async fn bounded<T>(
        &self,
        read: impl Future<Output = Result<T, IndexError>>,
    ) -> Result<T, IndexError> {
        tokio::time::timeout(self.read_timeout, read)
            .await
            .unwrap_or_else(|_| {
                Err(IndexError::Unavailable(format!(
                    "no answer within {:?}",
                    self.read_timeout
                )))
            })
    }

    /// The city's current document, soft-deleted ones included (their version
    /// matters to read-your-writes); `None` when it was never indexed. A get by id is
    /// real-time: it sees a write before the index refreshes.
    pub async fn get(&self, key: &CityKey) -> Result<Option<CityDocument>, IndexError> {
        self.bounded(self.get_unbounded(key)).await
    }

    async fn get_unbounded(&self, key: &CityKey) -> Result<Option<CityDocument>, IndexError> {
        // `_source` alone: the engine writes, and this parses, only the document.
        let response = self
            .client
            .get_source(GetSourceParts::IndexId(&self.alias, key.as_str()))
            .send()
            .await?;
        // A missing document and a missing alias (no indexer has run yet) both mean
        // the city is not there.
        if response.status_code() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let response = checked(response)?;
        Ok(Some(decode(response).await?))
    }

    /// The current documents of `keys`, in their order, in one `_mget`; each as
    /// [`CityIndex::get`] would have found it. An error of the whole request is the
    /// outer error; an error the engine reports for one document is that document's
    /// alone. Real-time like a get by id: `_mget` is real-time unless told otherwise,
    /// and it is never told.
    pub async fn get_many(&self, keys: &[CityKey]) -> Result<Vec<Read>, IndexError> {
        self.bounded(self.get_many_unbounded(keys)).await
    }

    async fn get_many_unbounded(&self, keys: &[CityKey]) -> Result<Vec<Read>, IndexError> {
        let ids: Vec<&str> = keys.iter().map(CityKey::as_str).collect();
        let response = self
            .client
            .mget(MgetParts::Index(&self.alias))
            .body(json!({ "ids": ids }))
            .send()
            .await?;
        let body: MgetResponse = decode(checked(response)?).await?;
        // The engine answers one entry per id, in the order asked; anything else
        // would pair a document with the wrong request.
        if body.docs.len() != keys.len() {
            return Err(IndexError::Broken(format!(
                "_mget answered {} documents for {} ids",
                body.docs.len(),
                keys.len()
            )));
        }
        Ok(body.docs.into_iter().map(MgetDoc::into_read).collect())
    }

    /// One page of live (not deleted) cities, `size` at most.
    pub async fn search(&self, search: &Search, size: usize) -> Result<Page, IndexError> {
        self.bounded(self.search_unbounded(search, size)).await
    }

    async fn search_unbounded(&self, search: &Search, size: usize) -> Result<Page, IndexError> {
        let mut filters = Vec::new();
        if let Some(prefix) = &search.prefix {
            filters.push(json!({"prefix": {"key": prefix}}));
        }
        if search.min_population.is_some() || search.max_population.is_some() {
            let mut range = serde_json::Map::new();
            if let Some(min) = search.min_population {
                range.insert("gte".into(), min.into());
            }
            if let Some(max) = search.max_population {
                range.insert("lte".into(), max.into());
            }
            filters.push(json!({"range": {"population": range}}));
        }
        // The key is unique, so ending every sort with it gives a total order:
        // `search_after` then neither skips nor repeats a city between pages.
        let sort = match search.sort {
            SortOrder::Name => json!([{"key": "asc"}]),
            SortOrder::Population => json!([{"population": "asc"}, {"key": "asc"}]),
            SortOrder::PopulationDesc => json!([{"population": "desc"}, {"key": "asc"}]),
        };
        let mut body = json!({
            "size": size,
            "query": {"bool": {
                "filter": filters,
                "must_not": [{"term": {"deleted": true}}],
            }},
            "sort": sort,
            "track_total_hits": false,
        });
        if let Some(after) = &search.after {
            body["search_after"] = Value::Array(after.clone());
        }
        let response = self
            .client
            .search(SearchParts::Index(&[&self.alias]))
            .body(body)
            .send()
            .await?;
        // No index behind the alias yet: no cities.
        if response.status_code() == StatusCode::NOT_FOUND {
            return Ok(Page { hits: Vec::new() });
        }
        let body: SearchResponse = decode(checked(response)?).await?;
        Ok(Page {
            hits: body
                .hits
                .hits
                .into_iter()
                .map(|hit| (hit.source, hit.sort))
                .collect(),
        })
    }

    /// Whether the index behind the alias can serve reads: `_cluster/health/<alias>`
    /// at least yellow. The health of that index only, so an unrelated red index
    /// elsewhere in the cluster does not take reads out, and it needs only the
    /// `monitor` privilege on the alias's index rather than on the cluster. An alias
    /// that does not exist yet (no indexer has run) is down: the engine answers that
    /// as `408` with status `red` once `HEALTH_WAIT` has passed.
    pub async fn check_engine(&self) -> Result<EngineStatus, String> {
        let started = Instant::now();
        let response = self
            .client
            .cluster()
            .health(ClusterHealthParts::Index(&[&self.alias]))
            .timeout(HEALTH_WAIT)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let code = response.status_code();
        if code != StatusCode::REQUEST_TIMEOUT && !code.is_success() {
            return Err(format!("cluster health answered {code}"));
        }
        let body: Value = response.json().await.map_err(|e| e.to_string())?;
        let status = body["status"].as_str().unwrap_or("unknown");
        match status {
            "green" | "yellow" => Ok(EngineStatus {
                cluster_name: body["cluster_name"].as_str().unwrap_or_default().to_owned(),
                cluster_status: status.to_owned(),
                alias: self.alias.clone(),
                latency_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            }),
            other => Err(format!(
                "the index behind alias {:?} is {other}, or missing",
                self.alias
            )),
        }
    }
}

#[derive(serde::Deserialize)]
struct SearchResponse {
    hits: Hits,
}

#[derive(serde::Deserialize)]
struct Hits {
    hits: Vec<Hit>,
}

#[derive(serde::Deserialize)]
struct Hit {
    #[serde(rename = "_source")]
    source: CityDocument,
    #[serde(default)]
    sort: Vec<Value>,
}

#[derive(serde::Deserialize)]
struct MgetResponse {
    docs: Vec<MgetDoc>,
}

#[derive(serde::Deserialize)]
struct MgetDoc {
    #[serde(rename = "_source")]
    source: Option<CityDocument>,
    error: Option<MgetError>,
}

#[derive(serde::Deserialize)]
struct MgetError {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    reason: String,
}

impl MgetDoc {
    fn into_read(self) -> Read {
        match self.error {
            None => Ok(self.source),
            // No index behind the alias yet (no indexer has run): the city is not
            // there, as a get by id answers with its 404.
            Some(error) if error.kind == "index_not_found_exception" => Ok(None),
            // A shard that cannot answer now, most often: a retry may work.
            Some(error) => Err(IndexError::Unavailable(format!(
                "_mget failed for one document: {}: {}",
                error.kind, error.reason
            ))),
        }
    }
}
