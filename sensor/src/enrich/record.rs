//! Builds the exchange record from a reassembled exchange, its connection and its process:
//! the span name, both attribute naming schemes, captured headers and bodies.

use std::net::SocketAddr;

use sensor_common::event::Role;

use super::{
    context,
    kubernetes::PodContainer,
    process::{ProcessInfo, resolve_service_name},
};
use crate::{
    conntrack::ConnMeta,
    http::{Body, HttpExchange, HttpVersion},
    record::{AttributeValue, ExchangeRecord, SpanKind},
};

/// Per-record context that is not in the exchange itself.
#[derive(Clone)]
pub struct RecordContext<'a> {
    /// The host's name (resource `host.name`).
    pub host_name: &'a str,
    /// `http` or `https`.
    pub scheme: &'a str,
    /// Converts the kernel's monotonic nanoseconds to Unix nanoseconds.
    pub to_unix_nanos: &'a dyn Fn(u64) -> u64,
    /// The exchange's position on its connection (0 first).
    pub seq: u64,
    /// For a server exchange: whether its client is a watched process on this host.
    pub client_watched: bool,
    /// For a client exchange: the server request it was made for. For a server exchange:
    /// that of its client's exchange (whose trace it joins), when the client is watched.
    pub link: Option<context::Link>,
    /// Fixed for the sensor's lifetime; makes derived ids unique to this host and run.
    pub salt: u64,
    /// The pod container the process runs in, when pod metadata knows it.
    pub pod: Option<&'a PodContainer>,
    /// The configured `service_name`: the service name of last resort.
    pub configured_service_name: Option<&'a str>,
}

/// The span name: method and path with id-like segments replaced by `{id}`.
pub fn span_name(method: &str, target: &str) -> String {
    let path = target.split(['?', '#']).next().unwrap_or(target);
    let path = strip_origin(path);
    let templated: Vec<String> = path
        .split('/')
        .map(|segment| {
            if is_id_like(segment) {
                "{id}".to_owned()
            } else {
                segment.to_owned()
            }
        })
        .collect();
    let mut path = templated.join("/");
    if path.is_empty() {
        path = "/".to_owned();
    }
    format!("{method} {path}")
}

/// `http://host/path` (absolute-form target) → `/path`.
fn strip_origin(target: &str) -> &str {
    for scheme in ["http://", "https://"] {
        if let Some(rest) = target.strip_prefix(scheme) {
            return rest.find('/').map_or("/", |i| &rest[i..]);
        }
    }
    target
}

/// Numbers, UUIDs and long hex strings identify resources, not routes.
fn is_id_like(segment: &str) -> bool {
    if segment.is_empty() {
        return false;
    }
    if segment.bytes().all(|b| b.is_ascii_digit()) {
        return true;
    }
    let is_uuid = segment.len() == 36
        && segment.bytes().enumerate().all(|(i, b)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                b == b'-'
            } else {
                b.is_ascii_hexdigit()
            }
        });
    if is_uuid {
        return true;
    }
    segment.len() >= 16
        && segment.bytes().all(|b| b.is_ascii_hexdigit())
        && segment.bytes().any(|b| b.is_ascii_digit())
}

/// Body bytes as text: UTF-8 where valid, `\xNN` for each invalid byte.
pub fn body_text(bytes: &[u8]) -> String {
    // Bodies are nearly always valid UTF-8: the whole-slice check is several times faster
    // than walking it chunk by chunk.
    if let Ok(text) = std::str::from_utf8(bytes) {
        return text.to_owned();
    }
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

fn header_values(headers: &[(String, Vec<u8>)]) -> Vec<(String, String)> {
    let mut merged: Vec<(String, String)> = Vec::new();
    for (name, value) in headers {
        let name = name.to_ascii_lowercase();
        let value = body_text(value);
        match merged.iter_mut().find(|(n, _)| *n == name) {
            Some((_, existing)) => {
                existing.push_str(", ");
                existing.push_str(&value);
            }
            None => merged.push((name, value)),
        }
    }
    merged
}

/// The value of header `name` (case-insensitive) as the record shows it: repeated fields
/// joined with `, `, invalid UTF-8 escaped.
pub fn header_value(headers: &[(String, Vec<u8>)], name: &str) -> Option<String> {
    let mut values = headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| body_text(v));
    let first = values.next()?;
    Some(values.fold(first, |mut all, v| {
        all.push_str(", ");
        all.push_str(&v);
        all
    }))
}

fn header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Attributes as they are gathered: pushed in any order, turned into
/// [`Attributes`](crate::record::Attributes) once
/// (sorted and built in bulk, the last value of a repeated key kept, as `insert` would). A
/// record has about 40; inserting them one by one into the map, each a search and a shift
/// within a node, was a tenth of the sensor's time under small GETs.
type Gathered = Vec<(String, AttributeValue)>;

fn put(attrs: &mut Gathered, key: &str, value: impl Into<AttributeValue>) {
    attrs.push((key.to_owned(), value.into()));
}

/// Puts a body's attributes; its bytes move into the record.
fn put_body(attrs: &mut Gathered, prefix: &str, body: &mut Body) {
    if body.shed {
        put(attrs, &format!("{prefix}.body.shed"), true);
    }
    if !body.captured {
        return;
    }
    let text = match String::from_utf8(std::mem::take(&mut body.bytes)) {
        Ok(text) => text,
        Err(invalid) => body_text(invalid.as_bytes()),
    };
    put(attrs, &format!("{prefix}.body"), text);
    if body.truncated {
        put(attrs, &format!("{prefix}.body.truncated"), true);
    }
}

/// Splits a Host header into name and port.
fn split_host(host: &str) -> (String, Option<u16>) {
    if let Some(rest) = host.strip_prefix('[')
        && let Some((ip, port)) = rest.split_once(']')
    {
        return (
            ip.to_owned(),
            port.strip_prefix(':').and_then(|p| p.parse().ok()),
        );
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !name.contains(':') => {
            (name.to_owned(), port.parse().ok())
        }
        _ => (host.to_owned(), None),
    }
}

fn version_text(version: HttpVersion) -> &'static str {
    match version {
        HttpVersion::Http10 => "1.0",
        HttpVersion::Http11 => "1.1",
    }
}

/// Builds the record, moving the bodies into it, or `None` for an exchange without a request
/// (never emitted).
pub fn build_record(
    mut exchange: HttpExchange,
    meta: &ConnMeta,
    process: &ProcessInfo,
    ctx: &RecordContext<'_>,
) -> Option<ExchangeRecord> {
    let request = exchange.request.as_mut()?;
    if request.method.is_empty() {
        // A placeholder for a head the parser could not read (cut by a loss, or oversized):
        // it kept the pairing right, but there is no API call to report.
        return None;
    }
    let kind = if meta.role == Role::Client {
        SpanKind::Client
    } else {
        SpanKind::Server
    };
    let mut attrs = Gathered::with_capacity(48);
    let req_headers = header_values(&request.headers);
    let method = request.method.as_str();
    let target = request.target.as_str();
    let origin_target = strip_origin(target);
    let (path, query) = match origin_target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (origin_target, None),
    };
    let host = header(&req_headers, "host");
    let default_port = if ctx.scheme == "https" { 443 } else { 80 };
    let (host_name, host_port) = match host {
        Some(h) => {
            let (name, port) = split_host(h);
            (Some(name), port)
        }
        None => (None, None),
    };
    let server_endpoint: Option<SocketAddr> = match kind {
        SpanKind::Server => meta.local,
        SpanKind::Client => meta.remote,
    };
    let server_address = host_name
        .clone()
        .or_else(|| server_endpoint.map(|a| a.ip().to_string()));
    let server_port = host_port
        .or_else(|| host.map(|_| default_port))
        .or_else(|| server_endpoint.map(|a| a.port()));

    put(&mut attrs, "http.method", method);
    put(&mut attrs, "http.request.method", method);
    put(&mut attrs, "http.target", origin_target);
    put(&mut attrs, "url.path", path);
    if let Some(query) = query {
        put(&mut attrs, "url.query", query);
    }
    put(&mut attrs, "http.scheme", ctx.scheme);
    put(&mut attrs, "url.scheme", ctx.scheme);
    if let Some(host) = host {
        put(&mut attrs, "http.host", host);
    }
    if let Some(address) = &server_address {
        put(&mut attrs, "server.address", address.as_str());
    }
    if let Some(port) = server_port {
        put(&mut attrs, "server.port", i64::from(port));
    }
    let flavor = version_text(request.version);
    put(&mut attrs, "http.flavor", flavor);
    put(&mut attrs, "network.protocol.version", flavor);
    if let Some(agent) = header(&req_headers, "user-agent") {
        put(&mut attrs, "http.user_agent", agent);
        put(&mut attrs, "user_agent.original", agent);
    }
    if let Some(remote) = meta.remote {
        let ip = remote.ip().to_string();
        put(&mut attrs, "net.peer.port", i64::from(remote.port()));
        put(&mut attrs, "network.peer.address", ip.as_str());
        put(&mut attrs, "network.peer.port", i64::from(remote.port()));
        if kind == SpanKind::Server {
            put(&mut attrs, "client.address", ip.as_str());
        }
        put(&mut attrs, "net.peer.ip", ip);
    }
    if let Some(local) = meta.local {
        put(&mut attrs, "net.host.port", i64::from(local.port()));
    }
    if kind == SpanKind::Client {
        let authority = match (&host, server_endpoint) {
            (Some(h), _) => Some((*h).to_owned()),
            (None, Some(addr)) => Some(addr.to_string()),
            (None, None) => None,
        };
        let full = if target.starts_with("http://") || target.starts_with("https://") {
            Some(target.to_owned())
        } else {
            authority.map(|a| format!("{}://{}{}", ctx.scheme, a, origin_target))
        };
        if let Some(full) = full {
            put(&mut attrs, "http.url", full.as_str());
            put(&mut attrs, "url.full", full);
        }
    }
    for (name, value) in &req_headers {
        put(
            &mut attrs,
            &format!("http.request.header.{name}"),
            value.as_str(),
        );
    }
    put_body(&mut attrs, "http.request", &mut request.body);

    let mut end_ns = request.end_ns;
    let mut incomplete = exchange.incomplete || request.body.incomplete;
    if let Some(response) = &mut exchange.response {
        put(&mut attrs, "http.status_code", i64::from(response.status));
        put(
            &mut attrs,
            "http.response.status_code",
            i64::from(response.status),
        );
        for (name, value) in header_values(&response.headers) {
            put(&mut attrs, &format!("http.response.header.{name}"), value);
        }
        put_body(&mut attrs, "http.response", &mut response.body);
        end_ns = end_ns.max(response.end_ns);
        incomplete |= response.body.incomplete;
    }
    if incomplete {
        put(&mut attrs, "sensor.incomplete", true);
    }
    let traceparent = header(&req_headers, "traceparent");
    let key = context::ExchangeKey::of(meta.role, meta.local, meta.remote, ctx.seq);
    let ids = match kind {
        SpanKind::Client => {
            context::client_ids(ctx.salt, key.as_ref(), traceparent, ctx.link.as_ref())
        }
        SpanKind::Server => context::server_ids(
            ctx.salt,
            key.as_ref(),
            traceparent,
            ctx.client_watched,
            ctx.link.as_ref(),
        ),
    };
    if let Some(ids) = ids {
        ids.write(&mut attrs);
    }

    let mut resource = Gathered::with_capacity(8);
    put(
        &mut resource,
        "service.name",
        resolve_service_name(process, ctx.pod, ctx.configured_service_name),
    );
    put(&mut resource, "process.pid", i64::from(process.pid));
    put(
        &mut resource,
        "process.executable.name",
        process.executable_name.as_str(),
    );
    put(
        &mut resource,
        "process.command_line",
        process.command_line(),
    );
    put(&mut resource, "host.name", ctx.host_name);
    if let Some(id) = &process.container_id {
        put(&mut resource, "container.id", id.as_str());
    }
    if let Some(pod) = ctx.pod {
        for (key, value) in pod.attributes() {
            put(&mut resource, &key, value);
        }
    }

    Some(ExchangeRecord {
        resource: resource.into_iter().collect(),
        name: span_name(method, target),
        kind,
        start_time_unix_nano: (ctx.to_unix_nanos)(request.start_ns),
        end_time_unix_nano: (ctx.to_unix_nanos)(end_ns),
        attributes: attrs.into_iter().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn span_names_template_ids() {
        let cases = [
            ("GET", "/api/items/42", "GET /api/items/{id}"),
            ("GET", "/api/items/42?x=1", "GET /api/items/{id}"),
            (
                "DELETE",
                "/u/3fa85f64-5717-4562-b3fc-2c963f66afa6/keys",
                "DELETE /u/{id}/keys",
            ),
            ("GET", "/blobs/0123456789abcdef0123", "GET /blobs/{id}"),
            (
                "GET",
                "/blobs/deadbeefdeadbeefdead",
                "GET /blobs/deadbeefdeadbeefdead",
            ),
            ("GET", "/", "GET /"),
            ("GET", "", "GET /"),
            ("GET", "http://example.com/a/7?q", "GET /a/{id}"),
            ("POST", "/v2/orders", "POST /v2/orders"),
        ];
        for (method, target, expected) in cases {
            assert_eq!(span_name(method, target), expected, "{target}");
        }
    }

    #[test]
    fn gathered_attributes_keep_the_last_value_of_a_repeated_key() {
        let mut gathered = Gathered::new();
        put(&mut gathered, "b", "first");
        put(&mut gathered, "a", 1i64);
        put(&mut gathered, "b", "second");
        let attributes: crate::record::Attributes = gathered.into_iter().collect();
        assert_eq!(attributes.len(), 2);
        assert_eq!(attributes["b"].as_str(), Some("second"));
        assert_eq!(attributes["a"].as_int(), Some(1));
    }

    #[test]
    fn invalid_utf8_is_escaped() {
        assert_eq!(body_text(b"ok \xff\xfe end"), "ok \\xff\\xfe end");
        assert_eq!(body_text("caf\u{e9}".as_bytes()), "caf\u{e9}");
        assert_eq!(body_text(b""), "");
        assert_eq!(
            body_text(b"caf\xc3"),
            "caf\\xc3",
            "a character cut at the end"
        );
    }

    #[test]
    fn repeated_headers_are_joined() {
        let headers = vec![
            ("Accept".to_owned(), b"a".to_vec()),
            ("X-Id".to_owned(), b"1".to_vec()),
            ("accept".to_owned(), b"b".to_vec()),
        ];
        assert_eq!(
            header_values(&headers),
            vec![
                ("accept".to_owned(), "a, b".to_owned()),
                ("x-id".to_owned(), "1".to_owned())
            ]
        );
    }

    #[test]
    fn shed_bodies_are_flagged_without_a_body() {
        use crate::http::{HttpRequest, HttpResponse};
        let shed = Body {
            wire_len: 10,
            shed: true,
            ..Body::default()
        };
        let kept = Body {
            captured: true,
            bytes: b"{}".to_vec(),
            wire_len: 2,
            ..Body::default()
        };
        let exchange = HttpExchange {
            request: Some(HttpRequest {
                method: "POST".into(),
                target: "/a".into(),
                version: HttpVersion::Http11,
                headers: Vec::new(),
                body: shed,
                start_ns: 1,
                end_ns: 2,
            }),
            response: Some(HttpResponse {
                status: 200,
                reason: "OK".into(),
                version: HttpVersion::Http11,
                headers: Vec::new(),
                body: kept,
                start_ns: 3,
                end_ns: 4,
            }),
            incomplete: false,
        };
        let meta = ConnMeta {
            conn_id: 1,
            pid: 7,
            fd: 3,
            role: Role::Server,
            family: sensor_common::event::Family::Inet,
            local: None,
            remote: None,
            unix_path: None,
            midstream: false,
            tls: false,
        };
        let process =
            ProcessInfo::new(7, "/usr/bin/python3".into(), Vec::new(), Default::default());
        let to_unix = |ns: u64| ns;
        let ctx = RecordContext {
            host_name: "h",
            scheme: "http",
            to_unix_nanos: &to_unix,
            seq: 0,
            client_watched: false,
            link: None,
            salt: 1,
            pod: None,
            configured_service_name: None,
        };
        let record = build_record(exchange, &meta, &process, &ctx).unwrap();
        assert_eq!(
            record.attributes.get("http.request.body.shed"),
            Some(&AttributeValue::Bool(true))
        );
        assert!(!record.attributes.contains_key("http.request.body"));
        assert_eq!(record.attr_str("http.response.body"), Some("{}"));
        assert!(!record.attributes.contains_key("http.response.body.shed"));
    }

    #[test]
    fn hosts_split() {
        assert_eq!(
            split_host("localhost:5000"),
            ("localhost".to_owned(), Some(5000))
        );
        assert_eq!(split_host("example.com"), ("example.com".to_owned(), None));
        assert_eq!(split_host("[::1]:8080"), ("::1".to_owned(), Some(8080)));
    }
}
