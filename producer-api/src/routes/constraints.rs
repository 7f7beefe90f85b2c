//! The constraints the server enforces that the types behind the OpenAPI document do
//! not carry, stated in the document, so generated clients and fuzzers agree with
//! the server: a city name's characters, a bulk request's size, what a cursor looks
//! like, and which query parameter needs which.

use serde_json::{Value, json};

use super::bulk::MAX_BULK_ITEMS;
use crate::search::MAX_CURSOR_CHARS;

/// Characters no written name may hold: control characters (Cc), Unicode format
/// characters (Cf) and the line and paragraph separators, as `new_name` refuses.
/// Listed by code point, as JSON Schema's regular expressions have no categories.
/// Those of the Basic Multilingual Plane, as `\uXXXX`, which every dialect reads alike:
const REFUSED_BMP: &str = "\\u0000-\\u001f\\u007f-\\u009f\\u00ad\\u0600-\\u0605\\u061c\\u06dd\\u070f\
\\u0890\\u0891\\u08e2\\u180e\\u200b-\\u200f\\u2028-\\u202e\\u2060-\\u2064\\u2066-\\u206f\\ufeff\
\\ufff9-\\ufffb";

/// The rest, in Python's `re` dialect (`\U` escapes), which schemathesis and most
/// generators use. JavaScript reads these escapes as the letters and digits they are
/// made of, and a `RegExp` without the `u` flag cannot name a character beyond the
/// Basic Multilingual Plane at all, so the copy of the document for the browser
/// leaves them out (the server still refuses them, with a problem+json body).
const REFUSED_ASTRAL: &str = "\\U000110bd\\U000110cd\\U00013430-\\U0001343f\\U0001bca0-\\U0001bca3\
\\U0001d173-\\U0001d17a\\U000e0001\\U000e0020-\\U000e007f";

/// Whitespace as Rust trims it, which a name may not consist of alone.
const WHITESPACE: &str =
    "\\u0009-\\u000d\\u0020\\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";

/// The longest name the document promises: 128 code points, whatever they are, fit
/// both of the server's limits (200 characters after NFC, a key of at most 512 bytes
/// of UTF-8, as a character takes at most 4 bytes).
const MAX_NAME_CODE_POINTS: usize = 128;

/// Who reads a document's patterns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reader {
    /// `/openapi.json`: fuzzers and client generators, every refused character listed.
    Tools,
    /// `/docs`: Swagger UI, whose JavaScript validates parameters before sending them.
    Browser,
}

/// A name the API accepts for writing: no refused character, at least one character
/// that is neither whitespace nor a dot (which rules out `.`, `..` and blank names).
fn name_pattern(reader: Reader) -> String {
    let refused = match reader {
        Reader::Tools => format!("{REFUSED_BMP}{REFUSED_ASTRAL}"),
        Reader::Browser => REFUSED_BMP.to_owned(),
    };
    format!("^[^{refused}]*[^{refused}{WHITESPACE}.][^{refused}]*$")
}

fn name_schema(reader: Reader) -> Value {
    json!({
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_NAME_CODE_POINTS,
        "pattern": name_pattern(reader),
    })
}

/// States the constraints in `document`, an OpenAPI document as JSON.
pub fn state(document: &mut Value, reader: Reader) {
    let name = name_schema(reader);
    let body_name = &mut document["components"]["schemas"]["CityUpdateBody"]["properties"]["name"];
    for key in ["minLength", "maxLength", "pattern"] {
        body_name[key] = name[key].clone();
    }
    for (path, method) in [
        ("/city/{name}", "get"),
        ("/city/{name}", "delete"),
        ("/cities/{name}", "put"),
    ] {
        for parameter in parameters(document, path, method) {
            if parameter["name"] == "name" {
                parameter["schema"] = name.clone();
            }
        }
    }
    for parameter in parameters(document, "/cities", "get") {
        match parameter["name"].as_str() {
            Some("prefix") => {
                // Empty is no prefix.
                parameter["schema"]["maxLength"] = json!(MAX_NAME_CODE_POINTS);
                parameter["schema"]["pattern"] = json!(format!("^$|{}", name_pattern(reader)));
            }
            Some("cursor") => {
                parameter["schema"] = json!({
                    "type": "string",
                    "minLength": 1,
                    "maxLength": MAX_CURSOR_CHARS,
                    "pattern": "^[A-Za-z0-9_-]+$",
                });
            }
            _ => {}
        }
    }
    // OpenAPI has no dependencies between parameters: the extension says it in a
    // form a tool can read, the description in words.
    let get_city = &mut document["paths"]["/city/{name}"]["get"];
    get_city["x-dependent-required"] = json!({"wait_ms": ["min_version"]});
    let bulk = &mut document["paths"]["/cities/bulk"]["post"]["requestBody"]["content"]["application/json"]
        ["schema"];
    bulk["minItems"] = json!(1);
    bulk["maxItems"] = json!(MAX_BULK_ITEMS);
}

fn parameters<'a>(
    document: &'a mut Value,
    path: &str,
    method: &str,
) -> impl Iterator<Item = &'a mut Value> {
    document["paths"][path][method]["parameters"]
        .as_array_mut()
        .into_iter()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_constraint_lands_in_the_document() {
        let (_, document) = super::super::api().split_for_parts();
        let mut document = serde_json::to_value(&document).unwrap();
        state(&mut document, Reader::Tools);
        let schemas = &document["components"]["schemas"];
        assert_eq!(
            schemas["CityUpdateBody"]["properties"]["name"]["pattern"],
            name_pattern(Reader::Tools)
        );
        let bulk = &document["paths"]["/cities/bulk"]["post"]["requestBody"]["content"]["application/json"]
            ["schema"];
        assert_eq!(
            (&bulk["minItems"], &bulk["maxItems"]),
            (&json!(1), &json!(1000))
        );
        for (path, method) in [
            ("/city/{name}", "get"),
            ("/city/{name}", "delete"),
            ("/cities/{name}", "put"),
        ] {
            let name = &document["paths"][path][method]["parameters"][0];
            assert_eq!(
                name["schema"]["pattern"],
                name_pattern(Reader::Tools),
                "{method} {path}"
            );
        }
        let cursor = &document["paths"]["/cities"]["get"]["parameters"][5];
        assert_eq!(cursor["name"], "cursor");
        assert_eq!(cursor["schema"]["maxLength"], 4096);
    }

    #[test]
    fn the_browser_copy_has_no_escape_javascript_misreads() {
        let browser = name_pattern(Reader::Browser);
        assert!(!browser.contains("\\U"), "{browser}");
        assert!(browser.contains("\\u200b"), "{browser}");
        assert!(name_pattern(Reader::Tools).contains("\\U000e0001"));
    }
}
