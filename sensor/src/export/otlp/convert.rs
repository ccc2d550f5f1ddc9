//! Exchange record → OTLP span, and the OTLP resource of each process.

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::{
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value},
    resource::v1::Resource,
    trace::v1::{Span, Status, span::SpanKind as ProtoSpanKind, status::StatusCode},
};

use crate::record::{AttributeValue, Attributes, ExchangeRecord, SpanKind};

/// Name of the instrumentation scope of every span.
pub const SCOPE_NAME: &str = "pysensor";
/// `telemetry.sdk.name` of every resource.
pub const SDK_NAME: &str = "pysensor-ebpf";
/// `telemetry.sdk.language` of every resource: the language the sensor is written in.
pub const SDK_LANGUAGE: &str = "rust";
/// The sensor's version, used as scope version and `telemetry.sdk.version`.
pub const SDK_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Optional record attribute with the trace id to use (32 hex digits); never exported.
pub const TRACE_ID_ATTRIBUTE: &str = "sensor.trace_id";
/// Optional record attribute with the span id to use (16 hex digits); never exported.
pub const SPAN_ID_ATTRIBUTE: &str = "sensor.span_id";
/// Optional record attribute with the parent span id (16 hex digits); never exported.
pub const PARENT_SPAN_ID_ATTRIBUTE: &str = "sensor.parent_span_id";

/// The OTLP resource of one process: the record's resource attributes, then the configured
/// extra attributes for keys the record does not have, then the `telemetry.sdk.*` attributes.
pub(super) fn resource(record_resource: &Attributes, extra: &BTreeMap<String, String>) -> Resource {
    let mut merged: BTreeMap<&str, AnyValue> = BTreeMap::new();
    for (key, value) in extra {
        merged.insert(key, string_value(value.clone()));
    }
    for (key, value) in record_resource {
        merged.insert(key, any_value(value.clone()));
    }
    merged.insert("telemetry.sdk.name", string_value(SDK_NAME.to_owned()));
    merged.insert(
        "telemetry.sdk.language",
        string_value(SDK_LANGUAGE.to_owned()),
    );
    merged.insert(
        "telemetry.sdk.version",
        string_value(SDK_VERSION.to_owned()),
    );
    Resource {
        attributes: merged
            .into_iter()
            .map(|(key, value)| KeyValue {
                key: key.to_owned(),
                value: Some(value),
                ..KeyValue::default()
            })
            .collect(),
        ..Resource::default()
    }
}

/// The instrumentation scope of every span.
pub(super) fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: SCOPE_NAME.to_owned(),
        version: SDK_VERSION.to_owned(),
        ..InstrumentationScope::default()
    }
}

/// A record made ready to be a span: ids and status decided, the id attributes taken out and
/// `error.type` added. Both encodings start from it: [`span`] (prost's `Span`, for JSON) and
/// [`super::proto`] (protobuf written straight from it).
pub(super) struct Prepared {
    /// The record's resource attributes.
    pub resource: Attributes,
    /// The span's trace.
    pub trace_id: [u8; 16],
    /// The span's own id.
    pub span_id: [u8; 8],
    /// Its parent's id, if it has one.
    pub parent_span_id: Option<[u8; 8]>,
    /// The span's name (the record's).
    pub name: String,
    /// OTLP's span kind.
    pub kind: ProtoSpanKind,
    /// The record's start time.
    pub start_time_unix_nano: u64,
    /// The record's end time.
    pub end_time_unix_nano: u64,
    /// Status ERROR (else unset).
    pub error: bool,
    /// The span's attributes, in key order.
    pub attributes: Attributes,
}

/// Decides a record's span ids and status.
///
/// Ids come from the `sensor.*` id attributes when they are valid, else they are random.
/// The status is ERROR for server spans with a status code of at least 500 and client spans
/// with one of at least 400, and `error.type` then holds the code (unless the record set it);
/// and for any span whose record set `error.type` itself (an exchange without a response).
pub(super) fn prepare(record: ExchangeRecord) -> Prepared {
    let ExchangeRecord {
        resource,
        name,
        kind,
        start_time_unix_nano,
        end_time_unix_nano,
        mut attributes,
    } = record;
    let trace_id = attributes
        .remove(TRACE_ID_ATTRIBUTE)
        .and_then(|v| parse_id::<16>(&v))
        .unwrap_or_else(random_id::<16>);
    let span_id = attributes
        .remove(SPAN_ID_ATTRIBUTE)
        .and_then(|v| parse_id::<8>(&v))
        .unwrap_or_else(random_id::<8>);
    let parent_span_id = attributes
        .remove(PARENT_SPAN_ID_ATTRIBUTE)
        .and_then(|v| parse_id::<8>(&v));

    let status_code = attributes
        .get("http.response.status_code")
        .or_else(|| attributes.get("http.status_code"))
        .and_then(AttributeValue::as_int);
    let error = status_code.filter(|code| match kind {
        SpanKind::Server => *code >= 500,
        SpanKind::Client => *code >= 400,
    });
    if let Some(code) = error {
        attributes
            .entry("error.type".into())
            .or_insert_with(|| AttributeValue::String(code.to_string()));
    }
    let error = error.is_some() || attributes.contains_key("error.type");
    Prepared {
        resource,
        trace_id,
        span_id,
        parent_span_id,
        name,
        kind: match kind {
            SpanKind::Server => ProtoSpanKind::Server,
            SpanKind::Client => ProtoSpanKind::Client,
        },
        start_time_unix_nano,
        end_time_unix_nano,
        error,
        attributes,
    }
}

/// The span's status: ERROR, or none.
fn status(error: bool) -> Option<Status> {
    error.then(|| Status {
        code: StatusCode::Error as i32,
        message: String::new(),
    })
}

/// Turns a record into its span (see [`prepare`]); returns the record's resource attributes
/// beside it.
pub(super) fn span(record: ExchangeRecord) -> (Attributes, Span) {
    let prepared = prepare(record);
    let span = Span {
        trace_id: prepared.trace_id.to_vec(),
        span_id: prepared.span_id.to_vec(),
        parent_span_id: prepared
            .parent_span_id
            .map(|id| id.to_vec())
            .unwrap_or_default(),
        name: prepared.name,
        kind: prepared.kind as i32,
        start_time_unix_nano: prepared.start_time_unix_nano,
        end_time_unix_nano: prepared.end_time_unix_nano,
        attributes: prepared
            .attributes
            .into_iter()
            .map(|(key, value)| KeyValue {
                key: key.into_owned(),
                value: Some(any_value(value)),
                ..KeyValue::default()
            })
            .collect(),
        status: status(prepared.error),
        ..Span::default()
    };
    (prepared.resource, span)
}

fn any_value(value: AttributeValue) -> AnyValue {
    AnyValue {
        value: Some(match value {
            AttributeValue::Bool(b) => any_value::Value::BoolValue(b),
            AttributeValue::Int(i) => any_value::Value::IntValue(i),
            AttributeValue::String(s) => any_value::Value::StringValue(s),
        }),
    }
}

fn string_value(value: String) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::StringValue(value)),
    }
}

/// An id from exactly `2 * N` hex digits (either case); none when malformed or all zero.
fn parse_id<const N: usize>(value: &AttributeValue) -> Option<[u8; N]> {
    let text = value.as_str()?.as_bytes();
    if text.len() != 2 * N {
        return None;
    }
    let mut id = [0u8; N];
    for (byte, pair) in id.iter_mut().zip(text.chunks_exact(2)) {
        *byte = (hex_digit(pair[0])? << 4) | hex_digit(pair[1])?;
    }
    id.iter().any(|b| *b != 0).then_some(id)
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// A random id that is not all zero (the OTLP "invalid" id).
fn random_id<const N: usize>() -> [u8; N] {
    loop {
        let mut id = [0u8; N];
        rand::fill(&mut id[..]);
        if id.iter().any(|b| *b != 0) {
            return id;
        }
    }
}
