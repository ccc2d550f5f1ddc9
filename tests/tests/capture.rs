//! End to end: the kernel capture path, seen through `sensor trace --payload`.

use std::time::Duration;

use sensor_e2e::{Py, Sensor, apps_dir, scratch_dir, trace};

const LONG: Duration = Duration::from_secs(30);

fn trace_lines(stdout: &str) -> Vec<trace::TraceLine> {
    stdout.lines().filter_map(trace::parse_line).collect()
}

fn command(method: &str, url: &str, headers: &str, body: Option<&str>) -> String {
    let body = match body {
        Some(b) => serde_json::Value::String(b.to_owned()),
        None => serde_json::Value::Null,
    };
    serde_json::json!({
        "method": method,
        "url": url,
        "headers": serde_json::from_str::<serde_json::Value>(headers).unwrap(),
        "body": body,
    })
    .to_string()
}

/// http.server and a urllib client, both watched: every byte each side sent is what the other
/// side received, captured in order, with the right addresses and roles.
#[test]
fn streams_are_byte_exact_on_both_sides() {
    let server = Py::spawn("http_server", &["http_server.py"], &[]);
    let port: u16 = server.expect_line("READY", LONG).parse().unwrap();
    let mut client = Py::spawn("urllib_client", &["urllib_client.py"], &[]);
    client.expect_line("READY", LONG);
    let (server_pid, client_pid) = (server.pid().to_string(), client.pid().to_string());
    let sensor = Sensor::start(
        "trace-exact",
        &[
            "trace",
            "--pid",
            &server_pid,
            "--pid",
            &client_pid,
            "--payload",
            "--payload-bytes",
            "1000000",
        ],
    );
    let base = format!("http://127.0.0.1:{port}");
    client.send_line(&command(
        "GET",
        &format!("{base}/hello?x=1&y=two"),
        r#"{"X-Test": "abc"}"#,
        None,
    ));
    let get: serde_json::Value = serde_json::from_str(&client.expect_line("RESULT", LONG)).unwrap();
    let post_body = r#"{"name": "caf\u00e9", "n": 1}"#;
    client.send_line(&command(
        "POST",
        &format!("{base}/echo"),
        r#"{"Content-Type": "application/json"}"#,
        Some(post_body),
    ));
    let post: serde_json::Value =
        serde_json::from_str(&client.expect_line("RESULT", LONG)).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let output = sensor.stop();
    let lines = trace_lines(&output.stdout);
    let streams = trace::streams(&lines);

    let client_conns: Vec<_> = streams.values().filter(|s| s.pid == client.pid()).collect();
    let server_conns: Vec<_> = streams.values().filter(|s| s.pid == server.pid()).collect();
    assert_eq!(
        client_conns.len(),
        2,
        "two client connections: {streams:#?}"
    );
    assert_eq!(
        server_conns.len(),
        2,
        "two server connections: {streams:#?}"
    );
    for (result, request_line) in [
        (&get, "GET /hello?x=1&y=two HTTP/1.1\r\n"),
        (&post, "POST /echo HTTP/1.1\r\n"),
    ] {
        let local_port = result["local_port"].as_u64().unwrap();
        let client_side = client_conns
            .iter()
            .find(|s| s.ends == format!("127.0.0.1:{local_port}->127.0.0.1:{port}"))
            .unwrap_or_else(|| {
                panic!("client connection from port {local_port}: {client_conns:#?}")
            });
        assert_eq!(client_side.role, "client");
        let server_side = server_conns
            .iter()
            .find(|s| s.ends == format!("127.0.0.1:{port}->127.0.0.1:{local_port}"))
            .unwrap_or_else(|| panic!("server connection to port {local_port}: {server_conns:#?}"));
        assert_eq!(server_side.role, "server");
        assert!(client_side.egress.starts_with(request_line.as_bytes()));
        assert_eq!(
            client_side.egress, server_side.ingress,
            "request bytes differ between the sides"
        );
        assert_eq!(
            client_side.ingress, server_side.egress,
            "response bytes differ between the sides"
        );
        let body = result["body"].as_str().unwrap().as_bytes();
        assert!(server_side.egress.starts_with(b"HTTP/1.1 200 OK\r\n"));
        assert!(
            server_side.egress.ends_with(body),
            "response ends with the body the client read"
        );
    }
    let get_request = &client_conns
        .iter()
        .find(|s| s.egress.starts_with(b"GET "))
        .unwrap()
        .egress;
    assert!(String::from_utf8_lossy(get_request).contains("\r\nX-Test: abc\r\n"));
    let post_request = &client_conns
        .iter()
        .find(|s| s.egress.starts_with(b"POST "))
        .unwrap()
        .egress;
    assert!(post_request.ends_with(post_body.as_bytes()));
    client.wait(LONG);
}

/// A watched process that reads a 50 MB file and makes a request: the request is captured,
/// no byte of the file is.
#[test]
fn file_reads_never_leave_the_kernel() {
    let dir = scratch_dir("bigfile");
    let file = dir.join("big.bin");
    let pattern = b"FILEBYTES-0123456789-";
    let mut content = Vec::with_capacity(50 << 20);
    while content.len() < 50 << 20 {
        content.extend_from_slice(pattern);
    }
    content.truncate(50 << 20);
    std::fs::write(&file, &content).unwrap();
    let server = Py::spawn("http_server", &["http_server.py"], &[]);
    let port: u16 = server.expect_line("READY", LONG).parse().unwrap();
    let url = format!("http://127.0.0.1:{port}/hello?from=file-reader");
    let mut reader = Py::spawn(
        "file_and_request",
        &["file_and_request.py", file.to_str().unwrap(), &url],
        &[],
    );
    reader.expect_line("READY", LONG);
    let pid = reader.pid().to_string();
    let sensor = Sensor::start(
        "trace-file",
        &[
            "trace",
            "--pid",
            &pid,
            "--payload",
            "--payload-bytes",
            "1000000",
        ],
    );
    reader.send_line("go");
    let done = reader.expect_line("DONE", LONG);
    assert_eq!(done, format!("{} 200", 50 << 20));
    std::thread::sleep(Duration::from_millis(300));
    let output = sensor.stop();
    let lines = trace_lines(&output.stdout);
    let copied: u64 = lines.iter().map(|l| l.copied).sum();
    assert!(
        lines.iter().any(|l| l.dir == "out"
            && l.payload
                .starts_with(b"GET /hello?from=file-reader HTTP/1.1\r\n")),
        "the request is captured: {}",
        output.stdout
    );
    assert!(
        lines
            .iter()
            .any(|l| l.dir == "in" && l.payload.starts_with(b"HTTP/1.1 200"))
    );
    assert!(
        !output.stdout.contains("FILEBYTES"),
        "file bytes were captured"
    );
    assert!(
        copied < 4096,
        "only the HTTP exchange is copied, not {copied} bytes"
    );
    assert!(lines.iter().all(|l| l.role == "client"));
    let _ = apps_dir();
    std::fs::remove_dir_all(dir).unwrap();
}
