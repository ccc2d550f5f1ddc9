//! The OTLP exporter against the test collector of the end-to-end tests (included from
//! `tests/src/otlp.rs`), over every protocol.

use std::{
    collections::BTreeMap,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{AnyValue, KeyValue, any_value},
    resource::v1::Resource,
    trace::v1::{ResourceSpans, ScopeSpans, Span, Status},
};
use serde_json::{Value, json};

use super::{DEFAULT_REQUEST_TIMEOUT, OtlpSettings, OtlpStats, convert, json as otlp_json};
use crate::{
    config::{Config, Protocol},
    export::{ExportStats, Exporter},
    record::{AttributeValue, Attributes, ExchangeRecord, SpanKind},
};

#[allow(dead_code)]
#[path = "../../../../tests/src/otlp.rs"]
mod receiver;

use receiver::{Encoding, ReceivedSpan, Receiver};

const WAIT: Duration = Duration::from_secs(10);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn settings(receiver: &Receiver, protocol: Protocol) -> OtlpSettings {
    let url = match protocol {
        Protocol::Grpc => receiver.grpc_endpoint(),
        Protocol::HttpProtobuf | Protocol::HttpJson => receiver.http_traces_url(),
    };
    OtlpSettings {
        url,
        protocol,
        headers: BTreeMap::new(),
        ca_file: None,
        queue_size: 1000,
        queue_bytes: crate::export::queue::DEFAULT_QUEUE_BYTES,
        batch_max_bytes: 3 * 1024 * 1024,
        batch_timeout: Duration::from_millis(100),
        shutdown_timeout: Duration::from_secs(10),
        request_timeout: DEFAULT_REQUEST_TIMEOUT,
        extra_resource: BTreeMap::new(),
    }
}

fn start(
    rt: &tokio::runtime::Runtime,
    settings: OtlpSettings,
) -> (Exporter, Arc<ExportStats>, Arc<OtlpStats>) {
    let _guard = rt.enter();
    let (exporter, otlp) = Exporter::otlp_with_stats(settings).expect("exporter starts");
    let stats = exporter.stats();
    (exporter, stats, otlp)
}

fn attrs(pairs: &[(&str, AttributeValue)]) -> Attributes {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned().into(), v.clone()))
        .collect()
}

fn process(pid: i64, service: &str) -> Attributes {
    attrs(&[
        ("service.name", service.into()),
        ("process.pid", pid.into()),
        ("process.executable.name", "python3".into()),
        ("host.name", "testhost".into()),
    ])
}

fn record(resource: Attributes, kind: SpanKind, name: &str, status: Option<i64>) -> ExchangeRecord {
    let mut attributes = attrs(&[
        ("http.request.method", "GET".into()),
        ("url.path", "/api/items/7".into()),
        ("server.port", 8080i64.into()),
        ("sensor.incomplete", false.into()),
    ]);
    if let Some(code) = status {
        attributes.insert("http.status_code".into(), code.into());
        attributes.insert("http.response.status_code".into(), code.into());
    }
    ExchangeRecord {
        resource,
        name: name.to_owned(),
        kind,
        start_time_unix_nano: 1_700_000_000_123_456_789,
        end_time_unix_nano: 1_700_000_000_223_456_789,
        attributes,
    }
}

/// Sends one answered (200) exchange of process 1, service `svc`.
fn send_span(exporter: &Exporter, kind: SpanKind, name: &str) {
    exporter.send(record(process(1, "svc"), kind, name, Some(200)));
}

fn counter(value: &std::sync::atomic::AtomicU64) -> u64 {
    value.load(Ordering::SeqCst)
}

fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Records covering kinds, status rules, typed attributes, two processes and given ids.
fn sample_records() -> Vec<ExchangeRecord> {
    let a = process(101, "orders");
    let b = process(202, "billing");
    let mut with_ids = record(a.clone(), SpanKind::Server, "GET /traced", Some(200));
    with_ids.attributes.insert(
        convert::TRACE_ID_ATTRIBUTE.into(),
        "0AF7651916CD43DD8448EB211C80319C".into(),
    );
    with_ids
        .attributes
        .insert(convert::SPAN_ID_ATTRIBUTE.into(), "b7ad6b7169203331".into());
    with_ids.attributes.insert(
        convert::PARENT_SPAN_ID_ATTRIBUTE.into(),
        "00f067aa0ba902b7".into(),
    );
    let mut bad_ids = record(b.clone(), SpanKind::Client, "GET /bad-ids", Some(200));
    bad_ids
        .attributes
        .insert(convert::TRACE_ID_ATTRIBUTE.into(), "not-hex".into());
    bad_ids
        .attributes
        .insert(convert::SPAN_ID_ATTRIBUTE.into(), "0000000000000000".into());
    let mut own_error_type = record(a.clone(), SpanKind::Server, "GET /own-error", Some(500));
    own_error_type
        .attributes
        .insert("error.type".into(), "timeout".into());
    let mut no_response = record(b.clone(), SpanKind::Client, "POST /no-response", None);
    no_response
        .attributes
        .insert("sensor.incomplete".into(), true.into());
    let mut unanswered = record(b.clone(), SpanKind::Client, "GET /unanswered", None);
    unanswered
        .attributes
        .insert("error.type".into(), crate::record::NO_RESPONSE_ERROR.into());
    vec![
        record(
            a.clone(),
            SpanKind::Server,
            "GET /api/items/{id}",
            Some(200),
        ),
        record(a.clone(), SpanKind::Server, "GET /server-503", Some(503)),
        record(a.clone(), SpanKind::Server, "GET /server-404", Some(404)),
        record(a.clone(), SpanKind::Server, "GET /server-499", Some(499)),
        record(b.clone(), SpanKind::Client, "GET /client-404", Some(404)),
        record(b.clone(), SpanKind::Client, "GET /client-399", Some(399)),
        record(b.clone(), SpanKind::Client, "GET /client-500", Some(500)),
        with_ids,
        bad_ids,
        own_error_type,
        no_response,
        unanswered,
    ]
}

fn check_round_trip(records: &[ExchangeRecord], spans: &[ReceivedSpan]) {
    assert_eq!(spans.len(), records.len(), "every record arrives once");
    for record in records {
        let span = spans
            .iter()
            .find(|s| s.name == record.name)
            .unwrap_or_else(|| panic!("span {} arrived", record.name));
        assert_eq!(span.scope_name, "pysensor");
        assert_eq!(span.scope_version, env!("CARGO_PKG_VERSION"));
        let kind = match record.kind {
            SpanKind::Server => "server",
            SpanKind::Client => "client",
        };
        assert_eq!(span.kind, kind, "{}", record.name);
        assert_eq!(span.start_time_unix_nano, record.start_time_unix_nano);
        assert_eq!(span.end_time_unix_nano, record.end_time_unix_nano);
        // Resource: the record's, the extra attributes (the record's own win), telemetry.sdk.*.
        for (key, value) in &record.resource {
            assert_eq!(
                span.resource.get(key.as_ref()),
                Some(&attribute_json(value)),
                "{key}"
            );
        }
        assert_eq!(span.resource["telemetry.sdk.name"], json!("pysensor-ebpf"));
        assert_eq!(span.resource["telemetry.sdk.language"], json!("rust"));
        assert_eq!(
            span.resource["telemetry.sdk.version"],
            json!(env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(span.resource["deployment.environment"], json!("test"));
        assert_eq!(span.resource["sensor.instance"], json!("node-1"));
        // Attributes, typed, without the id attributes; error.type on errors only.
        let status = record.attr_int("http.response.status_code");
        let error = match (record.kind, status) {
            (SpanKind::Server, Some(code)) => code >= 500,
            (SpanKind::Client, Some(code)) => code >= 400,
            _ => false,
        } || record.attributes.contains_key("error.type");
        let mut expected: BTreeMap<String, Value> = record
            .attributes
            .iter()
            .filter(|(k, _)| !k.starts_with("sensor.") || *k == "sensor.incomplete")
            .map(|(k, v)| (k.to_string(), attribute_json(v)))
            .collect();
        if error && !expected.contains_key("error.type") {
            expected.insert(
                "error.type".into(),
                json!(status.unwrap_or_default().to_string()),
            );
        }
        assert_eq!(span.attributes, expected, "{}", record.name);
        assert_eq!(
            span.status_code,
            if error { "error" } else { "unset" },
            "{}",
            record.name
        );
        assert!(is_hex(&span.trace_id, 32), "{}", span.trace_id);
        assert!(is_hex(&span.span_id, 16), "{}", span.span_id);
        assert_ne!(span.trace_id, "0".repeat(32));
        assert_ne!(span.span_id, "0".repeat(16));
    }
    let traced = spans
        .iter()
        .find(|s| s.name == "GET /traced")
        .expect("traced span");
    assert_eq!(traced.trace_id, "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(traced.span_id, "b7ad6b7169203331");
    assert_eq!(traced.parent_span_id.as_deref(), Some("00f067aa0ba902b7"));
    let own = spans
        .iter()
        .find(|s| s.name == "GET /own-error")
        .expect("own-error span");
    assert_eq!(own.attributes["error.type"], json!("timeout"));
    let roots = spans.iter().filter(|s| s.parent_span_id.is_none()).count();
    assert_eq!(
        roots,
        spans.len() - 1,
        "only the span given a parent has one"
    );
    let mut ids: Vec<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), spans.len(), "span ids are unique");
}

fn attribute_json(value: &AttributeValue) -> Value {
    match value {
        AttributeValue::Bool(b) => json!(b),
        AttributeValue::Int(i) => json!(i),
        AttributeValue::String(s) => json!(s),
    }
}

fn round_trip(protocol: Protocol) {
    let receiver = Receiver::start();
    let rt = runtime();
    let mut settings = settings(&receiver, protocol);
    settings.headers = BTreeMap::from([
        ("x-api-key".to_owned(), "secret-1".to_owned()),
        ("X-Tenant".to_owned(), "tenant-a".to_owned()),
    ]);
    settings.extra_resource = BTreeMap::from([
        ("deployment.environment".to_owned(), "test".to_owned()),
        ("sensor.instance".to_owned(), "node-1".to_owned()),
        ("service.name".to_owned(), "configured-name".to_owned()),
    ]);
    let (exporter, stats, _) = start(&rt, settings);
    let records = sample_records();
    for record in &records {
        exporter.send(record.clone());
    }
    assert!(receiver.wait_for_spans(records.len(), WAIT), "spans arrive");
    rt.block_on(exporter.shutdown());

    check_round_trip(&records, &receiver.spans());
    let received = receiver.received();
    let (encoding, content_type) = match protocol {
        Protocol::Grpc => (Encoding::Grpc, "application/grpc"),
        Protocol::HttpProtobuf => (Encoding::HttpProtobuf, "application/x-protobuf"),
        Protocol::HttpJson => (Encoding::HttpJson, "application/json"),
    };
    for request in &received {
        assert_eq!(request.encoding, encoding);
        assert!(
            request.content_type.starts_with(content_type),
            "{}",
            request.content_type
        );
        assert_eq!(
            request.headers.get("x-api-key").map(String::as_str),
            Some("secret-1")
        );
        assert_eq!(
            request.headers.get("x-tenant").map(String::as_str),
            Some("tenant-a")
        );
        // One ResourceSpans per process, one ScopeSpans in each.
        let resources: Vec<_> = request
            .request
            .resource_spans
            .iter()
            .map(|rs| rs.resource.clone().unwrap_or_default())
            .collect();
        for (i, r) in resources.iter().enumerate() {
            assert!(
                !resources[..i].contains(r),
                "a resource appears once per request"
            );
        }
        for rs in &request.request.resource_spans {
            assert_eq!(rs.scope_spans.len(), 1);
        }
    }
    let processes: Vec<_> = receiver
        .spans()
        .iter()
        .map(|s| s.resource["process.pid"].clone())
        .collect();
    assert!(processes.contains(&json!(101)) && processes.contains(&json!(202)));
    if received.len() == 1 {
        assert_eq!(
            received[0].request.resource_spans.len(),
            2,
            "two processes, two resources"
        );
    }
    assert_eq!(counter(&stats.queued), records.len() as u64);
    assert_eq!(counter(&stats.exported), records.len() as u64);
    assert_eq!(counter(&stats.failed), 0);
    assert_eq!(counter(&stats.dropped_queue_full), 0);
}

#[test]
fn grpc_round_trips_records() {
    round_trip(Protocol::Grpc);
}

#[test]
fn http_protobuf_round_trips_records() {
    round_trip(Protocol::HttpProtobuf);
}

#[test]
fn http_json_round_trips_records() {
    round_trip(Protocol::HttpJson);
}

/// Every object key in a JSON document.
fn keys(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                out.push(k.clone());
                keys(v, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| keys(v, out)),
        _ => {}
    }
}

#[test]
fn http_json_body_follows_the_otlp_json_encoding() {
    let receiver = Receiver::start();
    let rt = runtime();
    let (exporter, _, _) = start(&rt, settings(&receiver, Protocol::HttpJson));
    for record in sample_records() {
        exporter.send(record);
    }
    assert!(receiver.wait_for_spans(sample_records().len(), WAIT));
    rt.block_on(exporter.shutdown());
    for request in receiver.received() {
        let body = request.json.expect("JSON body kept");
        let mut all = Vec::new();
        keys(&body, &mut all);
        for key in &all {
            assert!(!key.contains('_'), "key {key} is lowerCamelCase");
        }
        for rs in body["resourceSpans"].as_array().expect("resourceSpans") {
            for ss in rs["scopeSpans"].as_array().expect("scopeSpans") {
                for span in ss["spans"].as_array().expect("spans") {
                    assert!(is_hex(span["traceId"].as_str().expect("traceId"), 32));
                    assert!(is_hex(span["spanId"].as_str().expect("spanId"), 16));
                    assert!(span["startTimeUnixNano"].is_string(), "int64 as string");
                    assert!(span["endTimeUnixNano"].is_string(), "int64 as string");
                    assert!(span["kind"].is_u64(), "enum as integer");
                    for attr in span["attributes"].as_array().expect("attributes") {
                        let value = attr["value"].as_object().expect("value");
                        if let Some(int) = value.get("intValue") {
                            assert!(int.is_string(), "intValue as string");
                        }
                    }
                    if let Some(status) = span.get("status") {
                        assert!(status["code"].is_u64(), "status code as integer");
                    }
                }
            }
        }
    }
}

#[test]
fn json_encoding_of_a_span_is_exact() {
    let kv = |key: &str, value: any_value::Value| KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..KeyValue::default()
    };
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv(
                    "service.name",
                    any_value::Value::StringValue("a\"b\n\u{1}é".into()),
                )],
                ..Resource::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(convert::scope()),
                spans: vec![Span {
                    trace_id: vec![
                        0x5b, 0x8e, 0xff, 0xf7, 0x98, 0x03, 0x81, 0x03, 0xd2, 0x69, 0xb6, 0x33,
                        0x81, 0x3f, 0xc6, 0x0c,
                    ],
                    span_id: vec![0xee, 0xe1, 0x9b, 0x7e, 0xc3, 0xc1, 0xb1, 0x74],
                    name: "GET /x".into(),
                    kind: 2,
                    start_time_unix_nano: 1_544_712_660_000_000_000,
                    end_time_unix_nano: 1_544_712_661_000_000_000,
                    attributes: vec![
                        kv("i", any_value::Value::IntValue(-42)),
                        kv("b", any_value::Value::BoolValue(true)),
                        kv("d", any_value::Value::DoubleValue(1.5)),
                        kv("bytes", any_value::Value::BytesValue(b"hi!?".to_vec())),
                    ],
                    status: Some(Status {
                        code: 2,
                        message: String::new(),
                    }),
                    ..Span::default()
                }],
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    };
    let text = String::from_utf8(otlp_json::encode_request(&request)).expect("UTF-8");
    let expected = concat!(
        r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"a\"b\n\u0001é"}}]},"#,
        r#""scopeSpans":[{"scope":{"name":"pysensor","version":""#,
        env!("CARGO_PKG_VERSION"),
        r#""},"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","#,
        r#""name":"GET /x","kind":2,"startTimeUnixNano":"1544712660000000000","endTimeUnixNano":"1544712661000000000","#,
        r#""attributes":[{"key":"i","value":{"intValue":"-42"}},{"key":"b","value":{"boolValue":true}},"#,
        r#"{"key":"d","value":{"doubleValue":1.5}},{"key":"bytes","value":{"bytesValue":"aGkhPw=="}}],"#,
        r#""status":{"code":2}}]}]}]}"#
    );
    assert_eq!(text, expected);
    // The receiver's decoder reads it back to the same message.
    let value: Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(receiver::decode_json_request(&value), Ok(request));
}

/// Records whose attributes make each span about `body` bytes.
fn large_records(n: usize, body: usize) -> Vec<ExchangeRecord> {
    (0..n)
        .map(|i| {
            let mut r = record(
                process(300 + (i % 3) as i64, "big"),
                SpanKind::Server,
                &format!("GET /big/{i}"),
                Some(200),
            );
            r.attributes
                .insert("http.response.body".into(), "x".repeat(body).into());
            r
        })
        .collect()
}

fn batches_stay_under_the_limit(protocol: Protocol) {
    let receiver = Receiver::start();
    let rt = runtime();
    let mut settings = settings(&receiver, protocol);
    settings.batch_max_bytes = 64 * 1024;
    // Long enough that only the size limit ends a batch, even on a loaded machine.
    settings.batch_timeout = Duration::from_secs(1);
    let (exporter, stats, _) = start(&rt, settings);
    let records = large_records(60, 5000);
    for record in &records {
        exporter.send(record.clone());
    }
    assert!(
        receiver.wait_for_spans(records.len(), WAIT),
        "all spans arrive"
    );
    rt.block_on(exporter.shutdown());
    let received = receiver.received();
    for request in &received {
        assert!(
            request.body_len <= 64 * 1024,
            "request of {} bytes",
            request.body_len
        );
    }
    assert!(
        received.len() >= 5,
        "split into several requests: {}",
        received.len()
    );
    // Batches are filled close to the limit before they are sent.
    for request in &received[..received.len() - 1] {
        assert!(
            request.body_len > 60 * 1024,
            "request of {} bytes",
            request.body_len
        );
    }
    assert_eq!(receiver.spans().len(), records.len());
    assert_eq!(counter(&stats.exported), records.len() as u64);
}

#[test]
fn grpc_batches_stay_under_the_size_limit() {
    batches_stay_under_the_limit(Protocol::Grpc);
}

#[test]
fn http_protobuf_batches_stay_under_the_size_limit() {
    batches_stay_under_the_limit(Protocol::HttpProtobuf);
}

#[test]
fn http_json_batches_stay_under_the_size_limit() {
    batches_stay_under_the_limit(Protocol::HttpJson);
}

#[test]
fn a_span_larger_than_the_limit_is_dropped_and_counted() {
    let receiver = Receiver::start();
    let rt = runtime();
    let mut settings = settings(&receiver, Protocol::HttpProtobuf);
    settings.batch_max_bytes = 4096;
    let (exporter, stats, otlp) = start(&rt, settings);
    let mut records = large_records(3, 100);
    records.insert(1, large_records(1, 10_000).remove(0));
    for record in records {
        exporter.send(record);
    }
    assert!(receiver.wait_for_spans(3, WAIT));
    rt.block_on(exporter.shutdown());
    assert_eq!(receiver.spans().len(), 3);
    assert_eq!(counter(&stats.exported), 3);
    assert_eq!(counter(&stats.failed), 1);
    assert_eq!(counter(&otlp.dropped_too_large), 1);
}

fn outage_loses_nothing_up_to_the_queue_size(protocol: Protocol) {
    let receiver = Receiver::start();
    receiver.set_unavailable(true);
    let rt = runtime();
    let mut settings = settings(&receiver, protocol);
    settings.queue_size = 20;
    settings.batch_timeout = Duration::from_millis(20);
    let (exporter, stats, otlp) = start(&rt, settings);
    // The first record's batch is sent and refused: the exporter now retries it and takes
    // nothing more from the queue.
    send_span(&exporter, SpanKind::Server, "GET /first");
    assert!(
        wait_until(WAIT, || counter(&otlp.retries) >= 1),
        "a retry happens"
    );
    for i in 0..27 {
        send_span(&exporter, SpanKind::Server, &format!("GET /{i}"));
    }
    assert_eq!(
        counter(&stats.dropped_queue_full),
        7,
        "beyond the queue size, exactly"
    );
    assert_eq!(counter(&stats.queued), 21);
    std::thread::sleep(Duration::from_millis(300));
    assert!(receiver.refused() >= 2, "retried while unavailable");
    assert!(receiver.spans().is_empty());
    receiver.set_unavailable(false);
    assert!(
        receiver.wait_for_spans(21, WAIT),
        "everything queued arrives"
    );
    rt.block_on(exporter.shutdown());
    let spans = receiver.spans();
    assert_eq!(spans.len(), 21);
    assert!(spans.iter().any(|s| s.name == "GET /first"));
    for i in 0..20 {
        assert!(
            spans.iter().any(|s| s.name == format!("GET /{i}")),
            "GET /{i}"
        );
    }
    assert_eq!(counter(&stats.exported), 21);
    assert_eq!(counter(&stats.failed), 0);
    assert!(counter(&otlp.retries) >= 2);
}

/// A record with a request body of `body_len` bytes.
fn record_with_body(name: &str, body_len: usize) -> ExchangeRecord {
    let mut record = record(process(1, "svc"), SpanKind::Server, name, Some(200));
    record
        .attributes
        .insert("http.request.body".into(), "b".repeat(body_len).into());
    record
}

#[test]
fn outage_with_bodies_keeps_the_queue_within_its_bytes() {
    let receiver = Receiver::start();
    receiver.set_unavailable(true);
    let rt = runtime();
    let mut settings = settings(&receiver, Protocol::Grpc);
    let one = crate::export::queue::record_bytes(&record_with_body("POST /0", 100_000));
    settings.queue_bytes = 5 * one + one / 2;
    settings.batch_timeout = Duration::from_millis(20);
    let (exporter, stats, otlp) = start(&rt, settings);
    exporter.send(record_with_body("POST /first", 100_000));
    assert!(
        wait_until(WAIT, || counter(&otlp.retries) >= 1),
        "a retry happens"
    );
    assert_eq!(exporter.queued_bytes(), 0, "the first record is in flight");
    for i in 0..8 {
        exporter.send(record_with_body(&format!("POST /{i}"), 100_000));
    }
    assert_eq!(exporter.queued_bytes(), 5 * one);
    assert_eq!(counter(&stats.dropped_queue_full), 3);
    assert_eq!(counter(&stats.dropped_queue_bytes), 3);
    receiver.set_unavailable(false);
    assert!(
        receiver.wait_for_spans(6, WAIT),
        "everything queued arrives"
    );
    rt.block_on(exporter.shutdown());
    let names: Vec<String> = receiver.spans().into_iter().map(|s| s.name).collect();
    assert_eq!(
        names,
        [
            "POST /first",
            "POST /0",
            "POST /1",
            "POST /2",
            "POST /3",
            "POST /4"
        ]
    );
    assert_eq!(counter(&stats.exported), 6);
    assert_eq!(counter(&stats.failed), 0);
}

#[test]
fn grpc_outage_loses_nothing_up_to_the_queue_size() {
    outage_loses_nothing_up_to_the_queue_size(Protocol::Grpc);
}

#[test]
fn http_outage_loses_nothing_up_to_the_queue_size() {
    outage_loses_nothing_up_to_the_queue_size(Protocol::HttpProtobuf);
}

fn non_retryable_answer_drops_the_batch(protocol: Protocol, failing: fn(&Receiver, bool)) {
    let receiver = Receiver::start();
    failing(&receiver, true);
    let rt = runtime();
    let (exporter, stats, otlp) = start(&rt, settings(&receiver, protocol));
    for i in 0..3 {
        send_span(&exporter, SpanKind::Server, &format!("GET /{i}"));
    }
    assert!(
        wait_until(WAIT, || counter(&stats.failed) == 3),
        "the batch is dropped"
    );
    failing(&receiver, false);
    send_span(&exporter, SpanKind::Server, "GET /after");
    assert!(receiver.wait_for_spans(1, WAIT));
    rt.block_on(exporter.shutdown());
    assert_eq!(counter(&otlp.retries), 0, "not retried");
    assert_eq!(counter(&stats.exported), 1);
    assert_eq!(receiver.spans()[0].name, "GET /after");
}

#[test]
fn grpc_invalid_argument_drops_the_batch() {
    non_retryable_answer_drops_the_batch(Protocol::Grpc, Receiver::set_rejecting);
}

#[test]
fn http_400_drops_the_batch() {
    non_retryable_answer_drops_the_batch(Protocol::HttpJson, Receiver::set_rejecting);
}

#[test]
fn grpc_internal_error_drops_the_batch() {
    non_retryable_answer_drops_the_batch(Protocol::Grpc, Receiver::set_internal_error);
}

#[test]
fn http_500_drops_the_batch() {
    non_retryable_answer_drops_the_batch(Protocol::HttpProtobuf, Receiver::set_internal_error);
}

#[test]
fn shutdown_flushes_everything_queued() {
    let receiver = Receiver::start();
    let rt = runtime();
    let mut settings = settings(&receiver, Protocol::Grpc);
    settings.batch_timeout = Duration::from_secs(60);
    let (exporter, stats, _) = start(&rt, settings);
    for i in 0..50 {
        send_span(&exporter, SpanKind::Client, &format!("GET /{i}"));
    }
    let started = Instant::now();
    rt.block_on(exporter.shutdown());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the batch timeout is not waited for"
    );
    assert_eq!(
        receiver.spans().len(),
        50,
        "flushed before shutdown returned"
    );
    assert_eq!(counter(&stats.exported), 50);
}

#[test]
fn shutdown_retries_until_the_collector_is_back() {
    let receiver = Receiver::start();
    receiver.set_unavailable(true);
    let rt = runtime();
    let (exporter, stats, _) = start(&rt, settings(&receiver, Protocol::HttpJson));
    for i in 0..5 {
        send_span(&exporter, SpanKind::Client, &format!("GET /{i}"));
    }
    let shutdown = rt.spawn(exporter.shutdown());
    std::thread::sleep(Duration::from_millis(700));
    assert!(!shutdown.is_finished(), "still retrying");
    receiver.set_unavailable(false);
    rt.block_on(shutdown).expect("shutdown task");
    assert_eq!(receiver.spans().len(), 5);
    assert_eq!(counter(&stats.exported), 5);
    assert_eq!(counter(&stats.failed), 0);
}

#[test]
fn shutdown_deadline_counts_what_is_left_as_failed() {
    // A collector that is gone: connections are refused.
    let receiver = Receiver::start();
    let mut settings = settings(&receiver, Protocol::Grpc);
    receiver.stop();
    settings.queue_size = 100;
    settings.batch_max_bytes = 2048;
    settings.shutdown_timeout = Duration::from_millis(500);
    let rt = runtime();
    let (exporter, stats, otlp) = start(&rt, settings);
    for record in large_records(30, 300) {
        exporter.send(record);
    }
    assert!(
        wait_until(WAIT, || counter(&otlp.retries) >= 2),
        "refused connections are retried"
    );
    let started = Instant::now();
    rt.block_on(exporter.shutdown());
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(3),
        "took {took:?}"
    );
    assert_eq!(counter(&stats.queued), 30);
    assert_eq!(counter(&stats.exported), 0);
    assert_eq!(counter(&stats.failed), 30, "everything left is counted");
}

/// A collector that accepts requests but answers too late: each attempt is abandoned at the
/// request timeout and sent again, nothing is counted lost meanwhile, and everything is
/// delivered once it answers in time.
fn stalled_requests_time_out_and_are_retried(protocol: Protocol) {
    let receiver = Receiver::start();
    receiver.set_delay(Duration::from_secs(3));
    let mut settings = settings(&receiver, protocol);
    settings.request_timeout = Duration::from_millis(300);
    let rt = runtime();
    let (exporter, stats, otlp) = start(&rt, settings);
    for i in 0..3 {
        send_span(&exporter, SpanKind::Server, &format!("GET /stalled-{i}"));
    }
    assert!(
        wait_until(WAIT, || counter(&otlp.retries) >= 2),
        "timed-out requests are retried"
    );
    assert_eq!(counter(&stats.exported), 0);
    assert_eq!(counter(&stats.failed), 0, "nothing is lost while retrying");
    receiver.set_delay(Duration::ZERO);
    assert!(
        wait_until(WAIT, || counter(&stats.exported) == 3),
        "delivered once the collector answers in time: {:?}",
        stats
    );
    rt.block_on(exporter.shutdown());
    assert_eq!(counter(&stats.failed), 0);
    let names: std::collections::BTreeSet<String> =
        receiver.spans().into_iter().map(|s| s.name).collect();
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["GET /stalled-0", "GET /stalled-1", "GET /stalled-2"],
        "every span arrived (a late answer to an abandoned attempt may repeat some)"
    );
}

#[test]
fn grpc_stalled_requests_time_out_and_are_retried() {
    stalled_requests_time_out_and_are_retried(Protocol::Grpc);
}

#[test]
fn http_stalled_requests_time_out_and_are_retried() {
    stalled_requests_time_out_and_are_retried(Protocol::HttpProtobuf);
}

#[test]
fn bad_settings_are_errors() {
    let rt = runtime();
    let _guard = rt.enter();
    let base = OtlpSettings {
        url: "http://127.0.0.1:4317".into(),
        protocol: Protocol::Grpc,
        headers: BTreeMap::new(),
        ca_file: None,
        queue_size: 10,
        queue_bytes: 1 << 20,
        batch_max_bytes: 1024,
        batch_timeout: Duration::from_millis(10),
        shutdown_timeout: Duration::from_millis(10),
        request_timeout: DEFAULT_REQUEST_TIMEOUT,
        extra_resource: BTreeMap::new(),
    };
    let with = |f: &dyn Fn(&mut OtlpSettings)| {
        let mut s = base.clone();
        f(&mut s);
        s
    };
    for protocol in [Protocol::Grpc, Protocol::HttpProtobuf, Protocol::HttpJson] {
        let cases = [
            with(&|s| s.url = "ftp://collector:4317".into()),
            with(&|s| s.url = "not a url".into()),
            with(&|s| s.url = "http://".into()),
            with(&|s| {
                s.headers.insert("bad header".into(), "v".into());
            }),
            with(&|s| {
                s.headers.insert("x-ok".into(), "line\nbreak".into());
            }),
            with(&|s| {
                s.url = "https://collector:4317".into();
                s.ca_file = Some("/nonexistent/ca.pem".into());
            }),
        ];
        for mut case in cases {
            case.protocol = protocol;
            assert!(Exporter::otlp(case.clone()).is_err(), "{case:?}");
        }
    }
    drop(_guard);
    // Outside a runtime: an error, not a panic.
    assert!(Exporter::otlp(base).is_err());
}

#[test]
fn https_endpoints_are_accepted() {
    let rt = runtime();
    let _guard = rt.enter();
    let dir = std::env::temp_dir().join(format!("otlp-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let empty = dir.join("empty.pem");
    std::fs::write(&empty, "no certificate here\n").expect("write");
    for protocol in [Protocol::Grpc, Protocol::HttpProtobuf, Protocol::HttpJson] {
        let settings = OtlpSettings {
            url: "https://collector.example:4318/v1/traces".into(),
            protocol,
            headers: BTreeMap::new(),
            ca_file: None,
            queue_size: 10,
            queue_bytes: 1 << 20,
            batch_max_bytes: 1024,
            batch_timeout: Duration::from_millis(10),
            shutdown_timeout: Duration::from_millis(10),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            extra_resource: BTreeMap::new(),
        };
        assert!(Exporter::otlp(settings.clone()).is_ok(), "system roots");
        let with_empty_ca = OtlpSettings {
            ca_file: Some(empty.clone()),
            ..settings
        };
        assert!(
            Exporter::otlp(with_empty_ca).is_err(),
            "a CA file without certificate"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn settings_from_config() {
    let mut config = Config::default();
    config
        .reporting
        .headers
        .insert("x-token".into(), "t".into());
    config.reporting.cert_file = Some("/etc/ca.pem".into());
    config
        .resource_attributes
        .insert("deployment.environment".into(), "prod".into());
    config.sensor.export_queue_size = 77;
    let s = OtlpSettings::from_config(
        &config,
        "http://c:4318/v1/traces".into(),
        Protocol::HttpJson,
    );
    assert_eq!(s.url, "http://c:4318/v1/traces");
    assert_eq!(s.protocol, Protocol::HttpJson);
    assert_eq!(s.headers["x-token"], "t");
    assert_eq!(
        s.ca_file.as_deref(),
        Some(std::path::Path::new("/etc/ca.pem"))
    );
    assert_eq!(s.queue_size, 77);
    assert_eq!(s.batch_max_bytes, 3 * 1024 * 1024);
    assert_eq!(s.batch_timeout, Duration::from_millis(1000));
    assert_eq!(s.shutdown_timeout, Duration::from_secs(10));
    assert_eq!(s.extra_resource["deployment.environment"], "prod");
}

#[test]
fn ids_come_from_valid_sensor_attributes_only() {
    let with = |trace: &str, span: &str, parent: &str| {
        let mut r = record(process(1, "svc"), SpanKind::Server, "GET /", Some(200));
        r.attributes
            .insert(convert::TRACE_ID_ATTRIBUTE.into(), trace.into());
        r.attributes
            .insert(convert::SPAN_ID_ATTRIBUTE.into(), span.into());
        r.attributes
            .insert(convert::PARENT_SPAN_ID_ATTRIBUTE.into(), parent.into());
        convert::span(r).1
    };
    let s = with(
        "4bf92f3577b34da6a3ce929d0e0e4736",
        "00f067aa0ba902b7",
        "53995c3f42cd8ad8",
    );
    assert_eq!(s.trace_id, hex_bytes("4bf92f3577b34da6a3ce929d0e0e4736"));
    assert_eq!(s.span_id, hex_bytes("00f067aa0ba902b7"));
    assert_eq!(s.parent_span_id, hex_bytes("53995c3f42cd8ad8"));
    assert!(
        s.attributes
            .iter()
            .all(|kv| !kv.key.starts_with("sensor.") || kv.key == "sensor.incomplete")
    );
    // Wrong length, not hex, all zero: random ids, no parent.
    for (trace, span, parent) in [
        (
            "4bf92f3577b34da6a3ce929d0e0e473",
            "00f067aa0ba902b",
            "53995c3f42cd8ad",
        ),
        (
            "zzf92f3577b34da6a3ce929d0e0e4736",
            "zz f067aa0ba902b",
            "53995c3f42cd8adg",
        ),
        (
            "00000000000000000000000000000000",
            "0000000000000000",
            "0000000000000000",
        ),
    ] {
        let s = with(trace, span, parent);
        assert_eq!(s.trace_id.len(), 16);
        assert_eq!(s.span_id.len(), 8);
        assert!(s.trace_id.iter().any(|b| *b != 0) && s.span_id.iter().any(|b| *b != 0));
        assert!(s.parent_span_id.is_empty());
        assert!(
            s.attributes
                .iter()
                .all(|kv| !kv.key.starts_with("sensor.") || kv.key == "sensor.incomplete")
        );
    }
    // A non-string id attribute is ignored the same way.
    let mut r = record(process(1, "svc"), SpanKind::Server, "GET /", Some(200));
    r.attributes
        .insert(convert::SPAN_ID_ATTRIBUTE.into(), 7i64.into());
    let s = convert::span(r).1;
    assert_eq!(s.span_id.len(), 8);
}

fn hex_bytes(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

#[test]
fn status_follows_the_kind_rules() {
    let status = |kind: SpanKind, code: Option<i64>| {
        let span = convert::span(record(process(1, "svc"), kind, "x", code)).1;
        let error_type = span
            .attributes
            .iter()
            .find(|kv| kv.key == "error.type")
            .and_then(|kv| kv.value.clone())
            .and_then(|v| v.value);
        (span.status.map(|s| s.code), error_type)
    };
    let error = |code: &str| (Some(2), Some(any_value::Value::StringValue(code.into())));
    assert_eq!(status(SpanKind::Server, Some(200)), (None, None));
    assert_eq!(status(SpanKind::Server, Some(499)), (None, None));
    assert_eq!(status(SpanKind::Server, Some(500)), error("500"));
    assert_eq!(status(SpanKind::Server, Some(503)), error("503"));
    assert_eq!(status(SpanKind::Client, Some(399)), (None, None));
    assert_eq!(status(SpanKind::Client, Some(400)), error("400"));
    assert_eq!(status(SpanKind::Client, Some(502)), error("502"));
    assert_eq!(status(SpanKind::Client, None), (None, None));
    // A record's own error.type (an exchange without a response) makes it an error.
    let mut r = record(process(1, "svc"), SpanKind::Client, "x", None);
    r.attributes
        .insert("error.type".into(), crate::record::NO_RESPONSE_ERROR.into());
    let span = convert::span(r).1;
    assert_eq!(span.status.map(|s| s.code), Some(2));
    // The older attribute alone is enough.
    let mut r = record(process(1, "svc"), SpanKind::Server, "x", None);
    r.attributes
        .insert("http.status_code".into(), 504i64.into());
    assert_eq!(convert::span(r).1.status.map(|s| s.code), Some(2));
}

#[test]
fn resource_merges_record_extra_and_sdk_attributes() {
    let extra = BTreeMap::from([
        ("service.name".to_owned(), "configured".to_owned()),
        ("telemetry.sdk.name".to_owned(), "spoofed".to_owned()),
        ("region".to_owned(), "eu".to_owned()),
    ]);
    let resource = convert::resource(&process(9, "orders"), &extra);
    let map = receiver::attributes(&resource.attributes);
    assert_eq!(map["service.name"], json!("orders"));
    assert_eq!(map["process.pid"], json!(9));
    assert_eq!(map["region"], json!("eu"));
    assert_eq!(map["telemetry.sdk.name"], json!("pysensor-ebpf"));
    assert_eq!(map["telemetry.sdk.language"], json!("rust"));
    assert_eq!(
        map["telemetry.sdk.version"],
        json!(env!("CARGO_PKG_VERSION"))
    );
}

fn testdata(name: &str) -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
        .join("src/export/otlp/testdata")
        .join(name)
}

fn tls_receiver() -> Receiver {
    let cert = std::fs::read(testdata("server.pem")).expect("server certificate");
    let key = std::fs::read(testdata("server.key")).expect("server key");
    Receiver::start_tls(&cert, &key)
}

fn tls_round_trip(protocol: Protocol) {
    let receiver = tls_receiver();
    let rt = runtime();
    let mut settings = settings(&receiver, protocol);
    assert!(settings.url.starts_with("https://"), "{}", settings.url);
    settings.ca_file = Some(testdata("ca.pem"));
    settings
        .headers
        .insert("x-api-key".into(), "over-tls".into());
    let (exporter, stats, _) = start(&rt, settings);
    send_span(&exporter, SpanKind::Server, "GET /tls");
    assert!(
        receiver.wait_for_spans(1, WAIT),
        "the span arrives over TLS"
    );
    rt.block_on(exporter.shutdown());
    assert_eq!(receiver.spans()[0].name, "GET /tls");
    assert_eq!(
        receiver.received()[0]
            .headers
            .get("x-api-key")
            .map(String::as_str),
        Some("over-tls")
    );
    assert_eq!(counter(&stats.exported), 1);
}

#[test]
fn grpc_over_tls_with_a_ca_file() {
    tls_round_trip(Protocol::Grpc);
}

#[test]
fn http_protobuf_over_tls_with_a_ca_file() {
    tls_round_trip(Protocol::HttpProtobuf);
}

#[test]
fn http_json_over_tls_with_a_ca_file() {
    tls_round_trip(Protocol::HttpJson);
}

fn untrusted_certificate_is_not_delivered(protocol: Protocol) {
    let receiver = tls_receiver();
    let rt = runtime();
    let mut settings = settings(&receiver, protocol);
    // System roots only: the test CA is not among them.
    settings.ca_file = None;
    settings.shutdown_timeout = Duration::from_millis(300);
    let (exporter, stats, otlp) = start(&rt, settings);
    send_span(&exporter, SpanKind::Server, "GET /untrusted");
    assert!(wait_until(WAIT, || counter(&otlp.retries) >= 1), "retried");
    rt.block_on(exporter.shutdown());
    assert!(receiver.spans().is_empty());
    assert_eq!(counter(&stats.exported), 0);
    assert_eq!(counter(&stats.failed), 1);
}

#[test]
fn grpc_rejects_an_untrusted_certificate() {
    untrusted_certificate_is_not_delivered(Protocol::Grpc);
}

#[test]
fn http_rejects_an_untrusted_certificate() {
    untrusted_certificate_is_not_delivered(Protocol::HttpProtobuf);
}

#[test]
fn receiver_json_decoder_follows_the_spec() {
    let decode = |span: Value| {
        receiver::decode_json_request(&json!({
            "resourceSpans": [{"scopeSpans": [{"spans": [span]}], "futureField": 1}]
        }))
        .map(|r| r.resource_spans[0].scope_spans[0].spans[0].clone())
    };
    // 64-bit integers as strings or numbers, ids in either case, unknown keys ignored.
    let span = decode(json!({
        "traceId": "5B8EFFF798038103D269B633813FC60C",
        "spanId": "EEE19B7EC3C1B174",
        "startTimeUnixNano": 1544712660000000000u64,
        "endTimeUnixNano": "1544712661000000000",
        "kind": 3,
        "attributes": [{"key": "n", "value": {"intValue": 7}}],
        "unknownField": {"nested": true}
    }))
    .expect("valid span");
    assert_eq!(span.trace_id[0], 0x5b);
    assert_eq!(span.span_id[7], 0x74);
    assert_eq!(span.start_time_unix_nano, 1_544_712_660_000_000_000);
    assert_eq!(span.end_time_unix_nano, 1_544_712_661_000_000_000);
    assert_eq!(span.kind, 3);
    assert_eq!(
        span.attributes[0]
            .value
            .as_ref()
            .and_then(|v| v.value.clone()),
        Some(any_value::Value::IntValue(7))
    );
    // Enum names and non-hex ids are not OTLP/JSON.
    assert!(decode(json!({"kind": "SPAN_KIND_SERVER"})).is_err());
    assert!(decode(json!({"traceId": "W4793/eYA4ED0mm2M4E/xg=="})).is_err());
    // Original (snake_case) field names are not valid keys: they are ignored.
    let span = decode(json!({"start_time_unix_nano": "5", "name": "n"})).expect("valid span");
    assert_eq!(span.start_time_unix_nano, 0);
    assert_eq!(span.name, "n");
}

/// Spans of three processes, small ones and large ones (bodies of 40 KiB, which keep a buffer
/// of their own in the batch), interleaved so that every group spans several buffers.
fn mixed_records() -> Vec<ExchangeRecord> {
    (0..400)
        .map(|i| {
            let mut r = record(
                process(500 + (i % 3) as i64, "mixed"),
                SpanKind::Server,
                &format!("GET /mixed/{i}"),
                Some(if i % 7 == 0 { 503 } else { 200 }),
            );
            let body = if i % 50 == 0 { 40 * 1024 } else { i * 3 };
            r.attributes
                .insert("http.response.body".into(), "é\"x".repeat(body / 4).into());
            r
        })
        .collect()
}

/// The request the batch's pieces must spell: the same spans in ResourceSpans made the usual
/// way (one per resource, in order of first appearance).
fn reference_request(
    spans: &[(Attributes, Span)],
    sizer_extra: &BTreeMap<String, String>,
) -> ExportTraceServiceRequest {
    let mut groups: Vec<(Attributes, Vec<Span>)> = Vec::new();
    for (resource, span) in spans {
        match groups.iter_mut().find(|(r, _)| r == resource) {
            Some((_, group)) => group.push(span.clone()),
            None => groups.push((resource.clone(), vec![span.clone()])),
        }
    }
    ExportTraceServiceRequest {
        resource_spans: groups
            .into_iter()
            .map(|(resource, spans)| ResourceSpans {
                resource: Some(convert::resource(&resource, sizer_extra)),
                scope_spans: vec![ScopeSpans {
                    scope: Some(convert::scope()),
                    spans,
                    ..ScopeSpans::default()
                }],
                ..ResourceSpans::default()
            })
            .collect(),
    }
}

/// Spans are encoded one by one as they join a batch; what the batch sends must be exactly
/// the bytes of the whole request encoded at once.
fn batch_bytes_are_the_request_encoded_at_once(protocol: Protocol) {
    use super::batch::{Added, Batch, PendingSpan, Sizer};
    use prost::Message as _;

    let extra = BTreeMap::from([("deployment.environment".to_owned(), "test".to_owned())]);
    let mut sizer = Sizer::new(protocol, extra.clone());
    let mut batch = Batch::new(&sizer, usize::MAX);
    let spans: Vec<(Attributes, Span)> = mixed_records().into_iter().map(convert::span).collect();
    for (resource, span) in &spans {
        let pending = PendingSpan::of_span(protocol, resource.clone(), span.clone());
        assert!(
            matches!(batch.add(&mut sizer, pending), Added::Yes),
            "an unbounded batch takes every span"
        );
    }
    let estimate = batch.size();
    let sent: Vec<u8> = batch.into_parts(&sizer).concat();
    let reference = reference_request(&spans, &extra);
    let expected = match protocol {
        Protocol::Grpc | Protocol::HttpProtobuf => reference.encode_to_vec(),
        Protocol::HttpJson => otlp_json::encode_request(&reference),
    };
    assert_eq!(sent.len(), expected.len(), "{protocol:?}: request length");
    assert!(sent == expected, "{protocol:?}: request bytes differ");
    assert!(
        estimate >= sent.len(),
        "{protocol:?}: the batch's size ({estimate}) bounds the request ({})",
        sent.len()
    );
}

#[test]
fn protobuf_batch_bytes_are_the_request_encoded_at_once() {
    batch_bytes_are_the_request_encoded_at_once(Protocol::HttpProtobuf);
}

#[test]
fn json_batch_bytes_are_the_request_encoded_at_once() {
    batch_bytes_are_the_request_encoded_at_once(Protocol::HttpJson);
}

/// Large bodies are spliced into protobuf spans (sent as they are, after the span's other
/// fields): the request decodes to the same spans, with those bodies as their last attributes.
#[test]
fn large_bodies_are_spliced_into_protobuf_spans_as_their_last_attributes() {
    use super::batch::{Added, Batch, PendingSpan, Sizer};
    use prost::Message as _;

    const SPLICED: usize = 4 * 1024;
    let records: Vec<ExchangeRecord> = mixed_records()
        .into_iter()
        .enumerate()
        .map(|(i, mut r)| {
            r.attributes.insert(
                convert::TRACE_ID_ATTRIBUTE.into(),
                format!("{:032x}", i + 1).into(),
            );
            r.attributes.insert(
                convert::SPAN_ID_ATTRIBUTE.into(),
                format!("{:016x}", i + 1).into(),
            );
            // Request bodies on either side of the threshold, and one of 70 KiB.
            let len = [SPLICED - 1, SPLICED, 16 * 1024, 70 * 1024, 10][i % 5];
            let body: String = "{\"k\": 1}".chars().cycle().take(len).collect();
            r.attributes.insert("http.request.body".into(), body.into());
            r
        })
        .collect();
    let expected: Vec<(Attributes, Span)> = records
        .iter()
        .cloned()
        .map(|record| {
            let (resource, mut span) = convert::span(record);
            for key in ["http.request.body", "http.response.body"] {
                let at = span.attributes.iter().position(|kv| kv.key == key);
                if let Some(at) = at {
                    let large = matches!(
                        &span.attributes[at].value,
                        Some(AnyValue { value: Some(any_value::Value::StringValue(s)) })
                            if s.len() >= SPLICED
                    );
                    if large {
                        let kv = span.attributes.remove(at);
                        span.attributes.push(kv);
                    }
                }
            }
            (resource, span)
        })
        .collect();
    let spliced_spans = expected
        .iter()
        .filter(|(_, span)| {
            span.attributes
                .last()
                .is_some_and(|kv| kv.key.ends_with(".body"))
        })
        .count();
    assert!(
        spliced_spans > 100,
        "the fixture has spans with large bodies ({spliced_spans})"
    );

    let mut sizer = Sizer::new(Protocol::HttpProtobuf, BTreeMap::new());
    let mut batch = Batch::new(&sizer, usize::MAX);
    for record in records {
        let pending = PendingSpan::new(Protocol::HttpProtobuf, record);
        assert!(matches!(batch.add(&mut sizer, pending), Added::Yes));
    }
    let estimate = batch.size();
    let sent: Vec<u8> = batch.into_parts(&sizer).concat();
    assert!(estimate >= sent.len(), "{estimate} bounds {}", sent.len());
    let decoded = ExportTraceServiceRequest::decode(sent.as_slice()).expect("a valid request");
    let reference = reference_request(&expected, &BTreeMap::new());
    assert_eq!(decoded.resource_spans.len(), reference.resource_spans.len());
    for (got, want) in decoded.resource_spans.iter().zip(&reference.resource_spans) {
        assert_eq!(got.resource, want.resource);
        let (got, want) = (&got.scope_spans[0].spans, &want.scope_spans[0].spans);
        assert_eq!(got.len(), want.len());
        for (got, want) in got.iter().zip(want) {
            assert!(got == want, "span {} differs", want.name);
        }
    }
}

#[test]
fn an_empty_json_batch_is_an_empty_object() {
    use super::batch::{Batch, Sizer};

    let sizer = Sizer::new(Protocol::HttpJson, BTreeMap::new());
    let batch = Batch::new(&sizer, 1024);
    assert_eq!(batch.into_parts(&sizer).concat(), b"{}");
}
