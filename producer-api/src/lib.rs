//! citypop producer-api: the HTTP front of the pipeline.
//!
//! Guarantees:
//! - A `202 Accepted` is sent only after Kafka acknowledged the event with
//!   `acks=all` from an idempotent producer; anything else is a 503 with
//!   `Retry-After`, and the client may safely retry.
//! - Requests are validated at the edge into `CityName` and `Population`; invalid
//!   ones never reach Kafka and get an `application/problem+json` body.
//! - Reads come straight from the search index alias, in real time (concurrent reads
//!   of single cities may share one `_mget`); only the optional read cache, off by
//!   default, may answer up to its TTL late. This service never writes to the engine.
//! - When API keys are configured, every write needs one in `X-API-Key`; keys are
//!   compared in constant time and never logged.
//! - The W3C `traceparent` of a request (or a new one) travels with its events into
//!   Kafka's headers.
//! - On SIGTERM it stops accepting connections, finishes the requests in flight,
//!   flushes the producer and exits 0.

mod api_keys;
mod city_index;
pub mod config;
mod metrics;
mod new_name;
mod problem;
mod publisher;
mod read_batcher;
mod read_cache;
mod routes;
mod search;
mod trace_context;
mod version_wait;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

pub use config::Config;

/// How long shutdown waits for Kafka to acknowledge writes still queued.
const SHUTDOWN_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// The pause after a failed accept, so a full file descriptor table does not turn
/// the accept loop into a busy loop.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// A bound, not yet serving, producer-api.
pub struct Application {
    listener: TcpListener,
    state: Arc<routes::AppState>,
    header_read_timeout: Duration,
}

impl Application {
    /// Binds the listener and creates the clients; Kafka and the engine need not be
    /// up yet (readiness reports them).
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        let api_keys = Arc::new(api_keys::WriteKeys::load(
            config.api_keys.as_ref(),
            config.api_keys_file.as_deref(),
        )?);
        api_keys.reload_every(config.api_keys_reload_interval);
        if api_keys.current().required() {
            tracing::info!(keys = api_keys.current().len(), "writes need an api key");
        } else {
            tracing::warn!(
                "no api keys configured: writes are open to anyone who can reach the api"
            );
        }
        let metrics = Arc::new(metrics::Metrics::new());
        let index = Arc::new(city_index::CityIndex::new(
            &config.engine,
            config.engine_read_timeout,
        )?);
        let state = Arc::new(routes::AppState {
            publisher: publisher::Publisher::new(
                &config.kafka,
                &publisher::ProducerSettings::from_config(config),
                metrics.clone(),
            )?,
            reads: routes::get::ReadPath::new(
                index.clone(),
                &routes::get::ReadSettings::from(config),
                metrics.clone(),
            ),
            index,
            version_waits: Arc::default(),
            limits: routes::Limits {
                body_read_timeout: config.body_read_timeout,
                request_timeout: config.request_timeout,
                max_concurrent_requests: config.max_concurrent_requests as usize,
            },
            api_keys,
            metrics,
            api_docs: config.api_docs,
        });
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        Ok(Self {
            listener,
            state,
            header_read_timeout: config.header_read_timeout,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves: stops accepting connections, lets requests
    /// in flight finish (a read-your-writes wait included), then flushes the producer
    /// so no write still waiting for Kafka is dropped.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let router = routes::router(self.state.clone());
        // hyper's connection builder rather than `axum::serve`: only it takes a timer,
        // without which hyper's header read timeout is silently off.
        let mut builder = Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout);
        builder.http2().timer(TokioTimer::new());
        let graceful = GracefulShutdown::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let stream = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        // Out of file descriptors, most likely: pause rather than spin.
                        tracing::warn!(%error, "accepting a connection failed");
                        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let service = TowerToHyperService::new(router.clone());
            let connection = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .into_owned();
            let connection = graceful.watch(connection);
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(error = %error, "connection ended with an error");
                }
            });
        }
        // No new connections; the open ones finish their requests in flight.
        drop(self.listener);
        graceful.shutdown().await;
        let state = self.state;
        tokio::task::spawn_blocking(move || state.publisher.flush(SHUTDOWN_FLUSH_TIMEOUT))
            .await
            .context("flushing the producer")?;
        Ok(())
    }
}
