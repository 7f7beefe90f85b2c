//! The topics the indexer creates, and what `indexer setup` says about a main topic
//! someone else created.

use citypop_tests::kafka::Kafka;
use citypop_tests::{Names, Stack, indexer_command, run_indexer_command};

use crate::common::CATCH_UP;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn created_topics_get_min_insync_replicas_and_dead_letters_never_expire() {
    let stack = Stack::from_env();
    let names = Names::unique("topicconf");
    let kafka = Kafka::connect(&stack.kafka);
    let dlq = format!("{}.dlq", names.topic);
    // One broker: a replication factor of 1, which makes the default 1 in sync.
    run_indexer_command(
        &stack,
        &names,
        &["setup"],
        &[("CITYPOP_TOPIC_REPLICATION_FACTOR", "1".into())],
        CATCH_UP,
    )
    .await;
    for topic in [&names.topic, &dlq] {
        assert_eq!(
            kafka.topic_config(topic, "min.insync.replicas").await,
            (Some("1".into()), true),
            "{topic}"
        );
    }
    assert_eq!(
        kafka.topic_config(&dlq, "retention.ms").await,
        (Some("-1".into()), true),
        "dead letters are kept until redriven"
    );

    let names = Names::unique("topicconf");
    let dlq = format!("{}.dlq", names.topic);
    run_indexer_command(
        &stack,
        &names,
        &["setup"],
        &[
            ("CITYPOP_TOPIC_MIN_INSYNC_REPLICAS", "2".into()),
            ("CITYPOP_DLQ_RETENTION_MS", "604800000".into()),
        ],
        CATCH_UP,
    )
    .await;
    for topic in [&names.topic, &dlq] {
        assert_eq!(
            kafka.topic_config(topic, "min.insync.replicas").await,
            (Some("2".into()), true),
            "{topic}"
        );
    }
    assert_eq!(
        kafka.topic_config(&dlq, "retention.ms").await,
        (Some("604800000".into()), true)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_says_plainly_when_an_existing_topic_is_not_compacted_or_has_other_partitions() {
    let stack = Stack::from_env();
    let names = Names::unique("topiccheck");
    let kafka = Kafka::connect(&stack.kafka);
    kafka
        .create_topic_with(&names.topic, 3, &[("cleanup.policy", "delete")])
        .await;
    let output = indexer_command(&stack, &names, &["setup"], &[], CATCH_UP).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "setup accepted the topic: {stderr}"
    );
    assert!(
        stderr.contains("cleanup.policy is \"delete\", not \"compact\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("it has 3 partitions, CITYPOP_TOPIC_PARTITIONS says 12"),
        "{stderr}"
    );

    // A compacted topic with the partitions configured is fine.
    let names = Names::unique("topiccheck");
    kafka
        .create_topic_with(&names.topic, 3, &[("cleanup.policy", "compact")])
        .await;
    run_indexer_command(
        &stack,
        &names,
        &["setup"],
        &[("CITYPOP_TOPIC_PARTITIONS", "3".into())],
        CATCH_UP,
    )
    .await;
}
