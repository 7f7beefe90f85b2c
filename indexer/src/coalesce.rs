//! Stage 4, coalesce: of the events of one city in a batch only the newest needs writing; the
//! older ones would be refused as stale anyway. Coalescing as messages arrive keeps
//! a batch's memory to one message per city.

use std::collections::HashMap;

use rdkafka::Message;
use rdkafka::message::OwnedMessage;

/// Per city key, the message of its newest write so far.
#[derive(Debug, Default)]
pub struct NewestPerKey {
    messages: HashMap<String, OwnedMessage>,
}

impl NewestPerKey {
    /// Keeps `message` if it is newer than the one held for `key`. A key lives on one
    /// partition, so offsets (the versions) are comparable.
    pub fn offer(&mut self, key: &str, message: OwnedMessage) {
        match self.messages.get_mut(key) {
            Some(kept) if kept.offset() >= message.offset() => {}
            Some(kept) => *kept = message,
            None => {
                self.messages.insert(key.to_owned(), message);
            }
        }
    }

    pub fn get(&self, key: &str) -> Option<&OwnedMessage> {
        self.messages.get(key)
    }

    pub fn messages(&self) -> impl Iterator<Item = &OwnedMessage> {
        self.messages.values()
    }

    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MessageBuilder;

    fn message(offset: i64) -> OwnedMessage {
        MessageBuilder::tombstone("k").at(0, offset).build()
    }

    #[test]
    fn keeps_the_newest_message_of_each_key() {
        let mut newest = NewestPerKey::default();
        for (key, offset) in [("a", 3), ("b", 1), ("a", 7), ("a", 5)] {
            newest.offer(key, message(offset));
        }
        assert_eq!(newest.len(), 2);
        assert_eq!(newest.get("a").map(Message::offset), Some(7));
        assert_eq!(newest.get("b").map(Message::offset), Some(1));
    }
}
