//! [`RedisFeatureStore`]: user profiles in Redis, one `MGET` round trip per batch.
//!
//! Each profile is a JSON string under `{prefix}{user_id}` (prefix `mqtrace:profile:` by
//! default): `{"home_country":"DE","features":[0.1, …16 numbers]}` — readable with
//! `redis-cli GET mqtrace:profile:user-3`. [`RedisFeatureStore::load`] writes profiles in
//! pipelined `MSET`s, so a demo or a test can seed the store from an [`InMemoryFeatureStore`].
//!
//! The connection is a [`redis::aio::ConnectionManager`]: it is shared by every clone of the
//! store, multiplexes concurrent batches, and reconnects after Redis restarts (the batch that
//! saw the failure fails with a [`FeatureStoreError`] and is delivered again).

use std::fmt;
use std::time::Duration;

use opentelemetry::trace::TraceContextExt;
use opentelemetry::{Context, KeyValue};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, ConnectionAddr};

use super::{FeatureStore, FeatureStoreError, InMemoryFeatureStore, PROFILE_FEATURES, UserProfile};

/// Key prefix profiles are stored under unless [`RedisFeatureStore::with_key_prefix`] says
/// otherwise.
pub const DEFAULT_KEY_PREFIX: &str = "mqtrace:profile:";

/// Profiles written per `MSET` by [`RedisFeatureStore::load`].
const LOAD_CHUNK: usize = 1_000;

const SYSTEM: &str = "redis";

fn store_error(message: impl fmt::Display) -> FeatureStoreError {
    FeatureStoreError {
        store: SYSTEM,
        message: message.to_string(),
    }
}

/// The JSON a profile is stored as.
///
/// ```
/// use mqtrace_inference::features::{UserProfile, decode_profile, encode_profile};
///
/// let profile = UserProfile { home_country: "DE".into(), features: [0.5; 16] };
/// assert_eq!(decode_profile(encode_profile(&profile).as_bytes()), Some(profile));
/// ```
pub fn encode_profile(profile: &UserProfile) -> String {
    serde_json::json!({
        "home_country": profile.home_country,
        "features": profile.features,
    })
    .to_string()
}

/// Reads a stored profile; `None` when it is not the JSON [`encode_profile`] writes (wrong
/// type, wrong number of features, not UTF-8...).
pub fn decode_profile(bytes: &[u8]) -> Option<UserProfile> {
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let home_country = value.get("home_country")?.as_str()?.to_owned();
    let numbers = value.get("features")?.as_array()?;
    if numbers.len() != PROFILE_FEATURES {
        return None;
    }
    let mut features = [0.0f32; PROFILE_FEATURES];
    for (slot, number) in features.iter_mut().zip(numbers) {
        *slot = number.as_f64()? as f32;
    }
    Some(UserProfile {
        home_country,
        features,
    })
}

/// User profiles in Redis.
///
/// # Example
///
/// ```no_run
/// # async fn run() -> Result<(), mqtrace_inference::features::FeatureStoreError> {
/// use mqtrace_inference::features::{FeatureStore, InMemoryFeatureStore, RedisFeatureStore};
///
/// let store = RedisFeatureStore::connect("redis://127.0.0.1:6379").await?;
/// store.load(&InMemoryFeatureStore::generated(10_000, 7)).await?;
/// let profiles = store.fetch(&["user-1", "user-2"]).await?;
/// assert!(profiles.iter().all(Option::is_some));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisFeatureStore {
    connection: ConnectionManager,
    key_prefix: String,
    server: Option<(String, u16)>,
}

impl fmt::Debug for RedisFeatureStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisFeatureStore")
            .field("key_prefix", &self.key_prefix)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl RedisFeatureStore {
    /// Connects to `url` (`redis://host:port/db`, `redis+unix:///path`), with a 5 s timeout
    /// for connecting and for each answer.
    pub async fn connect(url: &str) -> Result<Self, FeatureStoreError> {
        let client = Client::open(url)
            .map_err(|e| store_error(format_args!("'{url}' is not a Redis URL: {e}")))?;
        let server = match client.get_connection_info().addr() {
            ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
                Some((host.clone(), *port))
            }
            _ => None,
        };
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(3);
        let connection = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| {
                store_error(format_args!(
                    "cannot connect to {url}: {e} (is Redis running? `redis-server --daemonize yes` starts one)"
                ))
            })?;
        Ok(Self {
            connection,
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
            server,
        })
    }

    /// Stores and looks profiles up under `prefix` instead of [`DEFAULT_KEY_PREFIX`] (one
    /// prefix per tenant, or per test).
    pub fn with_key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// The key prefix.
    pub fn key_prefix(&self) -> &str {
        &self.key_prefix
    }

    /// The connection, for commands of your own.
    pub fn inner(&self) -> &ConnectionManager {
        &self.connection
    }

    /// The key a user's profile is stored under.
    pub fn key(&self, user_id: &str) -> String {
        format!("{}{user_id}", self.key_prefix)
    }

    /// Writes every profile of `profiles` (pipelined `MSET`s of 1,000), replacing what was
    /// there. Returns how many were written.
    pub async fn load(&self, profiles: &InMemoryFeatureStore) -> Result<usize, FeatureStoreError> {
        let entries: Vec<(String, String)> = profiles
            .iter()
            .map(|(id, profile)| (self.key(id), encode_profile(profile)))
            .collect();
        let mut pipeline = redis::pipe();
        for chunk in entries.chunks(LOAD_CHUNK) {
            pipeline.mset(chunk).ignore();
        }
        let mut connection = self.connection.clone();
        pipeline
            .query_async::<()>(&mut connection)
            .await
            .map_err(|e| store_error(format_args!("loading profiles failed: {e}")))?;
        Ok(entries.len())
    }

    /// Deletes every key under the prefix (SCAN + UNLINK); returns how many were deleted.
    pub async fn clear(&self) -> Result<usize, FeatureStoreError> {
        let mut connection = self.connection.clone();
        let pattern = format!("{}*", self.key_prefix);
        let mut cursor = 0_u64;
        let mut deleted = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1_000)
                .query_async(&mut connection)
                .await
                .map_err(|e| store_error(format_args!("scanning '{pattern}' failed: {e}")))?;
            if !keys.is_empty() {
                deleted += redis::cmd("UNLINK")
                    .arg(&keys)
                    .query_async::<usize>(&mut connection)
                    .await
                    .map_err(|e| store_error(format_args!("deleting profiles failed: {e}")))?;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }
}

impl FeatureStore for RedisFeatureStore {
    fn system(&self) -> &'static str {
        SYSTEM
    }

    fn span_attributes(&self) -> Vec<KeyValue> {
        let mut attributes = vec![KeyValue::new("db.operation.name", "MGET")];
        if let Some((host, port)) = &self.server {
            attributes.push(KeyValue::new("server.address", host.clone()));
            attributes.push(KeyValue::new("server.port", i64::from(*port)));
        }
        attributes
    }

    async fn fetch(
        &self,
        user_ids: &[&str],
    ) -> Result<Vec<Option<UserProfile>>, FeatureStoreError> {
        if user_ids.is_empty() {
            return Ok(Vec::new());
        }
        // one key buffer for the batch: Cmd::arg copies the bytes
        let mut command = redis::cmd("MGET");
        let mut key = String::with_capacity(self.key_prefix.len() + 16);
        for id in user_ids {
            key.clear();
            key.push_str(&self.key_prefix);
            key.push_str(id);
            command.arg(&key);
        }
        let mut connection = self.connection.clone();
        let values: Vec<Option<Vec<u8>>> =
            command.query_async(&mut connection).await.map_err(|e| {
                store_error(format_args!("MGET of {} keys failed: {e}", user_ids.len()))
            })?;
        if values.len() != user_ids.len() {
            return Err(store_error(format_args!(
                "MGET of {} keys answered {} values",
                user_ids.len(),
                values.len()
            )));
        }
        let mut corrupt = 0_i64;
        let profiles = values
            .iter()
            .map(|value| {
                let bytes = value.as_deref()?;
                let profile = decode_profile(bytes);
                corrupt += i64::from(profile.is_none());
                profile
            })
            .collect();
        if corrupt > 0 {
            // counted as missing profiles by the worker; say why on the fetch span
            Context::current().span().add_event(
                "feature_store.corrupt_values",
                vec![KeyValue::new(
                    "mqtrace.feature_store.corrupt_values",
                    corrupt,
                )],
            );
            tracing::warn!(
                corrupt,
                prefix = %self.key_prefix,
                "profiles in Redis are not the expected JSON; treated as missing"
            );
        }
        Ok(profiles)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_round_trip_through_json() {
        let store = InMemoryFeatureStore::generated(50, 3);
        for (_, profile) in store.iter() {
            let encoded = encode_profile(profile);
            assert_eq!(decode_profile(encoded.as_bytes()).as_ref(), Some(profile));
        }
    }

    #[tokio::test]
    async fn connect_errors_say_what_to_do() {
        let error = RedisFeatureStore::connect("http://127.0.0.1:6379")
            .await
            .expect_err("not a Redis URL");
        assert!(error.to_string().contains("is not a Redis URL"), "{error}");
        // port 1 on loopback: nothing listens there
        let error = RedisFeatureStore::connect("redis://127.0.0.1:1")
            .await
            .expect_err("nothing listens");
        assert_eq!(error.store, "redis");
        assert!(error.to_string().contains("is Redis running?"), "{error}");
    }

    #[test]
    fn corrupt_values_decode_to_none() {
        for bad in [
            &b"not json"[..],
            b"\xff\xfe",
            b"{}",
            b"{\"home_country\":\"DE\",\"features\":[1,2]}",
            b"{\"home_country\":3,\"features\":[]}",
            b"{\"home_country\":\"DE\",\"features\":[\"a\",0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]}",
        ] {
            assert_eq!(
                decode_profile(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
