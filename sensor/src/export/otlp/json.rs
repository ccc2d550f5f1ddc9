//! OTLP/JSON encoding of trace export requests, written by hand to follow the OTLP spec
//! exactly: lowerCamelCase keys, trace and span ids as hex strings, 64-bit integers as decimal
//! strings, enums as integers, bytes as base64, default values left out.

#[cfg(test)]
use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    trace::v1::{ResourceSpans, ScopeSpans},
};
use opentelemetry_proto::tonic::{
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value},
    resource::v1::Resource,
    trace::v1::{Span, Status, span},
};

use crate::record::lower_hex;

/// The JSON body of an export request (the exporter writes the same bytes from spans encoded
/// one by one; see `batch.rs`).
#[cfg(test)]
pub(super) fn encode_request(request: &ExportTraceServiceRequest) -> Vec<u8> {
    let mut out = Vec::with_capacity(4096);
    let mut o = Obj::open(&mut out);
    if !request.resource_spans.is_empty() {
        o.key("resourceSpans");
        array(o.out, &request.resource_spans, resource_spans);
    }
    o.close();
    out
}

/// Appends the JSON of one span.
pub(super) fn encode_span(out: &mut Vec<u8>, s: &Span) {
    span(out, s);
}

/// What a request with resource groups starts with.
pub(super) const REQUEST_START: &[u8] = br#"{"resourceSpans":["#;
/// What a request with resource groups ends with.
pub(super) const REQUEST_END: &[u8] = b"]}";
/// What follows the spans of a resource group.
pub(super) const GROUP_END: &[u8] = b"]}]}";

/// Appends the start of a resource group, up to its spans: `{"resource":…,"scopeSpans":
/// [{"scope":…,"spans":[`.
pub(super) fn group_start(out: &mut Vec<u8>, r: &Resource, scope: &InstrumentationScope) {
    let mut o = Obj::open(out);
    o.key("resource");
    resource(o.out, r);
    o.key("scopeSpans");
    o.out.push(b'[');
    let mut s = Obj::open(o.out);
    s.key("scope");
    instrumentation_scope(s.out, scope);
    s.key("spans");
    s.out.push(b'[');
}

/// Appends the JSON of a resource group holding no span yet (used to measure a group's share
/// of a batch).
pub(super) fn encode_empty_group(
    out: &mut Vec<u8>,
    resource: &Resource,
    scope: &InstrumentationScope,
) {
    group_start(out, resource, scope);
    out.extend_from_slice(GROUP_END);
}

/// Length of `{"resourceSpans":[]}`, the fixed part of every request.
pub(super) const ENVELOPE_LEN: usize = REQUEST_START.len() + REQUEST_END.len();

#[cfg(test)]
fn resource_spans(out: &mut Vec<u8>, rs: &ResourceSpans) {
    let mut o = Obj::open(out);
    if let Some(r) = &rs.resource {
        o.key("resource");
        resource(o.out, r);
    }
    o.key("scopeSpans");
    array(o.out, &rs.scope_spans, scope_spans);
    o.string("schemaUrl", &rs.schema_url);
    o.close();
}

fn resource(out: &mut Vec<u8>, r: &Resource) {
    let mut o = Obj::open(out);
    o.attributes("attributes", &r.attributes);
    o.uint("droppedAttributesCount", r.dropped_attributes_count);
    o.close();
}

#[cfg(test)]
fn scope_spans(out: &mut Vec<u8>, ss: &ScopeSpans) {
    let mut o = Obj::open(out);
    if let Some(scope) = &ss.scope {
        o.key("scope");
        instrumentation_scope(o.out, scope);
    }
    o.key("spans");
    array(o.out, &ss.spans, span);
    o.string("schemaUrl", &ss.schema_url);
    o.close();
}

fn instrumentation_scope(out: &mut Vec<u8>, s: &InstrumentationScope) {
    let mut o = Obj::open(out);
    o.string("name", &s.name);
    o.string("version", &s.version);
    o.attributes("attributes", &s.attributes);
    o.uint("droppedAttributesCount", s.dropped_attributes_count);
    o.close();
}

fn span(out: &mut Vec<u8>, s: &Span) {
    let mut o = Obj::open(out);
    o.hex("traceId", &s.trace_id);
    o.hex("spanId", &s.span_id);
    o.string("traceState", &s.trace_state);
    o.hex("parentSpanId", &s.parent_span_id);
    o.uint("flags", s.flags);
    o.string("name", &s.name);
    o.int("kind", s.kind);
    o.u64("startTimeUnixNano", s.start_time_unix_nano);
    o.u64("endTimeUnixNano", s.end_time_unix_nano);
    o.attributes("attributes", &s.attributes);
    o.uint("droppedAttributesCount", s.dropped_attributes_count);
    if !s.events.is_empty() {
        o.key("events");
        array(o.out, &s.events, event);
    }
    o.uint("droppedEventsCount", s.dropped_events_count);
    if !s.links.is_empty() {
        o.key("links");
        array(o.out, &s.links, link);
    }
    o.uint("droppedLinksCount", s.dropped_links_count);
    if let Some(st) = &s.status {
        o.key("status");
        status(o.out, st);
    }
    o.close();
}

fn event(out: &mut Vec<u8>, e: &span::Event) {
    let mut o = Obj::open(out);
    o.u64("timeUnixNano", e.time_unix_nano);
    o.string("name", &e.name);
    o.attributes("attributes", &e.attributes);
    o.uint("droppedAttributesCount", e.dropped_attributes_count);
    o.close();
}

fn link(out: &mut Vec<u8>, l: &span::Link) {
    let mut o = Obj::open(out);
    o.hex("traceId", &l.trace_id);
    o.hex("spanId", &l.span_id);
    o.string("traceState", &l.trace_state);
    o.attributes("attributes", &l.attributes);
    o.uint("droppedAttributesCount", l.dropped_attributes_count);
    o.uint("flags", l.flags);
    o.close();
}

fn status(out: &mut Vec<u8>, s: &Status) {
    let mut o = Obj::open(out);
    o.string("message", &s.message);
    o.int("code", s.code);
    o.close();
}

fn key_value(out: &mut Vec<u8>, kv: &KeyValue) {
    let mut o = Obj::open(out);
    o.string_always("key", &kv.key);
    if let Some(v) = &kv.value {
        o.key("value");
        value(o.out, v);
    }
    o.int("keyStrindex", kv.key_strindex);
    o.close();
}

fn value(out: &mut Vec<u8>, v: &AnyValue) {
    let mut o = Obj::open(out);
    match &v.value {
        None => {}
        Some(any_value::Value::StringValue(s)) => o.string_always("stringValue", s),
        Some(any_value::Value::BoolValue(b)) => {
            o.key("boolValue");
            o.out.extend_from_slice(if *b { b"true" } else { b"false" });
        }
        Some(any_value::Value::IntValue(i)) => {
            o.key("intValue");
            quoted(o.out, &i.to_string());
        }
        Some(any_value::Value::DoubleValue(d)) => {
            o.key("doubleValue");
            double(o.out, *d);
        }
        Some(any_value::Value::ArrayValue(a)) => {
            o.key("arrayValue");
            let mut inner = Obj::open(o.out);
            inner.key("values");
            array(inner.out, &a.values, value);
            inner.close();
        }
        Some(any_value::Value::KvlistValue(kv)) => {
            o.key("kvlistValue");
            let mut inner = Obj::open(o.out);
            inner.key("values");
            array(inner.out, &kv.values, key_value);
            inner.close();
        }
        Some(any_value::Value::BytesValue(b)) => {
            o.key("bytesValue");
            quoted(o.out, &base64(b));
        }
        Some(any_value::Value::StringValueStrindex(i)) => o.int("stringValueStrindex", *i),
    }
    o.close();
}

fn array<T>(out: &mut Vec<u8>, items: &[T], mut write: impl FnMut(&mut Vec<u8>, &T)) {
    out.push(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write(out, item);
    }
    out.push(b']');
}

/// A JSON object being written; fields with default values are left out.
struct Obj<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> Obj<'a> {
    fn open(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        Obj { out, first: true }
    }

    fn key(&mut self, key: &str) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        quoted(self.out, key);
        self.out.push(b':');
    }

    fn string(&mut self, key: &str, value: &str) {
        if !value.is_empty() {
            self.string_always(key, value);
        }
    }

    fn string_always(&mut self, key: &str, value: &str) {
        self.key(key);
        quoted(self.out, value);
    }

    fn hex(&mut self, key: &str, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.key(key);
            self.out.push(b'"');
            for b in bytes {
                self.out.extend_from_slice(&lower_hex(*b));
            }
            self.out.push(b'"');
        }
    }

    fn uint(&mut self, key: &str, value: u32) {
        if value != 0 {
            self.key(key);
            self.out.extend_from_slice(value.to_string().as_bytes());
        }
    }

    fn int(&mut self, key: &str, value: i32) {
        if value != 0 {
            self.key(key);
            self.out.extend_from_slice(value.to_string().as_bytes());
        }
    }

    /// 64-bit integers are decimal strings in the proto3 JSON mapping.
    fn u64(&mut self, key: &str, value: u64) {
        if value != 0 {
            self.key(key);
            quoted(self.out, &value.to_string());
        }
    }

    fn attributes(&mut self, key: &str, attributes: &[KeyValue]) {
        if !attributes.is_empty() {
            self.key(key);
            array(self.out, attributes, key_value);
        }
    }

    fn close(self) {
        self.out.push(b'}');
    }
}

/// A JSON string literal.
fn quoted(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.extend_from_slice(&lower_hex(b));
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// A double per the proto3 JSON mapping: a number, or `"NaN"`, `"Infinity"`, `"-Infinity"`.
fn double(out: &mut Vec<u8>, d: f64) {
    if d.is_nan() {
        quoted(out, "NaN");
    } else if d.is_infinite() {
        quoted(out, if d > 0.0 { "Infinity" } else { "-Infinity" });
    } else {
        out.extend_from_slice(format!("{d:?}").as_bytes());
    }
}

/// Standard base64 with padding (bytes fields in the proto3 JSON mapping).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut text = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(chunk.get(1).copied().unwrap_or(0)) << 8)
            | u32::from(chunk.get(2).copied().unwrap_or(0));
        for i in 0..4 {
            if i <= chunk.len() {
                text.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 0x3f) as usize]));
            } else {
                text.push('=');
            }
        }
    }
    text
}

/// The `partialSuccess` of a JSON export response: (rejected spans, error message).
pub(super) fn partial_success(body: &[u8]) -> Option<(i64, String)> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let partial = value.get("partialSuccess")?;
    let rejected = match partial.get("rejectedSpans") {
        Some(serde_json::Value::String(s)) => s.parse().ok()?,
        Some(serde_json::Value::Number(n)) => n.as_i64()?,
        _ => 0,
    };
    let message = partial
        .get("errorMessage")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
        .to_owned();
    Some((rejected, message))
}
