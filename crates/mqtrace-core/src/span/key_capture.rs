//! Whether and how message keys are recorded: [`KeyCapture`].

use std::fmt;

/// Whether message keys are recorded on spans. Payloads never are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum KeyCapture {
    /// Keys are not recorded (default).
    #[default]
    Off,
    /// A stable 64-bit FNV-1a hash of the key, as 16 hex digits: lets you correlate messages
    /// with the same key without storing the key. Small key spaces can still be brute-forced.
    Hashed,
    /// The key itself (UTF-8 as is; other bytes hex-encoded).
    Raw,
}

impl KeyCapture {
    /// The attribute value to record for `key`, or `None` when keys are not captured.
    ///
    /// # Example
    ///
    /// ```
    /// use mqtrace_core::span::KeyCapture;
    ///
    /// assert_eq!(KeyCapture::Off.capture(b"user-1"), None);
    /// assert_eq!(KeyCapture::Raw.capture(b"user-1").as_deref(), Some("user-1"));
    /// assert_eq!(KeyCapture::Hashed.capture(b"user-1").map(|h| h.len()), Some(16));
    /// ```
    pub fn capture(&self, key: &[u8]) -> Option<String> {
        match self {
            KeyCapture::Off => None,
            KeyCapture::Raw => Some(match std::str::from_utf8(key) {
                Ok(text) => text.to_owned(),
                Err(_) => hex(key),
            }),
            KeyCapture::Hashed => Some(format!("{:016x}", fnv1a64(key))),
        }
    }
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}
