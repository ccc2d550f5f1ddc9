//! Builds the exchange record from a reassembled exchange, its connection and its process:
//! the span name, both attribute naming schemes, captured headers and bodies.

use std::{
    borrow::Cow,
    net::{IpAddr, SocketAddr},
};

use sensor_common::event::Role;

use super::{
    context,
    kubernetes::PodContainer,
    process::{ProcessInfo, resolve_service_name},
};
use crate::{
    conntrack::ConnMeta,
    http::{Body, HttpExchange, HttpVersion},
    record::{AttributeKey, AttributeValue, Attributes, BodyKeys, ExchangeRecord, SpanKind},
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
    /// The trace-context formats a request may carry, in order of preference.
    pub propagation: &'a [context::Propagation],
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
    if let Ok(text) = simdutf8::basic::from_utf8(bytes) {
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

/// Takes the bytes out of `bytes` as text: without a copy when they are valid UTF-8 (checked
/// with SIMD: `std`'s check was an eighth of the userspace work for a 16 KB POST), else as
/// [`body_text`] writes them.
fn take_text(bytes: &mut Vec<u8>) -> String {
    let bytes = std::mem::take(bytes);
    if simdutf8::basic::from_utf8(&bytes).is_err() {
        return body_text(&bytes);
    }
    // SAFETY: the bytes were just checked to be valid UTF-8.
    unsafe { String::from_utf8_unchecked(bytes) }
}

/// The attribute keys of one message's headers: the prefix, and the whole keys of the headers
/// most messages carry, written out so that they are borrowed rather than built per exchange.
#[derive(Clone, Copy)]
struct HeaderKeys {
    prefix: &'static str,
    /// `(lower-case name, key)`.
    common: &'static [(&'static str, &'static str)],
}

/// A [`HeaderKeys`] from a prefix and the lower-case names of its common headers.
macro_rules! header_keys {
    ($prefix:literal; $($name:literal),* $(,)?) => {
        HeaderKeys {
            prefix: $prefix,
            common: &[$(($name, concat!($prefix, $name))),*],
        }
    };
}

impl HeaderKeys {
    /// A request's.
    const REQUEST: HeaderKeys = header_keys!("http.request.header.";
        "accept", "accept-encoding", "connection", "content-length", "content-type", "host",
        "traceparent", "tracestate", "user-agent");
    /// A response's.
    const RESPONSE: HeaderKeys = header_keys!("http.response.header.";
        "cache-control", "connection", "content-length", "content-type", "date", "keep-alive",
        "server", "transfer-encoding");

    /// The key of header `name` (any case).
    fn key(self, name: &str) -> AttributeKey {
        match self
            .common
            .iter()
            .find(|(common, _)| common.eq_ignore_ascii_case(name))
        {
            Some((_, key)) => Cow::Borrowed(key),
            None => {
                let mut key = String::with_capacity(self.prefix.len() + name.len());
                key.push_str(self.prefix);
                key.extend(name.chars().map(|c| c.to_ascii_lowercase()));
                Cow::Owned(key)
            }
        }
    }
}

/// A message's headers as record attributes: the prefix then the lower-cased name as the key,
/// repeated fields joined with `, `, invalid UTF-8 escaped. Common headers' keys are borrowed
/// and values valid as UTF-8 move into the record: no allocation for most headers (building
/// the key and copying the value were two each, a fifth of the allocations per exchange).
struct HeaderAttributes {
    prefix_len: usize,
    fields: Vec<(AttributeKey, String)>,
}

impl HeaderAttributes {
    /// Takes the values out of `headers`.
    fn new(keys: HeaderKeys, headers: &mut [(String, Vec<u8>)]) -> Self {
        let mut fields: Vec<(AttributeKey, String)> = Vec::with_capacity(headers.len());
        for (name, value) in headers {
            let key = keys.key(name);
            let value = take_text(value);
            match fields.iter_mut().find(|(k, _)| *k == key) {
                Some((_, existing)) => {
                    existing.push_str(", ");
                    existing.push_str(&value);
                }
                None => fields.push((key, value)),
            }
        }
        HeaderAttributes {
            prefix_len: keys.prefix.len(),
            fields,
        }
    }

    /// The value of the header named `name` (lower case).
    fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(key, _)| &key[self.prefix_len..] == name)
            .map(|(_, value)| value.as_str())
    }

    /// Moves the attributes into `attrs`, in key order (see [`gather`]).
    fn put_all(mut self, attrs: &mut Gathered) {
        self.fields.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        attrs.extend(
            self.fields
                .into_iter()
                .map(|(key, value)| (key, AttributeValue::String(value))),
        );
    }
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

/// Attributes as they are gathered: pushed in any order, turned into
/// [`Attributes`](crate::record::Attributes) once
/// (sorted and built in bulk, the last value of a repeated key kept, as `insert` would). A
/// record has about 40; inserting them one by one into the map, each a search and a shift
/// within a node, was a tenth of the sensor's time under small GETs.
type Gathered = Vec<(AttributeKey, AttributeValue)>;

/// Puts an attribute the sensor names itself: its key is borrowed.
fn put(attrs: &mut Gathered, key: &'static str, value: impl Into<AttributeValue>) {
    attrs.push((Cow::Borrowed(key), value.into()));
}

/// Puts a body's attributes; its bytes move into the record. A body none of whose bytes were
/// seen (sent with `sendfile`, or lost) gets no body attribute rather than an empty one: the
/// record's `sensor.incomplete` says bytes are missing.
fn put_body(attrs: &mut Gathered, keys: BodyKeys, body: &mut Body) {
    let unseen = body.incomplete && body.bytes.is_empty() && body.wire_len > 0;
    if body.captured && !unseen {
        put(attrs, keys.body, take_text(&mut body.bytes));
    }
    if body.shed {
        put(attrs, keys.shed, true);
    }
    if body.captured && body.truncated {
        put(attrs, keys.truncated, true);
    }
}

/// The original client of a request that came through proxies: the first hop of
/// `Forwarded: for=` (RFC 7239), else of `X-Forwarded-For`, when it is an IP address (not
/// `unknown` or an obfuscated name); a port, brackets and quotes are dropped.
fn forwarded_client(forwarded: Option<&str>, x_forwarded_for: Option<&str>) -> Option<IpAddr> {
    let from_forwarded = forwarded.and_then(|value| {
        let first = value.split(',').next()?;
        first.split(';').find_map(|pair| {
            let (name, node) = pair.split_once('=')?;
            name.trim()
                .eq_ignore_ascii_case("for")
                .then(|| forwarded_node(node))
                .flatten()
        })
    });
    from_forwarded
        .or_else(|| x_forwarded_for.and_then(|value| forwarded_node(value.split(',').next()?)))
}

/// An IP address from a forwarding header's node: `192.0.2.60`, `"[2001:db8::17]:4711"`,
/// `198.51.100.7:8080`.
fn forwarded_node(node: &str) -> Option<IpAddr> {
    let node = node.trim().trim_matches('"');
    if let Some(rest) = node.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    node.parse()
        .ok()
        .or_else(|| node.parse::<SocketAddr>().ok().map(|a| a.ip()))
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
    exchange: HttpExchange,
    meta: &ConnMeta,
    process: &ProcessInfo,
    ctx: &RecordContext<'_>,
) -> Option<ExchangeRecord> {
    let gathered = gather(exchange, meta, process, ctx)?;
    let mut resource: Attributes = gathered.resource.into_iter().collect();
    // What the process declares for its own telemetry; where the sensor knows a key itself
    // (pid, host, container, pod, service name) the sensor's value stays.
    for (key, value) in process.resource_attributes() {
        resource
            .entry(Cow::Owned(key.clone()))
            .or_insert_with(|| value.as_str().into());
    }
    Some(ExchangeRecord {
        resource,
        name: gathered.name,
        kind: gathered.kind,
        start_time_unix_nano: gathered.start_time_unix_nano,
        end_time_unix_nano: gathered.end_time_unix_nano,
        attributes: gathered.attributes.into_iter().collect(),
    })
}

/// A record's parts before its attribute maps are built.
struct GatheredRecord {
    resource: Gathered,
    name: String,
    kind: SpanKind,
    start_time_unix_nano: u64,
    end_time_unix_nano: u64,
    attributes: Gathered,
}

/// Gathers a record's attributes, in key order: the maps are built from them by a sort, which
/// on sorted input is one pass (about 40 attributes in any order took a sixth of the record
/// stage's instructions in comparisons). The order is only a speed-up: an attribute put out of
/// place costs comparisons, not correctness; a unit test keeps it.
fn gather(
    mut exchange: HttpExchange,
    meta: &ConnMeta,
    process: &ProcessInfo,
    ctx: &RecordContext<'_>,
) -> Option<GatheredRecord> {
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
    let req_headers = HeaderAttributes::new(HeaderKeys::REQUEST, &mut request.headers);
    let method = request.method.as_str();
    let target = request.target.as_str();
    let origin_target = strip_origin(target);
    // `CONNECT host:port` (authority-form: a tunnel through a proxy) names no resource: no
    // path nor URL, and the server is the one the tunnel goes to.
    let tunnel = method.eq_ignore_ascii_case("CONNECT");
    let (path, query) = match origin_target.split_once('?') {
        _ if tunnel => (None, None),
        Some((p, q)) => (Some(p), Some(q)),
        None => (Some(origin_target), None),
    };
    let host = req_headers.get("host");
    let authority = if tunnel { Some(target) } else { host };
    let default_port = if ctx.scheme == "https" { 443 } else { 80 };
    let (host_name, host_port) = match authority {
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
    let server_address = host_name.or_else(|| server_endpoint.map(|a| a.ip().to_string()));
    let server_port = host_port
        .or_else(|| authority.map(|_| default_port))
        .or_else(|| server_endpoint.map(|a| a.port()));
    let full_url = match kind {
        _ if tunnel => None,
        SpanKind::Client if target.starts_with("http://") || target.starts_with("https://") => {
            Some(target.to_owned())
        }
        SpanKind::Client => {
            let authority = match (host, server_endpoint) {
                (Some(h), _) => Some(h.to_owned()),
                (None, Some(addr)) => Some(addr.to_string()),
                (None, None) => None,
            };
            authority.map(|a| format!("{}://{}{}", ctx.scheme, a, origin_target))
        }
        SpanKind::Server => None,
    };
    let flavor = version_text(request.version);
    let user_agent = req_headers.get("user-agent").map(str::to_owned);
    let peer_ip = meta.remote.map(|remote| remote.ip().to_string());
    // The client behind proxies, when they say who it was (OpenTelemetry's `client.address`);
    // `network.peer.address` and `net.peer.ip` stay the socket's peer.
    let client_ip = match kind {
        SpanKind::Server => forwarded_client(
            req_headers.get("forwarded"),
            req_headers.get("x-forwarded-for"),
        )
        .map(|ip| ip.to_string())
        .or_else(|| peer_ip.clone()),
        SpanKind::Client => None,
    };
    let incoming = context::incoming_context(ctx.propagation, |name| req_headers.get(name));
    let key = context::ExchangeKey::of(meta.role, meta.local, meta.remote, meta.tls, ctx.seq);
    let ids = match kind {
        SpanKind::Client => {
            context::client_ids(ctx.salt, key.as_ref(), incoming, ctx.link.as_ref())
        }
        SpanKind::Server => context::server_ids(
            ctx.salt,
            key.as_ref(),
            incoming,
            ctx.client_watched,
            ctx.link.as_ref(),
        ),
    };
    let mut end_ns = exchange.gave_up_ns.unwrap_or(request.end_ns);
    let mut incomplete = exchange.incomplete || request.body.incomplete;
    if let Some(response) = &exchange.response {
        end_ns = end_ns.max(response.end_ns);
        incomplete |= response.body.incomplete;
    }
    let status = exchange.response.as_ref().map(|r| i64::from(r.status));

    let mut attrs = Gathered::with_capacity(48);
    if let Some(ip) = client_ip {
        put(&mut attrs, "client.address", ip);
    }
    if status.is_none() && !incomplete {
        put(&mut attrs, "error.type", crate::record::NO_RESPONSE_ERROR);
    }
    put(&mut attrs, "http.flavor", flavor);
    if let Some(host) = host {
        put(&mut attrs, "http.host", host);
    }
    put(&mut attrs, "http.method", method);
    put_body(&mut attrs, BodyKeys::REQUEST, &mut request.body);
    req_headers.put_all(&mut attrs);
    put(&mut attrs, "http.request.method", method);
    if let Some(response) = &mut exchange.response {
        put_body(&mut attrs, BodyKeys::RESPONSE, &mut response.body);
        HeaderAttributes::new(HeaderKeys::RESPONSE, &mut response.headers).put_all(&mut attrs);
    }
    if let Some(status) = status {
        put(&mut attrs, "http.response.status_code", status);
    }
    put(&mut attrs, "http.scheme", ctx.scheme);
    if let Some(status) = status {
        put(&mut attrs, "http.status_code", status);
    }
    put(&mut attrs, "http.target", origin_target);
    if let Some(full) = &full_url {
        put(&mut attrs, "http.url", full.as_str());
    }
    if let Some(agent) = &user_agent {
        put(&mut attrs, "http.user_agent", agent.as_str());
    }
    if let Some(local) = meta.local {
        put(&mut attrs, "net.host.port", i64::from(local.port()));
    }
    if let (Some(ip), Some(remote)) = (&peer_ip, meta.remote) {
        put(&mut attrs, "net.peer.ip", ip.as_str());
        put(&mut attrs, "net.peer.port", i64::from(remote.port()));
        put(&mut attrs, "network.peer.address", ip.as_str());
        put(&mut attrs, "network.peer.port", i64::from(remote.port()));
    }
    put(&mut attrs, "network.protocol.version", flavor);
    if incomplete {
        put(&mut attrs, "sensor.incomplete", true);
    }
    if let Some(ids) = ids {
        ids.write(&mut attrs);
    }
    if let Some(address) = server_address {
        put(&mut attrs, "server.address", address);
    }
    if let Some(port) = server_port {
        put(&mut attrs, "server.port", i64::from(port));
    }
    if let Some(full) = full_url {
        put(&mut attrs, "url.full", full);
    }
    if let Some(path) = path {
        put(&mut attrs, "url.path", path);
    }
    if let Some(query) = query {
        put(&mut attrs, "url.query", query);
    }
    put(&mut attrs, "url.scheme", ctx.scheme);
    if let Some(agent) = user_agent {
        put(&mut attrs, "user_agent.original", agent);
    }

    let mut resource = Gathered::with_capacity(8);
    if let Some(id) = &process.container_id {
        put(&mut resource, "container.id", id.as_str());
    }
    put(&mut resource, "host.name", ctx.host_name);
    if let Some(pod) = ctx.pod {
        for (key, value) in pod.attributes() {
            resource.push((Cow::Owned(key), value.into()));
        }
    }
    put(
        &mut resource,
        "process.command_line",
        process.command_line(),
    );
    put(
        &mut resource,
        "process.executable.name",
        process.executable_name.as_str(),
    );
    put(&mut resource, "process.pid", i64::from(process.pid));
    put(
        &mut resource,
        "service.name",
        resolve_service_name(process, ctx.pod, ctx.configured_service_name),
    );

    Some(GatheredRecord {
        resource,
        name: span_name(method, target),
        kind,
        start_time_unix_nano: (ctx.to_unix_nanos)(request.start_ns),
        end_time_unix_nano: (ctx.to_unix_nanos)(end_ns),
        attributes: attrs,
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
        for (bytes, text) in [
            ("caf\u{e9}".as_bytes(), "caf\u{e9}"),
            (b"caf\xc3", "caf\\xc3"),
        ] {
            let mut taken = bytes.to_vec();
            assert_eq!(take_text(&mut taken), text);
            assert!(taken.is_empty());
        }
    }

    #[test]
    fn common_header_keys_are_the_keys_any_header_gets() {
        for (keys, body) in [
            (HeaderKeys::REQUEST, BodyKeys::REQUEST),
            (HeaderKeys::RESPONSE, BodyKeys::RESPONSE),
        ] {
            for (name, key) in keys.common {
                assert_eq!(*name, name.to_ascii_lowercase(), "{key}");
                assert!(
                    matches!(keys.key(&name.to_ascii_uppercase()), Cow::Borrowed(k) if k == *key)
                );
            }
            assert_eq!(keys.key("Content-Type"), body.content_type);
            assert_eq!(keys.key("X-Rare"), format!("{}x-rare", keys.prefix));
        }
    }

    #[test]
    fn repeated_headers_are_joined_under_one_key() {
        let mut headers = vec![
            ("Accept".to_owned(), b"a".to_vec()),
            ("X-Id".to_owned(), b"1\xff".to_vec()),
            ("accept".to_owned(), b"b".to_vec()),
            ("x-ID".to_owned(), b"2".to_vec()),
        ];
        let keys = HeaderKeys {
            prefix: "h.",
            common: &[("accept", "h.accept")],
        };
        let attributes = HeaderAttributes::new(keys, &mut headers);
        assert_eq!(
            attributes.fields,
            vec![
                (Cow::Borrowed("h.accept"), "a, b".to_owned()),
                (Cow::Owned("h.x-id".to_owned()), "1\\xff, 2".to_owned())
            ]
        );
        assert_eq!(attributes.get("x-id"), Some("1\\xff, 2"));
        assert_eq!(attributes.get("h.x-id"), None);
    }

    /// The context of the first exchange on a connection of host `h` over plain HTTP.
    fn context_for<'a>(
        to_unix: &'a dyn Fn(u64) -> u64,
        link: Option<context::Link>,
    ) -> RecordContext<'a> {
        RecordContext {
            host_name: "h",
            scheme: "http",
            to_unix_nanos: to_unix,
            seq: 0,
            client_watched: false,
            link,
            salt: 1,
            pod: None,
            configured_service_name: None,
            propagation: &[context::Propagation::TraceContext, context::Propagation::B3],
        }
    }

    #[test]
    fn a_body_none_of_whose_bytes_were_seen_gets_no_body_attribute() {
        let body = |bytes: &[u8], wire_len: u64, incomplete: bool| Body {
            captured: true,
            bytes: bytes.to_vec(),
            wire_len,
            incomplete,
            ..Body::default()
        };
        for (mut body, want) in [
            (body(b"", 100, true), None),
            (body(b"{\"a\"", 100, true), Some("{\"a\"")),
            (body(b"", 0, false), Some("")),
            (body(b"{}", 2, false), Some("{}")),
        ] {
            let mut attrs = Gathered::new();
            put_body(&mut attrs, BodyKeys::RESPONSE, &mut body);
            let got: Vec<_> = attrs.iter().map(|(k, v)| (k.as_ref(), v.clone())).collect();
            let want: Vec<_> = want
                .map(|text| ("http.response.body", AttributeValue::from(text)))
                .into_iter()
                .collect();
            assert_eq!(got, want);
        }
    }

    /// The record of `exchange` on a connection of unknown addresses, made by pid 7 in `role`.
    fn record_of(exchange: HttpExchange, role: Role) -> ExchangeRecord {
        record_on(exchange, &tcp_meta(role, None, None))
    }

    /// The record of `exchange` on connection `meta`, made by pid 7.
    fn record_on(exchange: HttpExchange, meta: &ConnMeta) -> ExchangeRecord {
        let process =
            ProcessInfo::new(7, "/usr/bin/python3".into(), Vec::new(), Default::default());
        let to_unix = |ns: u64| ns;
        build_record(exchange, meta, &process, &context_for(&to_unix, None)).unwrap()
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
            gave_up_ns: None,
        };
        let record = record_of(exchange, Role::Server);
        assert_eq!(
            record.attributes.get("http.request.body.shed"),
            Some(&AttributeValue::Bool(true))
        );
        assert!(!record.attributes.contains_key("http.request.body"));
        assert_eq!(record.attr_str("http.response.body"), Some("{}"));
        assert!(!record.attributes.contains_key("http.response.body.shed"));
    }

    #[test]
    fn a_request_without_a_response_is_an_error_unless_bytes_were_lost() {
        use crate::http::HttpRequest;
        let cases = [
            (false, Some(900), Some("no_response"), 900),
            (false, None, Some("no_response"), 2),
            (true, None, None, 2),
        ];
        for (incomplete, gave_up_ns, error, end) in cases {
            let exchange = HttpExchange {
                request: Some(HttpRequest {
                    method: "GET".into(),
                    target: "/slow".into(),
                    version: HttpVersion::Http11,
                    headers: Vec::new(),
                    body: Body::default(),
                    start_ns: 1,
                    end_ns: 2,
                }),
                response: None,
                incomplete,
                gave_up_ns,
            };
            let record = record_of(exchange, Role::Client);
            assert_eq!(
                record.attr_str("error.type"),
                error,
                "incomplete: {incomplete}"
            );
            assert_eq!(record.attr_int("http.status_code"), None);
            assert_eq!(record.start_time_unix_nano, 1);
            assert_eq!(
                record.end_time_unix_nano, end,
                "the call lasts until the wait for its response ended"
            );
        }
    }

    /// A tunnel through a proxy (`CONNECT host:port`, as `requests` sends it, without a Host
    /// header): the server is the tunnel's end, not the proxy, and there is no URL nor path.
    #[test]
    fn a_connect_names_the_tunnels_end_and_no_url() {
        use crate::http::{HttpRequest, HttpResponse};
        let exchange = HttpExchange {
            request: Some(HttpRequest {
                method: "CONNECT".into(),
                target: "api.example.com:8443".into(),
                version: HttpVersion::Http10,
                headers: Vec::new(),
                body: Body::default(),
                start_ns: 1,
                end_ns: 2,
            }),
            response: Some(HttpResponse {
                status: 200,
                reason: "Connection established".into(),
                version: HttpVersion::Http10,
                headers: Vec::new(),
                body: Body::default(),
                start_ns: 3,
                end_ns: 4,
            }),
            incomplete: false,
            gave_up_ns: None,
        };
        let meta = tcp_meta(
            Role::Client,
            Some("10.0.0.1:50000".parse().unwrap()),
            Some("10.0.0.9:3128".parse().unwrap()),
        );
        let record = record_on(exchange, &meta);
        assert_eq!(record.attr_str("server.address"), Some("api.example.com"));
        assert_eq!(record.attr_int("server.port"), Some(8443));
        assert_eq!(record.attr_str("http.target"), Some("api.example.com:8443"));
        assert_eq!(record.attr_int("network.peer.port"), Some(3128));
        for absent in ["url.full", "http.url", "url.path", "http.host"] {
            assert!(
                !record.attributes.contains_key(absent),
                "{absent}: {record:#?}"
            );
        }
    }

    /// Every attribute a record can have, for one exchange of `role`: headers repeated and in
    /// mixed case, a query, a traceparent, a truncated request body, a shed response body, and
    /// a lost byte.
    fn full_exchange(role: Role) -> (HttpExchange, ConnMeta) {
        use crate::http::{HttpRequest, HttpResponse};
        let headers = |names: &[&str]| -> Vec<(String, Vec<u8>)> {
            names
                .iter()
                .map(|n| {
                    let value: &[u8] = match *n {
                        "traceparent" => b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                        _ => b"v",
                    };
                    ((*n).to_owned(), value.to_vec())
                })
                .collect()
        };
        let exchange = HttpExchange {
            request: Some(HttpRequest {
                method: "POST".into(),
                target: "/a/7?q=1".into(),
                version: HttpVersion::Http11,
                headers: headers(&[
                    "X-Zeta",
                    "Host",
                    "User-Agent",
                    "traceparent",
                    "Accept",
                    "accept",
                ]),
                body: Body {
                    captured: true,
                    bytes: b"{}".to_vec(),
                    truncated: true,
                    wire_len: 9,
                    ..Body::default()
                },
                start_ns: 1,
                end_ns: 2,
            }),
            response: Some(HttpResponse {
                status: 503,
                reason: "Busy".into(),
                version: HttpVersion::Http11,
                headers: headers(&["Server", "Content-Type", "A"]),
                body: Body {
                    shed: true,
                    wire_len: 10,
                    incomplete: true,
                    ..Body::default()
                },
                start_ns: 3,
                end_ns: 4,
            }),
            incomplete: true,
            gave_up_ns: None,
        };
        let meta = tcp_meta(
            role,
            Some("10.0.0.1:8000".parse().unwrap()),
            Some("10.0.0.2:5000".parse().unwrap()),
        );
        (exchange, meta)
    }

    /// A plain TCP connection of pid 7 in `role` between these ends.
    fn tcp_meta(
        role: Role,
        local: Option<std::net::SocketAddr>,
        remote: Option<std::net::SocketAddr>,
    ) -> ConnMeta {
        ConnMeta {
            conn_id: 1,
            pid: 7,
            fd: 3,
            role,
            family: sensor_common::event::Family::Inet,
            local,
            remote,
            unix_path: None,
            midstream: false,
            tls: false,
        }
    }

    #[test]
    fn attributes_are_gathered_in_key_order() {
        let mut process = ProcessInfo::new(
            7,
            "/usr/bin/python3".into(),
            vec!["python3".into(), "app.py".into()],
            Default::default(),
        );
        process.container_id = Some("abc".into());
        let to_unix = |ns: u64| ns;
        for role in [Role::Server, Role::Client] {
            let link = context::Link {
                trace_id: [1; 16],
                parent_span_id: [2; 8],
            };
            let ctx = context_for(&to_unix, Some(link));
            let (exchange, meta) = full_exchange(role);
            let gathered = gather(exchange, &meta, &process, &ctx).unwrap();
            for (what, list) in [
                ("attributes", &gathered.attributes),
                ("resource", &gathered.resource),
            ] {
                for pair in list.windows(2) {
                    assert!(
                        pair[0].0 < pair[1].0,
                        "{role:?} {what}: {:?} put before {:?}",
                        pair[0].0,
                        pair[1].0
                    );
                }
            }
            let keys: Vec<&str> = gathered
                .attributes
                .iter()
                .map(|(k, _)| k.as_ref())
                .collect();
            for expected in [
                "http.request.body.truncated",
                "http.request.header.accept",
                "http.response.body.shed",
                "http.response.header.server",
                "sensor.incomplete",
                "sensor.span_id",
                "url.query",
                "user_agent.original",
            ] {
                assert!(keys.contains(&expected), "{role:?}: no {expected}");
            }
            assert_eq!(keys.contains(&"url.full"), role == Role::Client);
            // A server span's parent is the traceparent's span; a client span is that span.
            assert_eq!(
                keys.contains(&"sensor.parent_span_id"),
                role == Role::Server
            );
        }
    }

    /// The process's own `OTEL_RESOURCE_ATTRIBUTES` / `HT_RESOURCE_ATTRIBUTES` reach its
    /// records' resource; keys the sensor knows itself keep the sensor's value.
    #[test]
    fn declared_resource_attributes_join_the_resource() {
        let env = [
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment=prod,process.pid=1,host.name=elsewhere,service.name=svc",
            ),
            ("HT_RESOURCE_ATTRIBUTES", "service.version=2.1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let mut process = ProcessInfo::new(
            7,
            "/usr/bin/python3".into(),
            vec!["python3".into(), "app.py".into()],
            env,
        );
        process.container_id = Some("abc".into());
        let to_unix = |ns: u64| ns;
        let (exchange, meta) = full_exchange(Role::Server);
        let record = build_record(exchange, &meta, &process, &context_for(&to_unix, None)).unwrap();
        let resource: Vec<(&str, String)> = record
            .resource
            .iter()
            .map(|(k, v)| (k.as_ref(), format!("{v:?}")))
            .collect();
        let get = |key: &str| record.resource.get(key).cloned();
        assert_eq!(
            get("deployment.environment"),
            Some("prod".into()),
            "{resource:?}"
        );
        assert_eq!(get("service.version"), Some("2.1".into()));
        assert_eq!(get("service.name"), Some("svc".into()));
        assert_eq!(get("process.pid"), Some(AttributeValue::Int(7)));
        assert_eq!(get("host.name"), Some("h".into()));
        assert_eq!(get("container.id"), Some("abc".into()));
    }

    #[test]
    fn forwarded_clients() {
        let cases: &[(Option<&str>, Option<&str>, Option<&str>)] = &[
            (
                None,
                Some("203.0.113.195, 70.41.3.18, 150.172.238.178"),
                Some("203.0.113.195"),
            ),
            (None, Some(" 198.51.100.7:8080 "), Some("198.51.100.7")),
            (
                None,
                Some("2001:db8:85a3::8a2e:370:7334"),
                Some("2001:db8:85a3::8a2e:370:7334"),
            ),
            (
                Some("for=192.0.2.60;proto=http;by=203.0.113.43"),
                None,
                Some("192.0.2.60"),
            ),
            (
                Some("For=\"[2001:db8:cafe::17]:4711\""),
                None,
                Some("2001:db8:cafe::17"),
            ),
            (
                Some("proto=https;for=192.0.2.43, for=198.51.100.17"),
                None,
                Some("192.0.2.43"),
            ),
            // Forwarded wins over X-Forwarded-For; an unusable one falls back.
            (
                Some("for=192.0.2.60"),
                Some("203.0.113.195"),
                Some("192.0.2.60"),
            ),
            (
                Some("for=unknown"),
                Some("203.0.113.195"),
                Some("203.0.113.195"),
            ),
            (Some("for=_hidden, for=192.0.2.1"), None, None),
            (None, Some("not-an-address"), None),
            (None, Some(""), None),
            (None, None, None),
        ];
        for (forwarded, xff, want) in cases {
            assert_eq!(
                forwarded_client(*forwarded, *xff)
                    .map(|ip| ip.to_string())
                    .as_deref(),
                *want,
                "{forwarded:?} {xff:?}"
            );
        }
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
