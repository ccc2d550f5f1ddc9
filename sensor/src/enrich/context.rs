//! Trace context without code in the application: span and trace ids for each exchange.
//!
//! - A request carrying a W3C `traceparent` joins that trace: the server span's parent is the
//!   header's parent-id, and a client span takes the header's parent-id as its own span id
//!   (the header was written by instrumentation acting for that very call).
//! - Otherwise ids are derived from the connection's 4-tuple, seen from the client's side, and
//!   the exchange's position on the connection. Both ends compute the same values, so when the
//!   client of a server connection is a watched process on this host, the server span's parent
//!   is exactly the client span's id, whichever record is built first.

use std::{
    hash::{Hash, Hasher},
    net::SocketAddr,
};

use crate::record::{AttributeValue, Attributes};

/// Attribute names the OTLP exporter reads ids from (and does not export).
pub const TRACE_ID: &str = "sensor.trace_id";
/// See [`TRACE_ID`].
pub const SPAN_ID: &str = "sensor.span_id";
/// See [`TRACE_ID`].
pub const PARENT_SPAN_ID: &str = "sensor.parent_span_id";

/// The ids of one span.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanIds {
    /// Trace id.
    pub trace_id: [u8; 16],
    /// This span's id.
    pub span_id: [u8; 8],
    /// The parent span's id, when known.
    pub parent_span_id: Option<[u8; 8]>,
}

impl SpanIds {
    /// Writes the ids as hex attributes.
    pub fn write(&self, attributes: &mut Attributes) {
        attributes.insert(TRACE_ID.into(), AttributeValue::String(hex(&self.trace_id)));
        attributes.insert(SPAN_ID.into(), AttributeValue::String(hex(&self.span_id)));
        if let Some(parent) = self.parent_span_id {
            attributes.insert(PARENT_SPAN_ID.into(), AttributeValue::String(hex(&parent)));
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Parses a W3C `traceparent` value: `version-traceid-parentid-flags`; all-zero ids and
/// version `ff` are invalid.
pub fn parse_traceparent(value: &str) -> Option<([u8; 16], [u8; 8])> {
    let mut parts = value.trim().split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let parent = parts.next()?;
    let flags = parts.next()?;
    if version.len() != 2 || version.eq_ignore_ascii_case("ff") || flags.len() != 2 {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let trace: [u8; 16] = unhex(&trace.to_ascii_lowercase())?;
    let parent: [u8; 8] = unhex(&parent.to_ascii_lowercase())?;
    if trace == [0; 16] || parent == [0; 8] {
        return None;
    }
    Some((trace, parent))
}

/// The connection, seen from the client's side, and the exchange's position on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExchangeKey {
    /// The client's end.
    pub client: SocketAddr,
    /// The server's end.
    pub server: SocketAddr,
    /// 0 for the connection's first exchange, then 1, 2, ...
    pub seq: u64,
}

/// Derives ids from a key; `salt` is fixed for the sensor's lifetime (both ends of a
/// connection on this host are seen by the same sensor).
fn derive<const N: usize>(salt: u64, key: &ExchangeKey, role: &str) -> [u8; N] {
    let mut out = [0u8; N];
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (salt, key, role, i).hash(&mut hasher);
        let value = hasher.finish().to_be_bytes();
        chunk.copy_from_slice(&value[..chunk.len()]);
    }
    if out.iter().all(|b| *b == 0) {
        out[N - 1] = 1;
    }
    out
}

/// Ids of a client span.
pub fn client_ids(
    salt: u64,
    key: Option<&ExchangeKey>,
    traceparent: Option<&str>,
) -> Option<SpanIds> {
    if let Some((trace_id, parent)) = traceparent.and_then(parse_traceparent) {
        return Some(SpanIds {
            trace_id,
            span_id: parent,
            parent_span_id: None,
        });
    }
    let key = key?;
    Some(SpanIds {
        trace_id: derive(salt, key, "trace"),
        span_id: derive(salt, key, "client"),
        parent_span_id: None,
    })
}

/// Ids of a server span; `client_watched` says whether the client end of the connection is a
/// watched process on this host (its span then exists and is the parent).
pub fn server_ids(
    salt: u64,
    key: Option<&ExchangeKey>,
    traceparent: Option<&str>,
    client_watched: bool,
) -> Option<SpanIds> {
    let parsed = traceparent.and_then(parse_traceparent);
    let key = key?;
    let span_id = derive(salt, key, "server");
    Some(match parsed {
        Some((trace_id, parent)) => SpanIds {
            trace_id,
            span_id,
            parent_span_id: Some(parent),
        },
        None => SpanIds {
            trace_id: derive(salt, key, "trace"),
            span_id,
            parent_span_id: client_watched.then(|| derive(salt, key, "client")),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ExchangeKey {
        ExchangeKey {
            client: "127.0.0.1:50000".parse().unwrap(),
            server: "127.0.0.1:8080".parse().unwrap(),
            seq: 2,
        }
    }

    #[test]
    fn traceparent_parsing() {
        let (trace, parent) =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(hex(&trace), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&parent), "00f067aa0ba902b7");
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "garbage",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad}");
        }
    }

    #[test]
    fn header_joins_the_trace() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let client = client_ids(7, Some(&key()), Some(tp)).unwrap();
        assert_eq!(hex(&client.span_id), "00f067aa0ba902b7");
        let server = server_ids(7, Some(&key()), Some(tp), true).unwrap();
        assert_eq!(server.trace_id, client.trace_id);
        assert_eq!(server.parent_span_id, Some(client.span_id));
    }

    #[test]
    fn both_ends_on_this_host_are_stitched() {
        let client = client_ids(7, Some(&key()), None).unwrap();
        let server = server_ids(7, Some(&key()), None, true).unwrap();
        assert_eq!(server.trace_id, client.trace_id);
        assert_eq!(server.parent_span_id, Some(client.span_id));
        assert_ne!(server.span_id, client.span_id);
        let alone = server_ids(7, Some(&key()), None, false).unwrap();
        assert_eq!(alone.parent_span_id, None);
        let next = ExchangeKey { seq: 3, ..key() };
        assert_ne!(
            client_ids(7, Some(&next), None).unwrap().span_id,
            client.span_id
        );
        assert_ne!(
            client_ids(8, Some(&key()), None).unwrap().span_id,
            client.span_id
        );
    }
}
