//! Online features: a [`FeatureStore`] answers one lookup per batch with each user's profile.
//! [`InMemoryFeatureStore`] is the default (profiles generated from a seed);
//! `RedisFeatureStore` (feature `redis`) asks Redis with one `MGET` per batch.

use std::collections::HashMap;
use std::future::Future;

use opentelemetry::KeyValue;

use crate::mlp::SplitMix64;

#[cfg(feature = "redis")]
mod redis_store;
#[cfg(feature = "redis")]
pub use redis_store::{DEFAULT_KEY_PREFIX, RedisFeatureStore, decode_profile, encode_profile};

/// Features a user profile contributes to a row.
pub const PROFILE_FEATURES: usize = 16;

/// Countries profiles are generated with.
const COUNTRIES: [&str; 8] = ["DE", "FR", "GB", "US", "NL", "ES", "IT", "PL"];

/// What the store knows about a user.
#[derive(Debug, Clone, PartialEq)]
pub struct UserProfile {
    /// The user's home country (ISO code).
    pub home_country: String,
    /// Behavioural features: spend statistics, account age, prior chargebacks...; index 0 is
    /// the mean transaction amount (scaled), index 1 the chargeback rate (0–1).
    pub features: [f32; PROFILE_FEATURES],
}

impl UserProfile {
    /// The user's chargeback rate, 0–1.
    pub fn chargeback_rate(&self) -> f32 {
        self.features[1]
    }
}

/// Why a feature lookup failed as a whole (single unknown users are not errors).
#[derive(Debug, thiserror::Error)]
#[error("feature store {store} failed: {message}")]
pub struct FeatureStoreError {
    /// Which store.
    pub store: &'static str,
    /// What went wrong.
    pub message: String,
}

/// A store of user profiles, asked once per batch.
pub trait FeatureStore: Send + Sync {
    /// `db.system.name` of the store (`redis`), or `in_memory`.
    fn system(&self) -> &'static str;

    /// More attributes for the `features.fetch` span (`server.address`,
    /// `db.operation.name`...); none by default.
    fn span_attributes(&self) -> Vec<KeyValue> {
        Vec::new()
    }

    /// Looks up every user of a batch in one round trip; `None` for unknown users.
    fn fetch(
        &self,
        user_ids: &[&str],
    ) -> impl Future<Output = Result<Vec<Option<UserProfile>>, FeatureStoreError>> + Send;
}

/// Profiles held in process memory.
///
/// # Example
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use mqtrace_inference::features::{FeatureStore, InMemoryFeatureStore};
///
/// let store = InMemoryFeatureStore::generated(100, 7);
/// let profiles = store.fetch(&["user-3", "nobody"]).await?;
/// assert!(profiles[0].is_some());
/// assert!(profiles[1].is_none());
/// # Ok::<_, mqtrace_inference::features::FeatureStoreError>(()) }).unwrap();
/// ```
#[derive(Debug, Clone, Default)]
pub struct InMemoryFeatureStore {
    profiles: HashMap<String, UserProfile>,
}

impl InMemoryFeatureStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Profiles for users `user-0` … `user-{users-1}`, generated from `seed`.
    pub fn generated(users: usize, seed: u64) -> Self {
        let mut rng = SplitMix64::new(seed);
        let mut store = Self::new();
        for user in 0..users {
            let mut features = [0.0f32; PROFILE_FEATURES];
            for value in &mut features {
                *value = rng.next_f64() as f32;
            }
            // a few users with a real chargeback history
            features[1] = (features[1].powi(6) * 0.9).min(1.0);
            let home_country = COUNTRIES[(rng.next_u64() % COUNTRIES.len() as u64) as usize];
            store.insert(
                format!("user-{user}"),
                UserProfile {
                    home_country: home_country.to_owned(),
                    features,
                },
            );
        }
        store
    }

    /// Adds or replaces a profile.
    pub fn insert(&mut self, user_id: impl Into<String>, profile: UserProfile) {
        self.profiles.insert(user_id.into(), profile);
    }

    /// Every profile, by user id (in no particular order).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &UserProfile)> {
        self.profiles
            .iter()
            .map(|(id, profile)| (id.as_str(), profile))
    }

    /// How many profiles it holds.
    pub fn len(&self) -> usize {
        self.profiles.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.profiles.is_empty()
    }
}

impl FeatureStore for InMemoryFeatureStore {
    fn system(&self) -> &'static str {
        "in_memory"
    }

    async fn fetch(
        &self,
        user_ids: &[&str],
    ) -> Result<Vec<Option<UserProfile>>, FeatureStoreError> {
        Ok(user_ids
            .iter()
            .map(|id| self.profiles.get(*id).cloned())
            .collect())
    }
}
