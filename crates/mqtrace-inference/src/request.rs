//! The scoring request: its JSON schema, validation with data-quality findings, and the
//! feature row the model sees.
//!
//! ```json
//! {"request_id": "r-17", "user_id": "user-42", "amount": 129.5,
//!  "merchant_category": "electronics", "country": "DE", "hour": 23, "card_present": false}
//! ```
//!
//! `request_id`, `user_id` and `amount` are required: a request without them, or not JSON at
//! all, is malformed and goes to the dead-letter destination. The other fields are optional:
//! a missing or null one is imputed (and counted as missing), one of the wrong type or out of
//! range is imputed too (and counted as a schema mismatch).

use serde_json::Value;

/// Merchant categories the model knows; anything else is `other`.
pub const MERCHANT_CATEGORIES: [&str; 8] = [
    "grocery",
    "electronics",
    "travel",
    "restaurants",
    "fuel",
    "gaming",
    "jewelry",
    "other",
];

/// Features derived from the request itself.
pub const REQUEST_FEATURES: usize = 16;

/// Feature names, a fixed set (they label the data-quality metrics).
pub mod feature {
    /// `amount`.
    pub const AMOUNT: &str = "amount";
    /// `merchant_category`.
    pub const MERCHANT_CATEGORY: &str = "merchant_category";
    /// `country`.
    pub const COUNTRY: &str = "country";
    /// `hour`.
    pub const HOUR: &str = "hour";
    /// `card_present`.
    pub const CARD_PRESENT: &str = "card_present";
    /// `request_id`.
    pub const REQUEST_ID: &str = "request_id";
    /// `user_id`.
    pub const USER_ID: &str = "user_id";
    /// The user's profile in the feature store.
    pub const USER_PROFILE: &str = "user_profile";
}

/// A data-quality finding about one field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finding {
    /// The field was absent or null.
    Missing(&'static str),
    /// The field had the wrong type or was out of range.
    Mismatch(&'static str),
}

/// Why a request cannot be scored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Malformed {
    /// The body is not a JSON object.
    #[error("the request is not a JSON object: {0}")]
    NotJson(String),
    /// A required field is absent or null.
    #[error("required field '{0}' is missing")]
    Missing(&'static str),
    /// A required field has the wrong type or an invalid value.
    #[error("required field '{0}' has the wrong type or an invalid value")]
    Invalid(&'static str),
    /// The body is larger than a request may be; it was not parsed.
    #[error("the request is {size} bytes, more than the {limit} bytes a request may have")]
    TooLarge {
        /// The body's size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
}

impl Malformed {
    /// A low-cardinality reason for metrics and the dead-letter header.
    pub fn reason(&self) -> &'static str {
        match self {
            Malformed::NotJson(_) => "not_json",
            Malformed::Missing(_) => "missing_field",
            Malformed::Invalid(_) => "invalid_field",
            Malformed::TooLarge { .. } => "too_large",
        }
    }
}

/// A validated request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The caller's id for the request, echoed in the reply.
    pub request_id: String,
    /// Whose transaction it is; the feature-store key.
    pub user_id: String,
    /// Transaction amount (≥ 0).
    pub amount: f64,
    /// Index into [`MERCHANT_CATEGORIES`].
    pub category: usize,
    /// ISO country code, upper-case; `None` when unknown.
    pub country: Option<String>,
    /// Hour of day 0–23.
    pub hour: u8,
    /// Whether the card was present.
    pub card_present: bool,
    /// What was missing or wrong in the optional fields.
    pub findings: Vec<Finding>,
}

fn required_str(
    object: &serde_json::Map<String, Value>,
    name: &'static str,
) -> Result<String, Malformed> {
    match object.get(name) {
        None | Some(Value::Null) => Err(Malformed::Missing(name)),
        Some(Value::String(s)) if !s.trim().is_empty() && s.len() <= 256 => Ok(s.clone()),
        Some(_) => Err(Malformed::Invalid(name)),
    }
}

impl Request {
    /// [`Request::parse`] for a body of at most `limit` bytes: a larger one is
    /// [`Malformed::TooLarge`] without being read.
    ///
    /// # Example
    ///
    /// ```
    /// use mqtrace_inference::request::{Malformed, Request};
    ///
    /// let error = Request::parse_at_most(&[b' '; 2048], 1024).unwrap_err();
    /// assert_eq!(error, Malformed::TooLarge { size: 2048, limit: 1024 });
    /// assert_eq!(error.reason(), "too_large");
    /// ```
    pub fn parse_at_most(body: &[u8], limit: usize) -> Result<Self, Malformed> {
        if body.len() > limit {
            return Err(Malformed::TooLarge {
                size: body.len(),
                limit,
            });
        }
        Self::parse(body)
    }

    /// Parses and validates a request body.
    ///
    /// # Example
    ///
    /// ```
    /// use mqtrace_inference::request::{Finding, Request};
    ///
    /// let request = Request::parse(br#"{"request_id":"r1","user_id":"u1","amount":12.5,"hour":"noon"}"#)?;
    /// assert_eq!(request.amount, 12.5);
    /// assert!(request.findings.contains(&Finding::Mismatch("hour")));
    /// assert!(request.findings.contains(&Finding::Missing("merchant_category")));
    /// # Ok::<_, mqtrace_inference::request::Malformed>(())
    /// ```
    pub fn parse(body: &[u8]) -> Result<Self, Malformed> {
        let value: Value =
            serde_json::from_slice(body).map_err(|e| Malformed::NotJson(e.to_string()))?;
        let Value::Object(object) = value else {
            return Err(Malformed::NotJson("not an object".to_owned()));
        };
        let request_id = required_str(&object, feature::REQUEST_ID)?;
        let user_id = required_str(&object, feature::USER_ID)?;
        let amount = match object.get(feature::AMOUNT) {
            None | Some(Value::Null) => return Err(Malformed::Missing(feature::AMOUNT)),
            Some(Value::Number(n)) => match n.as_f64() {
                Some(a) if a.is_finite() && a >= 0.0 => a,
                _ => return Err(Malformed::Invalid(feature::AMOUNT)),
            },
            Some(_) => return Err(Malformed::Invalid(feature::AMOUNT)),
        };

        let mut findings = Vec::new();
        let category = match object.get(feature::MERCHANT_CATEGORY) {
            None | Some(Value::Null) => {
                findings.push(Finding::Missing(feature::MERCHANT_CATEGORY));
                MERCHANT_CATEGORIES.len() - 1
            }
            Some(Value::String(c)) => MERCHANT_CATEGORIES
                .iter()
                .position(|known| known.eq_ignore_ascii_case(c))
                .unwrap_or_else(|| {
                    findings.push(Finding::Mismatch(feature::MERCHANT_CATEGORY));
                    MERCHANT_CATEGORIES.len() - 1
                }),
            Some(_) => {
                findings.push(Finding::Mismatch(feature::MERCHANT_CATEGORY));
                MERCHANT_CATEGORIES.len() - 1
            }
        };
        let country = match object.get(feature::COUNTRY) {
            None | Some(Value::Null) => {
                findings.push(Finding::Missing(feature::COUNTRY));
                None
            }
            Some(Value::String(c))
                if c.len() == 2 && c.chars().all(|ch| ch.is_ascii_alphabetic()) =>
            {
                Some(c.to_ascii_uppercase())
            }
            Some(_) => {
                findings.push(Finding::Mismatch(feature::COUNTRY));
                None
            }
        };
        let hour = match object.get(feature::HOUR) {
            None | Some(Value::Null) => {
                findings.push(Finding::Missing(feature::HOUR));
                12
            }
            Some(Value::Number(n)) => match n.as_u64() {
                Some(h) if h < 24 => h as u8,
                _ => {
                    findings.push(Finding::Mismatch(feature::HOUR));
                    12
                }
            },
            Some(_) => {
                findings.push(Finding::Mismatch(feature::HOUR));
                12
            }
        };
        let card_present = match object.get(feature::CARD_PRESENT) {
            None | Some(Value::Null) => {
                findings.push(Finding::Missing(feature::CARD_PRESENT));
                false
            }
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                findings.push(Finding::Mismatch(feature::CARD_PRESENT));
                false
            }
        };
        Ok(Self {
            request_id,
            user_id,
            amount,
            category,
            country,
            hour,
            card_present,
            findings,
        })
    }

    /// Writes the [`REQUEST_FEATURES`] request-derived features into `row`: scaled amount,
    /// hour on the unit circle, card presence, foreign country (against `home_country`),
    /// category one-hot, and missing-value indicators.
    pub fn write_features(&self, home_country: Option<&str>, row: &mut [f32]) {
        row[..REQUEST_FEATURES].fill(0.0);
        row[0] = ((1.0 + self.amount).ln() / 10.0) as f32;
        let angle = f64::from(self.hour) / 24.0 * std::f64::consts::TAU;
        row[1] = angle.sin() as f32;
        row[2] = angle.cos() as f32;
        row[3] = f32::from(u8::from(self.card_present));
        row[4] = match (&self.country, home_country) {
            (Some(country), Some(home)) if country != home => 1.0,
            _ => 0.0,
        };
        row[5 + self.category] = 1.0;
        row[13] = f32::from(u8::from(
            self.findings.contains(&Finding::Missing(feature::HOUR)),
        ));
        row[14] = f32::from(u8::from(self.country.is_none()));
        row[15] = f32::from(u8::from(self.findings.iter().any(|f| {
            matches!(
                f,
                Finding::Missing(feature::MERCHANT_CATEGORY)
                    | Finding::Mismatch(feature::MERCHANT_CATEGORY)
            )
        })));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_complete_request_has_no_findings() {
        let request = Request::parse(
            br#"{"request_id":"r","user_id":"u","amount":5,"merchant_category":"Travel","country":"de","hour":23,"card_present":true}"#,
        )
        .expect("valid");
        assert!(request.findings.is_empty(), "{:?}", request.findings);
        assert_eq!(request.category, 2);
        assert_eq!(request.country.as_deref(), Some("DE"));
        let mut row = [0.0; REQUEST_FEATURES];
        request.write_features(Some("FR"), &mut row);
        assert_eq!(row[4], 1.0, "DE is foreign for a French user");
        assert_eq!(row[5 + 2], 1.0);
    }

    #[test]
    fn malformed_requests_say_why() {
        assert_eq!(
            Request::parse(b"\xff\xfe").map_err(|e| e.reason()),
            Err("not_json")
        );
        assert_eq!(
            Request::parse(b"[1,2]").map_err(|e| e.reason()),
            Err("not_json")
        );
        assert_eq!(
            Request::parse(br#"{"request_id":"r","amount":1}"#),
            Err(Malformed::Missing("user_id"))
        );
        assert_eq!(
            Request::parse(br#"{"request_id":"r","user_id":"u","amount":-3}"#),
            Err(Malformed::Invalid("amount"))
        );
        assert_eq!(
            Request::parse(br#"{"request_id":"r","user_id":"u","amount":"12"}"#),
            Err(Malformed::Invalid("amount"))
        );
    }

    #[test]
    fn optional_fields_are_imputed_and_reported() {
        let request = Request::parse(
            br#"{"request_id":"r","user_id":"u","amount":1,"merchant_category":"casino","country":null,"hour":99,"card_present":"yes"}"#,
        )
        .expect("valid");
        assert_eq!(
            request.findings,
            [
                Finding::Mismatch("merchant_category"),
                Finding::Missing("country"),
                Finding::Mismatch("hour"),
                Finding::Mismatch("card_present"),
            ]
        );
        assert_eq!(request.category, MERCHANT_CATEGORIES.len() - 1);
    }

    proptest! {
        #[test]
        fn any_bytes_parse_or_fail_cleanly(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(request) = Request::parse(&body) {
                let mut row = [0.0; REQUEST_FEATURES];
                request.write_features(None, &mut row);
                prop_assert!(row.iter().all(|v| v.is_finite()));
            }
        }

        #[test]
        fn any_amount_gives_finite_features(amount in 0.0f64..1e300, hour in 0u8..24) {
            let body = format!(r#"{{"request_id":"r","user_id":"u","amount":{amount},"hour":{hour}}}"#);
            let request = Request::parse(body.as_bytes()).expect("valid");
            let mut row = [0.0; REQUEST_FEATURES];
            request.write_features(Some("DE"), &mut row);
            prop_assert!(row.iter().all(|v| v.is_finite()));
        }
    }
}
