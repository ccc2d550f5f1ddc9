//! End to end: exchange records (JSONL) from real Python servers and clients.

use std::time::Duration;

use sensor_e2e::{Py, Sensor, attr, proxy, records_of};
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(30);

fn command(method: &str, url: &str, headers: Value, body: Option<&str>) -> String {
    json!({"method": method, "url": url, "headers": headers, "body": body}).to_string()
}

/// http.server and a urllib client, both watched: one server and one client record per
/// request, each exact, with addresses tying the two ends together.
#[test]
fn http_server_and_urllib_client_records() {
    let server = Py::spawn(
        "http_server",
        &["http_server.py"],
        &[("HT_SERVICE_NAME", "hello-api")],
    );
    let port: u16 = server.expect_line("READY", LONG).parse().unwrap();
    let mut client = Py::spawn("urllib_client", &["urllib_client.py"], &[]);
    client.expect_line("READY", LONG);
    let sensor = Sensor::watching("records-basic", &[server.pid(), client.pid()]);
    let base = format!("http://127.0.0.1:{port}");
    client.send_line(&command(
        "GET",
        &format!("{base}/hello?x=1&y=two"),
        json!({"X-Test": "abc", "User-Agent": "e2e-agent/1.0"}),
        None,
    ));
    let get: Value = serde_json::from_str(&client.expect_line("RESULT", LONG)).unwrap();
    let post_body = r#"{"name": "caf\u00e9", "n": 1}"#;
    client.send_line(&command(
        "POST",
        &format!("{base}/echo"),
        json!({
            "Content-Type": "application/json",
            "Authorization": "Bearer secret-token",
            "X-Forwarded-For": "203.0.113.195, 70.41.3.18"
        }),
        Some(post_body),
    ));
    let post: Value = serde_json::from_str(&client.expect_line("RESULT", LONG)).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let output = sensor.stop();
    let records = output.records();
    let servers = records_of(&records, "server", server.pid());
    let clients = records_of(&records, "client", client.pid());
    assert_eq!(servers.len(), 2, "server records: {records:#?}");
    assert_eq!(clients.len(), 2, "client records: {records:#?}");

    let find = |list: &[&Value], method: &str| -> Value {
        (*list
            .iter()
            .find(|r| attr(r, "http.method") == method)
            .expect("record by method"))
        .clone()
    };
    let get_server = find(&servers, "GET");
    assert_eq!(get_server["name"], "GET /hello");
    assert_eq!(get_server["resource"]["service.name"], "hello-api");
    assert!(
        get_server["resource"]["process.executable.name"]
            .as_str()
            .unwrap()
            .starts_with("python")
    );
    assert_eq!(attr(&get_server, "http.target"), "/hello?x=1&y=two");
    assert_eq!(attr(&get_server, "url.path"), "/hello");
    assert_eq!(attr(&get_server, "url.query"), "x=1&y=two");
    assert_eq!(attr(&get_server, "http.status_code"), 200);
    assert_eq!(attr(&get_server, "http.response.status_code"), 200);
    assert_eq!(attr(&get_server, "http.flavor"), "1.1");
    assert_eq!(attr(&get_server, "http.scheme"), "http");
    assert_eq!(attr(&get_server, "http.user_agent"), "e2e-agent/1.0");
    assert_eq!(attr(&get_server, "user_agent.original"), "e2e-agent/1.0");
    assert_eq!(attr(&get_server, "http.request.header.x-test"), "abc");
    assert_eq!(
        attr(&get_server, "http.response.header.x-served-by"),
        "http_server.py"
    );
    assert_eq!(attr(&get_server, "http.response.body"), &get["body"]);
    assert_eq!(attr(&get_server, "net.host.port"), port);
    assert_eq!(attr(&get_server, "net.peer.port"), &get["local_port"]);
    assert_eq!(attr(&get_server, "net.peer.ip"), "127.0.0.1");
    assert_eq!(attr(&get_server, "client.address"), "127.0.0.1");
    assert_eq!(attr(&get_server, "network.peer.address"), "127.0.0.1");
    assert_eq!(attr(&get_server, "server.address"), "127.0.0.1");
    assert_eq!(attr(&get_server, "server.port"), port);
    assert!(
        get_server["start_time_unix_nano"].as_u64().unwrap()
            <= get_server["end_time_unix_nano"].as_u64().unwrap()
    );

    let get_client = find(&clients, "GET");
    assert_eq!(
        attr(&get_client, "http.url"),
        format!("{base}/hello?x=1&y=two").as_str()
    );
    assert_eq!(
        attr(&get_client, "url.full"),
        format!("{base}/hello?x=1&y=two").as_str()
    );
    assert_eq!(attr(&get_client, "net.peer.port"), port);
    assert_eq!(attr(&get_client, "net.host.port"), &get["local_port"]);
    assert_eq!(attr(&get_client, "http.response.body"), &get["body"]);
    assert_eq!(get_client["resource"]["service.name"], "urllib_client");

    let post_server = find(&servers, "POST");
    assert_eq!(attr(&post_server, "http.request.body"), post_body);
    // Through a proxy: the original client, the socket's peer beside it.
    assert_eq!(attr(&post_server, "client.address"), "203.0.113.195");
    assert_eq!(attr(&post_server, "network.peer.address"), "127.0.0.1");
    assert_eq!(attr(&post_server, "net.peer.ip"), "127.0.0.1");
    assert_eq!(attr(&post_server, "http.response.body"), &post["body"]);
    assert_eq!(
        attr(&post_server, "http.request.header.authorization"),
        "[REDACTED]"
    );
    assert_eq!(
        attr(&post_server, "http.request.header.content-type"),
        "application/json"
    );
    assert!(
        !output.stdout.contains("secret-token"),
        "credentials never leave the host"
    );
    let post_client = find(&clients, "POST");
    assert_eq!(attr(&post_client, "http.request.body"), post_body);
    assert_eq!(attr(&post_client, "http.status_code"), 200);
    client.wait(LONG);
}

/// A dual-stack uvicorn (listening on `::`) called by `requests` over IPv6 loopback and over
/// IPv4, on one connection each: every record names the peer as the other end saw it — `::1`,
/// and `127.0.0.1` rather than the IPv4-mapped `::ffff:127.0.0.1` the server's socket holds —
/// with the client's port on the server side, and the client's URL keeps the bracketed host.
#[test]
fn ipv6_and_ipv4_peers_of_a_dual_stack_server() {
    let server = Py::spawn(
        "uvicorn dual-stack",
        &["serve_uvicorn.py", "fastapi_app:app"],
        &[("UVICORN_HOST", "::")],
    );
    let port: u16 = server.expect_line("READY", LONG).parse().unwrap();
    let mut client = Py::spawn("requests_client", &["requests_client.py"], &[]);
    client.expect_line("READY", LONG);
    let sensor = Sensor::watching("records-ipv6", &[server.pid(), client.pid()]);
    let mut sent = Vec::new();
    for (host, address, item) in [("[::1]", "::1", 61), ("127.0.0.1", "127.0.0.1", 62)] {
        let url = format!("http://{host}:{port}/items/{item}?q=v");
        client.send_line(&command("GET", &url, json!({}), None));
        let res: Value = serde_json::from_str(&client.expect_line("RESULT", LONG)).unwrap();
        assert_eq!(res["status"], 200, "{res}");
        sent.push((url, address, res["local_port"].as_u64().unwrap()));
    }
    std::thread::sleep(Duration::from_millis(500));
    let output = sensor.stop();
    let records = output.records();
    let servers = records_of(&records, "server", server.pid());
    let clients = records_of(&records, "client", client.pid());
    assert_eq!(servers.len(), sent.len(), "server records: {records:#?}");
    assert_eq!(clients.len(), sent.len(), "client records: {records:#?}");
    for (url, address, local_port) in &sent {
        let call = clients
            .iter()
            .find(|r| attr(r, "url.full") == url.as_str())
            .unwrap_or_else(|| panic!("no client record of {url}: {clients:#?}"));
        assert_eq!(attr(call, "server.address"), *address, "{call:#}");
        assert_eq!(attr(call, "server.port"), port, "{call:#}");
        assert_eq!(attr(call, "network.peer.address"), *address, "{call:#}");
        assert_eq!(attr(call, "net.host.port"), *local_port, "{call:#}");
        let served = servers
            .iter()
            .find(|r| attr(r, "network.peer.port") == *local_port)
            .unwrap_or_else(|| panic!("no server record from port {local_port}: {servers:#?}"));
        assert_eq!(attr(served, "network.peer.address"), *address, "{served:#}");
        assert_eq!(attr(served, "client.address"), *address, "{served:#}");
        assert_eq!(attr(served, "net.host.port"), port, "{served:#}");
        assert_eq!(attr(served, "http.status_code"), 200, "{served:#}");
    }
    drop(client);
    drop(server);
}

/// A `requests` client behind a forwarding proxy (`HTTP_PROXY`, `tests/apps/connect_proxy.py`,
/// not watched) calling uvicorn over plain HTTP: the client writes each request in
/// absolute-form to the proxy; its record keeps the URL it asked for, names the origin as its
/// server and the proxy as its peer, and carries its bodies; uvicorn records each call once.
#[test]
fn http_through_a_forwarding_proxy() {
    let server = Py::spawn(
        "uvicorn",
        &["serve_uvicorn.py", "fastapi_app:app"],
        &[("HT_SERVICE_NAME", "behind-proxy")],
    );
    let port: u16 = server.expect_line("READY", LONG).parse().unwrap();
    let (proxy, proxy_port, proxy_url) = proxy::spawn();
    let mut client = Py::spawn(
        "requests client behind a proxy",
        &["requests_client.py"],
        &[("HTTP_PROXY", proxy_url.as_str())],
    );
    client.expect_line("READY", LONG);
    let sensor = Sensor::watching("records-proxy", &[server.pid(), client.pid()]);
    let answers = proxy::ask(&mut client, &format!("http://127.0.0.1:{port}"));
    std::thread::sleep(Duration::from_millis(500));
    let output = sensor.stop();
    let records = output.records();
    let clients = records_of(&records, "client", client.pid());
    let servers = records_of(&records, "server", server.pid());
    assert_eq!(clients.len(), answers.len(), "client records: {clients:#?}");
    assert_eq!(servers.len(), answers.len(), "server records: {servers:#?}");
    proxy::check(&clients, &servers, &answers, port, proxy_port);
    for server in &servers {
        assert_eq!(server["resource"]["service.name"], "behind-proxy");
    }
    drop(proxy);
}
