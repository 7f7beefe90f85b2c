//! Stage 4: within one batch only the newest write per city needs sending; the
//! older ones would be refused as stale anyway.

use std::collections::HashMap;

use crate::decode::Write;

/// Keeps the write with the highest version (offset) per key. A key lives on one
/// partition, so its offsets are comparable.
pub fn newest_per_key(writes: Vec<Write>) -> Vec<Write> {
    let mut newest: HashMap<String, Write> = HashMap::with_capacity(writes.len());
    for write in writes {
        match newest.get(write.key()) {
            Some(kept) if kept.version() >= write.version() => {}
            _ => {
                newest.insert(write.key().to_owned(), write);
            }
        }
    }
    newest.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use citypop_schemas::document::CityDocument;

    fn write(key: &str, offset: i64) -> Write {
        Write {
            document: CityDocument::deleted(key, None, 0, 0, offset),
            occurred_at_micros: 0,
        }
    }

    #[test]
    fn keeps_the_newest_write_of_each_key() {
        let mut kept = newest_per_key(vec![
            write("a", 3),
            write("b", 1),
            write("a", 7),
            write("a", 5),
        ]);
        kept.sort_by(|x, y| x.key().cmp(y.key()));
        let kept: Vec<_> = kept
            .iter()
            .map(|w| (w.key().to_owned(), w.version()))
            .collect();
        assert_eq!(kept, [("a".to_owned(), 7), ("b".to_owned(), 1)]);
    }
}
