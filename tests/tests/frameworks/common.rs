//! Helpers shared by the framework tests: reading the Python clients' RESULT lines, and
//! checking a record against what the client sent and received.

use std::{collections::BTreeMap, time::Duration};

use sensor_e2e::{Py, attr};
use serde_json::{Value, json};

/// Generous bound for one step of a Python process (start-up, one command).
pub const LONG: Duration = Duration::from_secs(30);

/// The sensor's default body limit (decoded bytes).
pub const BODY_LIMIT: usize = 131_072;

/// The default allow list of body content types.
const ALLOWED_TYPES: &[&str] = &[
    "json",
    "application/xml",
    "text/xml",
    "+xml",
    "application/x-www-form-urlencoded",
    "application/graphql",
];

/// Header names whose values the sensor redacts by default.
const REDACTED: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
];

/// `GET target` on a fresh loopback connection (`Connection: close`): the whole response, or
/// `None` when the server is not answering (yet).
pub fn get_once(port: u16, target: &str) -> Option<String> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(LONG)).ok()?;
    let head =
        format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

/// The next `RESULT <json>` line of a client.
pub fn result(py: &Py) -> Value {
    let line = py.expect_line("RESULT", LONG);
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("RESULT is not JSON ({e}): {line}"))
}

/// A one-request command for the clients (`requests_client.py`, `httpx_client.py`,
/// `aiohttp_client.py`).
pub fn request(method: &str, url: &str, headers: Value, body: Option<&str>) -> String {
    json!({"op": "request", "method": method, "url": url, "headers": headers, "body": body})
        .to_string()
}

/// Lower-case name → value pairs of a JSON object of headers.
pub fn header_map(headers: &Value) -> BTreeMap<String, String> {
    headers
        .as_object()
        .unwrap_or_else(|| panic!("headers are not an object: {headers}"))
        .iter()
        .map(|(k, v)| {
            (
                k.to_ascii_lowercase(),
                v.as_str()
                    .unwrap_or_else(|| panic!("header {k} is not a string: {v}"))
                    .to_owned(),
            )
        })
        .collect()
}

/// Whether a body of this content type is recorded: an allowed type occurs in it, ignoring
/// case.
pub fn allowed(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|ct| {
        let ct = ct.to_ascii_lowercase();
        ALLOWED_TYPES.iter().any(|a| ct.contains(a))
    })
}

/// One exchange as the client saw it: what it sent and what it received.
#[derive(Clone, Debug)]
pub struct Exchange {
    /// Method sent.
    pub method: String,
    /// Path and query sent (origin form).
    pub target: String,
    /// `host:port` of the server.
    pub authority: String,
    /// `http`, or `https` for TLS.
    pub scheme: &'static str,
    /// Server port.
    pub server_port: u16,
    /// Client's local port, when the client reported it.
    pub client_port: Option<u16>,
    /// Every request header field on the wire, lower-case names.
    pub request_headers: BTreeMap<String, String>,
    /// Request body sent (empty for none).
    pub request_body: String,
    /// Status received.
    pub status: u16,
    /// Every response header field received, lower-case names (repeated ones joined with ", ").
    pub response_headers: BTreeMap<String, String>,
    /// Response body received, content coding undone.
    pub response_body: String,
    /// Expected span name.
    pub name: String,
}

impl Exchange {
    /// The full URL the client asked for.
    pub fn url(&self) -> String {
        format!("{}://{}{}", self.scheme, self.authority, self.target)
    }

    /// From a `requests_client.py` / `httpx_client.py` / `aiohttp_client.py` RESULT: the
    /// request headers the library reports having sent, plus `Host` (added below the
    /// libraries' own header objects), plus `extra` (headers the library adds on the wire).
    pub fn from_client(
        result: &Value,
        method: &str,
        target: &str,
        server_port: u16,
        name: &str,
    ) -> Exchange {
        let authority = format!("127.0.0.1:{server_port}");
        let mut request_headers = header_map(&result["request_headers"]);
        request_headers
            .entry("host".to_owned())
            .or_insert_with(|| authority.clone());
        Exchange {
            method: method.to_owned(),
            target: target.to_owned(),
            authority,
            scheme: "http",
            server_port,
            client_port: result["local_port"].as_u64().map(|p| p as u16),
            request_headers,
            request_body: result["request_body"].as_str().unwrap_or("").to_owned(),
            status: result["status"].as_u64().expect("status") as u16,
            response_headers: header_map(&result["headers"]),
            response_body: result["body"].as_str().expect("body").to_owned(),
            name: name.to_owned(),
        }
    }
}

/// The record attributes whose keys start with `prefix`, prefix removed.
fn prefixed(record: &Value, prefix: &str) -> BTreeMap<String, String> {
    record["attributes"]
        .as_object()
        .expect("attributes")
        .iter()
        .filter_map(|(k, v)| {
            let name = k.strip_prefix(prefix)?;
            Some((
                name.to_owned(),
                v.as_str()
                    .unwrap_or_else(|| panic!("{k} is not a string"))
                    .to_owned(),
            ))
        })
        .collect()
}

fn redacted(headers: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    headers
        .iter()
        .map(|(k, v)| {
            let v = if REDACTED.contains(&k.as_str()) {
                "[REDACTED]".to_owned()
            } else {
                v.clone()
            };
            (k.clone(), v)
        })
        .collect()
}

/// The first `BODY_LIMIT` bytes of a body (the tests' large bodies are ASCII).
fn limited(body: &str) -> &str {
    if body.len() > BODY_LIMIT {
        &body[..BODY_LIMIT]
    } else {
        body
    }
}

fn check_body(record: &Value, prefix: &str, content_type: Option<&String>, body: &str, ctx: &str) {
    let key = format!("{prefix}.body");
    let flag = format!("{prefix}.body.truncated");
    if allowed(content_type.map(String::as_str)) {
        let got = attr(record, &key)
            .as_str()
            .unwrap_or_else(|| panic!("{ctx}: {key} missing"));
        let want = limited(body);
        assert!(
            got == want,
            "{ctx}: {key} differs: got {} bytes, want {} bytes\n got: {}\nwant: {}",
            got.len(),
            want.len(),
            &got[..got.len().min(300)],
            &want[..want.len().min(300)]
        );
        if body.len() > BODY_LIMIT {
            assert_eq!(attr(record, &flag), true, "{ctx}: {flag}");
        } else {
            assert_eq!(attr(record, &flag), &Value::Null, "{ctx}: {flag} set");
        }
    } else {
        assert_eq!(
            attr(record, &key),
            &Value::Null,
            "{ctx}: {key} recorded for content type {content_type:?}"
        );
        assert_eq!(attr(record, &flag), &Value::Null, "{ctx}: {flag} set");
    }
}

/// Asserts that `record` is exactly `exchange` seen from `kind`'s side (`"server"` or
/// `"client"`), owned by process `pid` named `service`.
pub fn check(record: &Value, exchange: &Exchange, kind: &str, pid: u32, service: &str) {
    let ctx = format!("{kind} record of {} {}", exchange.method, exchange.target);
    let ctx = ctx.as_str();
    assert_eq!(record["kind"], kind, "{ctx}: kind");
    assert_eq!(record["name"], exchange.name.as_str(), "{ctx}: name");
    assert_eq!(record["resource"]["process.pid"], pid, "{ctx}: pid");
    assert_eq!(
        record["resource"]["service.name"], service,
        "{ctx}: service.name"
    );
    let exe = record["resource"]["process.executable.name"]
        .as_str()
        .unwrap_or("");
    assert!(exe.starts_with("python"), "{ctx}: executable {exe}");
    let start = record["start_time_unix_nano"].as_u64().expect("start time");
    let end = record["end_time_unix_nano"].as_u64().expect("end time");
    assert!(start > 0 && start <= end, "{ctx}: times {start}..{end}");

    let (path, query) = match exchange.target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (exchange.target.as_str(), None),
    };
    let a = |k: &str| attr(record, k);
    assert_eq!(
        a("http.method"),
        exchange.method.as_str(),
        "{ctx}: http.method"
    );
    assert_eq!(
        a("http.request.method"),
        exchange.method.as_str(),
        "{ctx}: http.request.method"
    );
    assert_eq!(
        a("http.target"),
        exchange.target.as_str(),
        "{ctx}: http.target"
    );
    assert_eq!(a("url.path"), path, "{ctx}: url.path");
    match query {
        Some(q) => assert_eq!(a("url.query"), q, "{ctx}: url.query"),
        None => assert_eq!(a("url.query"), &Value::Null, "{ctx}: url.query"),
    }
    assert_eq!(
        a("http.status_code"),
        exchange.status,
        "{ctx}: http.status_code"
    );
    assert_eq!(
        a("http.response.status_code"),
        exchange.status,
        "{ctx}: http.response.status_code"
    );
    assert_eq!(a("http.flavor"), "1.1", "{ctx}: http.flavor");
    assert_eq!(a("network.protocol.version"), "1.1", "{ctx}");
    assert_eq!(a("http.scheme"), exchange.scheme, "{ctx}");
    assert_eq!(a("url.scheme"), exchange.scheme, "{ctx}");
    assert_eq!(
        a("http.host"),
        exchange.authority.as_str(),
        "{ctx}: http.host"
    );
    assert_eq!(a("server.address"), "127.0.0.1", "{ctx}: server.address");
    assert_eq!(a("server.port"), exchange.server_port, "{ctx}: server.port");
    match exchange.request_headers.get("user-agent") {
        Some(agent) => {
            assert_eq!(
                a("http.user_agent"),
                agent.as_str(),
                "{ctx}: http.user_agent"
            );
            assert_eq!(a("user_agent.original"), agent.as_str(), "{ctx}");
        }
        None => assert_eq!(a("http.user_agent"), &Value::Null, "{ctx}"),
    }
    assert_eq!(a("net.peer.ip"), "127.0.0.1", "{ctx}: net.peer.ip");
    assert_eq!(a("network.peer.address"), "127.0.0.1", "{ctx}");
    match kind {
        "server" => {
            assert_eq!(
                a("net.host.port"),
                exchange.server_port,
                "{ctx}: net.host.port"
            );
            assert_eq!(a("client.address"), "127.0.0.1", "{ctx}: client.address");
            if let Some(port) = exchange.client_port {
                assert_eq!(a("net.peer.port"), port, "{ctx}: net.peer.port");
                assert_eq!(a("network.peer.port"), port, "{ctx}");
            }
            assert_eq!(
                a("http.url"),
                &Value::Null,
                "{ctx}: http.url on a server record"
            );
        }
        _ => {
            assert_eq!(
                a("net.peer.port"),
                exchange.server_port,
                "{ctx}: net.peer.port"
            );
            assert_eq!(a("network.peer.port"), exchange.server_port, "{ctx}");
            if let Some(port) = exchange.client_port {
                assert_eq!(a("net.host.port"), port, "{ctx}: net.host.port");
            }
            assert_eq!(a("http.url"), exchange.url().as_str(), "{ctx}: http.url");
            assert_eq!(a("url.full"), exchange.url().as_str(), "{ctx}: url.full");
        }
    }
    assert_eq!(
        prefixed(record, "http.request.header."),
        redacted(&exchange.request_headers),
        "{ctx}: request headers"
    );
    assert_eq!(
        prefixed(record, "http.response.header."),
        redacted(&exchange.response_headers),
        "{ctx}: response headers"
    );
    check_body(
        record,
        "http.request",
        exchange.request_headers.get("content-type"),
        &exchange.request_body,
        ctx,
    );
    check_body(
        record,
        "http.response",
        exchange.response_headers.get("content-type"),
        &exchange.response_body,
        ctx,
    );
    assert_eq!(
        a("sensor.incomplete"),
        &Value::Null,
        "{ctx}: sensor.incomplete"
    );
}

/// One side's records of the sensor's output: those of one process and kind, with the pid and
/// service name they must carry.
pub struct Side<'a, 'r> {
    /// The records.
    pub records: &'a [&'r Value],
    /// The process that made them.
    pub pid: u32,
    /// Its expected service name.
    pub service: &'a str,
}

impl<'a, 'r> Side<'a, 'r> {
    /// The side of process `pid`, named `service`, whose records are `records`.
    pub fn new(records: &'a [&'r Value], pid: u32, service: &'a str) -> Self {
        Side {
            records,
            pid,
            service,
        }
    }
}

/// Checks that `exchange` is among the client's and the server's records, exact on each side.
pub fn check_both(exchange: &Exchange, client: &Side, server: &Side) {
    for (side, kind) in [(client, "client"), (server, "server")] {
        check(
            find(side.records, exchange, kind),
            exchange,
            kind,
            side.pid,
            side.service,
        );
    }
}

/// The record among `records` whose target and peer/host port match `exchange` on `kind`'s
/// side; panics unless there is exactly one.
pub fn find<'a>(records: &[&'a Value], exchange: &Exchange, kind: &str) -> &'a Value {
    let port_key = if kind == "server" {
        "net.peer.port"
    } else {
        "net.host.port"
    };
    let found: Vec<&&Value> = records
        .iter()
        .filter(|r| {
            attr(r, "http.target") == exchange.target.as_str()
                && attr(r, "http.method") == exchange.method.as_str()
                && exchange.client_port.is_none_or(|p| attr(r, port_key) == p)
        })
        .collect();
    // Several requests alike on one connection: told apart by their bodies.
    let found: Vec<&&Value> = if found.len() > 1 {
        found
            .into_iter()
            .filter(|r| {
                attr(r, "http.request.body")
                    .as_str()
                    .is_none_or(|b| b == limited(&exchange.request_body))
            })
            .collect()
    } else {
        found
    };
    assert_eq!(
        found.len(),
        1,
        "{kind} records for {} {} (client port {:?}): {found:#?}\nall {kind} records: {:#?}",
        exchange.method,
        exchange.target,
        exchange.client_port,
        records
            .iter()
            .map(|r| (
                attr(r, "http.method"),
                attr(r, "http.target"),
                attr(r, port_key)
            ))
            .collect::<Vec<_>>()
    );
    found[0]
}

pub use sensor_e2e::children;

/// The id of a `GET /id/<id>?id=<id>` record (the `threads` load of `requests_client.py`);
/// panics on any other target.
pub fn id_of(record: &Value, kind: &str) -> String {
    let target = attr(record, "http.target").as_str().expect("target");
    target
        .strip_prefix("/id/")
        .and_then(|t| t.split_once("?id="))
        .and_then(|(a, b)| (a == b).then_some(a))
        .unwrap_or_else(|| panic!("{kind}: unexpected target {target}"))
        .to_owned()
}

/// Has `client` make one request to `http://127.0.0.1:port` and returns the exchange it saw,
/// and its raw RESULT.
pub fn ask(
    client: &mut Py,
    port: u16,
    method: &str,
    target: &str,
    headers: Value,
    body: Option<&str>,
    name: &str,
) -> (Exchange, Value) {
    ask_scheme(client, "http", port, method, target, headers, body, name)
}

/// As [`ask`], over `scheme` (`http` or `https`).
#[allow(clippy::too_many_arguments)]
pub fn ask_scheme(
    client: &mut Py,
    scheme: &'static str,
    port: u16,
    method: &str,
    target: &str,
    headers: Value,
    body: Option<&str>,
    name: &str,
) -> (Exchange, Value) {
    client.send_line(&request(
        method,
        &format!("{scheme}://127.0.0.1:{port}{target}"),
        headers,
        body,
    ));
    let res = result(client);
    let mut exchange = Exchange::from_client(&res, method, target, port, name);
    exchange.scheme = scheme;
    (exchange, res)
}
