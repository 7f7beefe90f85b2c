//! Stage 8: offsets. Kafka offsets name the next message to read, so a handled
//! message at offset N stores N + 1.

use std::collections::BTreeMap;

use rdkafka::Message;
use rdkafka::Offset;
use rdkafka::message::OwnedMessage;
use rdkafka::topic_partition_list::TopicPartitionList;

/// The offsets to store after every message of a batch was handled: per partition,
/// one past the highest offset seen.
pub fn next_offsets(messages: &[OwnedMessage]) -> TopicPartitionList {
    let mut highest: BTreeMap<(&str, i32), i64> = BTreeMap::new();
    for message in messages {
        let entry = highest
            .entry((message.topic(), message.partition()))
            .or_insert(message.offset());
        *entry = (*entry).max(message.offset());
    }
    let mut list = TopicPartitionList::with_capacity(highest.len());
    for ((topic, partition), offset) in highest {
        // Adding a partition to a fresh list cannot fail.
        let _ = list.add_partition_offset(topic, partition, Offset::Offset(offset + 1));
    }
    list
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::Timestamp;

    fn message(partition: i32, offset: i64) -> OwnedMessage {
        OwnedMessage::new(
            None,
            None,
            "t".into(),
            Timestamp::NotAvailable,
            partition,
            offset,
            None,
        )
    }

    #[test]
    fn stores_one_past_the_highest_offset_per_partition() {
        let list = next_offsets(&[message(0, 4), message(1, 9), message(0, 5), message(0, 6)]);
        let stored: Vec<_> = list
            .elements()
            .iter()
            .map(|e| (e.partition(), e.offset()))
            .collect();
        assert_eq!(stored, [(0, Offset::Offset(7)), (1, Offset::Offset(10))]);
    }
}
