//! Redaction cost per exchange: the policy stage (capture switches and redaction) applied to
//! one server exchange whose request and response both carry a JSON body of 1 KB or 100 KB,
//! with no redaction rule (the baseline), with the default header rules, and with the default
//! header rules plus JSONPaths and card-number and e-mail patterns. Prints CPU µs per exchange
//! (the record clone is in every column; the last one is full minus baseline). Run by
//! `cargo xtask bench`; takes a few seconds.

use std::time::Duration;

use sensor::config::Config;
use sensor::record::{AttributeValue, Attributes, ExchangeRecord, SpanKind};
use sensor::redact::Policy;

mod common;
use common::thread_cpu;

/// CPU time each configuration is measured for, per body size.
const MEASURE: Duration = Duration::from_millis(300);

/// No redaction rule at all.
const BASELINE: &str = "data_capture:\n  redact_headers: []\n";
/// The default rules: header values only.
const HEADERS: &str = "data_capture: {}\n";
/// The default header rules, JSONPaths on both bodies, card numbers and e-mail addresses.
const FULL: &str = "\
data_capture:
  redact_request_body: ['$.user.password', '$.user.credit_card', '$.items[*].email']
  redact_response_body: ['$.user.password', '$.items[*].email']
  redact_card_numbers: true
  redact_emails: true
";

/// A JSON document of about `size` bytes: a user with secrets, then items, every tenth with
/// an e-mail address.
fn json_body(size: usize) -> String {
    let mut body = String::from(
        r#"{"user": {"name": "John Martha", "password": "pw-Hx83Kq1Lz", "credit_card": {"number": "4111111111111111", "cvv": "123"}, "note": "card 4012 8888 8888 1881 on file"}, "items": ["#,
    );
    let mut n = 0;
    while body.len() + 80 < size {
        if n > 0 {
            body.push_str(", ");
        }
        if n % 10 == 0 {
            body.push_str(&format!(
                r#"{{"id": {n}, "name": "widget-{n}", "email": "buyer.{n}@example.com"}}"#
            ));
        } else {
            body.push_str(&format!(r#"{{"id": {n}, "name": "widget-{n}", "qty": 3}}"#));
        }
        n += 1;
    }
    body.push_str("]}");
    while body.len() < size {
        body.insert(body.len() - 2, ' ');
    }
    body
}

/// A server exchange with headers and JSON request and response bodies of `size` bytes.
fn exchange(size: usize) -> ExchangeRecord {
    let body = json_body(size);
    let mut attributes = Attributes::new();
    let mut put = |key: &'static str, value: AttributeValue| {
        attributes.insert(key.into(), value);
    };
    put("http.method", "POST".into());
    put("http.target", "/api/orders?id=42".into());
    put("url.path", "/api/orders".into());
    put("url.query", "id=42".into());
    put("http.status_code", AttributeValue::Int(200));
    put("http.request.header.host", "orders:8000".into());
    put(
        "http.request.header.authorization",
        "Bearer az-Rt98Yu76".into(),
    );
    put("http.request.header.cookie", "sid=ck-Zx81QwEr".into());
    put(
        "http.request.header.content-type",
        "application/json".into(),
    );
    put("http.request.header.user-agent", "bench".into());
    put(
        "http.response.header.content-type",
        "application/json".into(),
    );
    put("http.request.body", body.clone().into());
    put("http.response.body", body.into());
    let mut resource = Attributes::new();
    resource.insert("service.name".into(), "orders".into());
    ExchangeRecord {
        resource,
        name: "POST /api/orders".into(),
        kind: SpanKind::Server,
        start_time_unix_nano: 0,
        end_time_unix_nano: 0,
        attributes,
    }
}

fn policy(yaml: &str) -> Policy {
    let (config, _) = Config::from_yaml_str(yaml).expect("valid configuration");
    Policy::from_config(&config)
        .expect("valid policy")
        .with_seed(1)
}

/// CPU µs per exchange: clone the record and run the policy on it, repeated for [`MEASURE`]
/// of CPU time.
fn measure(yaml: &str, record: &ExchangeRecord) -> f64 {
    let mut policy = policy(yaml);
    for _ in 0..3 {
        policy.process(&mut record.clone());
    }
    let started = thread_cpu();
    let mut runs = 0u64;
    while thread_cpu() - started < MEASURE {
        let mut copy = record.clone();
        policy.process(&mut copy);
        std::hint::black_box(&copy);
        runs += 1;
    }
    (thread_cpu() - started).as_secs_f64() * 1e6 / runs as f64
}

fn main() {
    println!(
        "{:<12} {:>12} {:>12} {:>12} {:>14}",
        "JSON bodies", "baseline µs", "headers µs", "full µs", "redaction µs"
    );
    for (name, size) in [("1 KB", 1024), ("100 KB", 100 * 1024)] {
        let record = exchange(size);
        let mut redacted = record.clone();
        policy(FULL).process(&mut redacted);
        let text = serde_json::to_string(&redacted).expect("serializable");
        for secret in [
            "pw-Hx83Kq1Lz",
            "4111111111111111",
            "buyer.0@",
            "az-Rt98Yu76",
        ] {
            assert!(!text.contains(secret), "{name}: {secret} not redacted");
        }
        let baseline = measure(BASELINE, &record);
        let headers = measure(HEADERS, &record);
        let full = measure(FULL, &record);
        println!(
            "{:<12} {:>12.1} {:>12.1} {:>12.1} {:>14.1}",
            name,
            baseline,
            headers,
            full,
            full - baseline
        );
    }
}
