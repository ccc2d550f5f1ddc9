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
    let status = match record.attr_int("http.status_code") {
        Some(code) => code.to_string(),
        None => record.attr_str("error.type").unwrap_or("---").to_owned(),
    };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{AttributeValue, Attributes};

    fn record(attributes: &[(&str, AttributeValue)]) -> ExchangeRecord {
        let resource: Attributes = [
            ("service.name".into(), AttributeValue::from("orders")),
            ("process.pid".into(), AttributeValue::Int(42)),
        ]
        .into_iter()
        .collect();
        ExchangeRecord {
            resource,
            name: "GET /slow".into(),
            kind: SpanKind::Client,
            start_time_unix_nano: 3_723_004_000_000,
            end_time_unix_nano: 3_723_006_500_000,
            attributes: attributes
                .iter()
                .map(|(k, v)| ((*k).to_owned().into(), v.clone()))
                .collect(),
        }
    }

    #[test]
    fn lines_show_the_status_or_why_there_is_none() {
        let answered = record(&[
            ("http.method", "GET".into()),
            ("url.full", "http://api/slow".into()),
            ("http.status_code", AttributeValue::Int(200)),
            ("http.response.body", "{}".into()),
        ]);
        assert_eq!(
            line(&answered),
            "01:02:03.004 client orders[42] GET http://api/slow -> 200 2.5ms req_body=0B resp_body=2B"
        );
        let unanswered = record(&[
            ("http.method", "GET".into()),
            ("url.full", "http://api/slow".into()),
            ("error.type", crate::record::NO_RESPONSE_ERROR.into()),
        ]);
        assert!(
            line(&unanswered).contains("GET http://api/slow -> no_response 2.5ms"),
            "{}",
            line(&unanswered)
        );
        let lost = record(&[
            ("http.method", "GET".into()),
            ("sensor.incomplete", AttributeValue::Bool(true)),
        ]);
        assert!(
            line(&lost).ends_with("-> --- 2.5ms req_body=0B resp_body=0B incomplete"),
            "{}",
            line(&lost)
        );
    }
}
