//! Stage 4, coalesce: of the events of one city in a batch only the newest needs writing; the
//! older ones would be refused as stale anyway. Coalescing as messages arrive keeps
//! a batch's memory to one message per city.

use std::hash::BuildHasher as _;

use hashbrown::DefaultHashBuilder;
use hashbrown::HashTable;
use rdkafka::Message;
use rdkafka::message::OwnedMessage;

use crate::decode::Write;

/// A city's newest message in a batch, and the write it decoded to. The write is
/// kept rather than decoded again when the batch is written: decoding (Avro, the
/// city key's normalisation, the timestamp's formatting) was half of the indexer's
/// CPU per event when it was done twice.
#[derive(Debug)]
pub struct Newest {
    pub message: OwnedMessage,
    pub write: Write,
}

/// Per city key, the message of its newest write so far. A table keyed by the
/// write's own key rather than a map from a copy of it: the copy was an allocation,
/// a copy and a free per event.
#[derive(Default)]
pub struct NewestPerKey {
    messages: HashTable<Newest>,
    hasher: DefaultHashBuilder,
}

impl std::fmt::Debug for NewestPerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.messages.iter()).finish()
    }
}

impl NewestPerKey {
    /// Room for `keys` cities before the table grows: growing moves every entry
    /// held, and a round-robin batch of 10,000 cities grew 12 times from empty.
    pub fn with_capacity(keys: usize) -> Self {
        Self {
            messages: HashTable::with_capacity(keys),
            hasher: DefaultHashBuilder::default(),
        }
    }

    /// Keeps `message` and its write if it is newer than the one held for its key. A
    /// key lives on one partition, so offsets (the versions) are comparable.
    pub fn offer(&mut self, message: OwnedMessage, write: Write) {
        let hash = self.hasher.hash_one(write.key());
        let hasher = &self.hasher;
        match self.messages.entry(
            hash,
            |kept| kept.write.key() == write.key(),
            |kept| hasher.hash_one(kept.write.key()),
        ) {
            hashbrown::hash_table::Entry::Occupied(mut kept) => {
                if kept.get().message.offset() < message.offset() {
                    *kept.get_mut() = Newest { message, write };
                }
            }
            hashbrown::hash_table::Entry::Vacant(vacant) => {
                vacant.insert(Newest { message, write });
            }
        }
    }

    pub fn get(&self, key: &str) -> Option<&Newest> {
        self.messages
            .find(self.hasher.hash_one(key), |kept| kept.write.key() == key)
    }

    pub fn entries(&self) -> impl Iterator<Item = &Newest> {
        self.messages.iter()
    }

    pub fn messages(&self) -> impl Iterator<Item = &OwnedMessage> {
        self.messages.iter().map(|newest| &newest.message)
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
    use crate::decode::{Decoded, decode};
    use crate::testing::MessageBuilder;
    use citypop_schemas::event::Codec;

    fn offer(newest: &mut NewestPerKey, key: &str, offset: i64) {
        let message = MessageBuilder::tombstone(key).at(0, offset).build();
        let Decoded::Write(write) = decode(&Codec::new(), &message) else {
            panic!("a tombstone decodes");
        };
        newest.offer(message, write);
    }

    #[test]
    fn keeps_the_newest_message_of_each_key() {
        let mut newest = NewestPerKey::default();
        for (key, offset) in [("a", 3), ("b", 1), ("a", 7), ("a", 5)] {
            offer(&mut newest, key, offset);
        }
        assert_eq!(newest.len(), 2);
        let kept = |key| {
            newest
                .get(key)
                .map(|n| (n.message.offset(), n.write.version()))
        };
        assert_eq!(kept("a"), Some((7, 7)), "the write kept is the message's");
        assert_eq!(kept("b"), Some((1, 1)));
    }
}
