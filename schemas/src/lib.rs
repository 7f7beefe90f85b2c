//! The citypop contract, shared by every service.
//!
//! - [`CityName`], [`CityKey`] and [`Population`] cannot hold an invalid value: they
//!   are built once at the edge with `parse` and trusted everywhere after.
//! - [`event`] is the Kafka event `CityPopulationUpdated` and its Avro single-object
//!   codec. Every published version of the schema is compiled in, so a message written
//!   with any of them stays readable forever (replay depends on it).
//! - [`fingerprint`] names a schema the way the Avro specification does (the
//!   CRC-64-AVRO of its Parsing Canonical Form), so consumers in any language find
//!   the writer schema of every message.
//! - [`document`] is the search-engine document and its index mapping, defined once so
//!   the indexer that writes and the API that reads cannot disagree.

mod city;
pub mod document;
pub mod event;
pub mod fingerprint;
mod population;

pub use city::{CityKey, CityName, CityNameError};
pub use population::{Population, PopulationError};
