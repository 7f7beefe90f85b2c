//! A TCP proxy that can cut the line: put it between a service and a dependency
//! to simulate an outage without touching the dependency itself. It can also watch
//! for one HTTP request (by a piece of its request line, e.g. `POST /_aliases`) and
//! act on it, to fail a program at one exact step. And it can freeze, as a
//! dependency stopped with SIGSTOP would.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, Notify};
use tokio::task::JoinSet;

/// What the proxy does when it sees the request it watches for.
#[derive(Debug, Clone, Copy)]
pub enum OnRequest {
    /// Cuts every connection before the request reaches the engine, and refuses new
    /// ones until [`FaultProxy::restore`]: the request and everything after fail.
    CutBefore,
    /// Lets the request through, gives the answer `after` to come back, then cuts
    /// as [`OnRequest::CutBefore`] does.
    CutAfter(Duration),
    /// Holds the request for this long before passing it on.
    Hold(Duration),
    /// Only tells the test (see [`FaultProxy::watch`]).
    Pass,
}

struct Watch {
    needle: Vec<u8>,
    action: OnRequest,
    seen: Arc<Notify>,
}

struct Shared {
    cut: AtomicBool,
    /// True once frozen: connections stay open and nothing is forwarded.
    frozen: tokio::sync::watch::Sender<bool>,
    connections: Mutex<JoinSet<()>>,
    watch: std::sync::Mutex<Option<Watch>>,
}

impl Shared {
    async fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.connections.lock().await.abort_all();
    }

    /// The action for a chunk a client sent, once: the watch is gone afterwards.
    fn watched(&self, chunk: &[u8]) -> Option<(OnRequest, Arc<Notify>)> {
        let mut watch = self.watch.lock().unwrap_or_else(|e| e.into_inner());
        let hit = watch.as_ref().is_some_and(|w| {
            chunk
                .windows(w.needle.len())
                .any(|window| window == w.needle.as_slice())
        });
        hit.then(|| watch.take())
            .flatten()
            .map(|w| (w.action, w.seen))
    }
}

pub struct FaultProxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Starts forwarding a free local port to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let upstream = upstream.to_owned();
        let shared = Arc::new(Shared {
            cut: AtomicBool::new(false),
            frozen: tokio::sync::watch::channel(false).0,
            connections: Mutex::new(JoinSet::new()),
            watch: std::sync::Mutex::new(None),
        });
        let acceptor = {
            let shared = shared.clone();
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    if shared.cut.load(Ordering::SeqCst) {
                        // Accept and drop at once: the client sees the connection close,
                        // as it would with a crashed engine behind a load balancer.
                        drop(client);
                        continue;
                    }
                    let upstream = upstream.clone();
                    let connection_shared = shared.clone();
                    shared.connections.lock().await.spawn(async move {
                        let mut frozen = connection_shared.frozen.subscribe();
                        if *frozen.borrow() {
                            // Like a stopped process: the connection is accepted and
                            // never answered (`client` stays open while this waits).
                            std::future::pending::<()>().await;
                        }
                        if let Ok(server) = TcpStream::connect(&upstream).await {
                            let forwarding = forward(client, server, &connection_shared);
                            tokio::pin!(forwarding);
                            tokio::select! {
                                () = &mut forwarding => {}
                                () = async { drop(frozen.wait_for(|f| *f).await) } => {
                                    // Hold both ends open (inside the unpolled
                                    // forwarding), passing nothing on.
                                    std::future::pending::<()>().await;
                                }
                            }
                        }
                    });
                }
            })
        };
        Self {
            addr,
            shared,
            acceptor,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Cuts every open connection and refuses new ones until [`restore`](Self::restore).
    pub async fn cut(&self) {
        self.shared.cut().await;
    }

    pub fn restore(&self) {
        self.shared.cut.store(false, Ordering::SeqCst);
    }

    /// Stops forwarding without closing anything, as a dependency stopped with
    /// SIGSTOP would: connections stay open and requests are never answered, new
    /// connections are accepted and never answered either. Lasts as long as the proxy.
    pub fn freeze(&self) {
        self.shared.frozen.send_replace(true);
    }

    /// Watches for the first request whose bytes contain `needle` and acts on it;
    /// the returned notification fires when it is seen (before the action's delay).
    pub fn watch(&self, needle: &str, action: OnRequest) -> Arc<Notify> {
        let seen = Arc::new(Notify::new());
        *self.shared.watch.lock().unwrap_or_else(|e| e.into_inner()) = Some(Watch {
            needle: needle.as_bytes().to_vec(),
            action,
            seen: seen.clone(),
        });
        seen
    }
}

/// Copies both ways, looking at what the client sends for the watched request.
async fn forward(client: TcpStream, server: TcpStream, shared: &Shared) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let down = tokio::io::copy(&mut server_read, &mut client_write);
    let up = async {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let n = match client_read.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let chunk = &buffer[..n];
            let mut cut_after = None;
            if let Some((action, seen)) = shared.watched(chunk) {
                seen.notify_one();
                match action {
                    OnRequest::CutBefore => {
                        shared.cut().await;
                        return;
                    }
                    OnRequest::CutAfter(after) => cut_after = Some(after),
                    OnRequest::Hold(time) => tokio::time::sleep(time).await,
                    OnRequest::Pass => {}
                }
            }
            if server_write.write_all(chunk).await.is_err() {
                return;
            }
            if let Some(after) = cut_after {
                tokio::time::sleep(after).await;
                shared.cut().await;
                return;
            }
        }
    };
    tokio::select! {
        _ = down => {}
        () = up => {}
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}
