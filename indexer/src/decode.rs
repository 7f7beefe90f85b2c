//! Stage 2, decode: turning a Kafka message into the document write it asks for, or
//! naming why it is poison.

use citypop_schemas::CityKey;
use citypop_schemas::document::CityDocument;
use citypop_schemas::event::{self, Codec, DecodeError};
use rdkafka::Message;
use rdkafka::message::{Headers, OwnedMessage};

use crate::dead_letter::{DeadLetterReason, PoisonCause, is_redriven};

/// One document write, versioned by the offset of the message it came from.
#[derive(Debug, Clone)]
pub struct Write {
    pub document: CityDocument,
    /// When the write was accepted upstream, for the end-to-end latency metric.
    pub occurred_at_micros: i64,
    /// Whether its message was republished from the dead-letter topic, read from
    /// the headers here, while they are fresh in the cache: looking the message up
    /// again for every written item, and its headers in librdkafka's memory, was a
    /// tenth of the indexer's CPU in a live profile.
    pub redriven: bool,
}

impl Write {
    pub fn key(&self) -> &str {
        &self.document.key
    }

    pub fn version(&self) -> i64 {
        self.document.version
    }
}

#[derive(Debug)]
pub enum Decoded {
    Write(Write),
    Poison(PoisonCause),
}

pub fn decode(codec: &Codec, message: &OwnedMessage) -> Decoded {
    match try_decode(codec, message) {
        Ok(write) => Decoded::Write(write),
        Err((reason, error)) => Decoded::Poison(PoisonCause { reason, error }),
    }
}

fn try_decode(codec: &Codec, message: &OwnedMessage) -> Result<Write, (DeadLetterReason, String)> {
    let decode_error = |error: String| (DeadLetterReason::Decode, error);
    let key = message
        .key()
        .ok_or_else(|| decode_error("message has no key".into()))?;
    let key = std::str::from_utf8(key).map_err(|_| decode_error("key is not utf-8".into()))?;
    let (partition, offset) = (message.partition(), message.offset());

    let Some(payload) = message.payload() else {
        // The key is the document id; one that is not already a normalised city key
        // would create a second document for the same city. (An event's key is
        // checked through its city below.)
        check_key(key)?;
        let event_id = header_text(message, event::HEADER_EVENT_ID);
        let occurred_at = header_text(message, event::HEADER_OCCURRED_AT)
            .and_then(|t| t.parse().ok())
            .or_else(|| message.timestamp().to_millis().map(|ms| ms * 1000))
            .unwrap_or_default();
        return Ok(Write {
            document: CityDocument::deleted(key, event_id, occurred_at, partition, offset),
            occurred_at_micros: occurred_at,
            redriven: is_redriven(message),
        });
    };

    let event = codec.decode(payload).map_err(|error| match error {
        DecodeError::UnknownSchema(_) => (DeadLetterReason::Schema, error.to_string()),
        DecodeError::NotSingleObject(_) | DecodeError::Corrupt(_) => {
            decode_error(error.to_string())
        }
    })?;
    if !CityKey::matches(&event.city, key) {
        return Err(decode_error(format!(
            "city {:?} does not match key {key:?}",
            event.city
        )));
    }
    Ok(Write {
        occurred_at_micros: event.occurred_at,
        document: CityDocument::from_event(key.to_owned(), event, partition, offset),
        redriven: is_redriven(message),
    })
}

fn check_key(key: &str) -> Result<(), (DeadLetterReason, String)> {
    match CityKey::parse(key) {
        Ok(parsed) if parsed.as_str() == key => Ok(()),
        Ok(parsed) => Err((
            DeadLetterReason::Decode,
            format!(
                "key {key:?} is not normalised (expected {:?})",
                parsed.as_str()
            ),
        )),
        Err(e) => Err((
            DeadLetterReason::Decode,
            format!("key {key:?} is not a city key: {e}"),
        )),
    }
}

fn header_text(message: &OwnedMessage, name: &str) -> Option<String> {
    let headers = message.headers()?;
    headers
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MessageBuilder;
    use citypop_schemas::event::CityPopulationUpdated;

    fn message(key: &[u8], payload: Option<Vec<u8>>) -> MessageBuilder {
        MessageBuilder::new(key, payload)
            .at(2, 40)
            .created_at_millis(5)
    }

    fn event(city: &str) -> CityPopulationUpdated {
        CityPopulationUpdated {
            event_id: "id".into(),
            city: city.into(),
            population: 12,
            occurred_at: 77,
        }
    }

    #[test]
    fn an_event_becomes_a_versioned_document() {
        let codec = Codec::new();
        let payload = codec.encode(&event("Paris")).unwrap();
        let Decoded::Write(write) = decode(&codec, &message(b"paris", Some(payload)).build())
        else {
            panic!("expected a write");
        };
        assert_eq!(write.key(), "paris");
        assert_eq!(write.version(), 40);
        assert_eq!(write.document.partition, 2);
        assert_eq!(write.document.population, Some(12));
        assert!(!write.document.deleted);
    }

    #[test]
    fn a_tombstone_becomes_a_soft_delete() {
        let tombstone = message(b"paris", None)
            .header(event::HEADER_EVENT_ID, "e1")
            .header(event::HEADER_OCCURRED_AT, "123")
            .build();
        let Decoded::Write(write) = decode(&Codec::new(), &tombstone) else {
            panic!("expected a write");
        };
        assert!(write.document.deleted);
        assert_eq!(write.document.event_id.as_deref(), Some("e1"));
        assert_eq!(write.occurred_at_micros, 123);
    }

    #[test]
    fn an_events_city_is_checked_against_its_key_as_parsing_it_would_be() {
        let codec = Codec::new();
        let decoded = |city: &str, key: &str| {
            let payload = codec.encode(&event(city)).unwrap();
            match decode(&codec, &message(key.as_bytes(), Some(payload)).build()) {
                Decoded::Write(write) => Some(write.key().to_owned()),
                Decoded::Poison(_) => None,
            }
        };
        assert_eq!(
            decoded("  New   YORK ", "new york").as_deref(),
            Some("new york")
        );
        assert_eq!(
            decoded("Sa\u{303}o Paulo", "s\u{e3}o paulo").as_deref(),
            Some("s\u{e3}o paulo")
        );
        assert_eq!(decoded("New York", "new  york"), None);
        assert_eq!(decoded("Par\tis", "par\tis"), None, "a control character");
        assert_eq!(decoded("   ", ""), None);
    }

    #[test]
    fn poison_is_classified() {
        let codec = Codec::new();
        let reason = |m: MessageBuilder| match decode(&codec, &m.build()) {
            Decoded::Poison(cause) => cause.reason,
            Decoded::Write(_) => panic!("expected poison"),
        };
        let good = codec.encode(&event("Paris")).unwrap();
        assert_eq!(
            reason(message(b"paris", Some(b"{}".to_vec()))),
            DeadLetterReason::Decode
        );
        assert_eq!(
            reason(message(b"Paris", Some(good.clone()))),
            DeadLetterReason::Decode
        );
        assert_eq!(
            reason(message(b"lyon", Some(good.clone()))),
            DeadLetterReason::Decode
        );
        let mut unknown = good;
        unknown[2] ^= 0xff;
        assert_eq!(
            reason(message(b"paris", Some(unknown))),
            DeadLetterReason::Schema
        );
    }
}
