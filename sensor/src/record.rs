//! The exchange record: one per HTTP request/response exchange, the single shape every output
//! (console, JSONL, OTLP) is made from.
//!
//! ```json
//! {"resource": {"service.name": "...", "process.pid": 42, ...},
//!  "name": "GET /api/items/{id}", "kind": "server",
//!  "start_time_unix_nano": 1, "end_time_unix_nano": 2,
//!  "attributes": {"http.method": "GET", ...}}
//! ```
//! Fields may be added (extend, don't break); none is ever renamed or removed.

use std::{borrow::Cow, collections::BTreeMap};

use serde::{Deserialize, Serialize};

/// A span attribute value: the three types the record uses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AttributeValue {
    /// A boolean flag (`sensor.incomplete`, `http.request.body.truncated`).
    Bool(bool),
    /// An integer (ports, status codes, pids).
    Int(i64),
    /// Everything else.
    String(String),
}

impl AttributeValue {
    /// The string value, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            AttributeValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// The integer value, if this is one.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            AttributeValue::Int(i) => Some(*i),
            _ => None,
        }
    }
}

impl From<&str> for AttributeValue {
    fn from(value: &str) -> Self {
        AttributeValue::String(value.to_owned())
    }
}

impl From<String> for AttributeValue {
    fn from(value: String) -> Self {
        AttributeValue::String(value)
    }
}

impl From<i64> for AttributeValue {
    fn from(value: i64) -> Self {
        AttributeValue::Int(value)
    }
}

impl From<bool> for AttributeValue {
    fn from(value: bool) -> Self {
        AttributeValue::Bool(value)
    }
}

/// The two lowercase hex digits of a byte: trace and span ids are written this way everywhere
/// (record attributes, OTLP/JSON).
pub fn lower_hex(byte: u8) -> [u8; 2] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    [
        DIGITS[usize::from(byte >> 4)],
        DIGITS[usize::from(byte & 0x0f)],
    ]
}

/// An attribute's key: the names the sensor writes itself are borrowed, not allocated again for
/// every exchange (about thirty per record); header and pod keys are built per record.
pub type AttributeKey = Cow<'static, str>;

/// Flat attribute map, sorted by key so every output is deterministic.
pub type Attributes = BTreeMap<AttributeKey, AttributeValue>;

/// The attribute keys about one message's body, written by the record stage and read or
/// rewritten by the policy stage: named once, not formatted from a prefix per exchange.
#[derive(Clone, Copy, Debug)]
pub struct BodyKeys {
    /// The body text (`http.request.body`).
    pub body: &'static str,
    /// Set when the overload policy shed the body.
    pub shed: &'static str,
    /// Set when the body was cut to the capture limit.
    pub truncated: &'static str,
    /// Set when the body was dropped for it could not be redacted.
    pub redaction_failed: &'static str,
    /// The message's `Content-Type` header.
    pub content_type: &'static str,
}

impl BodyKeys {
    /// The request's.
    pub const REQUEST: BodyKeys = BodyKeys {
        body: "http.request.body",
        shed: "http.request.body.shed",
        truncated: "http.request.body.truncated",
        redaction_failed: "http.request.body.redaction_failed",
        content_type: "http.request.header.content-type",
    };
    /// The response's.
    pub const RESPONSE: BodyKeys = BodyKeys {
        body: "http.response.body",
        shed: "http.response.body.shed",
        truncated: "http.response.body.truncated",
        redaction_failed: "http.response.body.redaction_failed",
        content_type: "http.response.header.content-type",
    };
}

/// The `error.type` of an exchange whose request got no response while every byte of it was
/// seen: the connection ended (or the wait timed out) first — a client that gave up, a server
/// that never answered. OpenTelemetry's HTTP conventions ask for an `error.type` when a call
/// ends before a status code, and exporters mark such a span as an error.
pub const NO_RESPONSE_ERROR: &str = "no_response";

/// Which side of the exchange the watched process was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpanKind {
    /// The process answered the request.
    Server,
    /// The process sent the request.
    Client,
}

/// One captured exchange.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExchangeRecord {
    /// Who served or made the call: `service.name`, `process.pid`, `process.executable.name`,
    /// `process.command_line`, `host.name`, and more resource attributes where known.
    pub resource: Attributes,
    /// `METHOD /path/with/{id}`.
    pub name: String,
    /// Server or client.
    pub kind: SpanKind,
    /// When the first request byte was seen (wall clock, ns since the epoch).
    pub start_time_unix_nano: u64,
    /// When the last response byte was seen; without a response, when the wait for it ended
    /// (the connection closed, or the response timeout passed), or when the request ended if
    /// bytes were lost.
    pub end_time_unix_nano: u64,
    /// HTTP attributes under both naming schemes, captured headers and bodies, sensor flags.
    pub attributes: Attributes,
}

impl ExchangeRecord {
    /// A string attribute, if present.
    pub fn attr_str(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).and_then(AttributeValue::as_str)
    }

    /// An integer attribute, if present.
    pub fn attr_int(&self, key: &str) -> Option<i64> {
        self.attributes.get(key).and_then(AttributeValue::as_int)
    }
}
