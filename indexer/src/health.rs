//! `/livez`, `/readyz`, `/metrics` and `/status` on their own port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::metrics::Metrics;
use crate::status::{Done, Status};

/// What readiness is made of: set-up finished, the member joined its consumer
/// group, the engine accepts writes, dead letters can be written, and the topic is
/// the incarnation the index was built from (as far as the guard can tell). The indexer stays alive (so
/// its metrics can be scraped) but not ready while any of them is false.
#[derive(Debug)]
pub struct Health {
    set_up: AtomicBool,
    joined_group: AtomicBool,
    engine_writable: AtomicBool,
    dead_letters_writable: AtomicBool,
    topic_matches: AtomicBool,
    ready_gauge: Gauge,
}

impl Health {
    pub fn new(ready_gauge: Gauge) -> Self {
        Self {
            set_up: AtomicBool::new(false),
            joined_group: AtomicBool::new(false),
            engine_writable: AtomicBool::new(true),
            dead_letters_writable: AtomicBool::new(true),
            topic_matches: AtomicBool::new(true),
            ready_gauge,
        }
    }

    pub fn set_up_done(&self) {
        self.set_up.store(true, Ordering::Relaxed);
        self.publish();
    }

    /// The member joined its consumer group (whatever partitions it got): until
    /// then, nothing written to the topic would be indexed.
    pub fn joined_group(&self, joined: bool) {
        self.joined_group.store(joined, Ordering::Relaxed);
        self.publish();
    }

    pub fn engine_writable(&self, writable: bool) {
        self.engine_writable.store(writable, Ordering::Relaxed);
        self.publish();
    }

    pub fn dead_letters_writable(&self, writable: bool) {
        self.dead_letters_writable
            .store(writable, Ordering::Relaxed);
        self.publish();
    }

    pub fn topic_matches(&self, matches: bool) {
        self.topic_matches.store(matches, Ordering::Relaxed);
        self.publish();
    }

    pub fn is_ready(&self) -> bool {
        self.set_up.load(Ordering::Relaxed)
            && self.joined_group.load(Ordering::Relaxed)
            && self.engine_writable.load(Ordering::Relaxed)
            && self.dead_letters_writable.load(Ordering::Relaxed)
            && self.topic_matches.load(Ordering::Relaxed)
    }

    fn publish(&self) {
        self.ready_gauge.set(i64::from(self.is_ready()));
    }
}

struct Shared {
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    registry: Registry,
}

/// Binds the health port; the server runs until the process ends, so readiness can
/// be watched through shutdown too.
pub async fn serve(
    addr: SocketAddr,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    registry: Registry,
) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the health endpoint on {addr}"))?;
    let local = listener.local_addr()?;
    let router = Router::new()
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/status", get(status_report))
        .with_state(Arc::new(Shared {
            health,
            metrics,
            registry,
        }));
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router).await {
            tracing::error!(%error, "health endpoint stopped");
        }
    });
    Ok(local)
}

async fn readyz(State(shared): State<Arc<Shared>>) -> (StatusCode, &'static str) {
    if shared.health.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

async fn status_report(State(shared): State<Arc<Shared>>) -> Json<Status> {
    let done = Done {
        indexed: shared.metrics.written_total(),
        dead_lettered: shared.metrics.dead_lettered_total(),
    };
    Json(
        shared
            .metrics
            .status
            .report(shared.health.is_ready(), done)
            .await,
    )
}

async fn metrics_text(State(shared): State<Arc<Shared>>) -> Response {
    citypop_runtime::metrics_response(&shared.registry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_once_set_up_joined_and_every_dependency_works() {
        let gauge = Gauge::default();
        let health = Health::new(gauge.clone());
        health.set_up_done();
        assert!(
            !health.is_ready(),
            "set up, but not yet a member of the group"
        );
        health.joined_group(true);
        assert!(health.is_ready());
        assert_eq!(gauge.get(), 1);
        for not_ready in [
            Health::engine_writable,
            Health::dead_letters_writable,
            Health::topic_matches,
        ] {
            not_ready(&health, false);
            assert!(!health.is_ready());
            assert_eq!(gauge.get(), 0);
            not_ready(&health, true);
            assert!(health.is_ready());
        }
    }
}
