//! Reads from the search index alias. producer-api never writes to the engine.

use citypop_runtime::EngineArgs;
use citypop_schemas::CityKey;
use citypop_schemas::document::CityDocument;
use elasticsearch::cluster::ClusterHealthParts;
use elasticsearch::http::StatusCode;
use elasticsearch::{Elasticsearch, GetParts};

pub struct CityIndex {
    client: Elasticsearch,
    alias: String,
}

impl CityIndex {
    pub fn new(engine: &EngineArgs) -> anyhow::Result<Self> {
        Ok(Self {
            client: engine.client()?,
            alias: engine.index_alias.clone(),
        })
    }

    /// The city's current document; `None` when it was never indexed or is deleted.
    pub async fn get(&self, key: &CityKey) -> anyhow::Result<Option<CityDocument>> {
        let response = self
            .client
            .get(GetParts::IndexId(&self.alias, key.as_str()))
            .send()
            .await?;
        if response.status_code() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let response = response.error_for_status_code()?;
        let body: GetResponse = response.json().await?;
        Ok(body.source.filter(|doc| !doc.deleted))
    }

    /// Whether the engine answers and the cluster is at least yellow.
    pub async fn check_engine(&self) -> Result<(), String> {
        let response = self
            .client
            .cluster()
            .health(ClusterHealthParts::None)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let body: serde_json::Value = response
            .error_for_status_code()
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        match body["status"].as_str() {
            Some("green" | "yellow") => Ok(()),
            other => Err(format!("cluster status is {}", other.unwrap_or("unknown"))),
        }
    }
}

#[derive(serde::Deserialize)]
struct GetResponse {
    #[serde(rename = "_source")]
    source: Option<CityDocument>,
}
