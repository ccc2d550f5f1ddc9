//! End to end: records exported as OTLP spans, trace context and stitching (thread-per-request
//! parenting in `otlp_export/parenting.rs`), the sensor never capturing its own export
//! traffic, delivery (`otlp_export/delivery.rs`: collector down, SIGTERM flush, the sensor
//! instance's name), and parity with the in-process agent (`otlp_export/parity.rs`).

#[path = "otlp_export/delivery.rs"]
mod delivery;
#[path = "otlp_export/parenting.rs"]
mod parenting;
#[path = "otlp_export/parity.rs"]
mod parity;

use std::time::Duration;

use sensor_e2e::{Py, Sensor, otlp::Receiver};
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(30);

/// The next `RESULT <json>` line of a client.
fn result(py: &Py) -> Value {
    let line = py.expect_line("RESULT", LONG);
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("RESULT is not JSON ({e}): {line}"))
}

fn command(url: &str, headers: Value) -> String {
    json!({"method": "GET", "url": url, "headers": headers, "body": null}).to_string()
}

/// Both ends watched on this host, exported over OTLP (gRPC and HTTP/JSON): the client span is
/// the parent of the server span; a request carrying traceparent or B3 headers joins that
/// trace; each process's own resource attributes join the sensor's configured ones.
#[test]
fn spans_are_exported_and_stitched() {
    for protocol in ["grpc", "http/json", "http/protobuf"] {
        let receiver = Receiver::start();
        let endpoint = if protocol == "grpc" {
            receiver.grpc_endpoint()
        } else {
            receiver.http_endpoint()
        };
        let server = Py::spawn(
            "http_server",
            &["http_server.py"],
            &[
                ("OTEL_SERVICE_NAME", "hello-otel"),
                (
                    "OTEL_RESOURCE_ATTRIBUTES",
                    "deployment.environment=staging,service.version=3.2",
                ),
            ],
        );
        let port: u16 = server.expect_line("READY", LONG).parse().unwrap();
        let mut client = Py::spawn("urllib_client", &["urllib_client.py"], &[]);
        client.expect_line("READY", LONG);
        let sensor = Sensor::start_with_env(
            "otlp",
            &[
                "run",
                "--pid",
                &server.pid().to_string(),
                "--pid",
                &client.pid().to_string(),
            ],
            &[
                ("HT_REPORTING_ENDPOINT", &endpoint),
                ("HT_REPORTING_PROTOCOL", protocol),
                (
                    "HT_RESOURCE_ATTRIBUTES",
                    "team=platform,deployment.environment=unset",
                ),
            ],
        );
        let base = format!("http://127.0.0.1:{port}");
        client.send_line(&command(&format!("{base}/hello?plain=1"), json!({})));
        client.expect_line("RESULT", LONG);
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        client.send_line(&command(
            &format!("{base}/hello?traced=1"),
            json!({"traceparent": tp}),
        ));
        client.expect_line("RESULT", LONG);
        // B3, as Zipkin-instrumented callers and meshes send it: multi-header and single.
        client.send_line(&command(
            &format!("{base}/hello?b3=multi"),
            json!({
                "X-B3-TraceId": "463ac35c9f6413ad48485a3953bb6124",
                "X-B3-SpanId": "a2fb4a1d1a96d312",
                "X-B3-Sampled": "1"
            }),
        ));
        client.expect_line("RESULT", LONG);
        client.send_line(&command(
            &format!("{base}/hello?b3=single"),
            json!({"b3": "a3ce929d0e0e4736-00f067aa0ba902b7-1"}),
        ));
        client.expect_line("RESULT", LONG);
        std::thread::sleep(Duration::from_millis(300));
        let output = sensor.stop();
        assert!(
            receiver.wait_for_spans(8, LONG),
            "{protocol}: 8 spans arrive: {}",
            output.stderr
        );
        let spans = receiver.spans();
        assert_eq!(spans.len(), 8, "{protocol}: {spans:#?}");
        let find = |kind: &str, target: &str| {
            spans
                .iter()
                .find(|s| s.kind == kind && s.attr("http.target") == Some(&json!(target)))
                .unwrap_or_else(|| panic!("{protocol}: {kind} span for {target}: {spans:#?}"))
        };
        let (client_plain, server_plain) = (
            find("client", "/hello?plain=1"),
            find("server", "/hello?plain=1"),
        );
        assert_eq!(
            server_plain.parent_span_id.as_deref(),
            Some(client_plain.span_id.as_str())
        );
        assert_eq!(server_plain.trace_id, client_plain.trace_id);
        assert_eq!(client_plain.parent_span_id, None);
        assert_eq!(server_plain.name, "GET /hello");
        assert_eq!(server_plain.resource["service.name"], "hello-otel");
        // The server's own resource attributes, over the sensor's configured ones.
        assert_eq!(
            server_plain.resource["deployment.environment"], "staging",
            "{protocol}"
        );
        assert_eq!(server_plain.resource["service.version"], "3.2");
        assert_eq!(server_plain.resource["team"], "platform");
        assert_eq!(client_plain.resource["deployment.environment"], "unset");
        assert_eq!(client_plain.resource["team"], "platform");
        assert!(!client_plain.resource.contains_key("service.version"));
        assert_eq!(server_plain.attr("http.status_code"), Some(&json!(200)));
        assert_eq!(server_plain.status_code, "unset");
        assert!(
            server_plain
                .attributes
                .keys()
                .all(|k| !k.starts_with("sensor."))
        );
        let (client_traced, server_traced) = (
            find("client", "/hello?traced=1"),
            find("server", "/hello?traced=1"),
        );
        assert_eq!(client_traced.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(client_traced.span_id, "00f067aa0ba902b7");
        assert_eq!(server_traced.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            server_traced.parent_span_id.as_deref(),
            Some("00f067aa0ba902b7")
        );
        for (target, trace, span) in [
            (
                "/hello?b3=multi",
                "463ac35c9f6413ad48485a3953bb6124",
                "a2fb4a1d1a96d312",
            ),
            (
                "/hello?b3=single",
                "0000000000000000a3ce929d0e0e4736",
                "00f067aa0ba902b7",
            ),
        ] {
            let (client_b3, server_b3) = (find("client", target), find("server", target));
            assert_eq!(client_b3.trace_id, trace, "{protocol} {target}");
            assert_eq!(client_b3.span_id, span, "{protocol} {target}");
            assert_eq!(server_b3.trace_id, trace, "{protocol} {target}");
            assert_eq!(server_b3.parent_span_id.as_deref(), Some(span));
        }
        assert!(
            output.stdout.is_empty(),
            "nothing on stdout when exporting over OTLP"
        );
        client.wait(LONG);
    }
}

/// The receiver is itself a watched Python process: the sensor's export requests to it are
/// never captured (else every export would produce more spans to export).
#[test]
fn own_export_traffic_is_never_captured() {
    let mut receiver = Py::spawn("otlp_py_receiver", &["otlp_py_receiver.py"], &[]);
    let receiver_port = receiver.expect_line("READY", LONG);
    let server = Py::spawn("http_server", &["http_server.py"], &[]);
    let port: u16 = server.expect_line("READY", LONG).parse().unwrap();
    let mut client = Py::spawn("urllib_client", &["urllib_client.py"], &[]);
    client.expect_line("READY", LONG);
    let endpoint = format!("http://127.0.0.1:{receiver_port}");
    let sensor = Sensor::start_with_env(
        "own-traffic",
        &[
            "run",
            "--pid",
            &receiver.pid().to_string(),
            "--pid",
            &server.pid().to_string(),
            "--pid",
            &client.pid().to_string(),
        ],
        &[
            ("HT_REPORTING_ENDPOINT", &endpoint),
            ("HT_REPORTING_PROTOCOL", "http/json"),
            ("HT_SENSOR_BATCH_TIMEOUT_MS", "100"),
        ],
    );
    for i in 0..3 {
        client.send_line(&command(
            &format!("http://127.0.0.1:{port}/hello?n={i}"),
            json!({}),
        ));
        client.expect_line("RESULT", LONG);
        std::thread::sleep(Duration::from_millis(400));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let output = sensor.stop();
    receiver.send_line("report");
    let report: Value = serde_json::from_str(&receiver.expect_line("SPANS", LONG)).unwrap();
    let targets: Vec<&str> = report["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(
        report["posts"].as_u64().unwrap() >= 1,
        "the receiver got exports: {}",
        output.stderr
    );
    assert_eq!(
        targets.len(),
        6,
        "3 server + 3 client spans, nothing else: {targets:?}\n{}",
        output.stderr
    );
    assert!(
        targets.iter().all(|t| t.starts_with("/hello?n=")),
        "{targets:?}"
    );
    client.wait(LONG);
}
