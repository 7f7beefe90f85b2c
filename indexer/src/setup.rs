//! Start-up: wait for Kafka and the engine, then make sure the topics, the index
//! template, the first index and the alias exist. Every step is idempotent, so any
//! number of indexers may start at once.

use std::time::Duration;

use anyhow::{Context, bail};
use citypop_runtime::wait_until_ready;
use citypop_schemas::document;
use elasticsearch::Elasticsearch;
use elasticsearch::http::StatusCode;
use elasticsearch::indices::{
    IndicesCreateParts, IndicesExistsAliasParts, IndicesPutIndexTemplateParts,
};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::Config;

/// How long one metadata request waits for Kafka.
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

/// Dead letters are rare, and one partition keeps them in the order they failed.
const DLQ_PARTITIONS: i32 = 1;

/// `indexer setup`: everything the indexer ensures on start, and nothing else.
pub async fn run(config: &Config) -> anyhow::Result<()> {
    ensure_topics(config).await?;
    ensure_index(&config.engine.client()?, config).await?;
    println!(
        "set up: topics {} and {}, index template and alias {}",
        config.kafka.topic,
        config.dlq_topic(),
        config.engine.index_alias
    );
    Ok(())
}

pub async fn ensure_topics(config: &Config) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = config
        .kafka
        .client_config("citypop-indexer-admin")
        .create()
        .context("creating the kafka admin client")?;
    let admin = std::sync::Arc::new(admin);
    wait_until_ready("kafka", || {
        let admin = admin.clone();
        async move {
            // Metadata requests block; keep them off the async workers.
            tokio::task::spawn_blocking(move || {
                admin.inner().fetch_metadata(None, METADATA_TIMEOUT)
            })
            .await?
            .context("kafka metadata request")
        }
    })
    .await;

    let replication = || TopicReplication::Fixed(config.topic_replication_factor);
    let dlq_topic = config.dlq_topic();
    // Compaction keeps the newest event and the tombstone of every city, so a
    // rebuild reads one message per city instead of every update ever sent.
    let main = NewTopic::new(&config.kafka.topic, config.topic_partitions, replication())
        .set("cleanup.policy", "compact");
    let dlq = NewTopic::new(&dlq_topic, DLQ_PARTITIONS, replication());
    let results = admin
        .create_topics(
            [&main, &dlq],
            &AdminOptions::new().operation_timeout(Some(METADATA_TIMEOUT)),
        )
        .await
        .context("creating topics")?;
    for result in results {
        match result {
            Ok(topic) => tracing::info!(%topic, "topic created"),
            Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => {
                tracing::debug!(%topic, "topic exists")
            }
            Err((topic, code)) => bail!("cannot create topic {topic}: {code}"),
        }
    }
    Ok(())
}

/// Puts the index template with the explicit mapping for every index behind the
/// alias; repeated puts of the same template are harmless.
pub async fn put_template(client: &Elasticsearch, config: &Config) -> anyhow::Result<()> {
    let alias = &config.engine.index_alias;
    let template = document::index_template(alias, config.index_shards, config.index_replicas);
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

pub async fn ensure_index(client: &Elasticsearch, config: &Config) -> anyhow::Result<()> {
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

    put_template(client, config).await?;
    let alias = &config.engine.index_alias;
    let exists = client
        .indices()
        .exists_alias(IndicesExistsAliasParts::Name(&[alias]))
        .send()
        .await?;
    if exists.status_code() == StatusCode::OK {
        return Ok(());
    }
    // A fixed name for the first index: indexers starting together all try to
    // create the same one, and all but one get "already exists".
    let first_index = format!("{alias}-initial");
    let response = client
        .indices()
        .create(IndicesCreateParts::Index(&first_index))
        .body(serde_json::json!({"aliases": {alias.as_str(): {}}}))
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
