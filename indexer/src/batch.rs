//! Stage 3, batch: consumed messages gathered into a batch, closed by count, bytes or
//! linger. Each message is decoded as it joins (stage 2) and coalesced (stage 4), so
//! a batch holds one message per city however many events it consumed.

use std::time::Duration;

use citypop_schemas::event::Codec;
use rdkafka::Message;
use rdkafka::message::OwnedMessage;

use crate::coalesce::NewestPerKey;
use crate::dead_letter::PoisonCause;
use crate::decode::{Decoded, decode};
use crate::offsets::ConsumedOffsets;

/// When a batch is closed.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct BatchLimits {
    /// Most events consumed into one batch. Of a city's events in a batch only the
    /// newest is written, so while the indexer is behind, larger batches mean less
    /// to write. A batch is written as bulk requests of at most
    /// `--bulk-max-documents`.
    #[arg(
        long = "batch-max-events",
        env = "CITYPOP_BATCH_MAX_EVENTS",
        default_value_t = 10_000
    )]
    pub max_events: usize,

    /// Most bytes of Kafka key and payload consumed into one batch.
    #[arg(long = "batch-max-bytes", env = "CITYPOP_BATCH_MAX_BYTES", default_value_t = 5 * 1024 * 1024)]
    pub max_bytes: usize,

    /// How long a batch's first event waits for more before the batch may be
    /// written. While the previous batch is still being written, the next one keeps
    /// growing up to its limits.
    #[arg(long = "batch-linger", env = "CITYPOP_BATCH_LINGER", default_value = "50ms", value_parser = humantime::parse_duration)]
    pub linger: Duration,
}

/// A message that cannot be indexed, and why.
#[derive(Debug)]
pub struct Poison {
    pub message: OwnedMessage,
    pub cause: PoisonCause,
}

/// The events consumed into one batch: the newest message of each city, the
/// poison in consumption order, and how far each partition was read.
#[derive(Debug, Default)]
pub struct Batch {
    pub newest: NewestPerKey,
    pub poison: Vec<Poison>,
    pub consumed: ConsumedOffsets,
    events: usize,
    bytes: usize,
}

impl Batch {
    /// An empty batch with room for `cities` (see `NewestPerKey::with_capacity`).
    pub fn with_capacity(cities: usize) -> Self {
        Self {
            newest: NewestPerKey::with_capacity(cities),
            ..Self::default()
        }
    }

    pub fn push(&mut self, codec: &Codec, message: OwnedMessage) {
        self.events += 1;
        self.bytes +=
            message.payload().map_or(0, <[u8]>::len) + message.key().map_or(0, <[u8]>::len);
        self.consumed.record(&message);
        match decode(codec, &message) {
            Decoded::Write(write) => self.newest.offer(message, write),
            Decoded::Poison(cause) => self.poison.push(Poison { message, cause }),
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MessageBuilder;

    #[test]
    fn closes_on_count_or_bytes() {
        let codec = Codec::new();
        let limits = BatchLimits {
            max_events: 3,
            max_bytes: 100,
            linger: Duration::from_millis(1),
        };
        let mut batch = Batch::default();
        batch.push(&codec, MessageBuilder::tombstone("a").at(0, 0).build());
        batch.push(&codec, MessageBuilder::tombstone("a").at(0, 1).build());
        assert!(!batch.is_full(&limits));
        batch.push(&codec, MessageBuilder::tombstone("a").at(0, 2).build());
        assert!(batch.is_full(&limits), "three events, though one city");

        let mut batch = Batch::default();
        batch.push(&codec, MessageBuilder::new(b"k", Some(vec![0; 99])).build());
        assert!(
            batch.is_full(&limits),
            "99 payload bytes + 1 key byte reach 100"
        );
    }

    #[test]
    fn keeps_the_newest_message_per_city_and_every_poison() {
        let codec = Codec::new();
        let mut batch = Batch::default();
        batch.push(&codec, MessageBuilder::tombstone("paris").at(0, 3).build());
        batch.push(
            &codec,
            MessageBuilder::new(b"paris", Some(b"not avro".to_vec()))
                .at(0, 4)
                .build(),
        );
        batch.push(&codec, MessageBuilder::tombstone("oslo").at(1, 9).build());
        batch.push(&codec, MessageBuilder::tombstone("paris").at(0, 7).build());
        assert_eq!(batch.len(), 4);
        assert_eq!(batch.newest.len(), 2);
        assert_eq!(
            batch.newest.get("paris").map(|n| n.message.offset()),
            Some(7)
        );
        assert_eq!(batch.poison.len(), 1, "a newer write does not hide poison");
        assert_eq!(batch.poison[0].message.offset(), 4);
        assert_eq!(
            batch.consumed.next_positions().collect::<Vec<_>>(),
            [(0, 8), (1, 10)]
        );
    }
}
