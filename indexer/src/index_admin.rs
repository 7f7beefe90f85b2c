//! Index administration: the template, the first index and its alias, and what
//! replay does to indexes (create for loading, finish loading, write blocks, the
//! atomic alias swap, replicas, delete). Every call goes through the APIs both
//! Elasticsearch and OpenSearch serve.

use anyhow::{Context, bail};
use citypop_runtime::wait_until_ready;
use citypop_schemas::document;
use elasticsearch::http::StatusCode;
use elasticsearch::indices::{
    IndicesCreateParts, IndicesDeleteParts, IndicesGetAliasParts, IndicesGetMappingParts,
    IndicesPutIndexTemplateParts, IndicesPutSettingsParts, IndicesRefreshParts,
};
use elasticsearch::{CountParts, Elasticsearch};
use serde_json::json;

/// What an index was built from, recorded in its `_meta` so the topic guard can
/// tell a topic that changed under it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicBinding {
    /// The main topic's partition count: a key's partition depends on it.
    pub partitions: Option<i32>,
    /// The id of the topic's incarnation (Kafka 2.8 and later).
    pub topic_id: Option<String>,
}

/// The shape of every index behind the alias.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct IndexArgs {
    /// Primary shards of each index. 3 cost the engine least per event in
    /// README's measurements (against 1 and 12).
    #[arg(
        long = "index-shards",
        env = "CITYPOP_INDEX_SHARDS",
        default_value_t = 3
    )]
    pub shards: u32,

    /// Replicas of each index.
    #[arg(
        long = "index-replicas",
        env = "CITYPOP_INDEX_REPLICAS",
        default_value_t = 1
    )]
    pub replicas: u32,
}

/// Puts the index template with the explicit mapping for every index behind the
/// alias; repeated puts of the same template are harmless.
pub async fn put_template(
    client: &Elasticsearch,
    alias: &str,
    index: &IndexArgs,
    binding: &TopicBinding,
) -> anyhow::Result<()> {
    let mut template = document::index_template(alias, index.shards, index.replicas);
    // Every index created from the template records what it is built from.
    template["template"]["mappings"]["_meta"] = json!({
        META_KEY: {"topic_partitions": binding.partitions, "topic_id": binding.topic_id}
    });
    let response = client
        .indices()
        .put_index_template(IndicesPutIndexTemplateParts::Name(alias))
        .body(template)
        .send()
        .await?;
    if !response.status_code().is_success() {
        let status = response.status_code();
        let body = response.text().await.unwrap_or_default();
        bail!("cannot put index template {alias}: {status} {body}");
    }
    Ok(())
}

/// Waits for the engine, then makes sure the template, the first index and the
/// alias over it exist. Idempotent, so any number of indexers may start at once.
pub async fn ensure_index(
    client: &Elasticsearch,
    alias: &str,
    index: &IndexArgs,
    binding: &TopicBinding,
) -> anyhow::Result<()> {
    wait_until_ready("elasticsearch", || async {
        client
            .cluster()
            .health(elasticsearch::cluster::ClusterHealthParts::None)
            .send()
            .await?
            .error_for_status_code()?;
        Ok(())
    })
    .await;

    put_template(client, alias, index, binding).await?;
    if !indexes_behind(client, alias).await?.is_empty() {
        return Ok(());
    }
    // A fixed name for the first index: indexers starting together all try to
    // create the same one, and all but one get "already exists".
    let first_index = format!("{alias}-initial");
    let response = client
        .indices()
        .create(IndicesCreateParts::Index(&first_index))
        .body(json!({"aliases": {alias: {}}}))
        .send()
        .await?;
    if response.status_code().is_success() {
        tracing::info!(index = %first_index, %alias, "index created");
        return Ok(());
    }
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    if body["error"]["type"] == "resource_already_exists_exception" {
        return Ok(());
    }
    bail!("cannot create index {first_index}: {body}")
}

/// The indexes the alias points to now; none when it does not exist yet.
pub async fn indexes_behind(client: &Elasticsearch, alias: &str) -> anyhow::Result<Vec<String>> {
    let response = client
        .indices()
        .get_alias(IndicesGetAliasParts::Name(&[alias]))
        .send()
        .await?;
    if response.status_code() == StatusCode::NOT_FOUND {
        return Ok(Vec::new());
    }
    let body: serde_json::Value = response
        .error_for_status_code()
        .context("reading the alias")?
        .json()
        .await?;
    Ok(body
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default())
}

/// Loading settings: no replicas to copy to and no refreshes to pay for while
/// nothing reads the index.
pub async fn create_loading_index(client: &Elasticsearch, index: &str) -> anyhow::Result<()> {
    client
        .indices()
        .create(IndicesCreateParts::Index(index))
        .body(json!({"settings": {"index": {"number_of_replicas": 0, "refresh_interval": "-1"}}}))
        .send()
        .await?
        .error_for_status_code()
        .with_context(|| format!("creating index {index}"))?;
    Ok(())
}

/// Makes everything loaded searchable and turns refresh back on before any read can
/// reach the index.
pub async fn finish_loading(client: &Elasticsearch, index: &str) -> anyhow::Result<()> {
    client
        .indices()
        .refresh(IndicesRefreshParts::Index(&[index]))
        .send()
        .await?
        .error_for_status_code()
        .context("refreshing the new index")?;
    put_index_settings(client, &[index], json!({"refresh_interval": null}))
        .await
        .context("turning refresh back on")
}

/// Blocks (or allows again) writes to `indexes`. The live indexer treats the block
/// as transient and retries, so nothing it writes is lost.
pub async fn set_write_block(
    client: &Elasticsearch,
    indexes: &[String],
    blocked: bool,
) -> anyhow::Result<()> {
    if indexes.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = indexes.iter().map(String::as_str).collect();
    // `null` removes the block rather than setting it to false.
    let value = if blocked {
        json!(true)
    } else {
        serde_json::Value::Null
    };
    put_index_settings(client, &names, json!({"blocks": {"write": value}}))
        .await
        .with_context(|| {
            format!(
                "setting the write block of {} to {blocked}",
                names.join(", ")
            )
        })
}

/// Sets the replicas of `index`: loading runs without, serving with.
pub async fn set_replicas(
    client: &Elasticsearch,
    index: &str,
    replicas: u32,
) -> anyhow::Result<()> {
    put_index_settings(client, &[index], json!({"number_of_replicas": replicas}))
        .await
        .with_context(|| format!("setting the replicas of {index}"))
}

/// Changes the dynamic `index.*` settings of `indexes`.
async fn put_index_settings(
    client: &Elasticsearch,
    indexes: &[&str],
    settings: serde_json::Value,
) -> anyhow::Result<()> {
    client
        .indices()
        .put_settings(IndicesPutSettingsParts::Index(indexes))
        .body(json!({ "index": settings }))
        .send()
        .await?
        .error_for_status_code()?;
    Ok(())
}

/// One `_aliases` call: the alias leaves every old index and joins the new one at
/// the same instant, for reads and writes alike.
pub async fn swap_alias(
    client: &Elasticsearch,
    alias: &str,
    previous: &[String],
    index: &str,
) -> anyhow::Result<()> {
    let mut actions: Vec<serde_json::Value> = previous
        .iter()
        .map(|old| json!({"remove": {"index": old, "alias": alias}}))
        .collect();
    actions.push(json!({"add": {"index": index, "alias": alias}}));
    client
        .indices()
        .update_aliases()
        .body(json!({"actions": actions}))
        .send()
        .await?
        .error_for_status_code()
        .context("swapping the alias")?;
    Ok(())
}

/// Documents in `indexes` that are not soft-deleted, counted after a refresh so
/// everything written so far is seen.
pub async fn live_documents(client: &Elasticsearch, indexes: &[String]) -> anyhow::Result<u64> {
    if indexes.is_empty() {
        return Ok(0);
    }
    let names: Vec<&str> = indexes.iter().map(String::as_str).collect();
    client
        .indices()
        .refresh(IndicesRefreshParts::Index(&names))
        .send()
        .await?
        .error_for_status_code()
        .with_context(|| format!("refreshing {}", names.join(", ")))?;
    let body: serde_json::Value = client
        .count(CountParts::Index(&names))
        .body(json!({"query": {"bool": {"must_not": {"term": {"deleted": true}}}}}))
        .send()
        .await?
        .error_for_status_code()
        .with_context(|| format!("counting the documents of {}", names.join(", ")))?
        .json()
        .await?;
    body["count"]
        .as_u64()
        .with_context(|| format!("no count in {body}"))
}

pub async fn delete_indexes(client: &Elasticsearch, indexes: &[String]) -> anyhow::Result<()> {
    let names: Vec<&str> = indexes.iter().map(String::as_str).collect();
    client
        .indices()
        .delete(IndicesDeleteParts::Index(&names))
        .send()
        .await?
        .error_for_status_code()
        .with_context(|| format!("deleting {}", names.join(", ")))?;
    Ok(())
}

/// Where citypop's own facts live in an index's mapping `_meta`.
const META_KEY: &str = "citypop";

/// What the indexes behind `alias` were built from; empty for indexes made before
/// it was recorded.
pub async fn binding(client: &Elasticsearch, alias: &str) -> anyhow::Result<TopicBinding> {
    let body: serde_json::Value = client
        .indices()
        .get_mapping(IndicesGetMappingParts::Index(&[alias]))
        .send()
        .await?
        .error_for_status_code()
        .context("reading the index mapping")?
        .json()
        .await?;
    let recorded: Vec<&serde_json::Value> = body
        .as_object()
        .into_iter()
        .flat_map(|indexes| indexes.values())
        .map(|index| &index["mappings"]["_meta"][META_KEY])
        .collect();
    Ok(TopicBinding {
        partitions: recorded
            .iter()
            .find_map(|meta| meta["topic_partitions"].as_i64())
            .map(|partitions| partitions as i32),
        topic_id: recorded
            .iter()
            .find_map(|meta| meta["topic_id"].as_str())
            .map(str::to_owned),
    })
}
