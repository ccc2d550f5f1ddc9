//! Redaction and capture policy: what must not leave the host is removed or replaced before
//! any output (console, JSONL, OTLP) sees a record, and users choose what is captured at all.
//!
//! [`Redactor`] applies one service's redaction rules to a record:
//! - header values of configured names (case-insensitive) become `[REDACTED]`;
//! - query-string parameters of configured names, in `http.target`, `url.query`, `http.url`
//!   and `url.full`;
//! - body values selected by JSONPaths (RFC 9535, the APItoolkit form `$.user.email`,
//!   `$.users[*].credit_card`) per direction: a matched value, object or array becomes the
//!   string `[REDACTED]`; form-urlencoded body fields by name;
//! - on demand, patterns wherever they occur in bodies and query values: payment card numbers
//!   (Luhn-checked), e-mail addresses, user regular expressions.
//!
//! Order of work per body: the whole decoded body (at most `body_max_processing_size_bytes`,
//! the limit the HTTP parser is given) is redacted, then truncated to `body_max_size_bytes`
//! (`*.body.truncated = true`). A body the rules must look into but cannot — longer than the
//! processing limit, or not valid JSON when JSONPaths apply — is dropped and flagged with
//! `*.body.redaction_failed = true`, never exported unredacted.
//!
//! [`Policy`] adds the capture policy around it (per-service overrides, path exclusions,
//! sampling with errors kept, header/body switches) and counts every decision.
//!
//! [`ConnScrubber`] applies the same rules ([`StreamRules`], the union over services) to raw
//! byte streams for `sensor trace --payload`, deciding every byte masked or clear before it is
//! shown.

mod patterns;
mod policy;
mod stream;
#[cfg(test)]
mod tests;

use std::ops::Bound;

use serde_json::Value;
use serde_json_path::JsonPath;

use crate::config::DataCapture;
use crate::record::{AttributeValue, Attributes, BodyKeys, ExchangeRecord};

pub use patterns::{Patterns, luhn_valid, redact_cards};
pub use policy::{
    Decision, PathPattern, Policy, PolicyStats, parser_needs_restart, parser_settings,
};
pub use stream::{ConnScrubber, StreamRules};

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

/// Checks that `path` is a valid JSONPath; the error says why not.
pub fn check_json_path(path: &str) -> Result<(), String> {
    JsonPath::parse(path)
        .map(|_| ())
        .map_err(|e| format!("not a valid JSONPath: {e}"))
}

/// Checks that `pattern` is a valid regular expression within the sensor's size limit.
pub fn check_regex(pattern: &str) -> Result<(), String> {
    patterns::build_regex(pattern).map(|_| ())
}

/// What redaction did to one record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Values replaced by `[REDACTED]` (headers, parameters, fields, JSON nodes, pattern
    /// matches).
    pub values: u64,
    /// Bodies dropped because they could not be redacted (too large, invalid JSON).
    pub bodies_dropped: u64,
    /// Bodies truncated to the body size limit after redaction.
    pub bodies_truncated: u64,
}

/// Which message of the exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    Request,
    Response,
}

impl Direction {
    fn keys(self) -> BodyKeys {
        match self {
            Direction::Request => BodyKeys::REQUEST,
            Direction::Response => BodyKeys::RESPONSE,
        }
    }
}

/// One service's redaction rules.
#[derive(Clone, Debug)]
pub struct Redactor {
    headers: Vec<String>,
    request_paths: Vec<JsonPath>,
    response_paths: Vec<JsonPath>,
    query_params: Vec<String>,
    form_fields: Vec<String>,
    patterns: Patterns,
    body_max_size: usize,
    body_max_processing_size: usize,
}

impl Default for Redactor {
    fn default() -> Self {
        Redactor::new(DEFAULT_REDACTED_HEADERS.iter().map(|s| s.to_string()))
    }
}

impl Redactor {
    /// A redactor for these header names (any case) and nothing else; bodies are not cut.
    pub fn new(headers: impl IntoIterator<Item = String>) -> Self {
        Redactor {
            headers: headers
                .into_iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .collect(),
            request_paths: Vec::new(),
            response_paths: Vec::new(),
            query_params: Vec::new(),
            form_fields: Vec::new(),
            patterns: Patterns::default(),
            body_max_size: usize::MAX,
            body_max_processing_size: usize::MAX,
        }
    }

    /// The rules of these `data_capture` settings; the error names the bad entry.
    pub fn from_settings(dc: &DataCapture) -> Result<Self, String> {
        let paths = |list: &[String], key: &str| -> Result<Vec<JsonPath>, String> {
            list.iter()
                .map(|p| {
                    JsonPath::parse(p).map_err(|e| {
                        format!("data_capture.{key}: {p:?} is not a valid JSONPath: {e}")
                    })
                })
                .collect()
        };
        let lower = |list: &[String]| -> Vec<String> {
            list.iter()
                .map(|s| s.trim().to_ascii_lowercase())
                .filter(|s| !s.is_empty())
                .collect()
        };
        let max = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        let processing = max(dc.body_max_processing_size_bytes);
        Ok(Redactor {
            headers: lower(&dc.redact_headers),
            request_paths: paths(&dc.redact_request_body, "redact_request_body")?,
            response_paths: paths(&dc.redact_response_body, "redact_response_body")?,
            query_params: lower(&dc.redact_query_params),
            form_fields: lower(&dc.redact_form_fields),
            patterns: Patterns::new(
                dc.redact_card_numbers,
                dc.redact_emails,
                &dc.redact_patterns,
            )
            .map_err(|e| format!("data_capture.redact_patterns: {e}"))?,
            body_max_size: max(dc.body_max_size_bytes).min(processing),
            body_max_processing_size: processing,
        })
    }

    /// Redacts a record in place: headers, query strings, then each body (redacted whole, then
    /// truncated).
    pub fn apply(&self, record: &mut ExchangeRecord) -> Outcome {
        let mut out = Outcome::default();
        for prefix in ["http.request.header.", "http.response.header."] {
            // The map is sorted: a message's headers are the keys from its prefix on.
            let headers = record
                .attributes
                .range_mut::<str, _>((Bound::Included(prefix), Bound::Unbounded))
                .map_while(|(key, value)| Some((key.strip_prefix(prefix)?, value)));
            for (name, value) in headers {
                if self.headers.iter().any(|h| h == name) && value.as_str() != Some(REDACTED) {
                    *value = AttributeValue::String(REDACTED.to_owned());
                    out.values += 1;
                }
            }
        }
        if !self.query_params.is_empty() || !self.patterns.is_empty() {
            for key in ["http.target", "url.query", "http.url", "url.full"] {
                if let Some(AttributeValue::String(url)) = record.attributes.get_mut(key)
                    && let Some(redacted) = self.redact_url(url, key == "url.query", &mut out)
                {
                    *url = redacted;
                }
            }
        }
        self.redact_body(&mut record.attributes, Direction::Request, &mut out);
        self.redact_body(&mut record.attributes, Direction::Response, &mut out);
        out
    }

    /// A URL (or, when `is_query`, a bare query string) with its parameters redacted, or
    /// `None` when nothing changed.
    fn redact_url(&self, url: &str, is_query: bool, out: &mut Outcome) -> Option<String> {
        if is_query {
            return self.redact_pairs(url, &self.query_params, out);
        }
        let (head, rest) = url.split_once('?')?;
        let (query, fragment) = match rest.split_once('#') {
            Some((q, f)) => (q, Some(f)),
            None => (rest, None),
        };
        let query = self.redact_pairs(query, &self.query_params, out)?;
        let mut result = format!("{head}?{query}");
        if let Some(fragment) = fragment {
            result.push('#');
            result.push_str(fragment);
        }
        Some(result)
    }

    /// `name=value&...` text (a query string or a form body) with the values of `names` and
    /// pattern matches in values redacted, or `None` when nothing changed.
    fn redact_pairs(&self, text: &str, names: &[String], out: &mut Outcome) -> Option<String> {
        let mut changed = false;
        let mut parts: Vec<String> = Vec::new();
        for pair in text.split('&') {
            let (name, value) = match pair.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (pair, None),
            };
            let decoded_name = form_decode(name);
            let listed = names
                .iter()
                .any(|n| n.as_str() == decoded_name.trim().to_ascii_lowercase());
            let name_text = match self.patterns.redact(&decoded_name) {
                Some((redacted, n)) => {
                    out.values += n;
                    changed = true;
                    form_encode(&redacted)
                }
                None => name.to_owned(),
            };
            let value_text = match value {
                Some(v) if listed && v != REDACTED => {
                    out.values += 1;
                    changed = true;
                    Some(REDACTED.to_owned())
                }
                Some(v) => match self.patterns.redact(&form_decode(v)) {
                    Some((redacted, n)) => {
                        out.values += n;
                        changed = true;
                        Some(form_encode(&redacted))
                    }
                    None => Some(v.to_owned()),
                },
                None => None,
            };
            parts.push(match value_text {
                Some(v) => format!("{name_text}={v}"),
                None => name_text,
            });
        }
        changed.then(|| parts.join("&"))
    }

    /// Redacts, then truncates, one body attribute; drops and flags it when it cannot be
    /// redacted.
    fn redact_body(&self, attrs: &mut Attributes, direction: Direction, out: &mut Outcome) {
        let keys = direction.keys();
        let paths = match direction {
            Direction::Request => &self.request_paths,
            Direction::Response => &self.response_paths,
        };
        let no_rules = paths.is_empty() && self.form_fields.is_empty() && self.patterns.is_empty();
        // The text is taken out of its slot and put back: no key is built or reinserted.
        let text = match attrs.get_mut(keys.body) {
            None => return,
            Some(AttributeValue::String(text)) if no_rules => {
                // Nothing to look for: only the size limit applies, in place.
                if text.len() <= self.body_max_size {
                    return;
                }
                (*text, _) = truncate(std::mem::take(text), self.body_max_size);
                out.bodies_truncated += 1;
                attrs.insert(keys.truncated.into(), AttributeValue::Bool(true));
                return;
            }
            Some(AttributeValue::String(text)) => std::mem::take(text),
            Some(_) => {
                // Bodies are text; anything else is not exported.
                drop_body(attrs, keys, out);
                return;
            }
        };
        let cut_by_parser = matches!(attrs.get(keys.truncated), Some(AttributeValue::Bool(true)));
        // Bytes were lost somewhere in the exchange: a value the rules look for may have been
        // split by the gap, where no rule can see it.
        let lost_bytes = matches!(
            attrs.get("sensor.incomplete"),
            Some(AttributeValue::Bool(true))
        );
        let content_type = attrs
            .get(keys.content_type)
            .and_then(AttributeValue::as_str)
            .unwrap_or_default()
            .to_ascii_lowercase();
        let is_form = content_type.contains("application/x-www-form-urlencoded");
        let structural = if is_form {
            !self.form_fields.is_empty()
        } else {
            !paths.is_empty()
        };
        let has_rules = structural || !self.patterns.is_empty();
        let redacted = if !has_rules || text.trim().is_empty() {
            text
        } else if cut_by_parser || lost_bytes || text.len() > self.body_max_processing_size {
            // Only part of the body was kept: what was cut may hold what the rules look for,
            // and a JSON document cut short cannot be parsed.
            drop_body(attrs, keys, out);
            return;
        } else if is_form {
            self.redact_pairs(&text, &self.form_fields, out)
                .unwrap_or(text)
        } else if !paths.is_empty() || content_type.contains("json") {
            match serde_json::from_str::<Value>(&text) {
                Ok(mut doc) => {
                    let mut n = apply_paths(paths, &mut doc);
                    n += self.redact_tree(&mut doc);
                    out.values += n;
                    if n == 0 {
                        text
                    } else {
                        match serde_json::to_string(&doc) {
                            Ok(s) => s,
                            Err(_) => {
                                drop_body(attrs, keys, out);
                                return;
                            }
                        }
                    }
                }
                Err(_) if !paths.is_empty() => {
                    drop_body(attrs, keys, out);
                    return;
                }
                Err(_) => self.redact_text(text, out),
            }
        } else {
            self.redact_text(text, out)
        };
        let (body, cut) = truncate(redacted, self.body_max_size);
        if let Some(slot) = attrs.get_mut(keys.body) {
            *slot = AttributeValue::String(body);
        }
        if cut {
            out.bodies_truncated += 1;
            attrs.insert(keys.truncated.into(), AttributeValue::Bool(true));
        }
    }

    /// Pattern redaction of plain text.
    fn redact_text(&self, text: String, out: &mut Outcome) -> String {
        match self.patterns.redact(&text) {
            Some((redacted, n)) => {
                out.values += n;
                redacted
            }
            None => text,
        }
    }

    /// Pattern redaction of every string and number in a JSON document; a number holding a
    /// match becomes the string `[REDACTED]`. Returns the number of replacements.
    fn redact_tree(&self, value: &mut Value) -> u64 {
        if self.patterns.is_empty() {
            return 0;
        }
        match value {
            Value::String(s) => match self.patterns.redact(s) {
                Some((redacted, n)) => {
                    *s = redacted;
                    n
                }
                None => 0,
            },
            Value::Number(number) => match self.patterns.redact(&number.to_string()) {
                Some((_, n)) => {
                    *value = Value::String(REDACTED.to_owned());
                    n
                }
                None => 0,
            },
            Value::Array(items) => items.iter_mut().map(|v| self.redact_tree(v)).sum(),
            Value::Object(map) => map.values_mut().map(|v| self.redact_tree(v)).sum(),
            Value::Null | Value::Bool(_) => 0,
        }
    }
}

/// Replaces every node the paths select by `[REDACTED]`; returns how many were replaced.
fn apply_paths(paths: &[JsonPath], doc: &mut Value) -> u64 {
    let mut pointers: Vec<String> = Vec::new();
    for path in paths {
        pointers.extend(
            path.query_located(doc)
                .locations()
                .map(|location| location.to_json_pointer()),
        );
    }
    let mut count = 0;
    for pointer in pointers {
        if let Some(node) = doc.pointer_mut(&pointer)
            && node.as_str() != Some(REDACTED)
        {
            *node = Value::String(REDACTED.to_owned());
            count += 1;
        }
    }
    count
}

/// Removes a body that cannot be redacted and flags it.
fn drop_body(attrs: &mut Attributes, keys: BodyKeys, out: &mut Outcome) {
    attrs.remove(keys.body);
    attrs.insert(keys.redaction_failed.into(), AttributeValue::Bool(true));
    out.bodies_dropped += 1;
}

/// `text` cut to at most `max` bytes at a character boundary, and whether it was cut.
fn truncate(mut text: String, max: usize) -> (String, bool) {
    if text.len() <= max {
        return (text, false);
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    (text, true)
}

/// Decodes form/query text: `+` is a space, `%XX` a byte; invalid UTF-8 is replaced.
fn form_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                if let Some(b) = hex {
                    out.push(b);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Encodes form/query text: unreserved characters and the brackets of `[REDACTED]` as they
/// are, spaces as `+`, everything else as `%XX`.
fn form_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'[' | b']' => {
                out.push(char::from(b))
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
