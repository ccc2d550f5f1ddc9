//! Fuzzes the small parsers of request metadata the record stage runs on every exchange:
//! trace context (`traceparent`, `b3`, `X-B3-*`) under every format order, the content-type
//! allow-list, `k=v` resource lists and service names from command lines. Asserts no panic and
//! what each promises: ids never all zero, a parsed `traceparent` formats back to itself, the
//! allow-list agreeing with a plain lower-case substring search.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sensor::enrich::context::{Propagation, incoming_context, parse_b3_single, parse_traceparent};
use sensor::enrich::process::{parse_key_values, service_name_from_command_line};
use sensor::http::content_type_allowed;

const NAMES: [&str; 4] = ["traceparent", "b3", "x-b3-traceid", "x-b3-spanid"];

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let values: Vec<&str> = text.split('\n').collect();
    let formats: Vec<Propagation> = match selector % 4 {
        0 => vec![Propagation::TraceContext, Propagation::B3],
        1 => vec![Propagation::B3, Propagation::TraceContext],
        2 => vec![Propagation::B3],
        _ => vec![Propagation::TraceContext],
    };
    let header = |name: &str| {
        NAMES
            .iter()
            .position(|n| *n == name)
            .and_then(|i| values.get(i).copied())
    };
    if let Some((trace, span)) = incoming_context(&formats, header) {
        assert_ne!(trace, [0; 16]);
        assert_ne!(span, [0; 8]);
    }
    for value in &values {
        if let Some((trace, span)) = parse_traceparent(value) {
            let again = format!("00-{}-{}-01", hex(&trace), hex(&span));
            assert_eq!(parse_traceparent(&again), Some((trace, span)), "{value:?}");
        }
        if let Some((trace, span)) = parse_b3_single(value) {
            assert_ne!(trace, [0; 16]);
            assert_ne!(span, [0; 8]);
        }
    }

    let allowed: Vec<String> = values
        .iter()
        .skip(1)
        .filter(|v| !v.is_empty())
        .map(|v| v.to_ascii_lowercase())
        .collect();
    let content_type = values[0];
    let plain = allowed.is_empty()
        || allowed
            .iter()
            .any(|a| content_type.to_ascii_lowercase().contains(a.as_str()));
    assert_eq!(
        content_type_allowed(&allowed, content_type.as_bytes()),
        plain
    );

    for (key, _) in parse_key_values(&text) {
        assert!(!key.is_empty() && key == key.trim());
    }
    let argv: Vec<String> = text.split('\0').map(str::to_owned).collect();
    let name = service_name_from_command_line("python3", &argv, || None);
    assert!(!name.contains('\0'));
});
