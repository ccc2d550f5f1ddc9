//! Unit tests of redaction and the capture policy. Every redaction test searches the whole
//! serialized record for each secret and for every 6-byte substring of it.

use serde_json::{Value, json};

use super::*;
use crate::config::Config;
use crate::http::HttpSettings;
use crate::record::{Attributes, SpanKind};

/// The example user document of the APItoolkit guide (the e-mail address made concrete).
const APITOOLKIT_DOC: &str = r#"{
  "user": {
    "name": "John Martha",
    "email": "john.martha@example.com",
    "addresses": [
      {
        "street": "123 Main St",
        "city": "Anytown",
        "state": "CA",
        "zip": "12345"
      },
      {
        "street": "123 Main St",
        "city": "Anytown",
        "state": "CA",
        "zip": "12345"
      }
    ],
    "credit_card": {
      "number": "4111111111111111",
      "expiration": "12/28",
      "cvv": "123"
    }
  }
}"#;

/// A server record of `service` for `method target` with the given extra attributes.
fn record(service: &str, target: &str, extra: &[(&str, AttributeValue)]) -> ExchangeRecord {
    let mut attributes = Attributes::new();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    attributes.insert("http.method".into(), "POST".into());
    attributes.insert("http.target".into(), target.into());
    attributes.insert("url.path".into(), path.into());
    if let Some(q) = query {
        attributes.insert("url.query".into(), q.into());
    }
    for (k, v) in extra {
        attributes.insert((*k).to_owned().into(), v.clone());
    }
    let mut resource = Attributes::new();
    resource.insert("service.name".into(), service.into());
    ExchangeRecord {
        resource,
        name: format!("POST {path}"),
        kind: SpanKind::Server,
        start_time_unix_nano: 0,
        end_time_unix_nano: 0,
        attributes,
    }
}

/// A record with a JSON request body (and its content type).
fn json_request(body: &str) -> ExchangeRecord {
    record(
        "svc",
        "/users",
        &[
            ("http.request.body", body.into()),
            (
                "http.request.header.content-type",
                "application/json".into(),
            ),
        ],
    )
}

/// A policy from configuration text.
fn policy(yaml: &str) -> Policy {
    let (config, warnings) = Config::from_yaml_str(yaml).expect("valid configuration");
    assert!(warnings.is_empty(), "{warnings:?}");
    Policy::from_config(&config)
        .expect("valid policy")
        .with_seed(7)
}

/// Fails if the serialized record holds a secret or any 6-byte substring of one.
#[track_caller]
fn assert_no_secret(record: &ExchangeRecord, secrets: &[&str]) {
    let text = serde_json::to_string(record).expect("serializable record");
    for secret in secrets {
        assert!(!text.contains(secret), "secret {secret:?} found in {text}");
        for window in secret.as_bytes().windows(6) {
            assert!(
                !text.as_bytes().windows(6).any(|w| w == window),
                "part {:?} of secret {secret:?} found in {text}",
                String::from_utf8_lossy(window)
            );
        }
    }
}

/// The request body of a record as JSON.
fn request_json(record: &ExchangeRecord) -> Value {
    serde_json::from_str(record.attr_str("http.request.body").expect("request body"))
        .expect("body is JSON")
}

#[test]
fn apitoolkit_document_under_its_example_paths() {
    let mut p = policy(
        "data_capture:\n  redact_request_body: ['$.user.addresses[*].zip', '$.user.credit_card', '$.user.email']\n",
    );
    let mut r = json_request(APITOOLKIT_DOC);
    assert_eq!(p.process(&mut r), Decision::Export);
    let expected = json!({
        "user": {
            "name": "John Martha",
            "email": "[REDACTED]",
            "addresses": [
                {"street": "123 Main St", "city": "Anytown", "state": "CA", "zip": "[REDACTED]"},
                {"street": "123 Main St", "city": "Anytown", "state": "CA", "zip": "[REDACTED]"}
            ],
            "credit_card": "[REDACTED]"
        }
    });
    assert_eq!(request_json(&r), expected);
    assert_eq!(p.stats.redacted_values, 4);
    assert_no_secret(
        &r,
        &[
            "john.martha@example.com",
            "4111111111111111",
            "12/28",
            "12345",
        ],
    );
    assert!(
        !r.attributes
            .contains_key("http.request.body.redaction_failed")
    );

    // The guide's response example: an e-mail and a whole array.
    let mut p =
        policy("dataCapture:\n  redactResponseBody: ['$.user.email', '$.user.addresses']\n");
    let mut r = record(
        "svc",
        "/me",
        &[
            ("http.response.body", APITOOLKIT_DOC.into()),
            (
                "http.response.header.content-type",
                "application/json; charset=utf-8".into(),
            ),
        ],
    );
    p.process(&mut r);
    let body: Value = serde_json::from_str(r.attr_str("http.response.body").unwrap()).unwrap();
    assert_eq!(body["user"]["email"], "[REDACTED]");
    assert_eq!(body["user"]["addresses"], "[REDACTED]");
    assert_eq!(body["user"]["credit_card"]["number"], "4111111111111111");
    assert_no_secret(&r, &["john.martha@example.com", "12345", "Anytown"]);

    // The guide's request example over a list of users.
    let mut p = policy(
        "data_capture:\n  redact_request_body: ['$.users[*].email', '$.users[*].credit_card']\n",
    );
    let users = json!({"users": [
        {"name": "A", "email": "alice.secret@example.org", "credit_card": {"number": "5555555555554444"}},
        {"name": "B", "email": "bob.secret@example.org", "credit_card": "378282246310005"}
    ]});
    let mut r = json_request(&users.to_string());
    p.process(&mut r);
    assert_eq!(
        request_json(&r),
        json!({"users": [
            {"name": "A", "email": "[REDACTED]", "credit_card": "[REDACTED]"},
            {"name": "B", "email": "[REDACTED]", "credit_card": "[REDACTED]"}
        ]})
    );
    assert_no_secret(
        &r,
        &[
            "alice.secret@example.org",
            "bob.secret@example.org",
            "5555555555554444",
            "378282246310005",
        ],
    );
}

#[test]
fn nested_arrays_and_descendant_paths() {
    let mut p = policy(
        "data_capture:\n  redact_request_body: ['$.orders[*].items[*].card', '$..ssn', '$.matrix[1][0]']\n",
    );
    let doc = json!({
        "orders": [
            {"id": 1, "items": [{"sku": "a", "card": "card-secret-one"}, {"sku": "b", "card": "card-secret-two"}]},
            {"id": 2, "items": [{"sku": "c", "card": "card-secret-three"}]},
            {"id": 3, "items": []}
        ],
        "matrix": [[{"ssn": "ssn-secret-aaa"}], [["deep-secret-x"], {"ssn": "ssn-secret-bbb"}]],
        "deep": {"a": [{"b": [{"ssn": "ssn-secret-ccc"}]}]}
    });
    let mut r = json_request(&doc.to_string());
    p.process(&mut r);
    assert_eq!(
        request_json(&r),
        json!({
            "orders": [
                {"id": 1, "items": [{"sku": "a", "card": "[REDACTED]"}, {"sku": "b", "card": "[REDACTED]"}]},
                {"id": 2, "items": [{"sku": "c", "card": "[REDACTED]"}]},
                {"id": 3, "items": []}
            ],
            "matrix": [[{"ssn": "[REDACTED]"}], ["[REDACTED]", {"ssn": "[REDACTED]"}]],
            "deep": {"a": [{"b": [{"ssn": "[REDACTED]"}]}]}
        })
    );
    assert_no_secret(
        &r,
        &[
            "card-secret-one",
            "card-secret-two",
            "card-secret-three",
            "ssn-secret-aaa",
            "ssn-secret-bbb",
            "ssn-secret-ccc",
            "deep-secret-x",
        ],
    );
    // A document the paths do not touch is exported exactly as sent.
    let untouched = r#"{ "other":  [1, 2, {"x": "y"}] }"#;
    let mut r = json_request(untouched);
    p.process(&mut r);
    assert_eq!(r.attr_str("http.request.body"), Some(untouched));
}

#[test]
fn invalid_json_is_dropped_and_flagged() {
    let mut p = policy("data_capture:\n  redact_request_body: ['$.user.email']\n");
    for body in [
        r#"{"user": {"email": "cut.short.secret@example.com""#,
        "email=cut.short.secret@example.com",
        "\"unterminated cut.short.secret@example.com",
    ] {
        let mut r = json_request(body);
        assert_eq!(p.process(&mut r), Decision::Export);
        assert_eq!(r.attributes.get("http.request.body"), None);
        assert_eq!(
            r.attributes.get("http.request.body.redaction_failed"),
            Some(&AttributeValue::Bool(true))
        );
        assert_no_secret(&r, &["cut.short.secret@example.com"]);
    }
    assert_eq!(p.stats.bodies_redaction_failed, 3);
    // Too deep to parse is invalid too.
    let deep = format!(
        "{}\"deep-nesting-secret\"{}",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let mut r = json_request(&deep);
    p.process(&mut r);
    assert_eq!(r.attributes.get("http.request.body"), None);
    assert_no_secret(&r, &["deep-nesting-secret"]);
    // Without JSONPaths for that direction, a non-JSON body is kept.
    let mut r = record(
        "svc",
        "/x",
        &[
            ("http.response.body", "not json".into()),
            ("http.response.header.content-type", "text/xml".into()),
        ],
    );
    p.process(&mut r);
    assert_eq!(r.attr_str("http.response.body"), Some("not json"));
}

#[test]
fn long_json_body_is_redacted_whole_then_truncated() {
    let mut p = policy(
        "data_capture:\n  body_max_size_bytes: 64\n  body_max_processing_size_bytes: 1048576\n  redact_request_body: ['$.items[*].token', '$.tail']\n",
    );
    let items: Vec<Value> = (0..400)
        .map(|i| json!({"n": i, "token": format!("tok-{i:03}-9f8e7d6c5b4a")}))
        .collect();
    let doc = json!({"head": "hEaD9xQwPz", "items": items, "tail": "tAiL7mNbVc"});
    let text = doc.to_string();
    assert!(text.len() > 10_000);
    // A second policy also redacts the head, which lies inside the first 64 bytes.
    let mut p2 = policy(
        "data_capture:\n  body_max_size_bytes: 64\n  redact_request_body: ['$.items[*].token', '$.tail', '$.head']\n",
    );
    for policy in [&mut p, &mut p2] {
        let mut r = json_request(&text);
        policy.process(&mut r);
        let body = r.attr_str("http.request.body").expect("body kept");
        assert!(body.len() <= 64, "{body}");
        assert_eq!(
            r.attributes.get("http.request.body.truncated"),
            Some(&AttributeValue::Bool(true))
        );
        assert!(
            !r.attributes
                .contains_key("http.request.body.redaction_failed")
        );
        let mut secrets: Vec<String> = (0..400)
            .map(|i| format!("tok-{i:03}-9f8e7d6c5b4a"))
            .collect();
        secrets.push("tAiL7mNbVc".into());
        let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
        assert_no_secret(&r, &secrets);
        assert_eq!(policy.stats.bodies_truncated, 1);
    }
    let mut r = json_request(&text);
    p2.process(&mut r);
    assert_no_secret(&r, &["hEaD9xQwPz"]);

    // A body the parser already cut at the processing limit cannot be redacted: dropped.
    let mut r = json_request(&text[..5000]);
    r.attributes.insert(
        "http.request.body.truncated".into(),
        AttributeValue::Bool(true),
    );
    p.process(&mut r);
    assert_eq!(r.attributes.get("http.request.body"), None);
    assert_eq!(
        r.attributes.get("http.request.body.redaction_failed"),
        Some(&AttributeValue::Bool(true))
    );
    assert_no_secret(&r, &["tok-000-9f8e7d6c5b4a", "hEaD9xQwPz"]);

    // Without rules a long body is only truncated.
    let mut plain = policy("data_capture:\n  body_max_size_bytes: 10\n");
    let mut r = json_request(r#"{"a": "ééééééé"}"#);
    plain.process(&mut r);
    assert_eq!(r.attr_str("http.request.body"), Some(r#"{"a": "é"#));
    assert_eq!(
        r.attributes.get("http.request.body.truncated"),
        Some(&AttributeValue::Bool(true))
    );
}

#[test]
fn form_fields_are_redacted_by_name() {
    let mut p = policy(
        "data_capture:\n  redact_form_fields: [Password, card_number]\n  redact_request_body: ['$.x']\n",
    );
    let mut r = record(
        "svc",
        "/login",
        &[
            (
                "http.request.body",
                "user=bob&password=hUnT3r2pWqZ&Card_Number=4242+4242+4242+4242&note=a+b%21&flag"
                    .into(),
            ),
            (
                "http.request.header.content-type",
                "application/x-www-form-urlencoded".into(),
            ),
        ],
    );
    assert_eq!(p.process(&mut r), Decision::Export);
    assert_eq!(
        r.attr_str("http.request.body"),
        Some("user=bob&password=[REDACTED]&Card_Number=[REDACTED]&note=a+b%21&flag")
    );
    assert_no_secret(&r, &["hUnT3r2pWqZ", "4242+4242+4242+4242"]);
    // Percent-encoded field names are decoded before comparison.
    let mut r = record(
        "svc",
        "/login",
        &[
            ("http.request.body", "pass%77ord=eNc0dEdXyzQ".into()),
            (
                "http.request.header.content-type",
                "application/x-www-form-urlencoded; charset=utf-8".into(),
            ),
        ],
    );
    p.process(&mut r);
    assert_eq!(
        r.attr_str("http.request.body"),
        Some("pass%77ord=[REDACTED]")
    );
    assert_no_secret(&r, &["eNc0dEdXyzQ"]);
}

#[test]
fn query_parameters_are_redacted_in_every_url_attribute() {
    let mut p = policy("data_capture:\n  redact_query_params: [token, API_KEY]\n");
    let mut r = record(
        "svc",
        "/login?user=bob&token=qs-secret-value-1&Api_Key=qs-secret-value-2&empty=#frag",
        &[],
    );
    r.kind = SpanKind::Client;
    let url = "http://api.test/login?token=qs-secret-value-1&x=1";
    r.attributes.insert("http.url".into(), url.into());
    r.attributes.insert("url.full".into(), url.into());
    p.process(&mut r);
    assert_eq!(
        r.attr_str("http.target"),
        Some("/login?user=bob&token=[REDACTED]&Api_Key=[REDACTED]&empty=#frag")
    );
    assert_eq!(
        r.attr_str("url.query"),
        Some("user=bob&token=[REDACTED]&Api_Key=[REDACTED]&empty=#frag")
    );
    assert_eq!(
        r.attr_str("http.url"),
        Some("http://api.test/login?token=[REDACTED]&x=1")
    );
    assert_eq!(r.attr_str("url.full"), r.attr_str("http.url"));
    assert_no_secret(&r, &["qs-secret-value-1", "qs-secret-value-2"]);
}

#[test]
fn card_numbers_luhn_valid_redacted_invalid_kept() {
    assert!(luhn_valid(b"4111111111111111"));
    assert!(luhn_valid(b"378282246310005"));
    assert!(!luhn_valid(b"4111111111111112"));
    let mut p = policy("data_capture:\n  redact_card_numbers: true\n");
    let doc = json!({
        "visa": "4111111111111111",
        "spaced": "pay with 5555 5555 5555 4444 today",
        "dashed": "4012-8888-8888-1881",
        "number": 4_000_056_655_665_556_u64,
        "two": "4111111111111111 5105105105105100",
        "invalid": "4111111111111112",
        "short": "411111111111",
        "timestamp": 1_763_776_800_000_u64,
        "id": "order-4111111111111113"
    });
    let mut r = json_request(&doc.to_string());
    p.process(&mut r);
    let body = request_json(&r);
    assert_eq!(
        body,
        json!({
            "visa": "[REDACTED]",
            "spaced": "pay with [REDACTED] today",
            "dashed": "[REDACTED]",
            "number": "[REDACTED]",
            "two": "[REDACTED] [REDACTED]",
            "invalid": "4111111111111112",
            "short": "411111111111",
            "timestamp": 1_763_776_800_000_u64,
            "id": "order-4111111111111113"
        })
    );
    assert_no_secret(
        &r,
        &[
            "5555 5555 5555 4444",
            "4012-8888-8888-1881",
            "4000056655665556",
            "5105105105105100",
        ],
    );
    // Plain text bodies and query values too.
    let mut r = record(
        "svc",
        "/pay?card=4242424242424242",
        &[
            ("http.request.body", "card: 4242 4242 4242 4242.".into()),
            ("http.request.header.content-type", "text/xml".into()),
        ],
    );
    p.process(&mut r);
    assert_eq!(r.attr_str("http.request.body"), Some("card: [REDACTED]."));
    assert_eq!(r.attr_str("http.target"), Some("/pay?card=[REDACTED]"));
    assert_no_secret(&r, &["4242424242424242", "4242 4242 4242 4242"]);
}

#[test]
fn email_addresses_and_user_patterns() {
    let mut p = policy(
        "data_capture:\n  redact_emails: true\n  redact_patterns: ['\\bSSN-\\d{3}-\\d{2}-\\d{4}\\b', 'sk_live_[0-9a-zA-Z]{8,}']\n",
    );
    let doc = json!({
        "to": "Jane.Doe+billing@mail.example.co.uk",
        "text": "write to ops-team@corp.example or call",
        "ssn": "SSN-123-45-6789",
        "key": "sk_live_AbCdEf123456",
        "plain": "no at sign here @ all"
    });
    let mut r = json_request(&doc.to_string());
    p.process(&mut r);
    assert_eq!(
        request_json(&r),
        json!({
            "to": "[REDACTED]",
            "text": "write to [REDACTED] or call",
            "ssn": "[REDACTED]",
            "key": "[REDACTED]",
            "plain": "no at sign here @ all"
        })
    );
    assert_no_secret(
        &r,
        &[
            "Jane.Doe+billing@mail.example.co.uk",
            "ops-team@corp.example",
            "123-45-6789",
            "AbCdEf123456",
        ],
    );
    // Form values are decoded first: %40 is an @.
    let mut r = record(
        "svc",
        "/sub?email=someone.hidden%40example.net&x=1",
        &[
            (
                "http.request.body",
                "email=other.hidden%40example.net".into(),
            ),
            (
                "http.request.header.content-type",
                "application/x-www-form-urlencoded".into(),
            ),
        ],
    );
    p.process(&mut r);
    assert_eq!(r.attr_str("url.query"), Some("email=[REDACTED]&x=1"));
    assert_eq!(r.attr_str("http.request.body"), Some("email=[REDACTED]"));
    assert_no_secret(&r, &["someone.hidden", "other.hidden", "hidden%40example"]);
}

#[test]
fn headers_are_redacted_case_insensitively_and_defaults_are_removable() {
    let mut r = record(
        "svc",
        "/",
        &[
            (
                "http.request.header.authorization",
                "Bearer Zq81xLkBearer".into(),
            ),
            ("http.response.header.set-cookie", "sid=Vb93mPwSid".into()),
            ("http.request.header.x-custom-token", "Ju47rNcTok".into()),
            ("http.request.header.accept", "*/*".into()),
        ],
    );
    let mut p =
        policy("data_capture:\n  redact_headers: [Authorization, Set-Cookie, X-Custom-Token]\n");
    p.process(&mut r);
    assert_eq!(
        r.attr_str("http.request.header.authorization"),
        Some(REDACTED)
    );
    assert_eq!(
        r.attr_str("http.request.header.x-custom-token"),
        Some(REDACTED)
    );
    assert_eq!(r.attr_str("http.request.header.accept"), Some("*/*"));
    assert_no_secret(&r, &["Zq81xLkBearer", "Vb93mPwSid", "Ju47rNcTok"]);
    // Removing a default entry: cookie is no longer in the list.
    let mut p = policy("data_capture:\n  redact_headers: [authorization]\n");
    let mut r = record(
        "svc",
        "/",
        &[("http.request.header.cookie", "visible=1".into())],
    );
    p.process(&mut r);
    assert_eq!(r.attr_str("http.request.header.cookie"), Some("visible=1"));
    // The old constructor still works.
    let mut r = record(
        "svc",
        "/",
        &[("http.request.header.x-api-key", "k-secret-42".into())],
    );
    Redactor::default().apply(&mut r);
    assert_no_secret(&r, &["k-secret-42"]);
}

#[test]
fn capture_switches_remove_headers_and_bodies() {
    let mut p = policy(
        "data_capture:\n  http_headers: {request: false, response: true}\n  http_body: {request: true, response: false}\n",
    );
    let mut r = record(
        "svc",
        "/",
        &[
            (
                "http.request.header.content-type",
                "application/json".into(),
            ),
            ("http.request.header.x-a", "1".into()),
            ("http.response.header.x-b", "2".into()),
            ("http.request.body", "{}".into()),
            ("http.response.body", "{\"r\": 1}".into()),
            ("http.response.body.truncated", true.into()),
        ],
    );
    p.process(&mut r);
    assert!(
        !r.attributes
            .keys()
            .any(|k| k.starts_with("http.request.header."))
    );
    assert_eq!(r.attr_str("http.response.header.x-b"), Some("2"));
    assert_eq!(r.attr_str("http.request.body"), Some("{}"));
    assert!(
        !r.attributes
            .keys()
            .any(|k| k.starts_with("http.response.body"))
    );
    // A content type the service does not allow loses its body.
    let mut p = policy("data_capture:\n  allowed_content_types: [application/json]\n");
    let mut r = record(
        "svc",
        "/",
        &[
            ("http.request.header.content-type", "text/xml".into()),
            ("http.request.body", "<a/>".into()),
        ],
    );
    p.process(&mut r);
    assert_eq!(r.attributes.get("http.request.body"), None);
    assert_eq!(p.stats.bodies_not_captured, 1);
    // Without Content-Type a body is kept only by a list allowing every type.
    for (list, kept) in [("[application/json]", false), ("[]", true)] {
        let mut p = policy(&format!("data_capture:\n  allowed_content_types: {list}\n"));
        let mut r = record("svc", "/", &[("http.request.body", "raw".into())]);
        p.process(&mut r);
        assert_eq!(
            r.attributes.contains_key("http.request.body"),
            kept,
            "{list}"
        );
    }
}

/// A body the overload policy shed is flagged only where the service would have recorded it.
#[test]
fn shed_flags_follow_the_services_capture_settings() {
    let mut p =
        policy("data_capture:\n  service_overrides:\n    quiet: {http_body: {response: false}}\n");
    let flags = [
        (
            "http.request.header.content-type",
            "application/json".into(),
        ),
        (
            "http.response.header.content-type",
            "application/json".into(),
        ),
        ("http.request.body.shed", true.into()),
        ("http.response.body.shed", true.into()),
    ];
    let mut r = record("quiet", "/", &flags);
    p.process(&mut r);
    assert_eq!(
        r.attributes.get("http.request.body.shed"),
        Some(&AttributeValue::Bool(true))
    );
    assert_eq!(r.attributes.get("http.response.body.shed"), None);
    assert_eq!(p.stats.bodies_not_captured, 0, "no body was removed");
    let mut r = record("other", "/", &flags);
    p.process(&mut r);
    assert!(r.attributes.contains_key("http.response.body.shed"));
}

#[test]
fn per_service_overrides_apply_over_global_settings() {
    let yaml = "\
data_capture:
  redact_request_body: ['$.password']
  redact_headers: [authorization]
  service_overrides:
    payments:
      redactRequestBody: ['$.password', '$.card']
      httpHeaders: {response: false}
      excludePaths: [/internal]
    public-api:
      redact_request_body: []
      sampling_ratio: 0
";
    let mut p = policy(yaml);
    let body = r#"{"password": "pw-secret-123", "card": "card-secret-456"}"#;

    let mut r = json_request(body);
    r.resource.insert("service.name".into(), "payments".into());
    r.attributes
        .insert("http.response.header.x-r".into(), "1".into());
    assert_eq!(p.process(&mut r), Decision::Export);
    assert_eq!(
        request_json(&r),
        json!({"password": REDACTED, "card": REDACTED})
    );
    assert_eq!(r.attributes.get("http.response.header.x-r"), None);
    assert_no_secret(&r, &["pw-secret-123", "card-secret-456"]);
    let mut r = record("payments", "/internal/x", &[]);
    assert_eq!(p.process(&mut r), Decision::Excluded);

    // Other services get the global rules.
    let mut r = json_request(body);
    r.attributes
        .insert("http.response.header.x-r".into(), "1".into());
    p.process(&mut r);
    assert_eq!(
        request_json(&r),
        json!({"password": REDACTED, "card": "card-secret-456"})
    );
    assert_eq!(r.attr_str("http.response.header.x-r"), Some("1"));
    let mut r = record("svc", "/internal/x", &[]);
    assert_eq!(p.process(&mut r), Decision::Export);

    // public-api: no body paths, nothing sampled but errors.
    let mut r = json_request(body);
    r.resource
        .insert("service.name".into(), "public-api".into());
    assert_eq!(p.process(&mut r), Decision::SampledOut);
    let mut r = json_request(body);
    r.resource
        .insert("service.name".into(), "public-api".into());
    r.attributes.insert("http.status_code".into(), 503.into());
    assert_eq!(p.process(&mut r), Decision::Export);
    assert_eq!(r.attr_str("http.request.body"), Some(body));
}

#[test]
fn path_exclusions_prefix_and_glob() {
    let mut p = policy(
        "data_capture:\n  exclude_paths: [/health, /metrics/, '/internal/*/debug', '/static/**.map', '/v?/ping']\n",
    );
    let cases = [
        ("/health", true),
        ("/health/live", true),
        ("/healthz", false),
        ("/metrics", true),
        ("/metrics/x", true),
        ("/internal/a/debug", true),
        ("/internal/a/b/debug", false),
        ("/static/js/app.js.map", true),
        ("/static/js/app.js", false),
        ("/v1/ping", true),
        ("/v12/ping", false),
        ("/api/health", false),
    ];
    for (path, excluded) in cases {
        let mut r = record("svc", &format!("{path}?q=1"), &[]);
        let expected = if excluded {
            Decision::Excluded
        } else {
            Decision::Export
        };
        assert_eq!(p.process(&mut r), expected, "{path}");
    }
    assert_eq!(p.stats.excluded, 7);
    assert_eq!(p.stats.exported, 5);
}

#[test]
fn sampling_keeps_the_ratio_and_every_error() {
    let mut p = policy("data_capture:\n  sampling_ratio: 0.25\n");
    let mut kept = 0;
    for _ in 0..4000 {
        let mut r = record("svc", "/items", &[("http.status_code", 200.into())]);
        if p.process(&mut r) == Decision::Export {
            kept += 1;
        }
    }
    assert!((800..1200).contains(&kept), "{kept} of 4000 kept at 0.25");
    assert_eq!(p.stats.sampled_in, kept);
    assert_eq!(p.stats.sampled_out, 4000 - kept);

    let mut p = policy("data_capture:\n  sampling_ratio: 0\n");
    let cases = [
        (SpanKind::Server, Some(200), false),
        (SpanKind::Server, Some(404), false),
        (SpanKind::Server, Some(500), true),
        (SpanKind::Server, Some(503), true),
        (SpanKind::Client, Some(404), true),
        (SpanKind::Client, Some(302), false),
        (SpanKind::Client, Some(502), true),
        (SpanKind::Server, None, false),
    ];
    for (kind, status, kept) in cases {
        let mut r = record("svc", "/x", &[]);
        r.kind = kind;
        if let Some(status) = status {
            r.attributes
                .insert("http.status_code".into(), status.into());
        }
        let expected = if kept {
            Decision::Export
        } else {
            Decision::SampledOut
        };
        assert_eq!(p.process(&mut r), expected, "{kind:?} {status:?}");
    }
    assert_eq!(p.stats.errors_kept, 4);
    assert_eq!(p.stats.sampled_out, 4);
}

#[test]
fn parser_settings_cover_every_service() {
    let (config, _) = Config::from_yaml_str(
        "\
data_capture:
  body_max_size_bytes: 100
  body_max_processing_size_bytes: 1000
  http_headers: {request: false}
  http_body: {request: false, response: false}
  allowed_content_types: [application/json]
  service_overrides:
    big:
      body_max_processing_size_bytes: 5000
      http_body: {response: true}
      allowed_content_types: [text/plain]
",
    )
    .unwrap();
    let http = parser_settings(&config, HttpSettings::default());
    // No body rules: bodies are cut at the largest capture size.
    assert_eq!(http.body_max_size, 100);
    assert!(http.capture_request_headers && http.capture_response_headers);
    assert!(!http.capture_request_body);
    assert!(http.capture_response_body);
    assert_eq!(
        http.allowed_content_types,
        ["application/json", "text/plain"]
    );
    // Body rules in one service: bodies are kept whole up to the largest processing size.
    let mut config = config;
    config
        .data_capture
        .service_overrides
        .get_mut("big")
        .unwrap()
        .settings
        .push(("data_capture.redact_emails", serde_yaml::Value::Bool(true)));
    assert_eq!(
        parser_settings(&config, HttpSettings::default()).body_max_size,
        5000
    );
}

#[test]
fn a_service_allowing_every_type_makes_the_parser_keep_every_type() {
    let (config, _) = Config::from_yaml_str(
        "\
data_capture:
  allowed_content_types: [json]
  service_overrides:
    raw:
      allowed_content_types: []
",
    )
    .unwrap();
    let http = parser_settings(&config, HttpSettings::default());
    assert!(http.allowed_content_types.is_empty());
    assert!(crate::http::content_type_allowed(
        &http.allowed_content_types,
        b"text/plain"
    ));
}

#[test]
fn reload_needs_restart_only_when_the_parser_would_keep_more() {
    let have = HttpSettings::default();
    let with_types = |types: &[&str]| HttpSettings {
        allowed_content_types: types.iter().map(|t| (*t).to_owned()).collect(),
        ..HttpSettings::default()
    };
    assert!(!parser_needs_restart(&have, &have));
    assert!(!parser_needs_restart(
        &with_types(&["application/json", "application/problem+json"]),
        &have
    ));
    assert!(!parser_needs_restart(
        &with_types(&["application/json"]),
        &with_types(&["JSON"])
    ));
    assert!(parser_needs_restart(
        &with_types(&["json"]),
        &with_types(&["application/json"])
    ));
    assert!(parser_needs_restart(&with_types(&["text/plain"]), &have));
    assert!(parser_needs_restart(&with_types(&[]), &have));
    assert!(!parser_needs_restart(
        &with_types(&["text/plain"]),
        &with_types(&[])
    ));
    let bigger = HttpSettings {
        body_max_size: have.body_max_size + 1,
        ..HttpSettings::default()
    };
    assert!(parser_needs_restart(&bigger, &have));
    assert!(!parser_needs_restart(&have, &bigger));
    let no_bodies = HttpSettings {
        capture_request_body: false,
        capture_response_body: false,
        ..HttpSettings::default()
    };
    assert!(parser_needs_restart(&have, &no_bodies));
    assert!(!parser_needs_restart(&no_bodies, &have));
}

#[test]
fn reload_replaces_rules_and_keeps_counters() {
    let mut p = policy("data_capture:\n  exclude_paths: [/a]\n");
    let mut r = record("svc", "/a", &[]);
    assert_eq!(p.process(&mut r), Decision::Excluded);
    p.replace_rules(policy("data_capture:\n  exclude_paths: [/b]\n"));
    let mut r = record("svc", "/a", &[]);
    assert_eq!(p.process(&mut r), Decision::Export);
    assert_eq!(p.stats.excluded, 1);
    assert_eq!(p.stats.exported, 1);
}

#[test]
fn bodies_of_exchanges_with_lost_bytes_are_dropped_when_rules_apply() {
    let mut p = policy("data_capture:\n  redact_emails: true\n");
    let mut r = record(
        "svc",
        "/x",
        &[
            ("http.request.body", "mail: gap.Yt62Rw@exam".into()),
            ("http.request.header.content-type", "text/xml".into()),
            ("sensor.incomplete", true.into()),
        ],
    );
    p.process(&mut r);
    assert_eq!(r.attributes.get("http.request.body"), None);
    assert_eq!(
        r.attributes.get("http.request.body.redaction_failed"),
        Some(&AttributeValue::Bool(true))
    );
    assert_no_secret(&r, &["gap.Yt62Rw@exam"]);
    // Without body rules the body stays as captured.
    let mut p = policy("data_capture:\n  redact_query_params: [a]\n");
    let mut r = record(
        "svc",
        "/x",
        &[
            ("http.request.body", "partial".into()),
            ("http.request.header.content-type", "text/xml".into()),
            ("sensor.incomplete", true.into()),
        ],
    );
    p.process(&mut r);
    assert_eq!(r.attr_str("http.request.body"), Some("partial"));
}
