//! The Kafka event `CityPopulationUpdated` and its Avro single-object codec.
//!
//! Every message is `C3 01`, the 8-byte little-endian CRC-64-AVRO (Rabin)
//! fingerprint of its writer schema's Parsing Canonical Form as the specification
//! defines it (see [`crate::fingerprint`]), then the Avro binary body: what
//! `BinaryMessageDecoder` in Java, or any other reference library, reads with the
//! schema files of `schemas/avro/`. The reader looks the writer schema up by
//! fingerprint and resolves it against the newest schema, so a message written with
//! any published version stays readable. A record written with the newest schema
//! itself, nearly every message, is read straight into the struct; any other goes
//! through apache-avro's generic read and its resolution.

use std::sync::Arc;

use apache_avro::headers::HeaderBuilder;
use apache_avro::types::Value;
use apache_avro::{GenericSingleObjectReader, Schema};
use serde::{Deserialize, Serialize};

pub use crate::fingerprint::Fingerprint;

/// Every published version of the schema, oldest first. Versions are only ever
/// added here (with defaults for new fields), never edited or removed: replay reads
/// messages written years ago.
pub const PUBLISHED_SCHEMAS: &[&str] = &[include_str!("../avro/city_population_updated.v1.avsc")];

/// The marker that opens every single-object encoded message.
const SINGLE_OBJECT_MARKER: [u8; 2] = [0xC3, 0x01];
const HEADER_LEN: usize = 10;
/// The longest zig-zag varint Avro writes for a long.
const MAX_VARINT_LEN: usize = 10;

/// Kafka `content-type` header value for event payloads.
pub const CONTENT_TYPE: &str = "application/vnd.citypop.city-population-updated.v1+avro";

/// Kafka header of a tombstone (a delete has no value to carry it): the event id.
pub const HEADER_EVENT_ID: &str = "citypop.event_id";
/// Kafka header of a tombstone: when the delete was accepted, in microseconds since
/// the epoch, as decimal text.
pub const HEADER_OCCURRED_AT: &str = "citypop.occurred_at";

/// The record as the newest schema describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CityPopulationUpdated {
    pub event_id: String,
    pub city: String,
    pub population: i64,
    /// Microseconds since the Unix epoch.
    pub occurred_at: i64,
}

/// Why a payload could not be read. The kind decides the dead-letter reason.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not avro single-object encoded: {0}")]
    NotSingleObject(&'static str),
    #[error("unknown writer schema fingerprint {0}")]
    UnknownSchema(Fingerprint),
    #[error("corrupt avro body: {0}")]
    Corrupt(String),
}

#[derive(Debug, thiserror::Error)]
#[error("could not encode event: {0}")]
pub struct EncodeError(String);

#[derive(Debug, thiserror::Error)]
#[error("invalid avro schema: {0}")]
pub struct SchemaError(String);

/// Encodes with the newest schema; decodes anything written with a known one.
///
/// Releases before the fix of issue 12 wrote the fingerprint `apache-avro` computes
/// (`0a 00 77 11 8e ca aa c1` for v1), which no other library recognises. Topics
/// still hold such messages, so every known schema is also found under that legacy
/// fingerprint, as an alias: replaying an old topic works. Only the specification's
/// fingerprint is ever written.
#[derive(Debug, Clone)]
pub struct Codec {
    /// Known writer schemas; `writers` points into it.
    schemas: Vec<Schema>,
    /// Each schema's fingerprint, and its legacy alias where that differs. Looked up
    /// once per message: hashbrown's default hasher, as std's SipHash (built to
    /// resist chosen keys, which a map filled from compiled-in and configured
    /// schemas does not face) cost 200 instructions per lookup.
    writers: hashbrown::HashMap<Fingerprint, Writer>,
    /// The newest published schema: what is written, and what is read into.
    reader: usize,
    /// Reads a record written with the newest schema straight into the struct; none
    /// if that schema has a field it does not know (then apache-avro reads it).
    direct: Option<DirectReader>,
    header: [u8; HEADER_LEN],
}

impl Codec {
    /// A codec that knows every schema in [`PUBLISHED_SCHEMAS`] and writes the newest.
    pub fn new() -> Self {
        let mut codec = Self {
            schemas: Vec::new(),
            writers: hashbrown::HashMap::new(),
            reader: 0,
            direct: None,
            header: [0; HEADER_LEN],
        };
        let mut newest = None;
        for json in PUBLISHED_SCHEMAS {
            // The published schemas are compiled in and covered by tests, so a
            // failure is a build defect, not a runtime condition.
            newest = Some(
                codec
                    .add_writer_schema(json)
                    .expect("published schemas parse"),
            );
        }
        let newest = newest.expect("at least one published schema");
        codec.reader = codec.writers[&newest].index;
        codec.direct = DirectReader::for_schema(&codec.schemas[codec.reader]);
        codec.header[..2].copy_from_slice(&SINGLE_OBJECT_MARKER);
        codec.header[2..].copy_from_slice(&newest.to_bytes());
        codec
    }

    /// Teaches the codec another writer schema (one from a newer producer, say), so
    /// messages written with it can be read. Returns its fingerprint; the legacy
    /// alias is known too, as messages from earlier releases may carry it.
    pub fn add_writer_schema(&mut self, json: &str) -> Result<Fingerprint, SchemaError> {
        let schema = Schema::parse_str(json).map_err(|e| SchemaError(e.to_string()))?;
        let fingerprint = Fingerprint::of_schema(json).map_err(|e| SchemaError(e.to_string()))?;
        let legacy = Fingerprint::legacy_of(&schema);
        let index = self.schemas.len();
        let writer = |fingerprint| Writer::new(index, &schema, fingerprint);
        let (real, alias) = (writer(fingerprint)?, writer(legacy)?);
        self.schemas.push(schema);
        self.writers.insert(fingerprint, real);
        // An alias never takes the place of a schema's real fingerprint.
        self.writers.entry(legacy).or_insert(alias);
        Ok(fingerprint)
    }

    /// The fingerprint every encoded message carries.
    pub fn writer_fingerprint(&self) -> Fingerprint {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(&self.header[2..]);
        Fingerprint(bytes)
    }

    pub fn encode(&self, event: &CityPopulationUpdated) -> Result<Vec<u8>, EncodeError> {
        // The record is serialised straight from the struct against the parsed
        // schema, into the buffer that already holds the header: no intermediate
        // `Value` tree, no validation walk, no schema resolution per record (the
        // schema has no named types to resolve), and one allocation. Each long takes
        // at most 10 bytes as a varint, each string its length's varint plus its bytes.
        let capacity = HEADER_LEN + 4 * MAX_VARINT_LEN + event.event_id.len() + event.city.len();
        let mut out = Vec::with_capacity(capacity);
        out.extend_from_slice(&self.header);
        apache_avro::write_avro_datum_ref(&self.schemas[self.reader], event, &mut out)
            .map_err(|e| EncodeError(e.to_string()))?;
        Ok(out)
    }

    pub fn decode(&self, payload: &[u8]) -> Result<CityPopulationUpdated, DecodeError> {
        if payload.len() < HEADER_LEN {
            return Err(DecodeError::NotSingleObject(
                "shorter than the 10-byte header",
            ));
        }
        if payload[..2] != SINGLE_OBJECT_MARKER {
            return Err(DecodeError::NotSingleObject("missing the C3 01 marker"));
        }
        let mut bytes = [0; 8];
        bytes.copy_from_slice(&payload[2..HEADER_LEN]);
        let fingerprint = Fingerprint(bytes);
        let writer = self
            .writers
            .get(&fingerprint)
            .ok_or(DecodeError::UnknownSchema(fingerprint))?;
        match &self.direct {
            Some(direct) if writer.index == self.reader => direct.read(&payload[HEADER_LEN..]),
            _ => self.decode_through_value(writer, payload),
        }
    }

    /// apache-avro's generic read: any known writer schema, resolved against the
    /// newest one.
    fn decode_through_value(
        &self,
        writer: &Writer,
        payload: &[u8],
    ) -> Result<CityPopulationUpdated, DecodeError> {
        let mut body = payload;
        let value = writer
            .reader
            .read_value(&mut body)
            .map_err(|e| DecodeError::Corrupt(e.to_string()))?;
        if !body.is_empty() {
            return Err(DecodeError::Corrupt(format!(
                "{} trailing bytes after the record",
                body.len()
            )));
        }
        // Resolution against the reader schema walks and rebuilds the whole value;
        // a message written with the reader schema itself (under either of its
        // fingerprints) needs none of it.
        let value = if writer.index == self.reader {
            value
        } else {
            value
                .resolve(&self.schemas[self.reader])
                .map_err(|e| DecodeError::Corrupt(e.to_string()))?
        };
        CityPopulationUpdated::from_record(value)
    }
}

impl CityPopulationUpdated {
    /// The event in a value read with, or resolved to, the newest schema, its
    /// strings moved out. (`apache_avro::from_value` reads a borrowed value and
    /// copies every string: two allocations more per event the indexer reads.) The
    /// struct is built whole, so a field added to it does not compile until it is
    /// read here too.
    fn from_record(value: Value) -> Result<Self, DecodeError> {
        let Value::Record(fields) = value else {
            return Err(DecodeError::Corrupt("the body is not a record".into()));
        };
        let (mut event_id, mut city, mut population, mut occurred_at) = (None, None, None, None);
        for (name, value) in fields {
            match (name.as_str(), value) {
                ("event_id", Value::String(text)) => event_id = Some(text),
                ("city", Value::String(text)) => city = Some(text),
                ("population", Value::Long(number)) => population = Some(number),
                ("occurred_at", Value::TimestampMicros(micros)) => occurred_at = Some(micros),
                (name, value) => {
                    return Err(DecodeError::Corrupt(format!(
                        "field {name} is not what the schema says: {value:?}"
                    )));
                }
            }
        }
        let missing = |field: &str| DecodeError::Corrupt(format!("field {field} is missing"));
        Ok(Self {
            event_id: event_id.ok_or_else(|| missing("event_id"))?,
            city: city.ok_or_else(|| missing("city"))?,
            population: population.ok_or_else(|| missing("population"))?,
            occurred_at: occurred_at.ok_or_else(|| missing("occurred_at"))?,
        })
    }
}

/// A field of the newest schema, by where it goes in [`CityPopulationUpdated`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EventField {
    EventId,
    City,
    Population,
    OccurredAt,
}

/// Reads a record written with the newest schema, which nearly every message is,
/// from its bytes straight into the struct. apache-avro's generic read builds a
/// `Value` tree first, with a copy of every field's name: that was a quarter of the
/// indexer's instructions per event. Avro's binary record is its fields in the
/// schema's order, each a zig-zag varint long or a length-prefixed UTF-8 string,
/// with nothing between them; this reader knows only those two shapes, and the
/// property tests hold it to apache-avro's answer (the value, or an error) for any
/// bytes.
#[derive(Debug, Clone)]
struct DirectReader {
    /// The record's fields in the order the schema writes them.
    fields: Vec<EventField>,
}

impl DirectReader {
    /// A reader for `schema` if it is a record of exactly the struct's fields, each
    /// of its type (strings, longs, a timestamp-micros long), in any order.
    fn for_schema(schema: &Schema) -> Option<Self> {
        let Schema::Record(record) = schema else {
            return None;
        };
        let mut fields = Vec::with_capacity(record.fields.len());
        for field in &record.fields {
            let known = match (field.name.as_str(), &field.schema) {
                ("event_id", Schema::String) => EventField::EventId,
                ("city", Schema::String) => EventField::City,
                ("population", Schema::Long) => EventField::Population,
                ("occurred_at", Schema::TimestampMicros) => EventField::OccurredAt,
                _ => return None,
            };
            if fields.contains(&known) {
                return None;
            }
            fields.push(known);
        }
        (fields.len() == 4).then_some(Self { fields })
    }

    fn read(&self, mut body: &[u8]) -> Result<CityPopulationUpdated, DecodeError> {
        // Every field is set below, as `for_schema` saw each exactly once; the
        // literal names them all, so a field added to the struct does not compile
        // until it is read here too.
        let mut event = CityPopulationUpdated {
            event_id: String::new(),
            city: String::new(),
            population: 0,
            occurred_at: 0,
        };
        for field in &self.fields {
            match field {
                EventField::EventId => event.event_id = read_string(&mut body)?,
                EventField::City => event.city = read_string(&mut body)?,
                EventField::Population => event.population = read_long(&mut body)?,
                EventField::OccurredAt => event.occurred_at = read_long(&mut body)?,
            }
        }
        if !body.is_empty() {
            return Err(DecodeError::Corrupt(format!(
                "{} trailing bytes after the record",
                body.len()
            )));
        }
        Ok(event)
    }
}

/// An Avro long: a zig-zag varint of at most 10 bytes. As apache-avro does, the
/// bits a tenth byte carries beyond 64 are dropped, not refused.
fn read_long(body: &mut &[u8]) -> Result<i64, DecodeError> {
    let mut zigzag = 0u64;
    for (i, &byte) in body.iter().take(MAX_VARINT_LEN).enumerate() {
        zigzag |= u64::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            *body = &body[i + 1..];
            let magnitude = (zigzag >> 1) as i64;
            return Ok(if zigzag & 1 == 0 {
                magnitude
            } else {
                !magnitude
            });
        }
    }
    Err(DecodeError::Corrupt(if body.len() >= MAX_VARINT_LEN {
        "a long longer than 10 bytes".into()
    } else {
        "the body ends inside a long".into()
    }))
}

/// An Avro string: its length as a long, then that many bytes of UTF-8.
fn read_string(body: &mut &[u8]) -> Result<String, DecodeError> {
    let len = read_long(body)?;
    let len = usize::try_from(len)
        .map_err(|_| DecodeError::Corrupt(format!("a string of negative length {len}")))?;
    if len > body.len() {
        return Err(DecodeError::Corrupt(format!(
            "a string of {len} bytes where {} are left",
            body.len()
        )));
    }
    let (bytes, rest) = body.split_at(len);
    let text = std::str::from_utf8(bytes)
        .map_err(|e| DecodeError::Corrupt(format!("a string that is not utf-8: {e}")))?;
    *body = rest;
    Ok(text.to_owned())
}

/// A known writer schema, with its names resolved once: `from_avro_datum` resolves
/// them again for every message, which was a tenth of the indexer's CPU per event.
#[derive(Clone)]
struct Writer {
    /// Where the schema is in [`Codec::schemas`].
    index: usize,
    reader: Arc<GenericSingleObjectReader>,
}

impl Writer {
    fn new(index: usize, schema: &Schema, fingerprint: Fingerprint) -> Result<Self, SchemaError> {
        let reader = GenericSingleObjectReader::new_with_header_builder(
            schema.clone(),
            SingleObjectHeader(fingerprint),
        )
        .map_err(|e| SchemaError(e.to_string()))?;
        Ok(Self {
            index,
            reader: Arc::new(reader),
        })
    }
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("index", &self.index)
            .finish()
    }
}

/// The header a message carries under one fingerprint, as the reader expects it.
struct SingleObjectHeader(Fingerprint);

impl HeaderBuilder for SingleObjectHeader {
    fn build_header(&self) -> Vec<u8> {
        let mut header = SINGLE_OBJECT_MARKER.to_vec();
        header.extend_from_slice(&self.0.to_bytes());
        header
    }
}

impl Default for Codec {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn event(city: &str, population: i64, occurred_at: i64) -> CityPopulationUpdated {
        CityPopulationUpdated {
            event_id: "0190b6a0-0000-7000-8000-000000000000".into(),
            city: city.into(),
            population,
            occurred_at,
        }
    }

    #[test]
    fn encoding_is_single_object() {
        let codec = Codec::new();
        let bytes = codec.encode(&event("Paris", 2_102_650, 1)).unwrap();
        assert_eq!(&bytes[..2], &[0xC3, 0x01]);
        assert_eq!(&bytes[2..10], &codec.writer_fingerprint().0);
    }

    /// The specification's fingerprint of v1, as Java's
    /// `SchemaNormalization.parsingFingerprint64` computes it (issue 12).
    const V1_FINGERPRINT: [u8; 8] = [0x02, 0x8c, 0xe5, 0xb2, 0xbf, 0x78, 0x84, 0x89];

    #[test]
    fn writes_the_fingerprint_the_specification_defines() {
        let codec = Codec::new();
        assert_eq!(codec.writer_fingerprint().0, V1_FINGERPRINT);
        let bytes = codec.encode(&event("Paris", 2_102_650, 1)).unwrap();
        assert_eq!(&bytes[2..10], &V1_FINGERPRINT);
    }

    #[test]
    fn reads_what_earlier_releases_wrote_under_the_legacy_fingerprint() {
        let codec = Codec::new();
        let original = event("Paris", 2_102_650, 1);
        let mut old = codec.encode(&original).unwrap();
        old[2..10].copy_from_slice(&[0x0a, 0x00, 0x77, 0x11, 0x8e, 0xca, 0xaa, 0xc1]);
        assert_eq!(codec.decode(&old).unwrap(), original);
    }

    #[test]
    fn decode_errors_are_classified() {
        let codec = Codec::new();
        assert!(matches!(
            codec.decode(b"{\"city\":\"Paris\"}"),
            Err(DecodeError::NotSingleObject(_))
        ));
        assert!(matches!(
            codec.decode(&[0xC3]),
            Err(DecodeError::NotSingleObject(_))
        ));
        let unknown = [0xC3, 0x01, 1, 2, 3, 4, 5, 6, 7, 8, 0];
        assert!(matches!(
            codec.decode(&unknown),
            Err(DecodeError::UnknownSchema(_))
        ));

        let mut good = codec.encode(&event("Paris", 1, 1)).unwrap();
        let truncated = &good[..good.len() - 3];
        assert!(matches!(
            codec.decode(truncated),
            Err(DecodeError::Corrupt(_))
        ));
        good.push(0);
        assert!(matches!(codec.decode(&good), Err(DecodeError::Corrupt(_))));
    }

    #[test]
    fn a_newer_writer_schema_is_read_once_known() {
        // A future v2 that adds a field with a default, as the contract allows.
        let v2 = r#"{"type":"record","name":"CityPopulationUpdated","namespace":"io.citypop.events",
            "fields":[{"name":"event_id","type":"string"},{"name":"city","type":"string"},
            {"name":"population","type":"long"},
            {"name":"occurred_at","type":{"type":"long","logicalType":"timestamp-micros"}},
            {"name":"country","type":"string","default":""}]}"#;
        let v2_schema = Schema::parse_str(v2).unwrap();
        let value = apache_avro::types::Value::Record(vec![
            (
                "event_id".into(),
                apache_avro::types::Value::String("e".into()),
            ),
            (
                "city".into(),
                apache_avro::types::Value::String("Lyon".into()),
            ),
            ("population".into(), apache_avro::types::Value::Long(7)),
            (
                "occurred_at".into(),
                apache_avro::types::Value::TimestampMicros(9),
            ),
            (
                "country".into(),
                apache_avro::types::Value::String("FR".into()),
            ),
        ]);
        let mut payload = vec![0xC3, 0x01];
        payload.extend_from_slice(&Fingerprint::of_schema(v2).unwrap().to_bytes());
        payload.extend(apache_avro::to_avro_datum(&v2_schema, value).unwrap());

        let mut codec = Codec::new();
        assert!(matches!(
            codec.decode(&payload),
            Err(DecodeError::UnknownSchema(_))
        ));
        codec.add_writer_schema(v2).unwrap();
        let decoded = codec.decode(&payload).unwrap();
        assert_eq!(decoded.city, "Lyon");
        assert_eq!(decoded.population, 7);
        assert_eq!(decoded.occurred_at, 9);
    }

    /// What `encode` wrote before it serialised straight from the struct: the
    /// struct to a `Value`, validated, then encoded. The bytes must not change, or
    /// readers in other languages and the fingerprint tests would see another body.
    fn encode_through_value(codec: &Codec, event: &CityPopulationUpdated) -> Vec<u8> {
        let value = apache_avro::to_value(event).unwrap();
        let mut out = codec.header.to_vec();
        out.extend(apache_avro::to_avro_datum(&codec.schemas[codec.reader], value).unwrap());
        out
    }

    #[test]
    fn direct_encoding_is_byte_identical_to_the_value_route() {
        let codec = Codec::new();
        let mut events = vec![
            event("Paris", 2_102_650, 1_733_300_000_000_000),
            event("São Paulo", 12_325_232, 0),
            event("東京", 0, -1),
            event("القاهرة", 10_000_000_000, i64::MIN),
            event("😀 town", i64::MAX, i64::MAX),
            event("Zürich", 443_037, 63),
            event("x", 64, -64),
            event("", 0, 0),
            event(&"é".repeat(200), 1, 1),
        ];
        events.push(CityPopulationUpdated {
            event_id: uuid::Uuid::now_v7().to_string(),
            ..event("Straße", 7, 7)
        });
        for event in &events {
            assert_eq!(
                codec.encode(event).unwrap(),
                encode_through_value(&codec, event),
                "{event:?}"
            );
        }
    }

    #[test]
    fn the_newest_schema_is_read_directly() {
        assert!(
            Codec::new().direct.is_some(),
            "the newest schema fell back to apache-avro's generic read"
        );
    }

    #[test]
    fn a_schema_with_a_field_the_struct_lacks_is_left_to_apache_avro() {
        let v2 = r#"{"type":"record","name":"CityPopulationUpdated","fields":[
            {"name":"event_id","type":"string"},{"name":"city","type":"string"},
            {"name":"population","type":"long"},
            {"name":"occurred_at","type":{"type":"long","logicalType":"timestamp-micros"}},
            {"name":"country","type":"string","default":""}]}"#;
        assert!(DirectReader::for_schema(&Schema::parse_str(v2).unwrap()).is_none());
        let population_as_int = r#"{"type":"record","name":"CityPopulationUpdated","fields":[
            {"name":"event_id","type":"string"},{"name":"city","type":"string"},
            {"name":"population","type":"int"},
            {"name":"occurred_at","type":{"type":"long","logicalType":"timestamp-micros"}}]}"#;
        let schema = Schema::parse_str(population_as_int).unwrap();
        assert!(DirectReader::for_schema(&schema).is_none());
    }

    #[test]
    fn the_direct_reader_follows_the_schema_s_field_order() {
        let reordered = r#"{"type":"record","name":"CityPopulationUpdated","fields":[
            {"name":"occurred_at","type":{"type":"long","logicalType":"timestamp-micros"}},
            {"name":"population","type":"long"},
            {"name":"city","type":"string"},{"name":"event_id","type":"string"}]}"#;
        let schema = Schema::parse_str(reordered).unwrap();
        let original = event("Zürich", 443_037, -5);
        let body =
            apache_avro::to_avro_datum(&schema, apache_avro::to_value(&original).unwrap()).unwrap();
        let direct = DirectReader::for_schema(&schema).unwrap();
        assert_eq!(direct.read(&body).unwrap(), original);
    }

    /// Both reads of one payload: the direct one `decode` takes, and apache-avro's.
    fn both_reads(
        codec: &Codec,
        payload: &[u8],
    ) -> (
        Result<CityPopulationUpdated, DecodeError>,
        Result<CityPopulationUpdated, DecodeError>,
    ) {
        let writer = &codec.writers[&codec.writer_fingerprint()];
        (
            codec.decode(payload),
            codec.decode_through_value(writer, payload),
        )
    }

    fn same_outcome(
        (direct, through_value): (
            Result<CityPopulationUpdated, DecodeError>,
            Result<CityPopulationUpdated, DecodeError>,
        ),
    ) -> Result<(), TestCaseError> {
        match (direct, through_value) {
            (Ok(direct), Ok(through_value)) => prop_assert_eq!(direct, through_value),
            (Err(_), Err(_)) => {}
            (direct, through_value) => prop_assert!(
                false,
                "direct read {direct:?}, apache-avro's {through_value:?}"
            ),
        }
        Ok(())
    }

    /// A zig-zag varint of `len` bytes (up to 11, past Avro's 10) from `bits`, each
    /// but the last with its continuation bit set: the longs apache-avro still
    /// reads, and those it refuses.
    fn varint(bits: u64, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| {
                let low = ((bits >> ((7 * i) % 64)) & 0x7F) as u8;
                if i + 1 < len { low | 0x80 } else { low }
            })
            .collect()
    }

    proptest! {
        #[test]
        fn the_direct_reader_agrees_with_apache_avro_on_any_bytes(
            body in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let codec = Codec::new();
            let mut payload = codec.header.to_vec();
            payload.extend(body);
            same_outcome(both_reads(&codec, &payload))?;
        }

        #[test]
        fn the_direct_reader_agrees_with_apache_avro_on_damaged_records(
            id in "\\PC{0,40}",
            city in "\\PC{0,40}",
            population in any::<i64>(),
            occurred_at in any::<i64>(),
            at in any::<proptest::sample::Index>(),
            byte in any::<u8>(),
            cut in any::<proptest::sample::Index>(),
        ) {
            let codec = Codec::new();
            let event = CityPopulationUpdated { event_id: id, city, population, occurred_at };
            let good = codec.encode(&event).unwrap();
            let mut damaged = good.clone();
            let at = HEADER_LEN + at.index(good.len() - HEADER_LEN);
            damaged[at] = byte;
            same_outcome(both_reads(&codec, &damaged))?;
            let cut = HEADER_LEN + cut.index(good.len() - HEADER_LEN + 1);
            same_outcome(both_reads(&codec, &good[..cut]))?;
            let decoded = codec.decode(&good).unwrap();
            prop_assert_eq!(decoded, event);
        }

        #[test]
        fn the_direct_reader_agrees_with_apache_avro_on_any_varint(
            lengths in proptest::collection::vec((any::<u64>(), 1usize..=11), 4),
            id in "[a-z]{0,8}",
        ) {
            // The event id's length as given, then an empty city and both longs as
            // varints of any width.
            let codec = Codec::new();
            let payload = |id_length: Vec<u8>| {
                let mut payload = codec.header.to_vec();
                payload.extend(id_length);
                payload.extend(id.as_bytes());
                payload.extend(varint(0, 1));
                payload.extend(varint(lengths[1].0, lengths[1].1));
                payload.extend(varint(lengths[2].0, lengths[2].1));
                payload
            };
            // Any length: the id's bytes trail, or are missing.
            same_outcome(both_reads(&codec, &payload(varint(lengths[0].0, lengths[0].1))))?;
            // The id's true length, in a varint of any width.
            let id_length = varint(2 * id.len() as u64, lengths[3].1);
            same_outcome(both_reads(&codec, &payload(id_length)))?;
        }

        #[test]
        fn direct_encoding_matches_the_value_route(
            id in "[0-9a-f-]{36}",
            city in "\\PC{0,200}",
            population in any::<i64>(),
            occurred_at in any::<i64>(),
        ) {
            let codec = Codec::new();
            let event = CityPopulationUpdated { event_id: id, city, population, occurred_at };
            prop_assert_eq!(codec.encode(&event).unwrap(), encode_through_value(&codec, &event));
        }

        #[test]
        fn reading_a_record_agrees_with_apache_avro(
            id in "\\PC{0,40}",
            city in "\\PC{0,200}",
            population in any::<i64>(),
            occurred_at in any::<i64>(),
        ) {
            let codec = Codec::new();
            let event = CityPopulationUpdated { event_id: id, city, population, occurred_at };
            let payload = codec.encode(&event).unwrap();
            let value = apache_avro::from_avro_datum(
                &codec.schemas[codec.reader],
                &mut &payload[HEADER_LEN..],
                None,
            )
            .unwrap();
            let by_apache_avro: CityPopulationUpdated = apache_avro::from_value(&value).unwrap();
            prop_assert_eq!(&by_apache_avro, &event);
            prop_assert_eq!(CityPopulationUpdated::from_record(value).unwrap(), event);
        }

        #[test]
        fn codec_round_trips(
            id in "[0-9a-f-]{36}",
            city in "\\PC{1,200}",
            population in 0i64..=10_000_000_000,
            occurred_at in any::<i64>(),
        ) {
            let codec = Codec::new();
            let original = CityPopulationUpdated { event_id: id, city, population, occurred_at };
            let decoded = codec.decode(&codec.encode(&original).unwrap()).unwrap();
            prop_assert_eq!(decoded, original);
        }
    }
}
