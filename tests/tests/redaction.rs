//! End to end: redaction and capture policy through a real Flask service. Every secret the
//! client and the app exchange is searched for — whole and as every 6-byte substring — in the
//! sensor's JSONL output and in its log; a SIGHUP swaps the policy on the running sensor.
//! `sensor trace --payload` applies the same rules to the raw chunks it prints.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    time::Duration,
};

use sensor_e2e::{Py, Sensor, attr, records_of, scratch_dir, trace};
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(30);

/// Secrets that must never leave the host.
const EMAIL: &str = "jm.Pv3Wq.K4@example.com";
const CARD: &str = "4111111111111111";
const ZIP: &str = "Z1P-90-AB";
const EXPIRY: &str = "exp-12/28";
const PASSWORD: &str = "pw-Hx83Kq1Lz";
const QUERY_TOKEN: &str = "qtok-Ab12Cd34Ef";
const HEADER_SECRET: &str = "hdr-Mn45Op67";
const BEARER: &str = "az-Rt98Yu76";
const HEALTH: &str = "hlth-Sk29Wq";
const CONTACT: &str = "support.desk.Q7@example.org";
const FREE_CARD: &str = "4012 8888 8888 1881";
const BIG_TAIL: &str = "tail-Gh56Jk";
const LATE_NAME: &str = "Nm-Jk12Lm34";

/// The APItoolkit guide's example user document, with this test's secrets.
fn user_document(name: &str, padding: usize) -> String {
    json!({
        "user": {
            "name": name,
            "bio": "x".repeat(padding),
            "email": EMAIL,
            "addresses": [
                {"street": "123 Main St", "city": "Anytown", "state": "CA", "zip": ZIP},
                {"street": "123 Main St", "city": "Anytown", "state": "CA", "zip": ZIP}
            ],
            "credit_card": {"number": CARD, "expiration": EXPIRY, "cvv": "123"}
        }
    })
    .to_string()
}

const CONFIG: &str = "\
data_capture:
  body_max_size_bytes: 256
  redact_headers: [authorization, x-secret-header]
  redact_request_body: ['$.user.addresses[*].zip', '$.user.credit_card', '$.user.email']
  redact_response_body: ['$.user.email', '$.user.addresses', '$.user.credit_card', '$.items[*].token', '$.tail']
  redact_query_params: [token]
  redact_form_fields: [password]
  redact_card_numbers: true
  redact_emails: true
  exclude_paths: [/health]
";

/// The configuration after the reload: the name is redacted too, /search is excluded.
const RELOADED: &str = "\
data_capture:
  body_max_size_bytes: 256
  redact_headers: [authorization, x-secret-header]
  redact_request_body: ['$.user.addresses[*].zip', '$.user.credit_card', '$.user.email', '$.user.name']
  redact_response_body: ['$.user.email', '$.user.addresses', '$.user.credit_card', '$.user.name']
  redact_query_params: [token]
  redact_form_fields: [password]
  redact_card_numbers: true
  redact_emails: true
  exclude_paths: [/health, /search]
";

/// One HTTP/1.1 request on a fresh connection; returns the status.
fn request(port: u16, method: &str, target: &str, headers: &[(&str, &str)], body: &str) -> u16 {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the app");
    stream.set_read_timeout(Some(LONG)).unwrap();
    let mut head = format!(
        "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body.as_bytes()).unwrap();
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the response");
    response
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"))
}

/// Fails if `text` (named `what`) holds any secret or any 6-byte substring of one.
#[track_caller]
fn assert_no_secret(what: &str, text: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(
            !text.contains(secret),
            "secret {secret:?} found in {what}:\n{text}"
        );
        for window in secret.as_bytes().windows(6) {
            assert!(
                !text.as_bytes().windows(6).any(|w| w == window),
                "part {:?} of secret {secret:?} found in {what}:\n{text}",
                String::from_utf8_lossy(window)
            );
        }
    }
}

#[test]
fn flask_redaction_policy_and_reload() {
    let dir = scratch_dir("redaction");
    let config = dir.join("sensor.yaml");
    std::fs::write(&config, CONFIG).unwrap();
    let server = Py::spawn(
        "redaction_app",
        &["redaction_app.py"],
        &[("HT_SERVICE_NAME", "redaction-app")],
    );
    let port: u16 = server.expect_line("READY", LONG).parse().unwrap();
    let sensor = Sensor::start(
        "redaction",
        &[
            "run",
            "--pid",
            &server.pid().to_string(),
            "--output",
            "jsonl",
            "--config",
            config.to_str().unwrap(),
        ],
    );

    let json_type = ("Content-Type", "application/json");
    let doc = user_document("John Martha", 0);
    assert_eq!(
        request(
            port,
            "POST",
            "/users",
            &[
                json_type,
                ("Authorization", &format!("Bearer {BEARER}")),
                ("X-Secret-Header", HEADER_SECRET)
            ],
            &doc,
        ),
        200
    );
    // Longer than the 256-byte capture limit: redacted whole, then truncated.
    let long_doc = user_document("Long Doc", 2000);
    assert_eq!(
        request(port, "POST", "/users", &[json_type], &long_doc),
        200
    );
    assert_eq!(
        request(
            port,
            "POST",
            "/login",
            &[("Content-Type", "application/x-www-form-urlencoded")],
            &format!("user=bob&password={PASSWORD}"),
        ),
        200
    );
    assert_eq!(
        request(
            port,
            "GET",
            &format!("/search?q=shoes&token={QUERY_TOKEN}"),
            &[],
            ""
        ),
        200
    );
    assert_eq!(request(port, "GET", "/health", &[], ""), 200);
    assert_eq!(request(port, "GET", "/big?n=400", &[], ""), 200);
    assert_eq!(request(port, "GET", "/fail", &[], ""), 500);

    // SIGHUP with a new policy: the sensor keeps running and applies it to new exchanges.
    std::thread::sleep(Duration::from_millis(1000));
    std::fs::write(&config, RELOADED).unwrap();
    // SAFETY: plain kill(2) on the sensor we started.
    unsafe {
        libc::kill(sensor.pid() as i32, libc::SIGHUP);
    }
    std::thread::sleep(Duration::from_millis(1500));
    let late = user_document(LATE_NAME, 0);
    assert_eq!(request(port, "POST", "/users", &[json_type], &late), 200);
    assert_eq!(request(port, "GET", "/search?q=late", &[], ""), 200);
    std::thread::sleep(Duration::from_millis(1000));

    let output = sensor.stop();
    let records = output.records();
    let servers = records_of(&records, "server", server.pid());
    let by_target = |target: &str| -> Vec<&Value> {
        servers
            .iter()
            .copied()
            .filter(|r| attr(r, "url.path") == target)
            .collect()
    };

    let users = by_target("/users");
    assert_eq!(users.len(), 3, "{records:#?}");
    let first = users[0];
    let request_body: Value =
        serde_json::from_str(attr(first, "http.request.body").as_str().unwrap()).unwrap();
    assert_eq!(
        request_body,
        json!({"user": {
            "name": "John Martha", "bio": "", "email": "[REDACTED]",
            "addresses": [
                {"street": "123 Main St", "city": "Anytown", "state": "CA", "zip": "[REDACTED]"},
                {"street": "123 Main St", "city": "Anytown", "state": "CA", "zip": "[REDACTED]"}
            ],
            "credit_card": "[REDACTED]"
        }})
    );
    let response_body: Value =
        serde_json::from_str(attr(first, "http.response.body").as_str().unwrap()).unwrap();
    assert_eq!(response_body["user"]["addresses"], "[REDACTED]");
    assert_eq!(response_body["user"]["email"], "[REDACTED]");
    assert_eq!(
        attr(first, "http.request.header.authorization"),
        "[REDACTED]"
    );
    assert_eq!(
        attr(first, "http.request.header.x-secret-header"),
        "[REDACTED]"
    );

    let long = users[1];
    let body = attr(long, "http.request.body").as_str().unwrap();
    assert!(body.len() <= 256, "{body}");
    assert_eq!(attr(long, "http.request.body.truncated"), true);
    assert_eq!(attr(long, "http.response.body.truncated"), true);

    let late = users[2];
    let body = attr(late, "http.request.body").as_str().unwrap();
    let late_json: Value = serde_json::from_str(body).unwrap();
    assert_eq!(late_json["user"]["name"], "[REDACTED]", "reloaded policy");

    let login = by_target("/login");
    assert_eq!(login.len(), 1, "{records:#?}");
    assert_eq!(
        attr(login[0], "http.request.body"),
        "user=bob&password=[REDACTED]"
    );

    let search = by_target("/search");
    assert_eq!(
        search.len(),
        1,
        "/search is excluded after the reload: {records:#?}"
    );
    assert_eq!(
        attr(search[0], "http.target"),
        "/search?q=shoes&token=[REDACTED]"
    );
    let search_body: Value =
        serde_json::from_str(attr(search[0], "http.response.body").as_str().unwrap()).unwrap();
    assert_eq!(search_body["contact"], "[REDACTED]");
    assert_eq!(search_body["note"], "card [REDACTED] on file");

    assert!(by_target("/health").is_empty(), "/health is excluded");
    let big = by_target("/big");
    assert_eq!(big.len(), 1);
    assert_eq!(attr(big[0], "http.response.body.truncated"), true);
    assert_eq!(by_target("/fail").len(), 1);

    let secrets = [
        EMAIL,
        CARD,
        ZIP,
        EXPIRY,
        PASSWORD,
        QUERY_TOKEN,
        HEADER_SECRET,
        BEARER,
        HEALTH,
        CONTACT,
        FREE_CARD,
        BIG_TAIL,
        LATE_NAME,
        "tkn-0399-Xy7Qp",
    ];
    assert_no_secret("the JSONL output", &output.stdout, &secrets);
    assert_no_secret("the sensor's log", &output.stderr, &secrets);
    assert!(
        output.stderr.contains("policy reloaded"),
        "the reload is logged: {}",
        output.stderr
    );
}

/// A request written in pieces, each cut inside a secret, with a pause between them so the
/// server reads each piece in its own syscall; returns the status.
fn request_in_pieces(port: u16, pieces: &[&str]) -> u16 {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the app");
    stream.set_read_timeout(Some(LONG)).unwrap();
    stream.set_nodelay(true).unwrap();
    for piece in pieces {
        stream.write_all(piece.as_bytes()).unwrap();
        stream.flush().unwrap();
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the response");
    response
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"))
}

/// `sensor trace --payload` redacts what it prints with the configured rules: an
/// Authorization header, a JSONPath-selected body value and a card number never appear — not
/// even when a secret is cut across two captured chunks — while the rest of the traffic does.
#[test]
fn trace_payloads_are_redacted() {
    let dir = scratch_dir("trace-redaction");
    let config = dir.join("sensor.yaml");
    std::fs::write(
        &config,
        "\
data_capture:
  redact_headers: [authorization]
  redact_request_body: ['$.user.password']
  redact_response_body: ['$.user.password']
  redact_card_numbers: true
",
    )
    .unwrap();
    let server = Py::spawn("redaction_app", &["redaction_app.py"], &[]);
    let port: u16 = server.expect_line("READY", LONG).parse().unwrap();
    let sensor = Sensor::start(
        "trace-redaction",
        &[
            "trace",
            "--pid",
            &server.pid().to_string(),
            "--payload",
            "--payload-bytes",
            "100000",
            "--config",
            config.to_str().unwrap(),
        ],
    );

    let body = json!({
        "user": {"name": "Trace Tester", "password": PASSWORD},
        "note": format!("card {CARD} on file"),
    })
    .to_string();
    let head = format!(
        "POST /users HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Type: application/json\r\nAuthorization: Bearer {BEARER}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let message = format!("{head}{body}");
    // Cut inside the bearer token and inside the password.
    let cut_bearer = message.find(BEARER).unwrap() + BEARER.len() / 2;
    let cut_password = message.find(PASSWORD).unwrap() + PASSWORD.len() / 2;
    let pieces = [
        &message[..cut_bearer],
        &message[cut_bearer..cut_password],
        &message[cut_password..],
    ];
    assert_eq!(request_in_pieces(port, &pieces), 200);
    std::thread::sleep(Duration::from_millis(1000));
    let output = sensor.stop();

    let lines: Vec<trace::TraceLine> = output
        .stdout
        .lines()
        .filter_map(trace::parse_line)
        .collect();
    let shown = |dir: &str| -> String {
        lines
            .iter()
            .filter(|l| l.pid == server.pid() && l.dir == dir)
            .map(|l| String::from_utf8_lossy(&l.payload).into_owned())
            .collect()
    };
    let (received, sent) = (shown("in"), shown("out"));
    let pieces_seen = lines
        .iter()
        .filter(|l| l.dir == "in" && !l.payload.is_empty())
        .count();
    assert!(
        pieces_seen >= 3,
        "the request arrived in several chunks: {}",
        output.stdout
    );
    assert!(
        received.contains("POST /users HTTP/1.1\r\n") && received.contains("Trace Tester"),
        "the request is shown: {received}"
    );
    assert!(received.contains("Authorization:[REDACTED]"), "{received}");
    assert!(received.contains("\"password\":[REDACTED]"), "{received}");
    assert!(received.contains("card [REDACTED] on file"), "{received}");
    assert!(
        sent.contains(" 200 OK\r\n") && sent.contains("Trace Tester"),
        "the echoed response is shown: {sent}"
    );
    let secrets = [BEARER, PASSWORD, CARD];
    assert_no_secret("the trace output", &output.stdout, &secrets);
    assert_no_secret("the sensor's log", &output.stderr, &secrets);
}

/// `allowed_content_types` entries are substrings of the Content-Type, ignoring case, and an
/// empty list keeps every body: two services under one sensor, one with the base list, one
/// with an empty list in its service override. Each body is either exported exactly, in both
/// directions, or not at all; a request without a body gets no empty one.
#[test]
fn allowed_content_types_are_substrings_and_empty_allows_every_type() {
    let dir = scratch_dir("content-types");
    let config = dir.join("sensor.yaml");
    std::fs::write(
        &config,
        "\
data_capture:
  allowed_content_types: [json, Text/Plain]
  service_overrides:
    raw:
      allowed_content_types: []
",
    )
    .unwrap();
    let typed = Py::spawn(
        "content_types_typed",
        &["redaction_app.py"],
        &[("HT_SERVICE_NAME", "typed")],
    );
    let raw = Py::spawn(
        "content_types_raw",
        &["redaction_app.py"],
        &[("HT_SERVICE_NAME", "raw")],
    );
    let typed_port: u16 = typed.expect_line("READY", LONG).parse().unwrap();
    let raw_port: u16 = raw.expect_line("READY", LONG).parse().unwrap();
    let sensor = Sensor::start(
        "content-types",
        &[
            "run",
            "--pid",
            &typed.pid().to_string(),
            "--pid",
            &raw.pid().to_string(),
            "--output",
            "jsonl",
            "--config",
            config.to_str().unwrap(),
        ],
    );

    // (case, Content-Type, body, kept for "typed"); "raw" keeps every one.
    let cases: &[(&str, Option<&str>, &str, bool)] = &[
        (
            "vnd",
            Some("application/vnd.api+json; charset=utf-8"),
            r#"{"a":1}"#,
            true,
        ),
        (
            "ndjson",
            Some("application/x-ndjson"),
            "{\"n\":1}\n{\"n\":2}\n",
            true,
        ),
        (
            "plain",
            Some("text/plain; charset=utf-8"),
            "plain words",
            true,
        ),
        (
            "octets",
            Some("application/octet-stream"),
            "octets-Q1",
            false,
        ),
        ("untyped", None, "untyped-Z9", false),
    ];
    for port in [typed_port, raw_port] {
        for (case, content_type, body) in cases.iter().map(|c| (c.0, c.1, c.2)) {
            let headers: Vec<(&str, &str)> = content_type
                .map(|ct| ("Content-Type", ct))
                .into_iter()
                .collect();
            let target = format!("/typed?case={case}");
            assert_eq!(request(port, "POST", &target, &headers, body), 200);
        }
        // A request without a body: no (empty) request body, whatever the list.
        assert_eq!(request(port, "GET", "/health", &[], ""), 200);
    }
    std::thread::sleep(Duration::from_millis(1000));

    let output = sensor.stop();
    let records = output.records();
    for (service, pid, keeps_all) in [("typed", typed.pid(), false), ("raw", raw.pid(), true)] {
        let servers = records_of(&records, "server", pid);
        assert_eq!(servers.len(), cases.len() + 1, "{service}: {records:#?}");
        let health = servers
            .iter()
            .find(|r| attr(r, "url.path") == "/health")
            .unwrap_or_else(|| panic!("{service}: no record of /health: {records:#?}"));
        assert_eq!(
            attr(health, "http.request.body"),
            &Value::Null,
            "{health:#}"
        );
        assert_eq!(
            attr(health, "http.response.body"),
            r#"{"status": "ok", "build": "hlth-Sk29Wq"}"#,
            "{health:#}"
        );
        for (case, content_type, body, kept) in cases {
            let target = format!("/typed?case={case}");
            let record = servers
                .iter()
                .find(|r| attr(r, "http.target") == target.as_str())
                .unwrap_or_else(|| panic!("{service}: no record of {target}: {records:#?}"));
            let want = if keeps_all || *kept {
                Value::from(*body)
            } else {
                Value::Null
            };
            for key in ["http.request.body", "http.response.body"] {
                assert_eq!(
                    attr(record, key),
                    &want,
                    "{service}, {key} of {content_type:?}: {record:#}"
                );
            }
        }
    }
}
