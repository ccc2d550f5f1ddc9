//! The calls the proxy tests make through `tests/apps/connect_proxy.py` (records.rs: plain HTTP
//! forwarded; tls.rs: HTTPS through CONNECT tunnels), and what their records must say.

use std::time::Duration;

use serde_json::{Value, json};

use crate::{Py, attr};

/// How long a call may take.
const LONG: Duration = Duration::from_secs(30);

/// One call: method, target (path and query), JSON body.
pub type Call = (&'static str, &'static str, Option<&'static str>);

/// The calls every proxy test makes, on one client session.
pub const CALLS: [Call; 3] = [
    ("GET", "/items/11?via=proxy", None),
    ("POST", "/echo", Some(r#"{"proxied": true}"#)),
    ("GET", "/items/12", None),
];

/// Starts `tests/apps/connect_proxy.py`: the process, its port, and its URL (for
/// `HTTP_PROXY` / `HTTPS_PROXY`).
pub fn spawn() -> (Py, u16, String) {
    let proxy = Py::spawn("forward proxy", &["connect_proxy.py"], &[]);
    let port: u16 = proxy.expect_line("READY", LONG).parse().unwrap();
    (proxy, port, format!("http://127.0.0.1:{port}"))
}

/// A call as made: its URL and the client's result (status, body, local port…).
pub struct Answer {
    /// The URL the client asked for.
    pub url: String,
    /// The client's `RESULT`.
    pub result: Value,
    /// The call it answers.
    pub call: Call,
}

/// Asks `client` (a script taking `request` commands, behind the proxy) for each of [`CALLS`]
/// at `base` (`scheme://host:port`); each must be answered 2xx.
pub fn ask(client: &mut Py, base: &str) -> Vec<Answer> {
    CALLS
        .iter()
        .map(|&call| {
            let (method, target, body) = call;
            let url = format!("{base}{target}");
            let headers = match body {
                Some(_) => json!({"Content-Type": "application/json"}),
                None => json!({}),
            };
            client.send_line(
                &json!({"op": "request", "method": method, "url": url, "headers": headers, "body": body})
                    .to_string(),
            );
            let line = client.expect_line("RESULT", LONG);
            let result: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("RESULT is not JSON ({e}): {line}"));
            assert_eq!(result["status"].as_u64().unwrap() / 100, 2, "{result}");
            Answer { url, result, call }
        })
        .collect()
}

/// Checks that each call went through the proxy at `proxy_port` to the server at
/// 127.0.0.1:`port` and was recorded whole on both sides: one complete client record with the
/// URL asked for, its status and bodies, the server as `server.*`, the proxy as its peer and
/// the client's own port; one server record with the same bodies.
pub fn check(
    clients: &[&Value],
    servers: &[&Value],
    answers: &[Answer],
    port: u16,
    proxy_port: u16,
) {
    for Answer { url, result, call } in answers {
        let (method, target, body) = *call;
        let client = clients
            .iter()
            .find(|r| attr(r, "url.full") == url.as_str() && attr(r, "http.method") == method)
            .unwrap_or_else(|| panic!("no client record of {method} {url}: {clients:#?}"));
        assert_eq!(
            attr(client, "http.status_code"),
            &result["status"],
            "{client:#}"
        );
        assert_eq!(attr(client, "server.address"), "127.0.0.1", "{client:#}");
        assert_eq!(attr(client, "server.port"), port, "{client:#}");
        assert_eq!(attr(client, "network.peer.port"), proxy_port, "{client:#}");
        assert_eq!(
            attr(client, "net.host.port"),
            &result["local_port"],
            "{client:#}"
        );
        assert!(attr(client, "sensor.incomplete").is_null(), "{client:#}");
        let served: Vec<&&Value> = servers
            .iter()
            .filter(|r| attr(r, "http.target") == target && attr(r, "http.method") == method)
            .collect();
        assert_eq!(
            served.len(),
            1,
            "{method} {target} served once: {servers:#?}"
        );
        for record in [client, served[0]] {
            assert_eq!(
                attr(record, "http.response.body"),
                &result["body"],
                "{record:#}"
            );
            if let Some(body) = body {
                assert_eq!(attr(record, "http.request.body"), body, "{record:#}");
            }
        }
    }
}
