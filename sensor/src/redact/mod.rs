//! Redaction: what must not leave the host is replaced before any output sees a record.
//!
//! For now: the values of credential-carrying headers (configurable list, case-insensitive)
//! become `[REDACTED]` in every header attribute.

use crate::record::{AttributeValue, ExchangeRecord};

/// The replacement text for redacted values.
pub const REDACTED: &str = "[REDACTED]";

/// Headers whose values are redacted unless configured otherwise.
pub const DEFAULT_REDACTED_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
];

/// Applies the redaction rules to records.
#[derive(Clone, Debug)]
pub struct Redactor {
    headers: Vec<String>,
}

impl Default for Redactor {
    fn default() -> Self {
        Redactor::new(DEFAULT_REDACTED_HEADERS.iter().map(|s| s.to_string()))
    }
}

impl Redactor {
    /// A redactor for these header names (any case).
    pub fn new(headers: impl IntoIterator<Item = String>) -> Self {
        Redactor {
            headers: headers
                .into_iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .collect(),
        }
    }

    /// Redacts a record in place.
    pub fn apply(&self, record: &mut ExchangeRecord) {
        for (key, value) in record.attributes.iter_mut() {
            let name = key
                .strip_prefix("http.request.header.")
                .or_else(|| key.strip_prefix("http.response.header."));
            if let Some(name) = name
                && self.headers.iter().any(|h| h == name)
            {
                *value = AttributeValue::String(REDACTED.to_owned());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Attributes, SpanKind};

    #[test]
    fn credential_headers_are_redacted_by_default() {
        let mut attributes = Attributes::new();
        attributes.insert(
            "http.request.header.authorization".into(),
            "Bearer s3cret".into(),
        );
        attributes.insert("http.response.header.set-cookie".into(), "id=1".into());
        attributes.insert("http.request.header.accept".into(), "*/*".into());
        let mut record = ExchangeRecord {
            resource: Attributes::new(),
            name: "GET /".into(),
            kind: SpanKind::Server,
            start_time_unix_nano: 0,
            end_time_unix_nano: 0,
            attributes,
        };
        Redactor::default().apply(&mut record);
        assert_eq!(
            record.attr_str("http.request.header.authorization"),
            Some(REDACTED)
        );
        assert_eq!(
            record.attr_str("http.response.header.set-cookie"),
            Some(REDACTED)
        );
        assert_eq!(record.attr_str("http.request.header.accept"), Some("*/*"));
        let custom = Redactor::new(vec!["Accept".to_owned()]);
        custom.apply(&mut record);
        assert_eq!(
            record.attr_str("http.request.header.accept"),
            Some(REDACTED)
        );
    }
}
