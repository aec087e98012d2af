//! The CNI error result: `{"cniVersion", "code", "msg", "details"}` on
//! stdout and a non-zero exit.

use serde_json::{json, Value};
pub use sluice_api::cni_code as code;

/// libcni's "internal error": something that is no one's fault but ours
/// (the agent's reply is not what this plugin expects).
pub const INTERNAL: u32 = 999;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    /// Short: what went wrong.
    pub msg: String,
    /// Longer: why, and what to do about it.
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError { code, msg: msg.into(), details: details.into() }
    }

    /// The error result in protocol version `version`.
    pub fn to_json(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "code": self.code,
            "msg": self.msg,
            "details": self.details,
        })
    }
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.details.is_empty() {
            write!(f, "{} (code {})", self.msg, self.code)
        } else {
            write!(f, "{}: {} (code {})", self.msg, self.details, self.code)
        }
    }
}

impl std::error::Error for CniError {}
