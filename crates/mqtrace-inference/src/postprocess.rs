//! From score to decision: a low-cardinality score bucket, the decision thresholds, and the
//! business rules that can override the model.

use crate::features::UserProfile;
use crate::request::Request;

/// `ml.output.score_bucket`: the score rounded down to a tenth, as `0.3-0.4`.
pub const ML_OUTPUT_SCORE_BUCKET: &str = "ml.output.score_bucket";

const BUCKETS: [&str; 10] = [
    "0.0-0.1", "0.1-0.2", "0.2-0.3", "0.3-0.4", "0.4-0.5", "0.5-0.6", "0.6-0.7", "0.7-0.8",
    "0.8-0.9", "0.9-1.0",
];

/// The bucket a score falls in (scores outside 0–1 are clamped; NaN is `0.0-0.1`).
pub fn score_bucket(score: f32) -> &'static str {
    let index = if score.is_nan() {
        0
    } else {
        ((score.clamp(0.0, 1.0) * 10.0) as usize).min(9)
    };
    BUCKETS[index]
}

/// What happens to the transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Decision {
    /// Let it through.
    Approve,
    /// Hold it for a human.
    Review,
    /// Block it.
    Decline,
}

impl Decision {
    /// `approve`, `review` or `decline`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Decision::Approve => "approve",
            Decision::Review => "review",
            Decision::Decline => "decline",
        }
    }
}

/// A business rule that fired, by name.
pub type Rule = &'static str;

/// Decides from the model's score, then lets the business rules raise the decision to at
/// least `review`: a large card-absent amount, or a user with a chargeback history.
///
/// # Example
///
/// ```
/// use mqtrace_inference::postprocess::{decide, Decision};
/// use mqtrace_inference::request::Request;
///
/// let request = Request::parse(br#"{"request_id":"r","user_id":"u","amount":9000,"card_present":false}"#)?;
/// let (decision, rules) = decide(0.05, &request, None);
/// assert_eq!(decision, Decision::Review);
/// assert_eq!(rules, ["high_amount_card_absent"]);
/// # Ok::<_, mqtrace_inference::request::Malformed>(())
/// ```
pub fn decide(
    score: f32,
    request: &Request,
    profile: Option<&UserProfile>,
) -> (Decision, Vec<Rule>) {
    let mut decision = if score >= 0.9 {
        Decision::Decline
    } else if score >= 0.6 {
        Decision::Review
    } else {
        Decision::Approve
    };
    let mut rules = Vec::new();
    if request.amount > 5_000.0 && !request.card_present {
        rules.push("high_amount_card_absent");
    }
    if profile.is_some_and(|p| p.chargeback_rate() > 0.5) {
        rules.push("prior_chargebacks");
    }
    if !rules.is_empty() {
        decision = decision.max(Decision::Review);
    }
    (decision, rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_the_range() {
        assert_eq!(score_bucket(0.0), "0.0-0.1");
        assert_eq!(score_bucket(0.35), "0.3-0.4");
        assert_eq!(score_bucket(1.0), "0.9-1.0");
        assert_eq!(score_bucket(7.0), "0.9-1.0");
        assert_eq!(score_bucket(f32::NAN), "0.0-0.1");
    }

    #[test]
    fn thresholds_and_rules() {
        let request =
            Request::parse(br#"{"request_id":"r","user_id":"u","amount":10,"card_present":true}"#)
                .expect("valid");
        assert_eq!(decide(0.1, &request, None).0, Decision::Approve);
        assert_eq!(decide(0.7, &request, None).0, Decision::Review);
        assert_eq!(decide(0.95, &request, None).0, Decision::Decline);
        let risky = UserProfile {
            home_country: "DE".into(),
            features: {
                let mut f = [0.0; 16];
                f[1] = 0.8;
                f
            },
        };
        let (decision, rules) = decide(0.1, &request, Some(&risky));
        assert_eq!(decision, Decision::Review);
        assert_eq!(rules, ["prior_chargebacks"]);
        // a rule never lowers a decline
        assert_eq!(decide(0.95, &request, Some(&risky)).0, Decision::Decline);
    }
}
