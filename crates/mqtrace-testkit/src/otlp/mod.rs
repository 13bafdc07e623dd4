//! A real OTLP receiver for tests: gRPC (the opentelemetry-proto tonic services for traces,
//! metrics and logs) and HTTP/protobuf (`/v1/traces`, `/v1/metrics`, `/v1/logs`) on
//! ephemeral loopback ports. It keeps everything it received for assertions, and plays the
//! collector's bad days on demand: [`OtlpReceiver::stop`] kills it (listeners closed, open
//! connections cut), [`OtlpReceiver::restart`] brings it back on the same ports, and
//! [`OtlpReceiver::set_behaviour`] makes it answer slowly or with errors.
//!
//! ```
//! use std::time::Duration;
//! use mqtrace_testkit::otlp::{Behaviour, OtlpReceiver};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), mqtrace_testkit::otlp::Error> {
//! let receiver = OtlpReceiver::start().await?;
//! // Point an exporter at receiver.grpc_endpoint() or receiver.http_endpoint() ...
//! assert!(receiver.grpc_endpoint().starts_with("http://127.0.0.1:"));
//! receiver.set_behaviour(Behaviour::Slow(Duration::from_millis(200)));
//! receiver.stop().await;
//! receiver.restart().await?;
//! assert!(receiver.spans().is_empty());
//! # Ok(()) }
//! ```

mod grpc;
mod http;
mod received;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::{JoinHandle, JoinSet};

pub use received::{
    Origin, Protocol, ReceivedLog, ReceivedMetric, ReceivedSpan, find_attr, hex, value_to_string,
};

/// Errors from the receiver.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A listening socket could not be opened.
    #[error(
        "cannot listen for OTLP/{protocol} on {addr}: {source} (on restart: is another process using the port now?)"
    )]
    Bind {
        /// The protocol.
        protocol: Protocol,
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How the receiver answers export requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Behaviour {
    /// Accept and answer at once.
    #[default]
    Normal,
    /// Wait this long before accepting and answering (a collector under load). A request
    /// that is waiting is released early when the behaviour changes, so a test can hold
    /// exports for as long as it needs (`Slow(Duration::MAX)`) and then let them through.
    Slow(Duration),
    /// Refuse every export: gRPC `UNAVAILABLE`, HTTP `503 Service Unavailable` (a
    /// collector whose memory limiter is refusing data). Nothing is kept.
    Failing,
}

/// Everything received so far, plus what was refused.
#[derive(Debug, Default)]
struct Store {
    spans: Vec<ReceivedSpan>,
    metrics: Vec<ReceivedMetric>,
    logs: Vec<ReceivedLog>,
    accepted_requests: usize,
    refused_requests: usize,
}

/// State shared by the receiver handle and its connection tasks.
#[derive(Debug, Default)]
struct Shared {
    store: Mutex<Store>,
    behaviour: Mutex<Behaviour>,
    behaviour_changed: Notify,
    changed: Notify,
}

impl Shared {
    fn store(&self) -> MutexGuard<'_, Store> {
        self.store
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn behaviour(&self) -> Behaviour {
        *self
            .behaviour
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies the configured behaviour to one request: waits when slow; `false` when the
    /// request must be refused.
    async fn admit(&self) -> bool {
        loop {
            let changed = self.behaviour_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match self.behaviour() {
                Behaviour::Normal => return true,
                Behaviour::Slow(delay) => {
                    let sleep = async {
                        match tokio::time::Instant::now().checked_add(delay) {
                            Some(until) => tokio::time::sleep_until(until).await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        () = sleep => return true,
                        () = changed => continue,
                    }
                }
                Behaviour::Failing => {
                    self.store().refused_requests += 1;
                    self.changed.notify_waiters();
                    return false;
                }
            }
        }
    }

    fn keep(&self, update: impl FnOnce(&mut Store)) {
        let mut store = self.store();
        update(&mut store);
        store.accepted_requests += 1;
        drop(store);
        self.changed.notify_waiters();
    }
}

/// The listeners and connections of one run, between start/restart and stop.
#[derive(Debug)]
struct Running {
    stop: watch::Sender<bool>,
    servers: Vec<JoinHandle<()>>,
}

/// An OTLP receiver on loopback (see the [module docs](self)).
#[derive(Debug)]
pub struct OtlpReceiver {
    shared: Arc<Shared>,
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    running: Mutex<Option<Running>>,
}

impl OtlpReceiver {
    /// Starts gRPC and HTTP listeners on ephemeral loopback ports. Call from within a Tokio
    /// runtime.
    pub async fn start() -> Result<Self> {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let grpc = listen(Protocol::Grpc, any)?;
        let http = listen(Protocol::HttpProtobuf, any)?;
        let local = |l: &TcpListener, protocol| {
            l.local_addr().map_err(|source| Error::Bind {
                protocol,
                addr: any,
                source,
            })
        };
        let receiver = Self {
            shared: Arc::new(Shared::default()),
            grpc_addr: local(&grpc, Protocol::Grpc)?,
            http_addr: local(&http, Protocol::HttpProtobuf)?,
            running: Mutex::new(None),
        };
        receiver.serve(grpc, http);
        Ok(receiver)
    }

    /// `http://127.0.0.1:PORT` of the gRPC listener (for `OTEL_EXPORTER_OTLP_ENDPOINT` with
    /// `OTEL_EXPORTER_OTLP_PROTOCOL=grpc`).
    pub fn grpc_endpoint(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    /// `http://127.0.0.1:PORT` of the HTTP listener (the base URL: the signal paths
    /// `/v1/traces`, `/v1/metrics`, `/v1/logs` are appended by the exporter).
    pub fn http_endpoint(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    /// Changes how export requests are answered from now on.
    pub fn set_behaviour(&self, behaviour: Behaviour) {
        *self
            .shared
            .behaviour
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = behaviour;
        self.shared.behaviour_changed.notify_waiters();
    }

    /// Whether the listeners are up.
    pub fn is_running(&self) -> bool {
        self.running_slot().is_some()
    }

    /// Kills the receiver like a crashed collector: the listeners close (new connections are
    /// refused) and open connections are cut, with requests in flight unanswered. What was
    /// received before stays. Returns when everything is closed. Does nothing when stopped.
    pub async fn stop(&self) {
        let running = self.running_slot().take();
        if let Some(running) = running {
            let _ = running.stop.send(true);
            for server in running.servers {
                let _ = server.await;
            }
        }
    }

    /// Starts listening again on the same ports after [`stop`](Self::stop). Does nothing
    /// when running.
    pub async fn restart(&self) -> Result<()> {
        if self.is_running() {
            return Ok(());
        }
        let grpc = listen(Protocol::Grpc, self.grpc_addr)?;
        let http = listen(Protocol::HttpProtobuf, self.http_addr)?;
        self.serve(grpc, http);
        Ok(())
    }

    /// Every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.shared.store().spans.clone()
    }

    /// Every metric received so far (one entry per metric per export).
    pub fn metrics(&self) -> Vec<ReceivedMetric> {
        self.shared.store().metrics.clone()
    }

    /// Every log record received so far.
    pub fn logs(&self) -> Vec<ReceivedLog> {
        self.shared.store().logs.clone()
    }

    /// How many spans were received so far (cheaper than `spans().len()`).
    pub fn span_count(&self) -> usize {
        self.shared.store().spans.len()
    }

    /// Export requests accepted so far, over both protocols and all signals.
    pub fn accepted_requests(&self) -> usize {
        self.shared.store().accepted_requests
    }

    /// Export requests refused so far under [`Behaviour::Failing`].
    pub fn refused_requests(&self) -> usize {
        self.shared.store().refused_requests
    }

    /// Waits until `done(self)` is true, re-checking whenever something arrives or is refused;
    /// `false` when `timeout` passes first.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use mqtrace_testkit::otlp::OtlpReceiver;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mqtrace_testkit::otlp::Error> {
    /// let receiver = OtlpReceiver::start().await?;
    /// let arrived = receiver
    ///     .wait_until(Duration::from_millis(50), |r| r.span_count() >= 1)
    ///     .await;
    /// assert!(!arrived, "nothing was exported");
    /// # Ok(()) }
    /// ```
    pub async fn wait_until(&self, timeout: Duration, mut done: impl FnMut(&Self) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if done(self) {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return done(self);
            }
        }
    }

    fn running_slot(&self) -> MutexGuard<'_, Option<Running>> {
        self.running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn serve(&self, grpc: TcpListener, http: TcpListener) {
        let (stop, stopped) = watch::channel(false);
        let servers = vec![
            tokio::spawn(accept_loop(
                grpc,
                stopped.clone(),
                grpc::Server::new(self.shared.clone()),
            )),
            tokio::spawn(accept_loop(
                http,
                stopped,
                http::Server::new(self.shared.clone()),
            )),
        ];
        *self.running_slot() = Some(Running { stop, servers });
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        if let Some(running) = self.running_slot().take() {
            let _ = running.stop.send(true);
            for server in running.servers {
                server.abort();
            }
        }
    }
}

/// A listener with `SO_REUSEADDR`, so a restart can take the same port back at once.
fn listen(protocol: Protocol, addr: SocketAddr) -> Result<TcpListener> {
    let bind = || -> std::io::Result<TcpListener> {
        let socket = TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(1024)
    };
    bind().map_err(|source| Error::Bind {
        protocol,
        addr,
        source,
    })
}

/// Serves one connection until it ends.
trait ConnectionServer: Clone + Send + 'static {
    fn serve(self, stream: TcpStream) -> impl Future<Output = ()> + Send + 'static;
}

/// Accepts connections until stopped, then closes the listener and cuts every connection.
async fn accept_loop<S: ConnectionServer>(
    listener: TcpListener,
    mut stopped: watch::Receiver<bool>,
    server: S,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = stopped.changed() => break,
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    let _ = stream.set_nodelay(true);
                    connections.spawn(server.clone().serve(stream));
                }
            }
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    connections.shutdown().await;
}
