//! The main job's requests and replies as the drills write and read them.

/// A valid scoring request with id `r-{i}`.
pub fn valid_request(i: usize) -> String {
    format!(
        r#"{{"request_id":"r-{i}","user_id":"user-{}","amount":{}.5,"merchant_category":"travel","country":"DE","hour":{},"card_present":true}}"#,
        i % 100,
        (i * 37) % 9000,
        i % 24,
    )
}

/// The `request_id` a reply answers.
pub fn request_id(payload: &[u8]) -> String {
    let reply: serde_json::Value = serde_json::from_slice(payload).expect("reply is JSON");
    reply["request_id"].as_str().expect("request_id").to_owned()
}
