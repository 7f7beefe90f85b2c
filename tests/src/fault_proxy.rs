//! A TCP proxy that can cut the line or freeze it: put it between a service and a
//! dependency to simulate an outage without touching the dependency itself (other
//! tests share it).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::task::JoinSet;

pub struct FaultProxy {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    frozen: tokio::sync::watch::Sender<bool>,
    connections: Arc<Mutex<JoinSet<()>>>,
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
        let cut = Arc::new(AtomicBool::new(false));
        let (frozen, _) = tokio::sync::watch::channel(false);
        let connections = Arc::new(Mutex::new(JoinSet::new()));
        let acceptor = {
            let cut = cut.clone();
            let frozen = frozen.clone();
            let connections = connections.clone();
            tokio::spawn(async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    if cut.load(Ordering::SeqCst) {
                        // Accept and drop at once: the client sees the connection close,
                        // as it would with a crashed engine behind a load balancer.
                        drop(client);
                        continue;
                    }
                    let upstream = upstream.clone();
                    let mut frozen = frozen.subscribe();
                    connections.lock().await.spawn(async move {
                        if *frozen.borrow() {
                            // Like a stopped process: the connection is accepted and
                            // never answered.
                            std::future::pending::<()>().await;
                        }
                        if let Ok(mut server) = TcpStream::connect(&upstream).await {
                            tokio::select! {
                                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                                () = async { drop(frozen.wait_for(|f| *f).await) } => {
                                    // Hold both ends open, forwarding nothing.
                                    let _held = (client, server);
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
            cut,
            frozen,
            connections,
            acceptor,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Cuts every open connection and refuses new ones until [`restore`](Self::restore).
    pub async fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.connections.lock().await.abort_all();
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }

    /// Stops forwarding without closing anything, as a dependency stopped with
    /// SIGSTOP would: connections stay open and requests are never answered, new
    /// connections are accepted and never answered either. Lasts as long as the proxy.
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}
