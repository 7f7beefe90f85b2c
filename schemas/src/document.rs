//! The search document for one city, and the index mapping that holds it.
//!
//! The document id is the city key and the document's external version is the Kafka
//! offset of the event it was built from, so the engine itself refuses anything older
//! than what it holds.

use chrono::{DateTime, Datelike, SecondsFormat, Timelike};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::event::CityPopulationUpdated;

/// One city as indexed. A delete is kept as a document with `deleted: true` (a soft
/// delete) so its version survives: a hard delete forgets its version after
/// `index.gc_deletes`, and a late older event could then bring the city back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CityDocument {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub population: Option<i64>,
    /// RFC 3339, from the event's `occurred_at`.
    pub updated_at: String,
    /// The Kafka offset of the event: the document's external version.
    pub version: i64,
    pub partition: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    #[serde(default)]
    pub deleted: bool,
}

impl CityDocument {
    /// Takes the key and the event by value: the indexer builds a document per
    /// event, and each copy of a string was an allocation.
    pub fn from_event(
        key: String,
        event: CityPopulationUpdated,
        partition: i32,
        offset: i64,
    ) -> Self {
        Self {
            key,
            name: Some(event.city),
            population: Some(event.population),
            updated_at: rfc3339_from_micros(event.occurred_at),
            version: offset,
            partition,
            event_id: Some(event.event_id),
            deleted: false,
        }
    }

    pub fn deleted(
        key: &str,
        event_id: Option<String>,
        occurred_at_micros: i64,
        partition: i32,
        offset: i64,
    ) -> Self {
        Self {
            key: key.to_owned(),
            name: None,
            population: None,
            updated_at: rfc3339_from_micros(occurred_at_micros),
            version: offset,
            partition,
            event_id,
            deleted: true,
        }
    }
}

/// Microseconds since the epoch as RFC 3339 UTC; out-of-range values clamp to the
/// epoch rather than fail, since the timestamp is informational.
pub fn rfc3339_from_micros(micros: i64) -> String {
    let at = DateTime::from_timestamp_micros(micros).unwrap_or_default();
    // Every event's timestamp is written once per document, and chrono's general
    // formatter (through `core::fmt`) was a tenth of the indexer's instructions per
    // event. A UTC time in years 0 to 9999 has one fixed-width shape: chrono does
    // the calendar, its fields are written as digits into it. Other years (chrono
    // writes them with a sign and five digits or more) go through chrono.
    let year = at.year();
    if !(0..=9999).contains(&year) {
        return at.to_rfc3339_opts(SecondsFormat::Micros, true);
    }
    let mut text = *b"0000-00-00T00:00:00.000000Z";
    for (field, value) in [
        (0..4, year as u32),
        (5..7, at.month()),
        (8..10, at.day()),
        (11..13, at.hour()),
        (14..16, at.minute()),
        (17..19, at.second()),
        (20..26, at.timestamp_subsec_micros()),
    ] {
        let mut value = value;
        for digit in text[field].iter_mut().rev() {
            *digit = b'0' + (value % 10) as u8;
            value /= 10;
        }
    }
    String::from_utf8(text.to_vec()).expect("ASCII digits and separators")
}

/// The explicit mapping: `dynamic: strict` so a document with an unexpected field is
/// rejected (and dead-lettered) instead of silently widening the mapping.
pub fn mappings() -> Value {
    json!({
        "dynamic": "strict",
        "properties": {
            "key": {"type": "keyword"},
            "name": {"type": "keyword"},
            "population": {"type": "long"},
            "updated_at": {"type": "date"},
            "version": {"type": "long"},
            "partition": {"type": "integer"},
            "event_id": {"type": "keyword"},
            "deleted": {"type": "boolean"}
        }
    })
}

/// The composable index template (`PUT _index_template/<alias>`) for every index
/// behind one alias, matching `<alias>-*`. Composable templates exist in
/// Elasticsearch 7.8+ and OpenSearch alike.
pub fn index_template(alias: &str, shards: u32, replicas: u32) -> Value {
    json!({
        "index_patterns": [index_pattern(alias)],
        // The engine refuses two templates with overlapping patterns at one
        // priority, and `cities-*` overlaps `cities-eu-*`. A longer alias is the more
        // specific pattern, so its length is its priority and it wins.
        "priority": alias.len(),
        "template": {
            "settings": {
                "number_of_shards": shards,
                "number_of_replicas": replicas
            },
            "mappings": mappings()
        },
        "_meta": {"managed_by": "citypop"}
    })
}

/// The name pattern of every index behind `alias`.
pub fn index_pattern(alias: &str) -> String {
    format!("{alias}-*")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_document_field_is_mapped() {
        let event = CityPopulationUpdated {
            event_id: "e".into(),
            city: "Paris".into(),
            population: 1,
            occurred_at: 1_700_000_000_123_456,
        };
        let doc = serde_json::to_value(CityDocument::from_event(
            "paris".into(),
            event.clone(),
            3,
            42,
        ))
        .unwrap();
        let mapped = mappings()["properties"].as_object().unwrap().clone();
        for field in doc.as_object().unwrap().keys() {
            assert!(mapped.contains_key(field), "{field} is not mapped");
        }
        assert_eq!(doc["updated_at"], "2023-11-14T22:13:20.123456Z");
        assert_eq!(doc["version"], 42);
    }

    proptest::proptest! {
        #[test]
        fn timestamps_are_written_as_chrono_writes_them(micros in proptest::num::i64::ANY) {
            let chrono = DateTime::from_timestamp_micros(micros)
                .unwrap_or_default()
                .to_rfc3339_opts(SecondsFormat::Micros, true);
            proptest::prop_assert_eq!(rfc3339_from_micros(micros), chrono);
        }

        /// The years every real event has, where the fixed-width shape is used.
        #[test]
        fn timestamps_of_years_0_to_9999_are_written_as_chrono_writes_them(
            micros in -62_167_219_200_000_000i64..253_402_300_800_000_000
        ) {
            let chrono = DateTime::from_timestamp_micros(micros)
                .unwrap()
                .to_rfc3339_opts(SecondsFormat::Micros, true);
            proptest::prop_assert_eq!(rfc3339_from_micros(micros), chrono);
        }
    }

    #[test]
    fn timestamps_at_the_edges_are_written_as_chrono_writes_them() {
        for micros in [
            0,
            -1,
            1,
            999_999,
            1_000_000,
            -62_167_219_200_000_000, // 0000-01-01T00:00:00Z
            -62_167_219_200_000_001, // the microsecond before: year -1
            253_402_300_799_999_999, // 9999-12-31T23:59:59.999999Z
            253_402_300_800_000_000, // year 10000
            951_782_400_000_000,     // 2000-02-29
            i64::MIN,
            i64::MAX,
        ] {
            let chrono = DateTime::from_timestamp_micros(micros)
                .unwrap_or_default()
                .to_rfc3339_opts(SecondsFormat::Micros, true);
            assert_eq!(rfc3339_from_micros(micros), chrono, "{micros}");
        }
    }

    #[test]
    fn deleted_documents_carry_no_population() {
        let doc = serde_json::to_value(CityDocument::deleted("paris", None, 0, 0, 7)).unwrap();
        assert_eq!(doc["deleted"], true);
        assert!(doc.get("population").is_none());
    }
}
