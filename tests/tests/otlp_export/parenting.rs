//! Thread-per-request parenting: an outbound call made by a thread while it serves a request
//! is a child of that request's server span (gunicorn sync and gthread workers), and an
//! asyncio server's calls are parented to the right request or not at all.

use std::time::Duration;

use sensor_e2e::{
    Py, Sensor,
    otlp::{ReceivedSpan, Receiver},
};
use serde_json::{Value, json};

use super::LONG;

fn get(url: &str) -> Value {
    json!({"op": "request", "method": "GET", "url": url, "headers": {}, "body": null})
}

fn ok(result: &Value) {
    assert_eq!(result["status"], 200, "{result}");
    assert_eq!(json_body(result)["downstream"], 200, "{result}");
}

fn json_body(result: &Value) -> Value {
    serde_json::from_str(result["body"].as_str().unwrap_or_default()).unwrap_or(Value::Null)
}

fn pid_of(span: &ReceivedSpan) -> u64 {
    span.resource["process.pid"].as_u64().unwrap_or(0)
}

/// The one span of `kind` in process `pid` whose `key` attribute is `value`.
fn the<'a>(
    spans: &'a [ReceivedSpan],
    kind: &str,
    pid: u32,
    key: &str,
    value: &str,
) -> &'a ReceivedSpan {
    let found: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.kind == kind && pid_of(s) == u64::from(pid))
        .filter(|s| s.attr(key) == Some(&json!(value)))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {kind} span of pid {pid} with {key} = {value}: {spans:#?}"
    );
    found[0]
}

/// The four spans of one call chain: the test client's call, the app's server span, the
/// app's outbound call and the downstream's server span.
struct Chain<'a> {
    caller: &'a ReceivedSpan,
    server: &'a ReceivedSpan,
    call: &'a ReceivedSpan,
    downstream: &'a ReceivedSpan,
}

struct Ends {
    client_pid: u32,
    app_pid: u32,
    app_port: u16,
    downstream_pid: u32,
    downstream_port: u16,
}

impl Ends {
    fn chain<'a>(&self, spans: &'a [ReceivedSpan], id: &str, query: &str) -> Chain<'a> {
        let caller_url = format!("http://127.0.0.1:{}/call?{query}", self.app_port);
        let call_url = format!("http://127.0.0.1:{}/hello?id={id}", self.downstream_port);
        Chain {
            caller: the(spans, "client", self.client_pid, "http.url", &caller_url),
            server: the(
                spans,
                "server",
                self.app_pid,
                "http.target",
                &format!("/call?{query}"),
            ),
            call: the(spans, "client", self.app_pid, "http.url", &call_url),
            downstream: the(
                spans,
                "server",
                self.downstream_pid,
                "http.target",
                &format!("/hello?id={id}"),
            ),
        }
    }
}

impl Chain<'_> {
    /// The server span is the caller's child (both ends watched), the downstream's server
    /// span the outbound call's.
    fn assert_ends_stitched(&self, id: &str) {
        assert_eq!(
            self.server.parent_span_id.as_deref(),
            Some(self.caller.span_id.as_str()),
            "{id}: the app's server span is the test client's child"
        );
        assert_eq!(self.server.trace_id, self.caller.trace_id, "{id}");
        assert_eq!(
            self.downstream.parent_span_id.as_deref(),
            Some(self.call.span_id.as_str()),
            "{id}: the downstream's server span is the outbound call's child"
        );
        assert_eq!(self.downstream.trace_id, self.call.trace_id, "{id}");
    }

    /// The outbound call is the server span's child: one trace from the test client to the
    /// downstream.
    fn assert_parented(&self, id: &str) {
        self.assert_ends_stitched(id);
        assert_eq!(
            self.call.parent_span_id.as_deref(),
            Some(self.server.span_id.as_str()),
            "{id}: the outbound call is a child of the server span it was made for"
        );
        assert_eq!(self.call.trace_id, self.server.trace_id, "{id}");
        assert_eq!(self.downstream.trace_id, self.caller.trace_id, "{id}");
    }

    /// The outbound call has no parent, and is in no trace of this chain.
    fn assert_unparented(&self, id: &str) {
        self.assert_ends_stitched(id);
        assert_eq!(self.call.parent_span_id, None, "{id}: not parented");
        assert_ne!(self.call.trace_id, self.server.trace_id, "{id}");
    }
}

/// Whether every pair of these spans overlapped in time (served concurrently).
fn all_overlap(spans: &[&ReceivedSpan]) -> bool {
    let latest_start = spans.iter().map(|s| s.start_time_unix_nano).max();
    let earliest_end = spans.iter().map(|s| s.end_time_unix_nano).min();
    latest_start < earliest_end
}

fn ready_port(py: &Py) -> u16 {
    py.expect_line("READY", LONG).parse().expect("READY <port>")
}

fn downstream() -> (Py, u16, String) {
    let py = Py::spawn("downstream", &["parenting_app.py", "downstream"], &[]);
    let port = ready_port(&py);
    (py, port, format!("http://127.0.0.1:{port}"))
}

fn gunicorn(name: &str, extra: &[&str], downstream: &str) -> (Py, u16, u32) {
    let mut args = vec!["-m", "gunicorn", "-c", "gunicorn_conf.py"];
    args.extend_from_slice(extra);
    args.push("parenting_app:app");
    let py = Py::spawn(
        name,
        &args,
        &[("GUNICORN_WORKERS", "1"), ("DOWNSTREAM", downstream)],
    );
    let port = ready_port(&py);
    let worker: u32 = py
        .expect_line("WORKER", LONG)
        .parse()
        .expect("WORKER <pid>");
    (py, port, worker)
}

fn start_sensor(name: &str, receiver: &Receiver, pids: &[u32]) -> Sensor {
    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
    let mut args = vec!["run"];
    for pid in &pids {
        args.extend(["--pid", pid.as_str()]);
    }
    Sensor::start_with_env(
        name,
        &args,
        &[
            ("HT_REPORTING_ENDPOINT", &receiver.grpc_endpoint()),
            ("HT_SENSOR_BATCH_TIMEOUT_MS", "200"),
        ],
    )
}

/// Waits for exactly `n` spans (and a little more, to see that no others come).
fn spans_after_stop(receiver: &Receiver, sensor: Sensor, n: usize) -> Vec<ReceivedSpan> {
    let arrived = receiver.wait_for_spans(n, LONG);
    std::thread::sleep(Duration::from_millis(500));
    let output = sensor.stop();
    let spans = receiver.spans();
    assert!(arrived, "{n} spans arrive: {spans:#?}\n{}", output.stderr);
    assert_eq!(spans.len(), n, "{spans:#?}");
    spans
}

/// gunicorn with a sync worker (sequential requests) and with a gthread worker (four requests
/// served at once by four threads of one process): each outbound call is the child of the
/// server span it was made for, and the whole chain, test client → app → downstream, is one
/// trace.
#[test]
fn thread_per_request_calls_are_children_of_their_server_span() {
    let receiver = Receiver::start();
    let (down, down_port, down_url) = downstream();
    let (sync, sync_port, sync_worker) = gunicorn("gunicorn sync", &[], &down_url);
    let (gthread, gthread_port, gthread_worker) = gunicorn(
        "gunicorn gthread",
        &["-k", "gthread", "--threads", "4"],
        &down_url,
    );
    let mut client = Py::spawn("requests client", &["requests_client.py"], &[]);
    client.expect_line("READY", LONG);
    let sensor = start_sensor(
        "parenting-threads",
        &receiver,
        &[down.pid(), sync.pid(), gthread.pid(), client.pid()],
    );

    let sync_ids = ["s1", "s2", "s3"];
    for id in sync_ids {
        client.send_line(&get(&format!("http://127.0.0.1:{sync_port}/call?id={id}")).to_string());
        ok(&super::result(&client));
    }
    let gthread_ids = ["g1", "g2", "g3", "g4"];
    let parallel: Vec<Value> = gthread_ids
        .iter()
        .map(|id| {
            get(&format!(
                "http://127.0.0.1:{gthread_port}/call?id={id}&wait_ms=300"
            ))
        })
        .collect();
    client.send_line(&json!({"op": "parallel", "requests": parallel}).to_string());
    for result in super::result(&client)
        .as_array()
        .expect("a list of results")
    {
        ok(result);
    }

    let spans = spans_after_stop(&receiver, sensor, 4 * (sync_ids.len() + gthread_ids.len()));
    let sync_ends = Ends {
        client_pid: client.pid(),
        app_pid: sync_worker,
        app_port: sync_port,
        downstream_pid: down.pid(),
        downstream_port: down_port,
    };
    for id in sync_ids {
        sync_ends
            .chain(&spans, id, &format!("id={id}"))
            .assert_parented(id);
    }
    let gthread_ends = Ends {
        app_pid: gthread_worker,
        app_port: gthread_port,
        ..sync_ends
    };
    let chains: Vec<Chain> = gthread_ids
        .iter()
        .map(|id| gthread_ends.chain(&spans, id, &format!("id={id}&wait_ms=300")))
        .collect();
    let servers: Vec<&ReceivedSpan> = chains.iter().map(|c| c.server).collect();
    assert!(
        all_overlap(&servers),
        "the gthread worker served the four requests at once: {servers:#?}"
    );
    for (id, chain) in gthread_ids.iter().zip(&chains) {
        chain.assert_parented(id);
    }
    client.wait(LONG);
}

/// An aiohttp server (one event-loop thread): a call made while the loop serves a single
/// request is that request's child; calls made while it serves several requests at once are
/// not parented — never parented to another request.
#[test]
fn asyncio_calls_are_parented_right_or_not_at_all() {
    let receiver = Receiver::start();
    let (down, down_port, down_url) = downstream();
    let app = Py::spawn(
        "aiohttp app",
        &["parenting_app.py", "aiohttp"],
        &[("DOWNSTREAM", &down_url)],
    );
    let app_port = ready_port(&app);
    let mut client = Py::spawn("requests client", &["requests_client.py"], &[]);
    client.expect_line("READY", LONG);
    let sensor = start_sensor(
        "parenting-asyncio",
        &receiver,
        &[down.pid(), app.pid(), client.pid()],
    );

    let alone = ["a1", "a2", "a3"];
    for id in alone {
        client.send_line(&get(&format!("http://127.0.0.1:{app_port}/call?id={id}")).to_string());
        ok(&super::result(&client));
    }
    let together = ["p1", "p2", "p3", "p4", "p5", "p6"];
    let parallel: Vec<Value> = together
        .iter()
        .map(|id| {
            get(&format!(
                "http://127.0.0.1:{app_port}/call?id={id}&wait_ms=300"
            ))
        })
        .collect();
    client.send_line(&json!({"op": "parallel", "requests": parallel}).to_string());
    for result in super::result(&client)
        .as_array()
        .expect("a list of results")
    {
        ok(result);
    }

    let spans = spans_after_stop(&receiver, sensor, 4 * (alone.len() + together.len()));
    let ends = Ends {
        client_pid: client.pid(),
        app_pid: app.pid(),
        app_port,
        downstream_pid: down.pid(),
        downstream_port: down_port,
    };
    for id in alone {
        ends.chain(&spans, id, &format!("id={id}"))
            .assert_parented(id);
    }
    let chains: Vec<Chain> = together
        .iter()
        .map(|id| ends.chain(&spans, id, &format!("id={id}&wait_ms=300")))
        .collect();
    // Whatever the rule decides, a call is never the child of another request's span.
    for (id, chain) in together.iter().zip(&chains) {
        if let Some(parent) = chain.call.parent_span_id.as_deref() {
            assert_eq!(
                parent, chain.server.span_id,
                "{id}: a parented call belongs to its own request"
            );
        }
    }
    let servers: Vec<&ReceivedSpan> = chains.iter().map(|c| c.server).collect();
    assert!(
        all_overlap(&servers),
        "the event loop served the six requests at once: {servers:#?}"
    );
    for (id, chain) in together.iter().zip(&chains) {
        chain.assert_unparented(id);
    }
    client.wait(LONG);
}
