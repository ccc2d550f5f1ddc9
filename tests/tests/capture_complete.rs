//! End to end: completeness of the kernel capture (issue: every socket syscall, pre-existing
//! sockets, forks, bounded copies, classification, loss accounting).

use std::{collections::BTreeMap, time::Duration};

use sensor_e2e::{
    Py, Sensor, attr, children, python, records_of, scratch_dir, trace, wait_until, without_colours,
};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(30);

fn trace_lines(stdout: &str) -> Vec<trace::TraceLine> {
    stdout.lines().filter_map(trace::parse_line).collect()
}

fn counters(stderr: &str) -> BTreeMap<String, u64> {
    let line = stderr
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("kernel counters: "))
        .unwrap_or_else(|| panic!("no kernel counters line in:\n{stderr}"));
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.parse().unwrap()))
        .collect()
}

fn pattern(size: usize) -> Vec<u8> {
    let unit = br#"{"k": "0123456789abcdefghijklmnopqrstuvwxyz"},"#;
    let mut body = b"[".to_vec();
    while body.len() < size {
        body.extend_from_slice(unit);
    }
    body.truncate(size);
    body
}

fn result(py: &Py) -> Value {
    serde_json::from_str(&py.expect_line("RESULT", LONG)).unwrap()
}

/// A 20 MB upload over one socket: the server's stream ends exactly at the bytes sent, what was
/// copied plus what was counted as not copied is exactly that, and the head and the first body
/// bytes are byte-exact.
#[test]
fn upload_of_20_mb_is_captured_or_counted_exactly() {
    const SIZE: usize = 20 << 20;
    let server = Py::spawn("upload server", &["capture_servers.py", "upload"], &[]);
    let port = server.expect_line("READY", LONG);
    let mut client = Py::spawn(
        "upload client",
        &["capture_clients.py", "upload", &port, &SIZE.to_string()],
        &[],
    );
    client.expect_line("READY", LONG);
    let sensor = Sensor::start(
        "upload",
        &[
            "trace",
            "--pid",
            &server.pid().to_string(),
            "--payload",
            "--payload-bytes",
            "100000",
        ],
    );
    client.send_line("go");
    let result = result(&client);
    let head_len = result["head_len"].as_u64().unwrap() as usize;
    assert!(
        result["response"]
            .as_str()
            .unwrap()
            .ends_with(&format!("{{\"received\": {SIZE}}}"))
    );
    std::thread::sleep(Duration::from_millis(500));
    let output = sensor.stop();
    let lines = trace_lines(&output.stdout);
    let ingress: Vec<_> = lines.iter().filter(|l| l.dir == "in").collect();
    assert!(!ingress.is_empty(), "upload captured: {}", output.stderr);
    let end = ingress
        .iter()
        .map(|l| l.syscall_offset + l.len)
        .max()
        .unwrap();
    assert_eq!(
        end as usize,
        head_len + SIZE,
        "stream offsets account for every byte sent"
    );
    let copied: u64 = ingress.iter().map(|l| l.copied).sum();
    let kernel = counters(&output.stderr);
    assert_eq!(
        copied + kernel["truncated_bytes"] + kernel["skipped_bytes"],
        (head_len + SIZE) as u64,
        "copied + counted-missing = bytes sent; counters {kernel:?}"
    );
    // The contiguous prefix from offset 0: head then the first body bytes, exact.
    let mut prefix = Vec::new();
    for line in &ingress {
        if line.offset as usize != prefix.len() {
            break;
        }
        prefix.extend_from_slice(&line.payload);
    }
    assert!(
        prefix.len() > head_len + 16 * 1024,
        "at least the first chunk is contiguous"
    );
    assert!(prefix.starts_with(b"POST /upload HTTP/1.1\r\n"));
    let body = pattern(SIZE);
    assert_eq!(&prefix[head_len..], &body[..prefix.len() - head_len]);
    client.wait(LONG);
}

fn served_with(mode: &str, via: &str, extra: Option<&str>) {
    let mut args = vec!["capture_servers.py", mode];
    if let Some(extra) = extra {
        args.push(extra);
    }
    let server = Py::spawn(mode, &args, &[]);
    let port = server.expect_line("READY", LONG);
    let mut client = Py::spawn("get client", &["capture_clients.py", "get", &port], &[]);
    client.expect_line("READY", LONG);
    let sensor = Sensor::start(
        mode,
        &[
            "trace",
            "--pid",
            &server.pid().to_string(),
            "--pid",
            &client.pid().to_string(),
            "--payload",
            "--payload-bytes",
            "100000",
        ],
    );
    client.send_line("go");
    let result = result(&client);
    std::thread::sleep(Duration::from_millis(300));
    let output = sensor.stop();
    let lines = trace_lines(&output.stdout);
    let server_out: Vec<_> = lines
        .iter()
        .filter(|l| l.pid == server.pid() && l.dir == "out")
        .collect();
    assert!(
        server_out.iter().any(|l| l.via == via),
        "{mode}: a {via} record: {}",
        output.stdout
    );
    let end = server_out
        .iter()
        .map(|l| l.syscall_offset + l.len)
        .max()
        .unwrap();
    assert_eq!(
        end,
        result["response_len"].as_u64().unwrap(),
        "{mode}: the server's stream ends where the client's read ended"
    );
    let client_in: Vec<u8> = lines
        .iter()
        .filter(|l| l.pid == client.pid() && l.dir == "in")
        .flat_map(|l| l.payload.clone())
        .collect();
    assert_eq!(
        client_in.len() as u64,
        result["response_len"].as_u64().unwrap()
    );
    if via != "sendfile" {
        let server_bytes: Vec<u8> = server_out.iter().flat_map(|l| l.payload.clone()).collect();
        assert_eq!(
            server_bytes, client_in,
            "{mode}: sent bytes equal received bytes"
        );
    } else {
        let sendfile: Vec<_> = server_out.iter().filter(|l| l.via == "sendfile").collect();
        let counted: u64 = sendfile.iter().map(|l| l.len).sum();
        assert!(
            sendfile.iter().all(|l| l.copied == 0),
            "sendfile bytes are counted, not copied"
        );
        let head_len = result["response_head"].as_str().unwrap().len() as u64 + 4;
        assert_eq!(counted + head_len, result["response_len"].as_u64().unwrap());
        assert_eq!(counters(&output.stderr)["sendfile_bytes"], counted);
    }
    client.wait(LONG);
}

/// writev (as uvloop writes), sendmsg and sendfile: captured, or for sendfile counted, exactly.
#[test]
fn writev_sendmsg_and_sendfile() {
    served_with("writev", "vec", None);
    served_with("sendmsg", "msg", None);
    let dir = scratch_dir("sendfile");
    let file = dir.join("payload.bin");
    std::fs::write(&file, vec![b'z'; 200_000]).unwrap();
    served_with("sendfile", "sendfile", Some(file.to_str().unwrap()));
}

/// A keep-alive connection opened before the sensor starts: its next request is captured on
/// both ends, with addresses and roles. The asyncio server waits for readiness before reading,
/// so its read starts after the sensor; with the arguments remembered at entry (the fallback
/// for kernels without BTF) this still holds.
#[test]
fn connection_opened_before_the_sensor() {
    let body = r#"{"target": "/hello?second=1"}"#;
    next_request_on_a_connection_opened_before_the_sensor("asyncio_server.py", body, &[]);
    next_request_on_a_connection_opened_before_the_sensor(
        "asyncio_server.py",
        body,
        &[("HT_SENSOR_SYSCALL_ARGUMENTS_AT_ENTRY", "true")],
    );
}

/// A blocking server (http.server) is already inside its `recv` on the keep-alive connection
/// when the sensor starts: the call's arguments are read at its exit, so the request it returns
/// is captured.
#[test]
fn read_already_blocked_when_the_sensor_starts() {
    next_request_on_a_connection_opened_before_the_sensor(
        "http_server.py",
        r#"{"hello": "world", "query": "second=1"}"#,
        &[],
    );
}

/// Runs `server` (an app printing "READY <port>"), opens a keep-alive connection with one
/// exchange, starts the sensor with `env`, and checks the second exchange (answered with
/// `body`) on both ends.
fn next_request_on_a_connection_opened_before_the_sensor(
    server: &str,
    body: &str,
    env: &[(&str, &str)],
) {
    let server = Py::spawn("preexisting-server", &[server], &[]);
    let port: u16 = server.expect_line("READY", LONG).parse().unwrap();
    let mut client = Py::spawn(
        "keepalive",
        &["capture_clients.py", "keepalive", &port.to_string()],
        &[],
    );
    client.expect_line("READY", LONG);
    let sensor = Sensor::start_with_env(
        "preexisting",
        &[
            "run",
            "--pid",
            &server.pid().to_string(),
            "--pid",
            &client.pid().to_string(),
            "--output",
            "jsonl",
        ],
        env,
    );
    client.send_line("go");
    let result = result(&client);
    std::thread::sleep(Duration::from_millis(500));
    let output = sensor.stop();
    let at_entry = !env.is_empty();
    let mode = if at_entry {
        "payload_arguments=\"remembered at entry\""
    } else {
        "payload_arguments=\"read at exit\""
    };
    assert!(
        without_colours(&output.stderr).contains(mode),
        "the sensor says {mode}: {}",
        output.stderr
    );
    let records = output.records();
    let servers = records_of(&records, "server", server.pid());
    let clients = records_of(&records, "client", client.pid());
    assert_eq!(servers.len(), 1, "{records:#?}\n{}", output.stderr);
    assert_eq!(clients.len(), 1, "{records:#?}");
    for record in [servers[0], clients[0]] {
        assert_eq!(attr(record, "http.target"), "/hello?second=1");
        assert_eq!(attr(record, "http.request.header.x-second"), "yes");
        assert_eq!(attr(record, "http.status_code"), 200);
        assert_eq!(attr(record, "http.response.body"), &result["body"]);
        assert_eq!(result["body"], body);
    }
    assert_eq!(attr(servers[0], "net.host.port"), port);
    assert_eq!(attr(servers[0], "net.peer.port"), &result["local_port"]);
    assert_eq!(attr(clients[0], "net.peer.port"), port);
    assert_eq!(attr(clients[0], "net.host.port"), &result["local_port"]);
    client.wait(LONG);
}

/// gunicorn with one sync worker serving `capture_wsgi:app` on `bind`; logs go to `dir`.
fn gunicorn_capture_app(bind: &str, dir: &std::path::Path) -> std::process::Child {
    let gunicorn = python().parent().unwrap().join("gunicorn");
    std::process::Command::new(gunicorn)
        .args(["-w", "1", "-b", bind, "capture_wsgi:app"])
        .current_dir(sensor_e2e::apps_dir())
        .stdout(std::fs::File::create(dir.join("out")).unwrap())
        .stderr(std::fs::File::create(dir.join("err")).unwrap())
        .spawn()
        .unwrap()
}

/// A gunicorn worker forked after the sensor started: its very first request is captured.
#[test]
fn gunicorn_worker_forked_after_start() {
    let dir = scratch_dir("gunicorn-fork");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut master = gunicorn_capture_app(&format!("127.0.0.1:{port}"), &dir);
    let master_pid = master.id();
    assert!(
        wait_until(LONG, || children(master_pid).len() == 1),
        "gunicorn started one worker"
    );
    let old_worker = children(master_pid)[0];
    let sensor = Sensor::watching("gunicorn-fork", &[master_pid]);
    unsafe { libc::kill(old_worker as i32, libc::SIGTERM) };
    assert!(
        wait_until(LONG, || {
            let kids = children(master_pid);
            kids.len() == 1 && kids[0] != old_worker
        }),
        "gunicorn replaced its worker"
    );
    let new_worker = children(master_pid)[0];
    let mut body = String::new();
    assert!(wait_until(LONG, || {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(mut s) => {
                use std::io::{Read, Write};
                s.write_all(b"GET /first?w=new HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .unwrap();
                let mut out = String::new();
                s.read_to_string(&mut out).unwrap();
                body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
                true
            }
            Err(_) => false,
        }
    }));
    assert!(
        body.contains(&format!("\"pid\": {new_worker}")),
        "served by the new worker: {body}"
    );
    std::thread::sleep(Duration::from_millis(500));
    let output = sensor.stop();
    unsafe { libc::kill(master_pid as i32, libc::SIGTERM) };
    let _ = master.wait();
    let records = output.records();
    let served = records_of(&records, "server", new_worker);
    assert_eq!(served.len(), 1, "{records:#?}\n{}", output.stderr);
    assert_eq!(attr(served[0], "http.target"), "/first?w=new");
    assert_eq!(attr(served[0], "http.response.body"), body.as_str());
    assert_eq!(served[0]["resource"]["service.name"], "capture_wsgi");
}

/// A binary protocol and an HTTP/2 preface on watched sockets: no payload leaves the kernel,
/// and the per-protocol counters show both connections.
#[test]
fn binary_and_http2_are_ignored_and_counted() {
    let server = Py::spawn("binary server", &["capture_servers.py", "binary"], &[]);
    let port = server.expect_line("READY", LONG);
    let mut binary = Py::spawn(
        "binary client",
        &["capture_clients.py", "binary", &port],
        &[],
    );
    binary.expect_line("READY", LONG);
    let h2_server = Py::spawn("h2 target", &["capture_servers.py", "binary"], &[]);
    let h2_port = h2_server.expect_line("READY", LONG);
    let mut h2 = Py::spawn("h2 client", &["capture_clients.py", "h2", &h2_port], &[]);
    h2.expect_line("READY", LONG);
    let pids: Vec<String> = [server.pid(), binary.pid(), h2.pid()]
        .iter()
        .map(|p| p.to_string())
        .collect();
    let sensor = Sensor::start(
        "ignored",
        &[
            "trace",
            "--pid",
            &pids[0],
            "--pid",
            &pids[1],
            "--pid",
            &pids[2],
            "--payload",
        ],
    );
    binary.send_line("go");
    assert_eq!(result(&binary)["received"], 16);
    h2.send_line("go");
    result(&h2);
    std::thread::sleep(Duration::from_millis(300));
    let output = sensor.stop();
    assert!(
        trace_lines(&output.stdout).is_empty(),
        "no payload records: {}",
        output.stdout
    );
    let kernel = counters(&output.stderr);
    assert_eq!(kernel["ignored_http2_connections"], 1, "{kernel:?}");
    assert_eq!(
        kernel["ignored_other_connections"], 2,
        "both ends of the binary protocol: {kernel:?}"
    );
    assert_eq!(kernel["copied_bytes"], 0);
}

/// A dup'd socket and close_range: the duplicate carries on the same connection; after
/// close_range the descriptor number is reused by a file whose bytes are never captured.
#[test]
fn dup_and_close_range() {
    let dir = scratch_dir("dup");
    let file = dir.join("marker.txt");
    std::fs::write(&file, "FILEBYTES-AFTER-CLOSE-RANGE ".repeat(100)).unwrap();
    let server = Py::spawn("http_server", &["http_server.py"], &[]);
    let port = server.expect_line("READY", LONG);
    let mut client = Py::spawn(
        "dup client",
        &["capture_clients.py", "dup", &port, file.to_str().unwrap()],
        &[],
    );
    client.expect_line("READY", LONG);
    let sensor = Sensor::start(
        "dup",
        &[
            "trace",
            "--pid",
            &client.pid().to_string(),
            "--payload",
            "--payload-bytes",
            "100000",
        ],
    );
    client.send_line("go");
    let result = result(&client);
    assert_eq!(result["bodies"].as_array().unwrap().len(), 3);
    std::thread::sleep(Duration::from_millis(300));
    let output = sensor.stop();
    assert!(
        !output.stdout.contains("FILEBYTES"),
        "file bytes after close_range were captured"
    );
    let lines = trace_lines(&output.stdout);
    let streams = trace::streams(&lines);
    assert_eq!(
        streams.len(),
        1,
        "one connection through both descriptors: {streams:#?}"
    );
    let stream = streams.values().next().unwrap();
    let egress = String::from_utf8_lossy(&stream.egress);
    let targets: Vec<&str> = egress
        .split("\r\n\r\n")
        .filter_map(|r| r.strip_prefix("GET "))
        .map(|r| r.split(' ').next().unwrap())
        .collect();
    assert_eq!(
        targets,
        [
            "/hello?via=original",
            "/hello?via=dup",
            "/hello?via=dup-after-close"
        ]
    );
    let ingress = String::from_utf8_lossy(&stream.ingress);
    for body in result["bodies"].as_array().unwrap() {
        assert!(ingress.contains(body.as_str().unwrap()));
    }
    client.wait(LONG);
}

/// Unix-domain stream sockets are captured like TCP (gunicorn behind nginx): a gunicorn bound to
/// a unix socket serves a raw HTTP client over it.
#[test]
fn unix_socket_server() {
    let dir = scratch_dir("unix");
    let socket_path = dir.join("app.sock");
    let mut master = gunicorn_capture_app(&format!("unix:{}", socket_path.display()), &dir);
    let master_pid = master.id();
    assert!(wait_until(LONG, || socket_path.exists()
        && children(master_pid).len() == 1));
    let worker = children(master_pid)[0];
    let sensor = Sensor::watching("unix", &[master_pid]);
    let body = {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&socket_path).unwrap();
        s.write_all(b"GET /over-unix?x=1 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out.split("\r\n\r\n").nth(1).unwrap_or("").to_owned()
    };
    assert!(body.contains("\"path\": \"/over-unix\""), "{body}");
    std::thread::sleep(Duration::from_millis(500));
    let output = sensor.stop();
    unsafe { libc::kill(master_pid as i32, libc::SIGTERM) };
    let _ = master.wait();
    let records = output.records();
    let served = records_of(&records, "server", worker);
    assert_eq!(served.len(), 1, "{records:#?}\n{}", output.stderr);
    assert_eq!(attr(served[0], "http.target"), "/over-unix?x=1");
    assert_eq!(attr(served[0], "http.status_code"), 200);
    assert_eq!(attr(served[0], "http.response.body"), body.as_str());
}
