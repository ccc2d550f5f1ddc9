//! The console format: one readable line per exchange.

use crate::record::{BodyKeys, ExchangeRecord, SpanKind};

/// Formats a record as one line: time, side, service and pid, method, target, status,
/// duration, peer, body sizes and flags.
pub fn line(record: &ExchangeRecord) -> String {
    let secs = record.start_time_unix_nano / 1_000_000_000;
    let millis = (record.start_time_unix_nano / 1_000_000) % 1000;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    let kind = match record.kind {
        SpanKind::Server => "server",
        SpanKind::Client => "client",
    };
    let service = record
        .resource
        .get("service.name")
        .and_then(|v| v.as_str())
        .unwrap_or("?");
    let pid = record
        .resource
        .get("process.pid")
        .and_then(|v| v.as_int())
        .unwrap_or(0);
    let method = record.attr_str("http.method").unwrap_or("?");
    let target = record
        .attr_str("url.full")
        .or_else(|| record.attr_str("http.target"))
        .unwrap_or("?");
    let status = record
        .attr_int("http.status_code")
        .map_or_else(|| "---".to_owned(), |s| s.to_string());
    let duration_ms = record
        .end_time_unix_nano
        .saturating_sub(record.start_time_unix_nano) as f64
        / 1e6;
    let peer = match (
        record.attr_str("net.peer.ip"),
        record.attr_int("net.peer.port"),
    ) {
        (Some(ip), Some(port)) => format!(" peer={ip}:{port}"),
        _ => String::new(),
    };
    let mut flags = String::new();
    for (key, label) in [
        (BodyKeys::REQUEST.truncated, " req-truncated"),
        (BodyKeys::RESPONSE.truncated, " resp-truncated"),
        (BodyKeys::REQUEST.shed, " req-shed"),
        (BodyKeys::RESPONSE.shed, " resp-shed"),
        ("sensor.incomplete", " incomplete"),
    ] {
        if record.attributes.contains_key(key) {
            flags.push_str(label);
        }
    }
    let body_len = |key: &str| record.attr_str(key).map_or(0, str::len);
    format!(
        "{h:02}:{m:02}:{s:02}.{millis:03} {kind} {service}[{pid}] {method} {target} -> {status} {duration_ms:.1}ms{peer} req_body={}B resp_body={}B{flags}",
        body_len(BodyKeys::REQUEST.body),
        body_len(BodyKeys::RESPONSE.body),
    )
}
