//! Parity with the in-process agent: the Hypertrace Python agent (PyPI `hypertrace-agent`,
//! with Flask 2.x, in its own venv) and the sensor watch the same Flask app making the same
//! requests (the scenarios of the agent's own Flask and `requests` tests); the sensor's spans
//! carry every `http.*` attribute, header and body the agent's do, with the same values, but
//! for the differences listed in [`INTENDED`], each with its reason.

use std::collections::BTreeMap;

use sensor_e2e::{
    Py, Sensor, agent_python, free_port,
    otlp::{ReceivedSpan, Receiver},
};
use serde_json::{Value, json};

use super::LONG;

/// How the sensor's value of an attribute may differ from the agent's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Difference {
    /// The sensor does not emit it.
    Absent,
    /// The sensor emits it with a value of its own.
    OtherValue,
    /// The sensor emits `[REDACTED]`.
    Redacted,
}

/// The agent's attributes the sensor does not reproduce as they are, and why. Everything
/// else the agent emits under `http.` must be in the sensor's span with the same value.
const INTENDED: &[(&str, Difference, &str)] = &[
    (
        "http.route",
        Difference::Absent,
        "the framework's route template exists only inside the application; the sensor names \
         spans after the path, with id-like segments templated",
    ),
    (
        "http.server_name",
        Difference::Absent,
        "WSGI's SERVER_NAME is the server's configured name, not sent on the wire",
    ),
    (
        "http.request.header.traceparent",
        Difference::Absent,
        "the agent injects trace context into the requests it instruments; the sensor never \
         alters traffic, so without the agent the app sends none",
    ),
    (
        "http.response.header.date",
        Difference::OtherValue,
        "the time of each run's response: the two runs are seconds apart",
    ),
    (
        "http.request.header.authorization",
        Difference::Redacted,
        "credential headers are redacted by default",
    ),
];

/// One request of the scenarios.
struct Scenario {
    method: &'static str,
    path: &'static str,
    headers: Value,
    body: Option<&'static [u8]>,
    pad: Option<usize>,
}

fn scenarios() -> Vec<Scenario> {
    vec![
        // The agent's Flask test: GET with two request headers, a response header.
        Scenario {
            method: "GET",
            path: "/route1?foo=bar",
            headers: json!({"tester1": "tester1", "tester2": "tester2"}),
            body: None,
            pad: None,
        },
        // The agent's requests test: a JSON POST.
        Scenario {
            method: "POST",
            path: "/route1",
            headers: json!({"Content-Type": "application/json"}),
            body: Some(br#"{"test": "body"}"#),
            pad: None,
        },
        // A form POST with a byte that is not UTF-8 (both escape it as \xe9).
        Scenario {
            method: "POST",
            path: "/form",
            headers: json!({"Content-Type": "application/x-www-form-urlencoded"}),
            body: Some(b"name=caf\xe9&z=1"),
            pad: None,
        },
        // The intended differences, shown: a content type with a parameter, a credential.
        Scenario {
            method: "POST",
            path: "/route1?case=differences",
            headers: json!({
                "Content-Type": "application/json; charset=utf-8",
                "Authorization": "Bearer parity-secret",
            }),
            body: Some(br#"{"differences": true}"#),
            pad: None,
        },
        // A body over the 128 KiB limit: the agent drops it, the sensor truncates and flags it.
        Scenario {
            method: "POST",
            path: "/route1?case=large",
            headers: json!({"Content-Type": "application/json"}),
            body: None,
            pad: Some(140_000),
        },
    ]
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs every scenario through the app; returns the statuses.
fn drive(app: &mut Py) -> Vec<Value> {
    let mut statuses = Vec::new();
    for s in scenarios() {
        app.send_line(
            &json!({
                "method": s.method,
                "path": s.path,
                "headers": s.headers,
                "body_hex": s.body.map(hex),
                "pad": s.pad,
            })
            .to_string(),
        );
        let line = app.expect_line("RESULT", LONG);
        let result: Value = serde_json::from_str(&line).expect("RESULT json");
        statuses.push(result["status"].clone());
    }
    statuses
}

/// A span's identity across the two runs: kind, method and target (the client's from its URL).
fn identity(span: &ReceivedSpan, port: u16) -> (String, String, String) {
    let method = span
        .attr("http.method")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let target = match span.kind.as_str() {
        "client" => span
            .attr("http.url")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .replace(&format!("http://localhost:{port}"), ""),
        _ => span
            .attr("http.target")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
    };
    (span.kind.clone(), method, target)
}

fn by_identity(
    spans: &[ReceivedSpan],
    port: u16,
    who: &str,
) -> BTreeMap<(String, String, String), ReceivedSpan> {
    let mut map = BTreeMap::new();
    for span in spans {
        let previous = map.insert(identity(span, port), span.clone());
        assert!(previous.is_none(), "{who}: two spans for {span:#?}");
    }
    map
}

#[test]
fn sensor_spans_cover_the_in_process_agents() {
    let interpreter = agent_python();
    let port = free_port();
    let port_arg = port.to_string();
    let requests = scenarios().len();

    // The app under the agent, exporting to its own receiver.
    let agent_receiver = Receiver::start();
    let mut agent_app = Py::spawn_with(
        &interpreter,
        "parity app (agent)",
        &["parity_app.py", &port_arg, "--agent"],
        &[
            ("HT_REPORTING_ENDPOINT", &agent_receiver.grpc_endpoint()),
            ("HT_REPORTING_TRACE_REPORTER_TYPE", "OTLP"),
            ("HT_SERVICE_NAME", "parity"),
        ],
    );
    agent_app.expect_line("READY", LONG);
    let agent_statuses = drive(&mut agent_app);
    agent_app.send_line("\"flush\"");
    agent_app.expect_line("FLUSHED", LONG);
    agent_receiver.wait_for_spans(2 * requests, LONG);
    assert!(
        agent_app.wait(LONG).success(),
        "the agent's app exits cleanly"
    );
    let agent_spans = agent_receiver.spans();
    assert!(
        agent_spans.len() >= 2 * requests,
        "the agent made a server and a client span for each of the {requests} requests: \
         {agent_spans:#?}"
    );

    // The same app without the agent, on the same port, under the sensor.
    let sensor_receiver = Receiver::start();
    let mut app = Py::spawn_with(
        &interpreter,
        "parity app (sensor)",
        &["parity_app.py", &port_arg],
        &[("HT_SERVICE_NAME", "parity")],
    );
    app.expect_line("READY", LONG);
    let sensor = Sensor::start_with_env(
        "parity",
        &["run", "--pid", &app.pid().to_string()],
        &[
            ("HT_REPORTING_ENDPOINT", &sensor_receiver.grpc_endpoint()),
            ("HT_SENSOR_BATCH_TIMEOUT_MS", "100"),
        ],
    );
    let statuses = drive(&mut app);
    assert_eq!(
        statuses, agent_statuses,
        "the app answers the same either way"
    );
    let arrived = sensor_receiver.wait_for_spans(2 * requests, LONG);
    let output = sensor.stop();
    assert!(arrived, "{}", output.stderr);
    let sensor_spans = sensor_receiver.spans();

    let agent = by_identity(&agent_spans, port, "agent");
    let ours = by_identity(&sensor_spans, port, "sensor");
    assert_eq!(
        agent.keys().collect::<Vec<_>>(),
        ours.keys().collect::<Vec<_>>(),
        "the same spans"
    );
    let mut checked = 0;
    for (id, theirs) in &agent {
        let mine = &ours[id];
        for (key, value) in theirs
            .attributes
            .iter()
            .filter(|(k, _)| k.starts_with("http."))
        {
            let intended = INTENDED.iter().find(|(k, _, _)| k == key);
            match intended.map(|(_, d, _)| *d) {
                None => {
                    assert_eq!(
                        mine.attr(key),
                        Some(value),
                        "{id:?}: {key} as the agent has it\nagent: {theirs:#?}\nsensor: {mine:#?}"
                    );
                    checked += 1;
                }
                Some(Difference::Absent) => {}
                Some(Difference::OtherValue) => {
                    assert!(mine.attr(key).is_some(), "{id:?}: {key} present");
                }
                Some(Difference::Redacted) => {
                    assert_eq!(mine.attr(key), Some(&json!("[REDACTED]")), "{id:?}: {key}");
                    assert_ne!(value, &json!("[REDACTED]"));
                }
            }
        }
    }
    assert!(checked > 50, "{checked} attribute values compared");

    // What the agent lacks by design, shown on the scenarios made for it.
    let id = |kind: &str, method: &str, target: &str| {
        (kind.to_owned(), method.to_owned(), target.to_owned())
    };
    for kind in ["server", "client"] {
        let differences = id(kind, "POST", "/route1?case=differences");
        assert_eq!(
            agent[&differences].attr("http.request.body"),
            None,
            "the agent matches content types exactly: none with a parameter"
        );
        assert_eq!(
            ours[&differences].attr("http.request.body"),
            Some(&json!(r#"{"differences": true}"#)),
            "the sensor ignores content-type parameters"
        );
        let large = id(kind, "POST", "/route1?case=large");
        assert_eq!(
            agent[&large].attr("http.request.body"),
            None,
            "the agent drops a body over its limit"
        );
        let body = ours[&large]
            .attr("http.request.body")
            .and_then(Value::as_str);
        assert_eq!(body.map(str::len), Some(131_072), "the sensor truncates it");
        assert_eq!(
            ours[&large].attr("http.request.body.truncated"),
            Some(&json!(true)),
            "and flags it"
        );
    }
    let server_auth = ours[&id("server", "POST", "/route1?case=differences")]
        .attr("http.request.header.authorization");
    assert_eq!(server_auth, Some(&json!("[REDACTED]")));
    for (key, _, reason) in INTENDED {
        assert!(
            !reason.is_empty(),
            "{key}: every intended difference has a reason"
        );
    }
}
