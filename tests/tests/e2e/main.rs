//! End-to-end tests against real Kafka and a real search engine. See the harness in
//! `citypop_tests` for how services are started and named.

mod indexer;
mod pipeline;
