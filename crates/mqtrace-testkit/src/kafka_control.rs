//! Administering an embedded Kafka from another process.
//!
//! librdkafka's mock broker speaks the Kafka protocol but not its Admin API (no
//! CreateTopics), so a test process that uses a mock cluster running in *another* process
//! (`mqtrace mock-kafka`) cannot create a topic with N partitions on its own. The owner of
//! the cluster therefore serves a one-line-per-command text protocol on a loopback TCP port,
//! and the testkit's [`KafkaFixture`](crate::kafka::KafkaFixture) uses it when
//! `MQTRACE_KAFKA_CONTROL` names that port:
//!
//! | request | effect |
//! |---|---|
//! | `create-topic NAME PARTITIONS` | creates a topic (replication factor 1); an existing one is left as it is |
//! | `broker-down ID` / `broker-up ID` | takes a broker down / brings it back |
//! | `ping` | checks the server is there |
//!
//! Each answer is one line: `ok`, `ok exists` (`create-topic` of a topic that is already
//! there: nothing changed, so running a job twice against one broker works), or `error `
//! followed by the reason.
//!
//! ```
//! use std::sync::Arc;
//! use mqtrace_testkit::kafka::EmbeddedKafka;
//! use mqtrace_testkit::kafka_control::{ControlServer, request};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let kafka = Arc::new(EmbeddedKafka::start(1)?);
//! let server = ControlServer::spawn(kafka, "127.0.0.1:0".parse()?)?;
//! request(&server.local_addr().to_string(), "create-topic orders 3").await?;
//! # Ok(()) }
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use crate::kafka::EmbeddedKafka;

/// Environment variable with the control address (`HOST:PORT`) of an external mock cluster.
pub const CONTROL_ENV: &str = "MQTRACE_KAFKA_CONTROL";

/// The note of `ok exists`: `create-topic` found the topic already there.
pub const TOPIC_EXISTS: &str = "exists";

/// Longest request line the server reads.
const MAX_LINE: u64 = 1024;

/// Errors of the control protocol.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// The server socket could not be opened.
    #[error("cannot serve Kafka control commands on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The server could not be reached or hung up.
    #[error(
        "cannot reach the Kafka control port {addr} for '{command}': {source} (is `mqtrace mock-kafka` still running? {CONTROL_ENV} must be the control= address it printed)"
    )]
    Io {
        /// The control address.
        addr: String,
        /// The request.
        command: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The server refused the command.
    #[error("Kafka control '{command}' failed: {reason}")]
    Refused {
        /// The request.
        command: String,
        /// The server's reason.
        reason: String,
    },
}

/// Serves control commands for an [`EmbeddedKafka`] (see the [module docs](self)) on its own
/// threads until dropped.
#[derive(Debug)]
pub struct ControlServer {
    addr: SocketAddr,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ControlServer {
    /// Listens on `addr` (port 0: any free port) and serves `kafka`.
    pub fn spawn(kafka: Arc<EmbeddedKafka>, addr: SocketAddr) -> Result<Self, ControlError> {
        let listener =
            TcpListener::bind(addr).map_err(|source| ControlError::Bind { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| ControlError::Bind { addr, source })?;
        let stopping = Arc::new(AtomicBool::new(false));
        let stop = stopping.clone();
        let thread = std::thread::Builder::new()
            .name("mqtrace-kafka-control".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let kafka = kafka.clone();
                    let _ = std::thread::Builder::new()
                        .name("mqtrace-kafka-control-conn".into())
                        .spawn(move || serve_connection(&kafka, stream));
                }
            })
            .map_err(|source| ControlError::Bind { addr, source })?;
        Ok(Self {
            addr: local,
            stopping,
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve_connection(kafka: &EmbeddedKafka, stream: TcpStream) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        match (&mut reader).take(MAX_LINE).read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if !line.ends_with('\n') {
            let _ = writeln!(writer, "error request longer than {MAX_LINE} bytes");
            return;
        }
        let answer = match execute(kafka, line.trim()) {
            Ok(None) => "ok".to_owned(),
            Ok(Some(note)) => format!("ok {note}"),
            Err(reason) => format!("error {}", reason.replace('\n', " ")),
        };
        if writeln!(writer, "{answer}").is_err() {
            return;
        }
    }
}

/// Runs one request line against `kafka`; `Ok(Some(note))` is an `ok` with a note.
fn execute(kafka: &EmbeddedKafka, line: &str) -> Result<Option<&'static str>, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let number = |word: &str, what: &str| -> Result<i32, String> {
        word.parse::<i32>()
            .map_err(|_| format!("{what} must be a number, got '{word}'"))
    };
    match words.as_slice() {
        ["ping"] => Ok(None),
        ["create-topic", name, partitions] => {
            let partitions = number(partitions, "PARTITIONS")?;
            if !(1..=10_000).contains(&partitions) {
                return Err(format!("PARTITIONS must be 1 to 10000, got {partitions}"));
            }
            if !valid_topic(name) {
                return Err(format!(
                    "'{name}' is not a Kafka topic name (1-249 of [a-zA-Z0-9._-])"
                ));
            }
            match kafka.create_topic(name, partitions) {
                Ok(()) => Ok(None),
                Err(error) if error.is_topic_exists() => Ok(Some(TOPIC_EXISTS)),
                Err(error) => Err(error.to_string()),
            }
        }
        ["broker-down", id] => kafka
            .broker_down(number(id, "ID")?)
            .map(|()| None)
            .map_err(|e| e.to_string()),
        ["broker-up", id] => kafka
            .broker_up(number(id, "ID")?)
            .map(|()| None)
            .map_err(|e| e.to_string()),
        _ => Err(format!(
            "unknown request '{line}': use create-topic NAME PARTITIONS, broker-down ID, broker-up ID or ping"
        )),
    }
}

fn valid_topic(name: &str) -> bool {
    (1..=249).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Sends one request to the control server at `addr` and waits for its answer: the note
/// after `ok` (empty for a plain `ok`, [`TOPIC_EXISTS`] for a topic that was already there).
pub async fn request(addr: &str, command: &str) -> Result<String, ControlError> {
    let io = |source| ControlError::Io {
        addr: addr.to_owned(),
        command: command.to_owned(),
        source,
    };
    let mut stream = tokio::net::TcpStream::connect(addr).await.map_err(io)?;
    stream
        .write_all(format!("{command}\n").as_bytes())
        .await
        .map_err(io)?;
    let mut answer = String::new();
    tokio::io::BufReader::new(stream)
        .read_line(&mut answer)
        .await
        .map_err(io)?;
    match answer.trim_end() {
        "ok" => Ok(String::new()),
        ok if ok.starts_with("ok ") => Ok(ok["ok ".len()..].to_owned()),
        "" => Err(io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the server closed the connection without an answer",
        ))),
        other => Err(ControlError::Refused {
            command: command.to_owned(),
            reason: other.strip_prefix("error ").unwrap_or(other).to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(valid_topic("requests-1.v2_x"));
        assert!(!valid_topic(""));
        assert!(!valid_topic(".."));
        assert!(!valid_topic("a b"));
        assert!(!valid_topic(&"x".repeat(250)));
    }

    #[tokio::test]
    async fn commands_are_answered_and_bad_ones_explained() {
        let kafka = Arc::new(EmbeddedKafka::start(1).expect("kafka"));
        let server =
            ControlServer::spawn(kafka, "127.0.0.1:0".parse().expect("addr")).expect("server");
        let addr = server.local_addr().to_string();
        request(&addr, "ping").await.expect("ping");
        assert_eq!(
            request(&addr, "create-topic t1 3").await.expect("create"),
            ""
        );
        assert_eq!(
            request(&addr, "create-topic t1 5").await.expect("again"),
            TOPIC_EXISTS,
            "an existing topic is fine, and left as it is"
        );
        for (bad, expected) in [
            ("create-topic t2 zero", "PARTITIONS must be a number"),
            ("create-topic t2 0", "PARTITIONS must be 1 to 10000"),
            ("create-topic bad/name 1", "not a Kafka topic name"),
            ("drop-everything", "unknown request"),
        ] {
            let err = request(&addr, bad).await.expect_err(bad);
            assert!(err.to_string().contains(expected), "{bad}: {err}");
        }
        drop(server);
        let err = request(&addr, "ping").await.expect_err("server gone");
        assert!(err.to_string().contains("mqtrace mock-kafka"), "{err}");
    }
}
