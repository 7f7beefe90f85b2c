//! Start-up: wait for Kafka and the engine, then make sure the topics, the index
//! template, the first index and the alias exist (the index side is in
//! [`crate::index_admin`]). Every step is idempotent, so any
//! number of indexers may start at once.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use citypop_runtime::wait_until_ready;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::Config;
use crate::index_admin::{self, TopicBinding};
use crate::offsets::OffsetReader;

/// How long one metadata request waits for Kafka.
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

/// Dead letters are rare, and one partition keeps them in the order they failed.
const DLQ_PARTITIONS: i32 = 1;

/// `indexer setup`: everything the indexer ensures on start, and nothing else. Unlike
/// the indexer, it fails when an existing main topic is not what citypop needs, so
/// a deploy hook stops there and says why.
pub async fn run(config: &Config) -> anyhow::Result<()> {
    let problems = ensure_topics(config).await?;
    if !problems.is_empty() {
        bail!(
            "topic {} is not what citypop needs: {}",
            config.kafka.topic,
            problems.join("; ")
        );
    }
    ensure_index(config).await?;
    println!(
        "set up: topics {} and {}, index template and alias {}",
        config.kafka.topic,
        config.dlq_topic(),
        config.engine.index_alias
    );
    Ok(())
}

/// The index template, the first index and the alias.
pub async fn ensure_index(config: &Config) -> anyhow::Result<()> {
    let offsets = OffsetReader::new(&config.kafka)?;
    // A topic just created answers metadata errors for a moment.
    let marks = wait_until_ready("the topic's partitions", || {
        offsets.watermarks(&config.kafka.topic)
    })
    .await;
    let topic_id = offsets.topic_id(&config.kafka.topic).await?;
    index_admin::ensure_index(
        &config.engine.client()?,
        &config.engine.index_alias,
        &config.index,
        &TopicBinding {
            partitions: Some(marks.len() as i32),
            topic_id,
        },
    )
    .await
}

/// Creates the main and dead-letter topics where they are missing. Returns what is
/// wrong with an existing main topic (its cleanup policy or partition count), in
/// words; the indexer logs it, `indexer setup` fails on it.
pub async fn ensure_topics(config: &Config) -> anyhow::Result<Vec<String>> {
    let admin = admin_client(config)?;
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

    let replication = || TopicReplication::Fixed(config.topics.replication_factor);
    let dlq_topic = config.dlq_topic();
    // Compaction keeps the newest event and the tombstone of every city, so a
    // rebuild reads one message per city instead of every update ever sent.
    let mut main = NewTopic::new(&config.kafka.topic, config.topics.partitions, replication())
        .set("cleanup.policy", "compact");
    // Dead letters wait for a fix and a redrive, however long that takes.
    let retention = config.topics.dlq_retention_ms.to_string();
    let mut dlq =
        NewTopic::new(&dlq_topic, DLQ_PARTITIONS, replication()).set("retention.ms", &retention);
    // With acks=all, an acknowledged write is on this many replicas: what survives
    // the loss of a broker.
    let min_insync = config.topics.min_insync_replicas().map(|n| n.to_string());
    if let Some(min_insync) = &min_insync {
        main = main.set("min.insync.replicas", min_insync);
        dlq = dlq.set("min.insync.replicas", min_insync);
    }
    let results = admin
        .create_topics(
            [&main, &dlq],
            &AdminOptions::new().operation_timeout(Some(METADATA_TIMEOUT)),
        )
        .await
        .context("creating topics")?;
    let mut main_existed = false;
    for result in results {
        match result {
            Ok(topic) => tracing::info!(%topic, "topic created"),
            Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => {
                tracing::debug!(%topic, "topic exists");
                main_existed |= topic == config.kafka.topic;
            }
            Err((topic, code)) => bail!("cannot create topic {topic}: {code}"),
        }
    }
    if !main_existed {
        return Ok(Vec::new());
    }
    let problems = match check_main_topic(config, &admin).await {
        Ok(problems) => problems,
        // A user without the right to describe topic configs can still run the
        // indexer; only the check is lost.
        Err(error) => {
            tracing::warn!(topic = %config.kafka.topic, error = format!("{error:#}"), "cannot check the main topic's settings");
            Vec::new()
        }
    };
    for problem in &problems {
        tracing::warn!(topic = %config.kafka.topic, "{problem}");
    }
    Ok(problems)
}

/// A Kafka admin client of the indexer's settings.
pub fn admin_client(config: &Config) -> anyhow::Result<Arc<AdminClient<DefaultClientContext>>> {
    let admin: AdminClient<DefaultClientContext> = config
        .kafka
        .client_config("citypop-indexer-admin")
        .create()
        .context("creating the kafka admin client")?;
    Ok(Arc::new(admin))
}

/// The `cleanup.policy` of `topic`, as the broker reports it (its own or the
/// broker's default).
pub async fn cleanup_policy(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
) -> anyhow::Result<String> {
    let described = admin
        .describe_configs(
            [&ResourceSpecifier::Topic(topic)],
            &AdminOptions::new().request_timeout(Some(METADATA_TIMEOUT)),
        )
        .await
        .with_context(|| format!("describing topic {topic}"))?;
    match described.into_iter().next() {
        Some(Ok(resource)) => Ok(resource
            .get("cleanup.policy")
            .and_then(|entry| entry.value.clone())
            .unwrap_or_default()),
        Some(Err(code)) => bail!("cannot describe topic {topic}: {code}"),
        None => bail!("cannot describe topic {topic}: no answer"),
    }
}

/// Whether a `cleanup.policy` keeps the newest event of every key for good: only
/// `compact` alone does (with `compact,delete`, keys not updated within the
/// retention still expire).
pub fn is_compacted(policy: &str) -> bool {
    policy.trim() == "compact"
}

/// What citypop needs of a main topic someone else created.
async fn check_main_topic(
    config: &Config,
    admin: &Arc<AdminClient<DefaultClientContext>>,
) -> anyhow::Result<Vec<String>> {
    let topic = &config.kafka.topic;
    let mut problems = Vec::new();
    let policy = cleanup_policy(admin, topic).await?;
    if !is_compacted(&policy) {
        problems.push(format!(
            "cleanup.policy is {policy:?}, not \"compact\": cities not updated within the \
             retention disappear from the topic, so a replay cannot rebuild them \
             (kafka-configs.sh --alter --entity-type topics --entity-name {topic} \
             --add-config cleanup.policy=compact)"
        ));
    }
    let metadata = {
        let (admin, topic) = (admin.clone(), topic.clone());
        // Metadata requests block; keep them off the async workers.
        tokio::task::spawn_blocking(move || {
            admin.inner().fetch_metadata(Some(&topic), METADATA_TIMEOUT)
        })
        .await?
        .context("kafka metadata request")?
    };
    let partitions = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map_or(0, |t| t.partitions().len()) as i32;
    if partitions != config.topics.partitions {
        problems.push(format!(
            "it has {partitions} partitions, CITYPOP_TOPIC_PARTITIONS says {}: partitions are \
             fixed at creation (a city's partition must never change), so set \
             CITYPOP_TOPIC_PARTITIONS={partitions} if this is the topic meant",
            config.topics.partitions
        ));
    }
    Ok(problems)
}
