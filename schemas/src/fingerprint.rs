//! Schema fingerprints exactly as the Avro specification defines them: the
//! CRC-64-AVRO (Rabin) fingerprint of the schema's Parsing Canonical Form. This is
//! what Java's reference library (`SchemaNormalization.parsingFingerprint64`) and
//! every `BinaryMessageDecoder` compute, so a message that carries it can be read by
//! a consumer in any language that has the schema file.
//!
//! `apache-avro` 0.21 gets the canonical form wrong for a primitive with a logical
//! type: it strips `logicalType` but keeps `{"type":"long"}` where the \[PRIMITIVES\]
//! rule makes it `"long"` (upstream AVRO-4004). Its Rabin digest is right, so only the
//! canonical form is computed here, from the schema's JSON text.

use std::collections::HashSet;
use std::fmt;

use apache_avro::rabin::Rabin;
use digest::Digest;
use serde_json::{Map, Value};

/// An 8-byte schema fingerprint, in the byte order of the wire (little-endian), and
/// shown in hex that way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub(crate) [u8; 8]);

impl Fingerprint {
    /// The specification's fingerprint of a schema given as JSON text.
    pub fn of_schema(json: &str) -> Result<Self, CanonicalFormError> {
        let schema: Value =
            serde_json::from_str(json).map_err(|e| CanonicalFormError(format!("not json: {e}")))?;
        Ok(Self::of_canonical_form(&parsing_canonical_form(&schema)?))
    }

    /// CRC-64-AVRO of a Parsing Canonical Form.
    pub fn of_canonical_form(canonical_form: &str) -> Self {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(&Rabin::digest(canonical_form.as_bytes()));
        Self(bytes)
    }

    /// What an earlier citypop release computed for `schema` with `apache-avro`'s
    /// `Schema::fingerprint::<Rabin>()` (the canonical form it gets wrong). Only for
    /// recognising messages those releases wrote; never written.
    pub(crate) fn legacy_of(schema: &apache_avro::Schema) -> Self {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(&schema.fingerprint::<Rabin>().bytes);
        Self(bytes)
    }

    /// The 8 bytes a single-object encoded message carries after `C3 01`.
    pub fn to_bytes(self) -> [u8; 8] {
        self.0
    }

    /// The fingerprint as the 64-bit number Java's `parsingFingerprint64` returns.
    pub fn to_u64(self) -> u64 {
        u64::from_le_bytes(self.0)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// A schema whose canonical form cannot be written: not one the specification allows.
#[derive(Debug, thiserror::Error)]
#[error("no parsing canonical form: {0}")]
pub struct CanonicalFormError(String);

const PRIMITIVES: [&str; 8] = [
    "null", "boolean", "int", "long", "float", "double", "bytes", "string",
];

/// The schema's Parsing Canonical Form, following the specification's rules:
/// \[PRIMITIVES\] a primitive is its bare name, whatever attributes (`logicalType`
/// included) it has; \[FULLNAMES\] names are full names; \[STRIP\] only `type`, `name`,
/// `fields`, `symbols`, `items`, `values` and `size` are kept; \[ORDER\] in that order;
/// \[STRINGS\] and \[INTEGERS\] as JSON writes them; \[WHITESPACE\] none. A named type
/// already written is written again as its full name only.
pub fn parsing_canonical_form(schema: &Value) -> Result<String, CanonicalFormError> {
    let mut form = CanonicalForm::default();
    form.schema(schema, "")?;
    Ok(form.out)
}

#[derive(Default)]
struct CanonicalForm {
    out: String,
    defined: HashSet<String>,
}

impl CanonicalForm {
    /// Writes `schema`, whose enclosing namespace is `namespace` ("" for none).
    fn schema(&mut self, schema: &Value, namespace: &str) -> Result<(), CanonicalFormError> {
        match schema {
            Value::String(name) => self.name_or_primitive(name, namespace),
            Value::Array(branches) => {
                self.out.push('[');
                for (i, branch) in branches.iter().enumerate() {
                    if i > 0 {
                        self.out.push(',');
                    }
                    self.schema(branch, namespace)?;
                }
                self.out.push(']');
                Ok(())
            }
            Value::Object(object) => self.complex(object, namespace),
            other => Err(CanonicalFormError(format!("{other} is not a schema"))),
        }
    }

    fn name_or_primitive(&mut self, name: &str, namespace: &str) -> Result<(), CanonicalFormError> {
        if PRIMITIVES.contains(&name) {
            self.string(name);
            return Ok(());
        }
        // A short reference is looked up in the enclosing namespace, then (as Java's
        // parser does) in the null namespace.
        let full = full_name(name, None, namespace);
        let full = if !self.defined.contains(&full) && self.defined.contains(name) {
            name.to_owned()
        } else {
            full
        };
        if !self.defined.contains(&full) {
            return Err(CanonicalFormError(format!("unknown type {name:?}")));
        }
        self.string(&full);
        Ok(())
    }

    fn complex(
        &mut self,
        object: &Map<String, Value>,
        namespace: &str,
    ) -> Result<(), CanonicalFormError> {
        let Some(Value::String(kind)) = object.get("type") else {
            return Err(CanonicalFormError(
                "an object schema needs a string \"type\"".into(),
            ));
        };
        match kind.as_str() {
            "record" | "enum" | "fixed" => self.named(kind, object, namespace),
            "array" => {
                self.out.push_str(r#"{"type":"array","items":"#);
                self.schema(required(object, "items")?, namespace)?;
                self.out.push('}');
                Ok(())
            }
            "map" => {
                self.out.push_str(r#"{"type":"map","values":"#);
                self.schema(required(object, "values")?, namespace)?;
                self.out.push('}');
                Ok(())
            }
            // A primitive (with a logical type or other attributes: all stripped), or a
            // named type referred to in object form.
            other => self.name_or_primitive(other, namespace),
        }
    }

    fn named(
        &mut self,
        kind: &str,
        object: &Map<String, Value>,
        namespace: &str,
    ) -> Result<(), CanonicalFormError> {
        let name = required_str(object, "name")?;
        let own_namespace = object.get("namespace").and_then(Value::as_str);
        let full = full_name(name, own_namespace, namespace);
        if !self.defined.insert(full.clone()) {
            self.string(&full);
            return Ok(());
        }
        self.out.push_str(r#"{"name":"#);
        self.string(&full);
        self.out.push_str(r#","type":"#);
        self.string(kind);
        match kind {
            "record" => {
                // Types defined inside a record take its namespace.
                let inner = full.rsplit_once('.').map_or("", |(ns, _)| ns);
                self.out.push_str(r#","fields":["#);
                let fields = required(object, "fields")?
                    .as_array()
                    .ok_or_else(|| CanonicalFormError("\"fields\" is not an array".into()))?;
                for (i, field) in fields.iter().enumerate() {
                    let field = field
                        .as_object()
                        .ok_or_else(|| CanonicalFormError("a field is not an object".into()))?;
                    if i > 0 {
                        self.out.push(',');
                    }
                    self.out.push_str(r#"{"name":"#);
                    self.string(required_str(field, "name")?);
                    self.out.push_str(r#","type":"#);
                    self.schema(required(field, "type")?, inner)?;
                    self.out.push('}');
                }
                self.out.push(']');
            }
            "enum" => {
                self.out.push_str(r#","symbols":["#);
                let symbols = required(object, "symbols")?
                    .as_array()
                    .ok_or_else(|| CanonicalFormError("\"symbols\" is not an array".into()))?;
                for (i, symbol) in symbols.iter().enumerate() {
                    let symbol = symbol
                        .as_str()
                        .ok_or_else(|| CanonicalFormError("a symbol is not a string".into()))?;
                    if i > 0 {
                        self.out.push(',');
                    }
                    self.string(symbol);
                }
                self.out.push(']');
            }
            _ => {
                let size = required(object, "size")?
                    .as_u64()
                    .ok_or_else(|| CanonicalFormError("\"size\" is not a count".into()))?;
                self.out.push_str(&format!(r#","size":{size}"#));
            }
        }
        self.out.push('}');
        Ok(())
    }

    fn string(&mut self, text: &str) {
        // serde_json writes a string with the fewest escapes, which is the [STRINGS]
        // rule; Avro names and symbols need none anyway.
        self.out.push_str(&Value::from(text).to_string());
    }
}

/// \[FULLNAMES\]: a dotted name is already full; otherwise its own namespace, else the
/// enclosing one, qualifies it ("" is the null namespace).
fn full_name(name: &str, own_namespace: Option<&str>, enclosing: &str) -> String {
    if name.contains('.') {
        return name.to_owned();
    }
    match own_namespace.unwrap_or(enclosing) {
        "" => name.to_owned(),
        namespace => format!("{namespace}.{name}"),
    }
}

fn required<'a>(
    object: &'a Map<String, Value>,
    key: &str,
) -> Result<&'a Value, CanonicalFormError> {
    object
        .get(key)
        .ok_or_else(|| CanonicalFormError(format!("missing {key:?}")))
}

fn required_str<'a>(
    object: &'a Map<String, Value>,
    key: &str,
) -> Result<&'a str, CanonicalFormError> {
    required(object, key)?
        .as_str()
        .ok_or_else(|| CanonicalFormError(format!("{key:?} is not a string")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = include_str!("../avro/city_population_updated.v1.avsc");

    /// Issue 12's vector: v1 as Java's `SchemaNormalization` normalises and
    /// fingerprints it (`occurred_at` is a plain `"long"`).
    #[test]
    fn v1_has_the_specification_fingerprint() {
        let schema: Value = serde_json::from_str(V1).unwrap();
        assert_eq!(
            parsing_canonical_form(&schema).unwrap(),
            r#"{"name":"io.citypop.events.CityPopulationUpdated","type":"record","fields":[{"name":"event_id","type":"string"},{"name":"city","type":"string"},{"name":"population","type":"long"},{"name":"occurred_at","type":"long"}]}"#
        );
        let fingerprint = Fingerprint::of_schema(V1).unwrap();
        assert_eq!(fingerprint.to_u64(), 0x8984_78bf_b2e5_8c02);
        assert_eq!(
            fingerprint.to_bytes(),
            [0x02, 0x8c, 0xe5, 0xb2, 0xbf, 0x78, 0x84, 0x89]
        );
        assert_eq!(fingerprint.to_string(), "028ce5b2bf788489");
    }

    /// What earlier releases wrote for v1, pinned: if an upgrade of `apache-avro`
    /// changes it, freeze this value in the codec instead of computing it.
    #[test]
    fn v1_legacy_fingerprint_is_what_earlier_releases_wrote() {
        let schema = apache_avro::Schema::parse_str(V1).unwrap();
        let legacy = Fingerprint::legacy_of(&schema);
        assert_eq!(legacy.to_u64(), 0xc1aa_ca8e_1177_000a);
        assert_eq!(
            legacy.to_bytes(),
            [0x0a, 0x00, 0x77, 0x11, 0x8e, 0xca, 0xaa, 0xc1]
        );
    }

    /// A second implementation's answer for a schema with nested named types, an
    /// enum, every complex type and logical types everywhere, stripped attributes
    /// (doc, aliases, order, default, custom properties) and references to named
    /// types in and out of their namespace. Computed with the Apache Avro Java
    /// library 1.12.2 (`SchemaNormalization.toParsingForm` and
    /// `parsingFingerprint64`), by `tests/interop/Interop.java fingerprint`.
    #[test]
    fn a_nested_schema_matches_the_java_reference_library() {
        let schema = r#"{
          "type": "record", "name": "CityCensus", "namespace": "io.citypop.test",
          "doc": "a record with a nested record, an enum and logical types", "aliases": ["OldCensus"],
          "fields": [
            {"name": "city", "type": {"type": "string", "avro.java.string": "String"}, "doc": "name", "order": "descending"},
            {"name": "taken_on", "type": {"type": "int", "logicalType": "date"}},
            {"name": "location", "type": {
              "type": "record", "name": "Location", "namespace": "io.citypop.geo",
              "fields": [
                {"name": "lat", "type": "double", "default": 0.0},
                {"name": "lon", "type": "double"},
                {"name": "measured_at", "type": ["null", {"type": "long", "logicalType": "timestamp-millis"}], "default": null}
              ]}},
            {"name": "previous", "type": ["null", "io.citypop.geo.Location"], "default": null},
            {"name": "status", "type": {"type": "enum", "name": "Status", "symbols": ["DRAFT", "FINAL"], "default": "DRAFT", "doc": "d"}},
            {"name": "history", "type": {"type": "array", "items": "Status"}},
            {"name": "by_district", "type": {"type": "map", "values": {"type": "long", "logicalType": "timestamp-micros"}}},
            {"name": "checksum", "type": {"type": "fixed", "name": "Md5", "size": 16}},
            {"name": "density", "type": {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2}},
            {"name": "id", "type": {"type": "string", "logicalType": "uuid"}}
          ]
        }"#;
        let json: Value = serde_json::from_str(schema).unwrap();
        assert_eq!(
            parsing_canonical_form(&json).unwrap(),
            concat!(
                r#"{"name":"io.citypop.test.CityCensus","type":"record","fields":["#,
                r#"{"name":"city","type":"string"},{"name":"taken_on","type":"int"},"#,
                r#"{"name":"location","type":{"name":"io.citypop.geo.Location","type":"record","fields":["#,
                r#"{"name":"lat","type":"double"},{"name":"lon","type":"double"},"#,
                r#"{"name":"measured_at","type":["null","long"]}]}},"#,
                r#"{"name":"previous","type":["null","io.citypop.geo.Location"]},"#,
                r#"{"name":"status","type":{"name":"io.citypop.test.Status","type":"enum","symbols":["DRAFT","FINAL"]}},"#,
                r#"{"name":"history","type":{"type":"array","items":"io.citypop.test.Status"}},"#,
                r#"{"name":"by_district","type":{"type":"map","values":"long"}},"#,
                r#"{"name":"checksum","type":{"name":"io.citypop.test.Md5","type":"fixed","size":16}},"#,
                r#"{"name":"density","type":"bytes"},{"name":"id","type":"string"}]}"#,
            )
        );
        let fingerprint = Fingerprint::of_schema(schema).unwrap();
        assert_eq!(fingerprint.to_u64(), 0xf795_e608_a59a_e04d);
        assert_eq!(fingerprint.to_string(), "4de09aa508e695f7");
    }

    /// The specification's own examples of the rules, one each.
    #[test]
    fn canonical_form_rules() {
        let form = |json: &str| parsing_canonical_form(&serde_json::from_str(json).unwrap());
        // [PRIMITIVES]
        assert_eq!(form(r#"{"type":"int"}"#).unwrap(), r#""int""#);
        // [FULLNAMES] with the null namespace, and a record referring to itself.
        assert_eq!(
            form(r#"{"type":"record","name":"Node","namespace":"","fields":[{"name":"next","type":["null","Node"]}]}"#).unwrap(),
            r#"{"name":"Node","type":"record","fields":[{"name":"next","type":["null","Node"]}]}"#
        );
        // A dotted name ignores the namespace attribute.
        assert_eq!(
            form(r#"{"type":"fixed","name":"a.b.F","namespace":"x.y","size":4}"#).unwrap(),
            r#"{"name":"a.b.F","type":"fixed","size":4}"#
        );
        // A short reference from another namespace falls back to the null namespace.
        assert_eq!(
            form(r#"{"type":"record","name":"R","fields":[
                {"name":"e","type":{"type":"enum","name":"E","symbols":["A"]}},
                {"name":"inner","type":{"type":"record","name":"I","namespace":"n","fields":[{"name":"e2","type":"E"}]}}]}"#).unwrap(),
            r#"{"name":"R","type":"record","fields":[{"name":"e","type":{"name":"E","type":"enum","symbols":["A"]}},{"name":"inner","type":{"name":"n.I","type":"record","fields":[{"name":"e2","type":"E"}]}}]}"#
        );
        assert!(
            form(r#"{"type":"record","name":"R","fields":[{"name":"x","type":"Nope"}]}"#).is_err()
        );
        assert!(form("42").is_err());
    }
}
