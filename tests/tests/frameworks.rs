//! End to end against real Python frameworks (issue 4): Flask, Django under gunicorn (forked
//! sync workers), FastAPI under uvicorn, aiohttp; clients requests, httpx, aiohttp. Every
//! expectation comes from what the Python clients sent and received (their RESULT lines),
//! never from earlier sensor output.

#[path = "frameworks/common.rs"]
mod common;

use std::{collections::BTreeSet, time::Duration};

use common::{
    Exchange, LONG, Side, ask, check, check_both, children, find, get_once, request, result,
};
use sensor_e2e::{Py, Sensor, attr, metric, records_of};
use serde_json::{Value, json};

/// Flask under gunicorn with two forked sync workers, both started before the sensor, and a
/// `requests` Session client also started (and used) before it: every request made once the
/// sensor runs gives exactly one server record (in the worker that served it, as the client
/// learnt from X-Worker-Pid) and one client record, each exact; nothing from before.
#[test]
fn flask_gunicorn_workers_started_before_the_sensor() {
    let server = Py::spawn(
        "gunicorn flask",
        &["-m", "gunicorn", "-c", "gunicorn_conf.py", "flask_app:app"],
        &[("GUNICORN_WORKERS", "2")],
    );
    let port: u16 = server.expect_line("READY", LONG).parse().unwrap();
    let mut workers: BTreeSet<u32> = BTreeSet::new();
    for _ in 0..2 {
        workers.insert(server.expect_line("WORKER", LONG).parse().unwrap());
    }
    assert_eq!(
        children(server.pid()).into_iter().collect::<BTreeSet<_>>(),
        workers,
        "gunicorn's forked workers"
    );
    let mut client = Py::spawn("requests client", &["requests_client.py"], &[]);
    client.expect_line("READY", LONG);
    let base = format!("http://127.0.0.1:{port}");
    // Traffic before the sensor starts: must not show up.
    client.send_line(&request(
        "GET",
        &format!("{base}/items/1?before=1"),
        json!({}),
        None,
    ));
    assert_eq!(result(&client)["status"], 200);

    let sensor = Sensor::watching("fw-flask", &[server.pid(), client.pid()]);
    let mut sent: Vec<(Exchange, u32)> = Vec::new();
    let mut go = |method: &str, target: &str, headers: Value, body: Option<&str>, name: &str| {
        let (exchange, res) = ask(&mut client, port, method, target, headers, body, name);
        let worker = worker_of(&res);
        sent.push((exchange, worker));
        worker
    };
    let mut served = BTreeSet::new();
    served.insert(go(
        "GET",
        "/items/42?x=1&y=two",
        json!({"X-Test": "abc", "User-Agent": "e2e-agent/1.0"}),
        None,
        "GET /items/{id}",
    ));
    served.insert(go(
        "POST",
        "/echo",
        json!({"Content-Type": "application/json", "Authorization": "Bearer secret-token"}),
        Some(r#"{"name": "caf\u00e9", "n": 1}"#),
        "POST /echo",
    ));
    served.insert(go(
        "POST",
        "/echo",
        json!({"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}),
        Some("a=1&b=two+words&c=%C3%A9"),
        "POST /echo",
    ));
    served.insert(go("GET", "/items/7", json!({}), None, "GET /items/{id}"));
    // Two slow requests at once, on two connections: a sync worker serves one request at a
    // time, so each worker serves one of them.
    let slow_targets = ["/slow?ms=400&n=1", "/slow?ms=400&n=2"];
    client.send_line(
        &json!({"op": "parallel", "requests": slow_targets
            .iter()
            .map(|t| json!({"method": "GET", "url": format!("{base}{t}"), "headers": {"X-Slow": t}}))
            .collect::<Vec<_>>()})
        .to_string(),
    );
    let slow = result(&client);
    for (res, target) in slow
        .as_array()
        .expect("parallel results")
        .iter()
        .zip(slow_targets)
    {
        let worker = worker_of(res);
        served.insert(worker);
        sent.push((
            Exchange::from_client(res, "GET", target, port, "GET /slow"),
            worker,
        ));
    }
    assert_eq!(served, workers, "both gunicorn workers served requests");
    std::thread::sleep(Duration::from_millis(500));
    let output = sensor.stop();
    let records = output.records();

    let client_records = records_of(&records, "client", client.pid());
    let mut server_records: Vec<&Value> = Vec::new();
    for w in &workers {
        server_records.extend(records_of(&records, "server", *w));
    }
    assert!(
        records_of(&records, "server", server.pid()).is_empty(),
        "the gunicorn master serves nothing"
    );
    assert_eq!(
        server_records.len(),
        sent.len(),
        "one server record per request: {server_records:#?}"
    );
    assert_eq!(
        client_records.len(),
        sent.len(),
        "one client record per request: {client_records:#?}"
    );
    for (exchange, worker) in &sent {
        let s = find(&server_records, exchange, "server");
        check(s, exchange, "server", *worker, "flask_app");
        let c = find(&client_records, exchange, "client");
        check(c, exchange, "client", client.pid(), "requests_client");
    }
    assert!(
        !output.stdout.contains("secret-token"),
        "credentials never leave the host"
    );
    assert!(
        !output.stdout.contains("before=1"),
        "traffic from before the sensor started is not reported"
    );
}

/// Starts Flask under gunicorn (`workers` forked sync workers) and a `requests` client, and a
/// sensor watching both. Returns (server, client, port, sensor).
fn flask_and_requests(name: &str, workers: &str) -> (Py, Py, u16, Sensor) {
    let server = Py::spawn(
        "gunicorn flask",
        &["-m", "gunicorn", "-c", "gunicorn_conf.py", "flask_app:app"],
        &[("GUNICORN_WORKERS", workers)],
    );
    let port: u16 = server.expect_line("READY", LONG).parse().unwrap();
    let client = Py::spawn("requests client", &["requests_client.py"], &[]);
    client.expect_line("READY", LONG);
    let sensor = Sensor::watching(name, &[server.pid(), client.pid()]);
    (server, client, port, sensor)
}

fn worker_of(res: &Value) -> u32 {
    res["headers"]["X-Worker-Pid"]
        .as_str()
        .expect("X-Worker-Pid")
        .parse()
        .unwrap()
}

/// Bodies as the client received them: a chunked streaming response de-chunked, a gzip
/// response and a zstd one (two frames; urllib3 asks for zstd where Python has it: 3.14, or
/// `backports.zstd`)
/// decoded, an image/png response recorded without its body (everything else
/// present). Before them on the same connection, a file the server sends with `sendfile(2)`
/// (its bytes never pass through the server's memory): the server's record has no body and
/// says bytes are missing, the client's has the body, and what follows is exact.
#[test]
fn flask_chunked_gzip_and_png_bodies() {
    let (server, mut client, port, sensor) = flask_and_requests("fw-bodies", "1");
    let (file, file_res) = ask(
        &mut client,
        port,
        "GET",
        "/file?size=20000",
        json!({}),
        None,
        "GET /file",
    );
    assert_eq!(file.response_body.len(), 20000);
    let (stream, stream_res) = ask(
        &mut client,
        port,
        "GET",
        "/stream?parts=40",
        json!({}),
        None,
        "GET /stream",
    );
    assert_eq!(
        stream
            .response_headers
            .get("transfer-encoding")
            .map(String::as_str),
        Some("chunked"),
        "the streamed response is chunked on the wire"
    );
    assert!(stream.response_body.contains("chunk-39"));
    let (gz, gz_res) = ask(
        &mut client,
        port,
        "GET",
        "/gzip",
        json!({}),
        None,
        "GET /gzip",
    );
    assert_eq!(
        gz.response_headers
            .get("content-encoding")
            .map(String::as_str),
        Some("gzip")
    );
    let decoded: Value = serde_json::from_str(&gz.response_body).expect("decoded gzip is JSON");
    assert_eq!(decoded["compressed"], true);
    let (zstd, zstd_res) = ask(
        &mut client,
        port,
        "GET",
        "/zstd",
        json!({}),
        None,
        "GET /zstd",
    );
    assert_eq!(
        zstd.response_headers
            .get("content-encoding")
            .map(String::as_str),
        Some("zstd"),
        "requests asks for zstd (urllib3 2.8 with backports.zstd)"
    );
    let decoded: Value = serde_json::from_str(&zstd.response_body).expect("decoded zstd is JSON");
    assert_eq!(decoded["compressed"], "zstd");
    let (png, png_res) = ask(
        &mut client,
        port,
        "GET",
        "/image.png",
        json!({}),
        None,
        "GET /image.png",
    );
    assert_eq!(
        png.response_headers.get("content-type").map(String::as_str),
        Some("image/png")
    );
    // Media types of real APIs beyond application/json: kept by default (they contain
    // `json` or `+xml`), and a binary type whose name merely contains "xml", not.
    let mut typed = Vec::new();
    for (content_type, body, kept) in [
        (
            "application/problem+json",
            r#"{"type": "about:blank", "status": 409}"#,
            true,
        ),
        ("application/x-ndjson", "{\"n\": 1}\n{\"n\": 2}\n", true),
        (
            "application/soap+xml; charset=utf-8",
            "<Envelope><Body>1</Body></Envelope>",
            true,
        ),
        (
            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            "PK\u{3}\u{4}sheet",
            false,
        ),
    ] {
        let (exchange, res) = ask(
            &mut client,
            port,
            "POST",
            "/echo",
            json!({ "Content-Type": content_type }),
            Some(body),
            "POST /echo",
        );
        assert_eq!(worker_of(&res), worker_of(&stream_res));
        typed.push((exchange, content_type, body, kept));
    }
    std::thread::sleep(Duration::from_millis(500));
    let output = sensor.stop();
    let records = output.records();
    let worker = worker_of(&stream_res);
    assert_eq!(worker_of(&gz_res), worker);
    assert_eq!(worker_of(&zstd_res), worker);
    assert_eq!(worker_of(&png_res), worker);
    let servers = records_of(&records, "server", worker);
    let clients = records_of(&records, "client", client.pid());
    assert_eq!(worker_of(&file_res), worker);
    assert_eq!(servers.len(), 9, "server records: {servers:#?}");
    assert_eq!(clients.len(), 9, "client records: {clients:#?}");
    for (exchange, content_type, body, kept) in &typed {
        for (side, records, pid, service) in [
            ("server", &servers, worker, "flask_app"),
            ("client", &clients, client.pid(), "requests_client"),
        ] {
            let record = find(records, exchange, side);
            check(record, exchange, side, pid, service);
            let expected = |body: &str| if *kept { json!(body) } else { Value::Null };
            assert_eq!(
                attr(record, "http.request.body"),
                &expected(body),
                "{content_type}: {record:#}"
            );
            assert_eq!(
                attr(record, "http.response.body"),
                &expected(body),
                "{content_type}: {record:#}"
            );
        }
    }
    check(
        find(&clients, &file, "client"),
        &file,
        "client",
        client.pid(),
        "requests_client",
    );
    let sent = find(&servers, &file, "server");
    assert_eq!(attr(sent, "http.status_code"), 200, "{sent:#}");
    assert_eq!(attr(sent, "http.response.header.content-length"), "20000");
    assert_eq!(attr(sent, "http.response.body"), &Value::Null, "{sent:#}");
    assert_eq!(attr(sent, "sensor.incomplete"), true, "{sent:#}");
    for exchange in [&stream, &gz, &zstd, &png] {
        check(
            find(&servers, exchange, "server"),
            exchange,
            "server",
            worker,
            "flask_app",
        );
        check(
            find(&clients, exchange, "client"),
            exchange,
            "client",
            client.pid(),
            "requests_client",
        );
    }
    // Spelled out (check() derives it from the content type): no body for image/png.
    for r in servers.iter().chain(clients.iter()) {
        if attr(r, "http.target") == "/image.png" {
            assert_eq!(attr(r, "http.response.body"), &Value::Null);
            assert_eq!(attr(r, "http.response.header.content-type"), "image/png");
            assert_eq!(attr(r, "http.status_code"), 200);
        }
    }
    drop(server);
}

/// A `requests` call that times out before the server answers: the client's record has no
/// status and says why (`error.type: no_response`, an error span over OTLP), not that bytes
/// were lost, and lasts until the client gave up; the server still records its late answer,
/// and the next call is exact.
#[test]
fn a_client_timeout_is_a_call_without_a_response() {
    let (server, mut client, port, sensor) = flask_and_requests("fw-timeout", "1");
    let slow = format!("http://127.0.0.1:{port}/slow?ms=1500");
    client.send_line(&json!({"op": "timeout", "url": slow, "seconds": 0.3}).to_string());
    assert_eq!(result(&client), json!({"timed_out": true}));
    // The worker is busy until its late answer is written.
    std::thread::sleep(Duration::from_millis(1500));
    let (after, after_res) = ask(
        &mut client,
        port,
        "GET",
        "/items/3",
        json!({}),
        None,
        "GET /items/{id}",
    );
    std::thread::sleep(Duration::from_millis(500));
    let output = sensor.stop();
    let records = output.records();
    let clients = records_of(&records, "client", client.pid());
    assert_eq!(clients.len(), 2, "client records: {:#?}", summary(&clients));
    check(
        find(&clients, &after, "client"),
        &after,
        "client",
        client.pid(),
        "requests_client",
    );
    let call = clients
        .iter()
        .find(|r| attr(r, "http.url") == slow.as_str())
        .unwrap_or_else(|| panic!("the timed-out call: {:#?}", summary(&clients)));
    assert!(attr(call, "http.status_code").is_null(), "{call:#}");
    assert_eq!(attr(call, "error.type"), "no_response", "{call:#}");
    assert!(attr(call, "sensor.incomplete").is_null(), "{call:#}");
    // The call lasted until the client gave up and closed, 0.3 s after it began, not until
    // its request was sent; the answer came 1.2 s after that.
    let lasted_ms = span_ms(call);
    assert!(
        (300..1_400).contains(&lasted_ms),
        "the timed-out call lasted {lasted_ms} ms: {call:#}"
    );
    let served = records_of(&records, "server", worker_of(&after_res));
    assert_eq!(served.len(), 2, "server records: {:#?}", summary(&served));
    let late = served
        .iter()
        .find(|r| attr(r, "http.target") == "/slow?ms=1500")
        .unwrap_or_else(|| panic!("the late answer: {:#?}", summary(&served)));
    assert_eq!(attr(late, "http.status_code"), 200, "{late:#}");
    assert!(attr(late, "error.type").is_null(), "{late:#}");
    drop(server);
}

/// A record's span length in milliseconds.
fn span_ms(record: &Value) -> u64 {
    let at = |key: &str| {
        record[key]
            .as_u64()
            .unwrap_or_else(|| panic!("{key}: {record:#}"))
    };
    at("end_time_unix_nano").saturating_sub(at("start_time_unix_nano")) / 1_000_000
}

/// A call still waiting for its answer when the sensor stops is reported on both sides as
/// incomplete — the sensor did not see it end — and not as a call that got no response; the
/// call itself is undisturbed.
#[test]
fn a_call_in_flight_when_the_sensor_stops_is_incomplete_not_failed() {
    let (server, mut client, port, sensor) = flask_and_requests("fw-in-flight", "1");
    let (before, before_res) = ask(
        &mut client,
        port,
        "GET",
        "/items/4",
        json!({}),
        None,
        "GET /items/{id}",
    );
    let slow = format!("http://127.0.0.1:{port}/slow?ms=2500");
    client.send_line(&json!({"op": "request", "method": "GET", "url": slow}).to_string());
    std::thread::sleep(Duration::from_millis(800));
    let output = sensor.stop();
    let answer = result(&client);
    assert_eq!(answer["status"], 200, "{answer:#}");
    let records = output.records();
    for (kind, pid) in [("client", client.pid()), ("server", worker_of(&before_res))] {
        let records = records_of(&records, kind, pid);
        assert_eq!(records.len(), 2, "{kind} records: {:#?}", summary(&records));
        check(
            find(&records, &before, kind),
            &before,
            kind,
            pid,
            if kind == "client" {
                "requests_client"
            } else {
                "flask_app"
            },
        );
        let call = records
            .iter()
            .find(|r| attr(r, "http.target") == "/slow?ms=2500")
            .unwrap_or_else(|| panic!("the call in flight: {:#?}", summary(&records)));
        assert_eq!(attr(call, "sensor.incomplete"), true, "{call:#}");
        assert!(attr(call, "error.type").is_null(), "{call:#}");
        assert!(attr(call, "http.status_code").is_null(), "{call:#}");
    }
    drop(server);
}

/// A 1 MB JSON request body is recorded up to the limit (131072 decoded bytes) and flagged
/// truncated; so is a 300 KB response; an exchange after them is still exact. `server_args`
/// start a server printing "READY <port>"; `client_script` is one of the clients.
fn large_bodies(name: &str, server_args: &[&str], service: &str, client_script: &str) {
    let server = Py::spawn(name, server_args, &[("GUNICORN_WORKERS", "1")]);
    let port: u16 = server.expect_line("READY", LONG).parse().unwrap();
    let mut client = Py::spawn(client_script, &[client_script], &[]);
    client.expect_line("READY", LONG);
    let sensor = Sensor::watching(name, &[server.pid(), client.pid()]);
    client.send_line(
        &json!({"op": "request", "method": "POST", "url": format!("http://127.0.0.1:{port}/upload"),
                "headers": {"Content-Type": "application/json"}, "pad": 1_048_576})
        .to_string(),
    );
    let up_res = result(&client);
    let upload = Exchange::from_client(&up_res, "POST", "/upload", port, "POST /upload");
    assert_eq!(upload.request_body.len(), 1_048_576);
    assert_eq!(
        serde_json::from_str::<Value>(&upload.response_body).unwrap()["received"],
        1_048_576
    );
    let (big, _) = ask(
        &mut client,
        port,
        "GET",
        "/big?size=307200",
        json!({}),
        None,
        "GET /big",
    );
    assert_eq!(big.response_body.len(), 307_200);
    let (after, _) = ask(
        &mut client,
        port,
        "GET",
        "/items/5?after=1",
        json!({}),
        None,
        "GET /items/{id}",
    );
    std::thread::sleep(Duration::from_millis(500));
    let output = sensor.stop();
    let records = output.records();
    // The serving process: the worker that said so, else the server itself.
    let worker = up_res["headers"]
        .as_object()
        .and_then(|h| {
            h.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("x-worker-pid"))
        })
        .map(|(_, v)| v.as_str().unwrap().parse::<u32>().unwrap())
        .unwrap_or(server.pid());
    let servers = records_of(&records, "server", worker);
    let clients = records_of(&records, "client", client.pid());
    let client_service = client_script.strip_suffix(".py").unwrap();
    assert_eq!(servers.len(), 3, "server records: {:#?}", summary(&servers));
    assert_eq!(clients.len(), 3, "client records: {:#?}", summary(&clients));
    for exchange in [&upload, &big, &after] {
        check(
            find(&servers, exchange, "server"),
            exchange,
            "server",
            worker,
            service,
        );
        check(
            find(&clients, exchange, "client"),
            exchange,
            "client",
            client.pid(),
            client_service,
        );
    }
}

/// Large bodies, Flask under gunicorn and `requests`.
#[test]
fn flask_large_bodies_truncated_at_the_limit() {
    large_bodies(
        "fw-large-flask",
        &["-m", "gunicorn", "-c", "gunicorn_conf.py", "flask_app:app"],
        "flask_app",
        "requests_client.py",
    );
}

/// Large bodies, FastAPI under uvicorn (uvloop) and httpx.
#[test]
fn fastapi_large_bodies_truncated_at_the_limit() {
    large_bodies(
        "fw-large-fastapi",
        &["serve_uvicorn.py", "fastapi_app:app"],
        "fastapi_app",
        "httpx_client.py",
    );
}

/// Large bodies, aiohttp server and aiohttp client (asyncio reads up to 256 KiB at once).
#[test]
fn aiohttp_large_bodies_truncated_at_the_limit() {
    large_bodies(
        "fw-large-aiohttp",
        &["aiohttp_app.py"],
        "aiohttp_app",
        "aiohttp_client.py",
    );
}

/// Records without their bodies, for failure messages.
fn summary(records: &[&Value]) -> Vec<Value> {
    records
        .iter()
        .map(|r| {
            let mut r = (*r).clone();
            if let Some(a) = r["attributes"].as_object_mut() {
                for key in ["http.request.body", "http.response.body"] {
                    if let Some(Value::String(body)) = a.get_mut(key) {
                        let len = body.len();
                        body.truncate(80);
                        body.push_str(&format!("... ({len} bytes)"));
                    }
                }
            }
            r
        })
        .collect()
}

/// Starts `serve_uvicorn.py fastapi_app:app`; returns it and its port. Idle keep-alive
/// connections stay open two minutes rather than uvicorn's 5 s: tests that open a connection
/// before the sensor starts (which may take longer than that on a fresh machine) use it after.
fn uvicorn(env: &[(&str, &str)]) -> (Py, u16) {
    let env: Vec<(&str, &str)> = [("UVICORN_TIMEOUT_KEEP_ALIVE", "120")]
        .into_iter()
        .chain(env.iter().copied())
        .collect();
    let server = Py::spawn(
        "uvicorn fastapi",
        &["serve_uvicorn.py", "fastapi_app:app"],
        &env,
    );
    let port: u16 = server.expect_line("READY", LONG).parse().unwrap();
    (server, port)
}

/// `uvicorn --workers 2`, started after the sensor (discovery): its workers are Python
/// processes `multiprocessing` spawns (`python -c "from multiprocessing.spawn import …"`), each
/// exchange is recorded once, in the worker that served it, under the service name of the
/// uvicorn command line (`fastapi_app`), not that of the worker's own.
#[test]
fn uvicorn_spawned_workers_named_after_their_application() {
    let sensor = Sensor::start("fw-uvicorn-workers", &["run", "--output", "jsonl"]);
    let port = sensor_e2e::free_port();
    let server = Py::spawn(
        "uvicorn workers",
        &[
            "-m",
            "uvicorn",
            "--workers",
            "2",
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--log-level",
            "warning",
            "fastapi_app:app",
        ],
        &[],
    );
    let get = |target: &str| get_once(port, target);
    // Both workers up: the app answers (its readiness probe is not counted below).
    assert!(
        sensor_e2e::wait_until(LONG, || get("/items/0?ready=1")
            .is_some_and(|r| r.starts_with("HTTP/1.1 200"))),
        "uvicorn --workers 2 answers"
    );
    std::thread::sleep(Duration::from_millis(1500));
    let workers = children(server.pid());
    const SENT: usize = 16;
    for i in 1..=SENT {
        let response = get(&format!("/items/{i}")).expect("a response");
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    }
    std::thread::sleep(Duration::from_millis(500));
    let output = sensor.stop();
    let records = output.records();
    let served: Vec<&Value> = records
        .iter()
        .filter(|r| {
            r["kind"] == "server"
                && attr(r, "url.path")
                    .as_str()
                    .is_some_and(|p| p.starts_with("/items/") && p != "/items/0")
        })
        .collect();
    assert_eq!(served.len(), SENT, "{:#?}", summary(&served));
    for record in &served {
        let pid = record["resource"]["process.pid"].as_u64().unwrap() as u32;
        assert!(
            workers.contains(&pid),
            "served by a worker of {} ({workers:?}): {record:#}",
            server.pid()
        );
        assert_eq!(
            record["resource"]["service.name"], "fastapi_app",
            "{record:#}"
        );
        assert!(
            record["resource"]["process.command_line"]
                .as_str()
                .is_some_and(|c| c.contains("--multiprocessing-fork")),
            "{record:#}"
        );
    }
    let targets: BTreeSet<&str> = served
        .iter()
        .map(|r| attr(r, "http.target").as_str().unwrap())
        .collect();
    assert_eq!(targets.len(), SENT, "each request once");
}

/// uWSGI (Debian's, with its python3 plugin) embeds Python: its executable is not a Python
/// interpreter and it maps libpython only after its exec, when it loads the plugin. Started
/// after the sensor (discovery), its master and the workers it forked are still found, and
/// each exchange is recorded once, in the worker that served it, exactly.
#[test]
fn uwsgi_embedded_python_found_by_discovery() {
    let sensor = Sensor::start("fw-uwsgi", &["run", "--output", "jsonl"]);
    let port = sensor_e2e::free_port();
    let venv = sensor_e2e::python()
        .parent()
        .and_then(std::path::Path::parent)
        .expect("the test Python is in a venv")
        .to_path_buf();
    let mut command = std::process::Command::new("uwsgi_python3");
    command.args([
        "--http-socket",
        &format!("127.0.0.1:{port}"),
        "--master",
        "--processes",
        "2",
        "--virtualenv",
        venv.to_str().unwrap(),
        "--module",
        "flask_app:app",
        "--disable-logging",
        "--need-app",
        // SIGTERM (what dropping the server sends) stops master and workers; by default
        // uWSGI reloads on it, respawning workers the master's death would orphan.
        "--die-on-term",
    ]);
    let server = Py::spawn_command(
        "uwsgi (Debian's uwsgi-plugin-python3: run `cargo xtask setup`)",
        command,
        &[],
    );
    assert!(
        sensor_e2e::wait_until(LONG, || {
            get_once(port, "/items/0").is_some_and(|r| r.starts_with("HTTP/1.1 200"))
        }),
        "uwsgi answers on port {port}"
    );
    let workers = children(server.pid());
    // The second look at a program not Python at its exec comes a second after it.
    std::thread::sleep(Duration::from_millis(2500));
    const SENT: usize = 12;
    let mut served_by = Vec::new();
    for i in 1..=SENT {
        let response = get_once(port, &format!("/items/{i}")).expect("a response");
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        let worker = response
            .lines()
            .find_map(|l| l.strip_prefix("X-Worker-Pid: "))
            .and_then(|pid| pid.trim().parse::<u32>().ok())
            .expect("X-Worker-Pid");
        let body = response.split_once("\r\n\r\n").unwrap().1.to_owned();
        served_by.push((i, worker, body));
    }
    std::thread::sleep(Duration::from_millis(500));
    let output = sensor.stop();
    let records = output.records();
    for (i, worker, body) in &served_by {
        assert!(
            workers.contains(worker),
            "{worker} is a worker of {workers:?}"
        );
        let target = format!("/items/{i}");
        let found: Vec<&Value> = records_of(&records, "server", *worker)
            .into_iter()
            .filter(|r| attr(r, "http.target") == target.as_str())
            .collect();
        assert_eq!(
            found.len(),
            1,
            "{target} in worker {worker}: {:#?}",
            summary(&found)
        );
        let record = found[0];
        assert_eq!(attr(record, "http.status_code"), 200, "{record:#}");
        assert_eq!(
            attr(record, "http.response.body"),
            body.as_str(),
            "{record:#}"
        );
        assert_eq!(
            record["resource"]["service.name"], "flask_app",
            "{record:#}"
        );
    }
    assert!(
        output.stderr.contains("a program embedding Python"),
        "the late discovery is logged: {}",
        output.stderr
    );
}

/// FastAPI under uvicorn and an httpx client, both started after the sensor, which watches
/// every Python process (no --pid): each exchange exact on both sides, the server named after
/// its ASGI module, the client after its own OTEL_SERVICE_NAME.
#[test]
fn fastapi_uvicorn_started_after_the_sensor_with_discovery() {
    let sensor = Sensor::start("fw-fastapi", &["run", "--output", "jsonl"]);
    let (server, port) = uvicorn(&[]);
    let mut client = Py::spawn(
        "httpx client",
        &["httpx_client.py"],
        &[("OTEL_SERVICE_NAME", "httpx-orders-client")],
    );
    client.expect_line("READY", LONG);
    let mut sent = Vec::new();
    sent.push(
        ask(
            &mut client,
            port,
            "GET",
            "/items/42?q=hello%20world&x=1",
            json!({"X-Test": "abc", "X-Api-Key": "key-123"}),
            None,
            "GET /items/{id}",
        )
        .0,
    );
    sent.push(
        ask(
            &mut client,
            port,
            "POST",
            "/echo",
            json!({"Content-Type": "application/json; charset=utf-8"}),
            Some(r#"{"order": 17, "items": ["a", "b"], "note": "\u00fcber"}"#),
            "POST /echo",
        )
        .0,
    );
    let (stream, _) = ask(
        &mut client,
        port,
        "GET",
        "/stream?parts=25",
        json!({}),
        None,
        "GET /stream",
    );
    assert_eq!(
        stream
            .response_headers
            .get("transfer-encoding")
            .map(String::as_str),
        Some("chunked"),
        "StreamingResponse is chunked on the wire"
    );
    sent.push(stream);
    sent.push(
        ask(
            &mut client,
            port,
            "GET",
            "/items/9000",
            json!({"Accept": "application/json"}),
            None,
            "GET /items/{id}",
        )
        .0,
    );
    std::thread::sleep(Duration::from_millis(500));
    let output = sensor.stop();
    let records = output.records();
    let servers = records_of(&records, "server", server.pid());
    let clients = records_of(&records, "client", client.pid());
    assert_eq!(
        servers.len(),
        sent.len(),
        "server records: {:#?}",
        summary(&servers)
    );
    assert_eq!(
        clients.len(),
        sent.len(),
        "client records: {:#?}",
        summary(&clients)
    );
    let client_side = Side::new(&clients, client.pid(), "httpx-orders-client");
    let server_side = Side::new(&servers, server.pid(), "fastapi_app");
    for exchange in &sent {
        check_both(exchange, &client_side, &server_side);
    }
    assert!(!output.stdout.contains("key-123"), "x-api-key is redacted");
}

/// Three requests written at once on one raw socket to uvicorn: three exact exchanges, in
/// order, on both sides.
#[test]
fn uvicorn_three_pipelined_requests() {
    let (server, port) = uvicorn(&[]);
    let mut client = Py::spawn(
        "pipeline client",
        &["pipeline_client.py", &port.to_string()],
        &[],
    );
    client.expect_line("READY", LONG);
    let sensor = Sensor::watching("fw-pipeline", &[server.pid(), client.pid()]);
    client.send_line("go");
    let res = result(&client);
    let sent = raw_exchanges(
        &res,
        port,
        &["GET /items/{id}", "POST /echo", "GET /items/{id}"],
    );
    assert_eq!(sent.len(), 3);
    std::thread::sleep(Duration::from_millis(500));
    let output = sensor.stop();
    let records = output.records();
    for (kind, pid, service) in [
        ("server", server.pid(), "fastapi_app"),
        ("client", client.pid(), "pipeline_client"),
    ] {
        let got = records_of(&records, kind, pid);
        assert_eq!(got.len(), 3, "{kind} records: {:#?}", summary(&got));
        for (record, exchange) in got.iter().zip(&sent) {
            check(record, exchange, kind, pid, service);
        }
    }
}

/// 2,000 requests on one keep-alive connection (a `requests` Session against uvicorn) that was
/// opened, and used, before the sensor started (adopted from /proc mid-stream): exactly 2,000
/// server and 2,000 client records, all on that one connection, each pairing request i with
/// response i, and nothing of the request made before the sensor.
#[test]
fn uvicorn_2000_keep_alive_requests() {
    const N: usize = 2000;
    let (server, port) = uvicorn(&[]);
    let mut client = Py::spawn("requests client", &["requests_client.py"], &[]);
    client.expect_line("READY", LONG);
    let (before, _) = ask(
        &mut client,
        port,
        "GET",
        "/items/1?before=sensor",
        json!({}),
        None,
        "GET /items/{id}",
    );
    let conn_port = before.client_port.expect("local port");
    let sensor = Sensor::watching("fw-keepalive", &[server.pid(), client.pid()]);
    client.send_line(
        &json!({"op": "burst", "base": format!("http://127.0.0.1:{port}"), "n": N}).to_string(),
    );
    let res = result(&client);
    let results = res.as_array().expect("burst results");
    assert_eq!(results.len(), N);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["status"], 200);
        assert_eq!(r["body"], format!("{{\"i\":{i}}}").as_str());
    }
    std::thread::sleep(Duration::from_millis(500));
    let output = sensor.stop();
    let records = output.records();
    for (kind, pid) in [("server", server.pid()), ("client", client.pid())] {
        let got = records_of(&records, kind, pid);
        assert_eq!(got.len(), N, "{kind} records (log:\n{})", output.stderr);
        let peer_key = if kind == "server" {
            "net.peer.port"
        } else {
            "net.host.port"
        };
        let conn_ports: BTreeSet<String> =
            got.iter().map(|r| attr(r, peer_key).to_string()).collect();
        assert_eq!(
            conn_ports,
            BTreeSet::from([conn_port.to_string()]),
            "{kind}: all on the connection opened before the sensor"
        );
        let mut seen = vec![false; N];
        for record in &got {
            let target = attr(record, "http.target").as_str().expect("target");
            let i: usize = target
                .strip_prefix("/n/")
                .and_then(|t| t.split_once("?i="))
                .and_then(|(a, b)| (a == b).then(|| a.parse().ok()).flatten())
                .unwrap_or_else(|| panic!("{kind}: unexpected target {target}"));
            assert!(!seen[i], "{kind}: request {i} recorded twice");
            seen[i] = true;
            assert_eq!(attr(record, "http.method"), "GET");
            assert_eq!(attr(record, "http.status_code"), 200, "{kind} {target}");
            assert_eq!(record["name"], "GET /n/{id}");
            assert_eq!(
                attr(record, "http.response.body"),
                &results[i]["body"],
                "{kind} {target}: paired with the wrong response"
            );
            assert_eq!(
                attr(record, "sensor.incomplete"),
                &Value::Null,
                "{kind} {target}"
            );
        }
        // Records come out in the order of the connection's exchanges.
        let order: Vec<&str> = got
            .iter()
            .map(|r| attr(r, "http.target").as_str().unwrap())
            .collect();
        let expected: Vec<String> = (0..N).map(|i| format!("/n/{i}?i={i}")).collect();
        assert!(order == expected, "{kind}: records out of order");
    }
}

/// 20 threads × 50 requests, each with its own id in the target and in X-Request-Id, echoed
/// by the server in the body and in a response header: 1,000 records on each side, each pairing
/// its request with its own response.
#[test]
fn uvicorn_20_threads_50_requests_each_paired_right() {
    const THREADS: usize = 20;
    const PER: usize = 50;
    let (server, port) = uvicorn(&[]);
    let mut client = Py::spawn("requests client", &["requests_client.py"], &[]);
    client.expect_line("READY", LONG);
    let metrics = format!("127.0.0.1:{}", sensor_e2e::free_port());
    let sensor = Sensor::start(
        "fw-threads",
        &[
            "run",
            "--pid",
            &server.pid().to_string(),
            "--pid",
            &client.pid().to_string(),
            "--output",
            "jsonl",
            "--metrics-addr",
            &metrics,
        ],
    );
    client.send_line(
        &json!({"op": "threads", "base": format!("http://127.0.0.1:{port}"),
                "threads": THREADS, "per": PER})
        .to_string(),
    );
    let res = result(&client);
    let results = res.as_array().expect("thread results");
    assert_eq!(results.len(), THREADS * PER);
    let mut bodies = std::collections::BTreeMap::new();
    for r in results {
        let id = r["id"].as_str().unwrap().to_owned();
        assert_eq!(r["status"], 200);
        let body: Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
        assert_eq!(body["id"], id.as_str());
        assert_eq!(body["header"], id.as_str());
        assert!(bodies.insert(id, r["body"].clone()).is_none());
    }
    std::thread::sleep(Duration::from_millis(500));
    // uvloop accepts with no address buffer; uvicorn's own getpeername/getsockname right after
    // give the sensor both ends, without reading /proc.
    assert_eq!(
        metric(&metrics, "addresses_from_proc"),
        Some(0),
        "uvicorn's connections needed /proc for their addresses"
    );
    let output = sensor.stop();
    let records = output.records();
    let client_ports: std::collections::BTreeMap<String, Value> =
        records_of(&records, "client", client.pid())
            .iter()
            .map(|r| (common::id_of(r, "client"), attr(r, "net.host.port").clone()))
            .collect();
    for record in records_of(&records, "server", server.pid()) {
        let id = common::id_of(record, "server");
        assert_eq!(
            Some(attr(record, "net.peer.port")),
            client_ports.get(&id),
            "server {id}: the client's port"
        );
        assert_eq!(attr(record, "net.host.port"), port, "server {id}");
    }
    for (kind, pid) in [("server", server.pid()), ("client", client.pid())] {
        let got = records_of(&records, kind, pid);
        assert_eq!(
            got.len(),
            THREADS * PER,
            "{kind} records (log:\n{})",
            output.stderr
        );
        let mut seen = BTreeSet::new();
        for record in &got {
            let id = common::id_of(record, kind);
            assert!(seen.insert(id.clone()), "{kind}: {id} recorded twice");
            let want = bodies
                .get(&id)
                .unwrap_or_else(|| panic!("{kind}: {id} was never sent"));
            assert_eq!(
                attr(record, "http.request.header.x-request-id"),
                id.as_str(),
                "{kind}"
            );
            assert_eq!(
                attr(record, "http.response.header.x-request-id"),
                id.as_str(),
                "{kind} {id}: paired with another request's response"
            );
            assert_eq!(attr(record, "http.response.body"), want, "{kind} {id}");
            assert_eq!(attr(record, "http.status_code"), 200, "{kind} {id}");
            assert_eq!(
                record["name"],
                "GET /id/{id}".replace("{id}", &id),
                "{kind}"
            );
            assert_eq!(
                attr(record, "sensor.incomplete"),
                &Value::Null,
                "{kind} {id}"
            );
        }
    }
}

/// A single-file Django app under gunicorn (two forked workers) and a `requests` client: each
/// exchange exact on both sides.
#[test]
fn django_gunicorn_records() {
    let server = Py::spawn(
        "gunicorn django",
        &[
            "-m",
            "gunicorn",
            "-c",
            "gunicorn_conf.py",
            "django_app:application",
        ],
        &[("GUNICORN_WORKERS", "2")],
    );
    let port: u16 = server.expect_line("READY", LONG).parse().unwrap();
    for _ in 0..2 {
        server.expect_line("WORKER", LONG);
    }
    let mut client = Py::spawn("requests client", &["requests_client.py"], &[]);
    client.expect_line("READY", LONG);
    let sensor = Sensor::watching("fw-django", &[server.pid(), client.pid()]);
    let mut sent: Vec<(Exchange, u32)> = Vec::new();
    for (method, target, headers, body, name) in [
        (
            "GET",
            "/api/items/42?q=django",
            json!({"X-Test": "django", "Cookie": "session=abc123"}),
            None,
            "GET /api/items/{id}",
        ),
        (
            "POST",
            "/api/echo",
            json!({"Content-Type": "application/json"}),
            Some(r#"{"framework": "django", "ok": true}"#),
            "POST /api/echo",
        ),
        (
            "POST",
            "/api/echo",
            json!({"Content-Type": "text/xml"}),
            Some("<order><id>5</id></order>"),
            "POST /api/echo",
        ),
        (
            "GET",
            "/api/items/3",
            json!({}),
            None,
            "GET /api/items/{id}",
        ),
    ] {
        let (exchange, res) = ask(&mut client, port, method, target, headers, body, name);
        sent.push((exchange, worker_of(&res)));
    }
    std::thread::sleep(Duration::from_millis(500));
    let output = sensor.stop();
    let records = output.records();
    let workers: BTreeSet<u32> = children(server.pid()).into_iter().collect();
    let mut servers: Vec<&Value> = Vec::new();
    for w in &workers {
        servers.extend(records_of(&records, "server", *w));
    }
    let clients = records_of(&records, "client", client.pid());
    assert_eq!(
        servers.len(),
        sent.len(),
        "server records: {:#?}",
        summary(&servers)
    );
    assert_eq!(
        clients.len(),
        sent.len(),
        "client records: {:#?}",
        summary(&clients)
    );
    for (exchange, worker) in &sent {
        assert!(workers.contains(worker), "served by a gunicorn worker");
        check(
            find(&servers, exchange, "server"),
            exchange,
            "server",
            *worker,
            "django_app",
        );
        check(
            find(&clients, exchange, "client"),
            exchange,
            "client",
            client.pid(),
            "requests_client",
        );
    }
    assert!(!output.stdout.contains("abc123"), "cookies are redacted");
}

/// A WebSocket between an aiohttp client and server, amid plain exchanges of the same client
/// session: the upgrade is one exchange (101) on each side, nothing in its frames becomes a
/// record — not even a text message that reads as an HTTP request — and the exchanges before
/// and after it are exact.
#[test]
fn aiohttp_websocket_is_one_exchange_and_its_frames_are_not_parsed() {
    let server = Py::spawn("aiohttp server", &["aiohttp_app.py"], &[]);
    let port: u16 = server.expect_line("READY", LONG).parse().unwrap();
    let mut client = Py::spawn("aiohttp client", &["aiohttp_client.py"], &[]);
    client.expect_line("READY", LONG);
    let sensor = Sensor::watching("fw-websocket", &[server.pid(), client.pid()]);
    let (before, _) = ask(
        &mut client,
        port,
        "GET",
        "/items/5",
        json!({}),
        None,
        "GET /items/{id}",
    );
    // The server's frames are not masked: these come back on the wire as they are.
    let hex = |text: &str| text.bytes().map(|b| format!("{b:02x}")).collect::<String>();
    let binary = [
        hex("GET /items/1 HTTP/1.1\r\nHost: x\r\n\r\n"),
        hex("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"),
        "00ff485454502f".to_owned(),
    ];
    client.send_line(
        &json!({"op": "websocket", "url": format!("http://127.0.0.1:{port}/ws"),
                "text": ["hello"], "binary": binary})
        .to_string(),
    );
    let socket = result(&client);
    assert_eq!(
        socket["replies"],
        json!(["echo:hello", binary[0], binary[1], binary[2]]),
        "{socket}"
    );
    let socket_port = socket["local_port"].as_u64().expect("local_port");
    let (after, _) = ask(
        &mut client,
        port,
        "POST",
        "/echo",
        json!({"Content-Type": "application/json"}),
        Some(r#"{"after": "websocket"}"#),
        "POST /echo",
    );
    std::thread::sleep(Duration::from_millis(500));
    let output = sensor.stop();
    let records = output.records();
    let servers = records_of(&records, "server", server.pid());
    let clients = records_of(&records, "client", client.pid());
    assert_eq!(servers.len(), 3, "server records: {:#?}", summary(&servers));
    assert_eq!(clients.len(), 3, "client records: {:#?}", summary(&clients));
    for (side, records, pid, service) in [
        ("server", &servers, server.pid(), "aiohttp_app"),
        ("client", &clients, client.pid(), "aiohttp_client"),
    ] {
        for exchange in [&before, &after] {
            check(find(records, exchange, side), exchange, side, pid, service);
        }
        let upgrades: Vec<&&Value> = records
            .iter()
            .filter(|r| attr(r, "http.target") == "/ws")
            .collect();
        assert_eq!(upgrades.len(), 1, "{side}: {:#?}", summary(records));
        let upgrade = upgrades[0];
        assert_eq!(attr(upgrade, "http.method"), "GET", "{upgrade:#}");
        assert_eq!(attr(upgrade, "http.status_code"), 101, "{upgrade:#}");
        assert_eq!(
            attr(upgrade, "http.request.header.upgrade"),
            "websocket",
            "{upgrade:#}"
        );
        assert_eq!(
            attr(upgrade, "http.response.header.upgrade"),
            "websocket",
            "{upgrade:#}"
        );
        let client_port = match side {
            "server" => attr(upgrade, "network.peer.port"),
            _ => attr(upgrade, "net.host.port"),
        };
        assert_eq!(client_port, socket_port, "{upgrade:#}");
    }
}

/// An aiohttp server and an aiohttp client (one keep-alive session): each exchange exact on
/// both sides.
#[test]
fn aiohttp_server_and_client_records() {
    let server = Py::spawn(
        "aiohttp server",
        &["aiohttp_app.py"],
        &[("HT_SERVICE_NAME", "aio-api")],
    );
    let port: u16 = server.expect_line("READY", LONG).parse().unwrap();
    let mut client = Py::spawn("aiohttp client", &["aiohttp_client.py"], &[]);
    client.expect_line("READY", LONG);
    let sensor = Sensor::watching("fw-aiohttp", &[server.pid(), client.pid()]);
    let mut sent = Vec::new();
    for (method, target, headers, body, name) in [
        (
            "GET",
            "/items/77?q=aio&flag",
            json!({"X-Test": "aio", "User-Agent": "aio-e2e/2"}),
            None,
            "GET /items/{id}",
        ),
        (
            "POST",
            "/echo",
            json!({"Content-Type": "application/json", "Authorization": "Basic dXNlcjpwYXNz"}),
            Some(r#"{"client": "aiohttp", "list": [1, 2, 3]}"#),
            "POST /echo",
        ),
        (
            "POST",
            "/echo",
            json!({"Content-Type": "application/graphql"}),
            Some("query { items { id } }"),
            "POST /echo",
        ),
        ("GET", "/items/78", json!({}), None, "GET /items/{id}"),
    ] {
        sent.push(ask(&mut client, port, method, target, headers, body, name).0);
    }
    let ports: BTreeSet<Option<u16>> = sent.iter().map(|e| e.client_port).collect();
    assert_eq!(
        ports.len(),
        1,
        "the aiohttp session kept one connection alive"
    );
    std::thread::sleep(Duration::from_millis(500));
    let output = sensor.stop();
    let records = output.records();
    let servers = records_of(&records, "server", server.pid());
    let clients = records_of(&records, "client", client.pid());
    assert_eq!(
        servers.len(),
        sent.len(),
        "server records: {:#?}",
        summary(&servers)
    );
    assert_eq!(
        clients.len(),
        sent.len(),
        "client records: {:#?}",
        summary(&clients)
    );
    for exchange in &sent {
        check(
            find(&servers, exchange, "server"),
            exchange,
            "server",
            server.pid(),
            "aio-api",
        );
        check(
            find(&clients, exchange, "client"),
            exchange,
            "client",
            client.pid(),
            "aiohttp_client",
        );
    }
    assert!(
        !output.stdout.contains("dXNlcjpwYXNz"),
        "authorization is redacted"
    );
}

/// Django's own development server as people run it, `python manage.py runserver` in the
/// project's directory, started after the sensor (discovery): every exchange exact, the
/// service named after the project (the directory the relative `manage.py` runs in), not
/// `manage`.
#[test]
fn django_runserver_named_after_its_project() {
    let project_parent = sensor_e2e::scratch_dir("django-runserver");
    let made = std::process::Command::new(sensor_e2e::python())
        .args(["-m", "django", "startproject", "shopfront"])
        .current_dir(&project_parent)
        .status()
        .expect("run django startproject");
    assert!(made.success(), "django startproject shopfront: {made}");
    let sensor = Sensor::start("fw-django-runserver", &["run", "--output", "jsonl"]);
    let port = sensor_e2e::free_port();
    let mut command = std::process::Command::new(sensor_e2e::python());
    command
        .args([
            "manage.py",
            "runserver",
            &format!("127.0.0.1:{port}"),
            "--noreload",
        ])
        .current_dir(project_parent.join("shopfront"));
    let server = Py::spawn_command("django runserver", command, &[]);
    assert!(
        sensor_e2e::wait_until(LONG, || {
            get_once(port, "/admin/login/?ready").is_some_and(|r| r.starts_with("HTTP/1.1 200"))
        }),
        "runserver answers on port {port}"
    );
    let mut served = Vec::new();
    for target in [
        "/admin/login/",
        "/admin/login/?next=/admin/",
        "/missing/page",
    ] {
        let response = get_once(port, target).expect("a response");
        let status: u64 = response[9..12].parse().expect("a status code");
        served.push((target, status));
    }
    std::thread::sleep(Duration::from_millis(500));
    let output = sensor.stop();
    let records = output.records();
    let from_server = records_of(&records, "server", server.pid());
    for (target, status) in &served {
        let found: Vec<&Value> = from_server
            .iter()
            .copied()
            .filter(|r| attr(r, "http.target") == *target)
            .collect();
        assert_eq!(found.len(), 1, "{target}: {:#?}", summary(&from_server));
        let record = found[0];
        assert_eq!(attr(record, "http.status_code"), *status, "{record:#}");
        assert_eq!(
            record["resource"]["service.name"], "shopfront",
            "{record:#}"
        );
    }
    assert_eq!(served[2].1, 404, "{served:?}");
}

/// A process started after the sensor (discovery, no --pid) that makes one request and exits at
/// once: its client record is there, exact, under the service name its environment gave it.
#[test]
fn short_lived_process_record_under_its_service_name() {
    let server = Py::spawn("aiohttp server", &["aiohttp_app.py"], &[]);
    let port: u16 = server.expect_line("READY", LONG).parse().unwrap();
    let sensor = Sensor::start("fw-short", &["run", "--output", "jsonl"]);
    let job = Py::spawn(
        "short-lived job",
        &[
            "short_lived.py",
            &port.to_string(),
            "/items/12345?run=nightly",
        ],
        &[("HT_SERVICE_NAME", "nightly-report-job")],
    );
    let pid = job.pid();
    let res = result(&job);
    let status = job.wait(LONG);
    assert!(status.success(), "the job exited with {status}");
    let exchange = Exchange::from_client(
        &res,
        "GET",
        "/items/12345?run=nightly",
        port,
        "GET /items/{id}",
    );
    std::thread::sleep(Duration::from_millis(500));
    let output = sensor.stop();
    let records = output.records();
    let clients = records_of(&records, "client", pid);
    assert_eq!(
        clients.len(),
        1,
        "client records of the job: {clients:#?}\nlog:\n{}",
        output.stderr
    );
    check(clients[0], &exchange, "client", pid, "nightly-report-job");
    assert!(
        clients[0]["resource"]["process.command_line"]
            .as_str()
            .unwrap_or("")
            .contains("short_lived.py"),
        "command line from exec time: {}",
        clients[0]["resource"]
    );
    // The server was running before the sensor (discovered from /proc): its side too.
    let servers = records_of(&records, "server", server.pid());
    assert_eq!(servers.len(), 1, "server records: {servers:#?}");
    check(servers[0], &exchange, "server", server.pid(), "aiohttp_app");
}

/// Services moved from the Hypertrace agent, which still name its configuration file in
/// `HT_CONFIG_FILE` and set no `HT_SERVICE_NAME` (the agent never exported the file's name):
/// a uvicorn server started in its own directory with a relative path to the file (written in
/// the agent's camelCase keys) is named by the file's `serviceName` and carries its
/// `resourceAttributes`; a job whose file says `enabled: false` is not watched, and one whose
/// `HT_SERVICE_NAME` is set too is named by the variable. All started after the sensor.
#[test]
fn agent_config_files_name_and_opt_out_their_processes() {
    let dir = sensor_e2e::scratch_dir("agent-files");
    std::fs::write(
        dir.join("agent.yaml"),
        "serviceName: orders-from-agent-file\nenabled: true\nresourceAttributes:\n  team: payments\nreporting:\n  endpoint: http://controller:9009\n  protocol: grpc\n  metricReporterType: None\ndataCapture:\n  bodyMaxSizeBytes: 131072\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("disabled.yaml"),
        "service_name: must-not-appear\nenabled: false\n",
    )
    .unwrap();
    let sensor = Sensor::start("fw-agent-files", &["run", "--output", "jsonl"]);
    let mut command = std::process::Command::new(sensor_e2e::python());
    command
        .args([
            sensor_e2e::apps_dir()
                .join("serve_uvicorn.py")
                .to_str()
                .unwrap(),
            "fastapi_app:app",
        ])
        .current_dir(&dir);
    let server = Py::spawn_command(
        "uvicorn with an agent file",
        command,
        &[("HT_CONFIG_FILE", "agent.yaml")],
    );
    let port: u16 = server.expect_line("READY", LONG).parse().unwrap();
    let disabled = dir.join("disabled.yaml");
    let run_job = |env: &[(&str, &str)]| {
        let job = Py::spawn(
            "short-lived job",
            &["short_lived.py", &port.to_string(), "/items/7?run=agent"],
            env,
        );
        let pid = job.pid();
        let res = result(&job);
        assert!(job.wait(LONG).success(), "the job failed");
        (pid, res)
    };
    let (opted_out, opted_out_res) = run_job(&[("HT_CONFIG_FILE", disabled.to_str().unwrap())]);
    let (named, named_res) = run_job(&[
        ("HT_CONFIG_FILE", disabled.to_str().unwrap()),
        ("HT_ENABLED", "true"),
        ("HT_SERVICE_NAME", "nightly-from-env"),
    ]);
    std::thread::sleep(Duration::from_millis(500));
    let output = sensor.stop();
    let records = output.records();
    let servers = records_of(&records, "server", server.pid());
    assert_eq!(
        servers.len(),
        2,
        "server records: {servers:#?}\nlog:\n{}",
        output.stderr
    );
    for (record, res) in servers.iter().zip([&opted_out_res, &named_res]) {
        let exchange =
            Exchange::from_client(res, "GET", "/items/7?run=agent", port, "GET /items/{id}");
        check(
            record,
            &exchange,
            "server",
            server.pid(),
            "orders-from-agent-file",
        );
        assert_eq!(
            record["resource"]["team"], "payments",
            "the file's resourceAttributes: {}",
            record["resource"]
        );
    }
    assert_eq!(
        records_of(&records, "client", opted_out).len(),
        0,
        "a process whose agent file says enabled: false is not watched"
    );
    let clients = records_of(&records, "client", named);
    assert_eq!(clients.len(), 1, "client records: {clients:#?}");
    let exchange = Exchange::from_client(
        &named_res,
        "GET",
        "/items/7?run=agent",
        port,
        "GET /items/{id}",
    );
    check(clients[0], &exchange, "client", named, "nightly-from-env");
    assert!(
        !output.stdout.contains("must-not-appear"),
        "no record is named after the opted-out file"
    );
}

/// The exchanges a raw-socket client (`pipeline_client.py`, `vectored_client.py`) reports:
/// requests exactly as written, responses exactly as read.
fn raw_exchanges(res: &Value, port: u16, names: &[&str]) -> Vec<Exchange> {
    let local_port = res["local_port"].as_u64().unwrap() as u16;
    res["requests"]
        .as_array()
        .unwrap()
        .iter()
        .zip(res["responses"].as_array().unwrap())
        .zip(names)
        .map(|((req, resp), name)| Exchange {
            method: req["method"].as_str().unwrap().to_owned(),
            target: req["target"].as_str().unwrap().to_owned(),
            authority: format!("127.0.0.1:{port}"),
            scheme: "http",
            server_port: port,
            client_port: Some(local_port),
            request_headers: common::header_map(&req["headers"]),
            request_body: req["body"].as_str().unwrap().to_owned(),
            status: resp["status"].as_u64().unwrap() as u16,
            response_headers: common::header_map(&resp["headers"]),
            response_body: resp["body"].as_str().unwrap().to_owned(),
            name: (*name).to_owned(),
        })
        .collect()
}

/// Large bodies moved by vectored syscalls, as asyncio's writelines does on Python >= 3.12:
/// a 1 MB request body written with its head in one sendmsg([head, body]) and a 300 KB
/// response read with recvmsg_into over two buffers are each recorded up to the limit and
/// flagged truncated, on both sides (uvicorn is the server).
#[test]
fn vectored_io_large_bodies_truncated_at_the_limit() {
    let (server, port) = uvicorn(&[]);
    let mut client = Py::spawn(
        "vectored client",
        &["vectored_client.py", &port.to_string()],
        &[],
    );
    client.expect_line("READY", LONG);
    let sensor = Sensor::watching("fw-vectored", &[server.pid(), client.pid()]);
    client.send_line("go");
    let res = result(&client);
    let sent = raw_exchanges(&res, port, &["POST /upload", "GET /big"]);
    assert_eq!(sent[0].request_body.len(), 1 << 20);
    assert_eq!(
        sent[0].response_body,
        r#"{"received":1048576}"#.replace(':', ": ")
    );
    assert_eq!(sent[1].response_body.len(), 307_200);
    std::thread::sleep(Duration::from_millis(500));
    let output = sensor.stop();
    let records = output.records();
    for (kind, pid, service) in [
        ("server", server.pid(), "fastapi_app"),
        ("client", client.pid(), "vectored_client"),
    ] {
        let got = records_of(&records, kind, pid);
        assert_eq!(got.len(), 2, "{kind} records: {:#?}", summary(&got));
        for (record, exchange) in got.iter().zip(&sent) {
            check(record, exchange, kind, pid, service);
        }
    }
}
