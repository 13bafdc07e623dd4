//! RabbitMQ for tests: connects to `MQTRACE_AMQP_URL` (default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`). If nothing listens there and `rabbitmq-server` is
//! installed, it is started (`rabbitmq-server -detached`) and awaited for up to a minute;
//! otherwise the fixture fails with a message that says how to start one. Never a silent skip.
//!
//! Each test declares its own queues and exchanges with unique names; queues expire a minute
//! after their last use and exchanges are auto-deleted, so parallel tests never meet and
//! nothing is left behind.
//!
//! Fault tests cut a connection from the broker's side with [`close_connection`]
//! (`rabbitmqctl close_connection`), finding it by the name the test gave it
//! ([`connections_named`]), so no other connection is affected.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};

use crate::kafka::unique_name;

/// Environment variable with the broker's URL.
pub const URL_ENV: &str = "MQTRACE_AMQP_URL";
/// The URL used when [`URL_ENV`] is unset.
pub const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Errors from the RabbitMQ fixture.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Nothing listens at the broker's address and it could not be started here.
    #[error(
        "no RabbitMQ at {address} ({reason}); start one with `rabbitmq-server -detached` or `docker compose up -d rabbitmq`, or point {URL_ENV} at one"
    )]
    Unavailable {
        /// host:port.
        address: String,
        /// What went wrong.
        reason: String,
    },
    /// The URL cannot be parsed.
    #[error("{URL_ENV}={url:?} is not a valid amqp:// URL: {reason}")]
    BadUrl {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// `rabbitmqctl` could not be run or failed.
    #[error(
        "rabbitmqctl {command} failed: {reason} (it must be installed on this machine and able to reach the local node; run the test as the user that runs RabbitMQ, or as root)"
    )]
    Ctl {
        /// The rabbitmqctl arguments.
        command: String,
        /// What went wrong.
        reason: String,
    },
    /// The broker answered but an AMQP operation failed.
    #[error("RabbitMQ: {operation} failed: {source}")]
    Amqp {
        /// What was attempted.
        operation: String,
        /// lapin's error.
        #[source]
        source: lapin::Error,
    },
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn listening(addresses: &[SocketAddr]) -> bool {
    addresses
        .iter()
        .any(|a| TcpStream::connect_timeout(a, Duration::from_millis(500)).is_ok())
}

/// Makes sure a broker listens at `url`'s host and port, starting the local
/// `rabbitmq-server` when it is installed. Only one caller in the process starts it.
pub fn ensure_running(url: &str) -> Result<()> {
    static STARTING: Mutex<()> = Mutex::new(());
    let uri: lapin::uri::AMQPUri = url.parse().map_err(|reason| Error::BadUrl {
        url: url.to_owned(),
        reason,
    })?;
    let address = format!("{}:{}", uri.authority.host, uri.authority.port);
    let unavailable = |reason: String| Error::Unavailable {
        address: address.clone(),
        reason,
    };
    let addresses: Vec<SocketAddr> = address
        .to_socket_addrs()
        .map_err(|e| unavailable(format!("cannot resolve: {e}")))?
        .collect();
    if listening(&addresses) {
        return Ok(());
    }
    let _guard = STARTING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if listening(&addresses) {
        return Ok(());
    }
    let local = addresses.iter().all(|a| a.ip().is_loopback());
    if !local {
        return Err(unavailable("nothing listens there".into()));
    }
    let started = std::process::Command::new("rabbitmq-server")
        .arg("-detached")
        .status()
        .map_err(|e| {
            unavailable(format!(
                "nothing listens there and rabbitmq-server could not be run: {e}"
            ))
        })?;
    if !started.success() {
        return Err(unavailable(format!(
            "rabbitmq-server -detached exited with {started}"
        )));
    }
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if listening(&addresses) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Err(unavailable(format!(
        "started rabbitmq-server, but it did not listen within {} s",
        START_TIMEOUT.as_secs()
    )))
}

fn rabbitmqctl(args: &[&str]) -> Result<String> {
    let failed = |reason: String| Error::Ctl {
        command: args.join(" "),
        reason,
    };
    let output = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .map_err(|e| failed(e.to_string()))?;
    if !output.status.success() {
        return Err(failed(format!(
            "{}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The Erlang process ids of the broker's connections whose client named them `name`
/// (lapin: `ConnectionProperties::default().with_connection_name(name)`), as
/// `rabbitmqctl list_connections` shows them. Blocking: it runs `rabbitmqctl` (about a second);
/// call it from `tokio::task::spawn_blocking` in async code.
///
/// # Example
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use lapin::{Connection, ConnectionProperties};
/// use mqtrace_testkit::amqp::{DEFAULT_URL, close_connection, connections_named};
/// use mqtrace_testkit::kafka::unique_name;
///
/// let name = unique_name("publisher");
/// let properties = ConnectionProperties::default().with_connection_name(name.as_str().into());
/// let connection = Connection::connect(DEFAULT_URL, properties).await?;
/// let pids = tokio::task::spawn_blocking(move || connections_named(&name)).await??;
/// assert_eq!(pids.len(), 1);
/// // ... later, in the middle of the traffic:
/// tokio::task::spawn_blocking(move || close_connection(&pids[0], "drill")).await??;
/// # let _ = connection; Ok(()) }
/// ```
pub fn connections_named(name: &str) -> Result<Vec<String>> {
    let listing = rabbitmqctl(&[
        "-q",
        "list_connections",
        "--no-table-headers",
        "pid",
        "client_properties",
    ])?;
    // Each line: `<rabbit@host.1.2.3>\t[...{"connection_name","NAME"}...]`.
    let quoted = format!("{{\"connection_name\",\"{name}\"}}");
    Ok(listing
        .lines()
        .filter(|line| line.contains(&quoted))
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// Closes connection `pid` (see [`connections_named`]) from the broker's side, as
/// `rabbitmqctl close_connection` does: the client sees it closed with `CONNECTION_FORCED`
/// and `reason`. Blocking, like [`connections_named`].
pub fn close_connection(pid: &str, reason: &str) -> Result<()> {
    rabbitmqctl(&["-q", "close_connection", pid, reason]).map(drop)
}

/// Closes every connection named `name` ([`connections_named`], then [`close_connection`]);
/// returns how many there were. Give connections unique names ([`unique_name`]) so a test
/// closes only its own.
pub fn close_connections_named(name: &str, reason: &str) -> Result<usize> {
    let pids = connections_named(name)?;
    for pid in &pids {
        close_connection(pid, reason)?;
    }
    Ok(pids.len())
}

/// A connection to the test broker, with helpers for unique, self-cleaning topology.
///
/// # Example
///
/// ```no_run
/// # async fn run() -> Result<(), mqtrace_testkit::amqp::Error> {
/// use mqtrace_testkit::amqp::RabbitFixture;
///
/// let rabbit = RabbitFixture::connect().await?;
/// let queue = rabbit.declare_queue("requests").await?;
/// # let _ = queue; Ok(()) }
/// ```
#[derive(Debug)]
pub struct RabbitFixture {
    url: String,
    connection: Arc<Connection>,
    channel: Channel,
}

impl RabbitFixture {
    /// Connects to `MQTRACE_AMQP_URL` (or the default), starting a local broker if needed.
    pub async fn connect() -> Result<Self> {
        let url = std::env::var(URL_ENV)
            .ok()
            .filter(|u| !u.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_URL.to_owned());
        let check = url.clone();
        tokio::task::spawn_blocking(move || ensure_running(&check))
            .await
            .map_err(|e| Error::Unavailable {
                address: url.clone(),
                reason: e.to_string(),
            })??;
        let amqp = |operation: &str| {
            let operation = operation.to_owned();
            move |source| Error::Amqp { operation, source }
        };
        let connection = Connection::connect(&url, ConnectionProperties::default())
            .await
            .map_err(amqp("connecting"))?;
        let channel = connection
            .create_channel()
            .await
            .map_err(amqp("opening a channel"))?;
        Ok(Self {
            url,
            connection: Arc::new(connection),
            channel,
        })
    }

    /// The broker's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The shared connection.
    pub fn connection(&self) -> Arc<Connection> {
        Arc::clone(&self.connection)
    }

    /// A fresh channel on the connection.
    pub async fn channel(&self) -> Result<Channel> {
        self.connection
            .create_channel()
            .await
            .map_err(|source| Error::Amqp {
                operation: "opening a channel".into(),
                source,
            })
    }

    /// Declares a queue with a unique name starting with `prefix`; it expires a minute after
    /// its last use.
    pub async fn declare_queue(&self, prefix: &str) -> Result<String> {
        let name = unique_name(prefix);
        let mut arguments = FieldTable::default();
        arguments.insert("x-expires".into(), AMQPValue::LongInt(60_000));
        self.channel
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions::default(),
                arguments,
            )
            .await
            .map_err(|source| Error::Amqp {
                operation: format!("declaring queue {name}"),
                source,
            })?;
        Ok(name)
    }

    /// Declares an auto-deleted direct exchange with a unique name starting with `prefix`,
    /// bound to `queue` with `routing_key`.
    pub async fn declare_exchange_to(
        &self,
        prefix: &str,
        queue: &str,
        routing_key: &str,
    ) -> Result<String> {
        let name = unique_name(prefix);
        let amqp = |operation: String| move |source| Error::Amqp { operation, source };
        self.channel
            .exchange_declare(
                name.as_str().into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    auto_delete: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(amqp(format!("declaring exchange {name}")))?;
        self.channel
            .queue_bind(
                queue.into(),
                name.as_str().into(),
                routing_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(amqp(format!("binding {queue} to {name}")))?;
        Ok(name)
    }
}
