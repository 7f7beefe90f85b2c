//! End-to-end tests against real Kafka and a real search engine. See the harness in
//! `citypop_tests` for how services are started and named.

mod api;
mod common;
mod dlq;
mod docs;
mod engine_security;
mod indexer;
mod interop;
mod kafka_security;
mod monitoring;
mod pipeline;
mod replay;
mod topics;
mod tracing;
