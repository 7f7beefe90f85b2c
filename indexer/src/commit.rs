//! Stage 8: offsets. Kafka offsets name the next message to read, so a handled
//! message at offset N stores N + 1.

use std::collections::BTreeMap;

use rdkafka::Offset;
use rdkafka::topic_partition_list::TopicPartitionList;

/// The offsets to store once every message of a batch was handled: per partition,
/// one past the highest offset consumed.
pub fn next_offsets(topic: &str, highest: &BTreeMap<i32, i64>) -> TopicPartitionList {
    let mut list = TopicPartitionList::with_capacity(highest.len());
    for (&partition, &offset) in highest {
        // Adding a partition to a fresh list cannot fail.
        let _ = list.add_partition_offset(topic, partition, Offset::Offset(offset + 1));
    }
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_one_past_the_highest_offset_per_partition() {
        let list = next_offsets("t", &BTreeMap::from([(0, 6), (1, 9)]));
        let stored: Vec<_> = list
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition(), e.offset()))
            .collect();
        assert_eq!(
            stored,
            [
                ("t".to_owned(), 0, Offset::Offset(7)),
                ("t".to_owned(), 1, Offset::Offset(10))
            ]
        );
    }
}
