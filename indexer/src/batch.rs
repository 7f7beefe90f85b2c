//! Stage 2: gathering consumed messages into a batch, closed by count, bytes or
//! linger. Each message is decoded as it joins (stage 3) and coalesced (stage 4),
//! so a batch holds one message per city however many events it consumed.

use std::collections::BTreeMap;
use std::time::Duration;

use citypop_schemas::event::Codec;
use rdkafka::Message;
use rdkafka::message::OwnedMessage;
use rdkafka::topic_partition_list::TopicPartitionList;

use crate::coalesce::NewestPerKey;
use crate::commit::next_offsets;
use crate::decode::{DeadLetterReason, Decoded, decode};

#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub max_events: usize,
    pub max_bytes: usize,
    pub linger: Duration,
}

/// A message that cannot be indexed, and why.
#[derive(Debug)]
pub struct Poison {
    pub message: OwnedMessage,
    pub reason: DeadLetterReason,
    pub error: String,
}

/// The events consumed into one batch: the newest message of each city, the
/// poison in consumption order, and how far each partition was read.
#[derive(Debug, Default)]
pub struct Batch {
    pub newest: NewestPerKey,
    pub poison: Vec<Poison>,
    /// The topic read (a batch reads one).
    topic: String,
    /// Per partition, the highest offset consumed.
    highest: BTreeMap<i32, i64>,
    events: usize,
    bytes: usize,
}

impl Batch {
    pub fn push(&mut self, codec: &Codec, message: OwnedMessage) {
        self.events += 1;
        self.bytes +=
            message.payload().map_or(0, <[u8]>::len) + message.key().map_or(0, <[u8]>::len);
        if self.topic.is_empty() {
            self.topic = message.topic().to_owned();
        }
        let highest = self.highest.entry(message.partition()).or_insert(0);
        *highest = (*highest).max(message.offset());
        match decode(codec, &message) {
            // The decoded write is dropped: the message is smaller, and the
            // survivors are decoded again when written.
            Decoded::Write(write) => self.newest.offer(write.key(), message),
            Decoded::Poison { reason, error } => self.poison.push(Poison {
                message,
                reason,
                error,
            }),
        }
    }

    pub fn is_full(&self, limits: &BatchLimits) -> bool {
        self.events >= limits.max_events || self.bytes >= limits.max_bytes
    }

    pub fn is_empty(&self) -> bool {
        self.events == 0
    }

    /// Events consumed, before coalescing.
    pub fn len(&self) -> usize {
        self.events
    }

    /// Per partition, the next offset to read after this batch.
    pub fn next_offsets(&self) -> TopicPartitionList {
        next_offsets(&self.topic, &self.highest)
    }

    /// Per partition, the highest offset consumed.
    pub fn highest_offsets(&self) -> impl Iterator<Item = (i32, i64)> + '_ {
        self.highest
            .iter()
            .map(|(&partition, &offset)| (partition, offset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::Timestamp;

    fn message(key: &str, payload: Option<Vec<u8>>, partition: i32, offset: i64) -> OwnedMessage {
        OwnedMessage::new(
            payload,
            Some(key.as_bytes().to_vec()),
            "t".into(),
            Timestamp::NotAvailable,
            partition,
            offset,
            None,
        )
    }

    /// A tombstone decodes without a schema: the simplest valid message.
    fn tombstone(key: &str, partition: i32, offset: i64) -> OwnedMessage {
        message(key, None, partition, offset)
    }

    #[test]
    fn closes_on_count_or_bytes() {
        let codec = Codec::new();
        let limits = BatchLimits {
            max_events: 3,
            max_bytes: 100,
            linger: Duration::from_millis(1),
        };
        let mut batch = Batch::default();
        batch.push(&codec, tombstone("a", 0, 0));
        batch.push(&codec, tombstone("a", 0, 1));
        assert!(!batch.is_full(&limits));
        batch.push(&codec, tombstone("a", 0, 2));
        assert!(batch.is_full(&limits), "three events, though one city");

        let mut batch = Batch::default();
        batch.push(&codec, message("k", Some(vec![0; 99]), 0, 0));
        assert!(
            batch.is_full(&limits),
            "99 payload bytes + 1 key byte reach 100"
        );
    }

    #[test]
    fn keeps_the_newest_message_per_city_and_every_poison() {
        let codec = Codec::new();
        let mut batch = Batch::default();
        batch.push(&codec, tombstone("paris", 0, 3));
        batch.push(&codec, message("paris", Some(b"not avro".to_vec()), 0, 4));
        batch.push(&codec, tombstone("oslo", 1, 9));
        batch.push(&codec, tombstone("paris", 0, 7));
        assert_eq!(batch.len(), 4);
        assert_eq!(batch.newest.len(), 2);
        assert_eq!(batch.newest.get("paris").map(Message::offset), Some(7));
        assert_eq!(batch.poison.len(), 1, "a newer write does not hide poison");
        assert_eq!(batch.poison[0].message.offset(), 4);
        assert_eq!(
            batch.highest_offsets().collect::<Vec<_>>(),
            [(0, 7), (1, 9)]
        );
    }
}
