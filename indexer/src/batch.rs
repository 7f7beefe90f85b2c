//! Stage 2: gathering consumed messages into a batch, closed by count, bytes or
//! linger, whichever comes first.

use std::time::Duration;

use rdkafka::Message;
use rdkafka::message::OwnedMessage;

#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub max_events: usize,
    pub max_bytes: usize,
    pub linger: Duration,
}

/// Messages in consumption order (so per partition, in offset order).
#[derive(Debug, Default)]
pub struct Batch {
    pub messages: Vec<OwnedMessage>,
    bytes: usize,
}

impl Batch {
    pub fn push(&mut self, message: OwnedMessage) {
        self.bytes +=
            message.payload().map_or(0, <[u8]>::len) + message.key().map_or(0, <[u8]>::len);
        self.messages.push(message);
    }

    pub fn is_full(&self, limits: &BatchLimits) -> bool {
        self.messages.len() >= limits.max_events || self.bytes >= limits.max_bytes
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    pub fn len(&self) -> usize {
        self.messages.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::Timestamp;

    fn message(payload_len: usize) -> OwnedMessage {
        OwnedMessage::new(
            Some(vec![0; payload_len]),
            Some(b"k".to_vec()),
            "t".into(),
            Timestamp::NotAvailable,
            0,
            0,
            None,
        )
    }

    #[test]
    fn closes_on_count_or_bytes() {
        let limits = BatchLimits {
            max_events: 3,
            max_bytes: 100,
            linger: Duration::from_millis(1),
        };
        let mut batch = Batch::default();
        batch.push(message(1));
        batch.push(message(1));
        assert!(!batch.is_full(&limits));
        batch.push(message(1));
        assert!(batch.is_full(&limits));

        let mut batch = Batch::default();
        batch.push(message(99));
        assert!(
            batch.is_full(&limits),
            "99 payload bytes + 1 key byte reach 100"
        );
    }
}
