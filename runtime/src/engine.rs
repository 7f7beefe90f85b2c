use std::time::Duration;

use anyhow::Context;
use elasticsearch::Elasticsearch;
use elasticsearch::http::Url;
use elasticsearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};

/// Where the search engine (Elasticsearch 7.10+ or OpenSearch 2.x) is, and which
/// alias holds the cities.
#[derive(Debug, Clone, clap::Args)]
pub struct EngineArgs {
    /// Base URL of the Elasticsearch or OpenSearch HTTP API.
    #[arg(
        long,
        env = "CITYPOP_ELASTICSEARCH_URL",
        default_value = "http://127.0.0.1:9200"
    )]
    pub elasticsearch_url: Url,

    /// Alias that reads and writes go through; the indexes behind it are named
    /// `<alias>-…` and share the index template of the same name.
    #[arg(long, env = "CITYPOP_INDEX_ALIAS", default_value = "cities")]
    pub index_alias: String,

    /// Timeout of one request to the engine.
    #[arg(long, env = "CITYPOP_ELASTICSEARCH_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub elasticsearch_timeout: Duration,
}

impl EngineArgs {
    pub fn client(&self) -> anyhow::Result<Elasticsearch> {
        let pool = SingleNodeConnectionPool::new(self.elasticsearch_url.clone());
        let transport = TransportBuilder::new(pool)
            // The engine is addressed directly; a proxy from the environment would
            // only add a hop and a way to fail.
            .disable_proxy()
            .timeout(self.elasticsearch_timeout)
            .build()
            .context("building the search engine client")?;
        Ok(Elasticsearch::new(transport))
    }
}
