//! Trace context without code in the application: span and trace ids for each exchange.
//!
//! - A request carrying a W3C `traceparent` (or B3 headers: see [`Propagation`]) joins that
//!   trace: the server span's parent is the header's parent-id, and a client span takes the
//!   header's parent-id as its own span id (the header was written by instrumentation acting
//!   for that very call).
//! - Otherwise ids are derived from the connection's 4-tuple, seen from the client's side, and
//!   the exchange's position on the connection. Both ends compute the same values, so when the
//!   client of a server connection is a watched process on this host, the server span's parent
//!   is exactly the client span's id, whichever record is built first.
//! - A client call made by a thread while it serves a server request is a child of that
//!   server span (thread-per-request servers: gunicorn sync and gthread workers,
//!   `ThreadingHTTPServer`, Django's runserver); see [`Threads`] for the rule and why it does
//!   not parent the calls of event loops serving several requests at once.

use std::{
    collections::{HashMap, VecDeque},
    hash::{Hash, Hasher},
    net::SocketAddr,
};

use sensor_common::event::Role;

use crate::record::{AttributeKey, AttributeValue};

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
    /// Writes the ids as hex attributes (into a map, or a list of pairs being gathered).
    pub fn write(&self, attributes: &mut impl Extend<(AttributeKey, AttributeValue)>) {
        // In key order: a record's attributes are gathered sorted (see `record::gather`).
        if let Some(parent) = self.parent_span_id {
            attributes.extend([(PARENT_SPAN_ID.into(), AttributeValue::String(hex(&parent)))]);
        }
        attributes.extend([
            (SPAN_ID.into(), AttributeValue::String(hex(&self.span_id))),
            (TRACE_ID.into(), AttributeValue::String(hex(&self.trace_id))),
        ]);
    }
}

/// Lowercase hex of an id, written into one allocation (a `format!` per byte was 4% of the
/// sensor's time under small GETs).
fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for digit in bytes
        .iter()
        .flat_map(|byte| crate::record::lower_hex(*byte))
    {
        out.push(char::from(digit));
    }
    out
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

/// A trace-context format a request can carry (`propagation_formats`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Propagation {
    /// W3C Trace Context: `traceparent`.
    TraceContext,
    /// Zipkin B3: the single `b3` header, or `X-B3-TraceId` and `X-B3-SpanId`.
    B3,
}

impl Propagation {
    /// The format of an agent-config name (`TRACECONTEXT`, `B3`; any case).
    pub fn from_name(name: &str) -> Option<Self> {
        match name.trim().to_ascii_uppercase().as_str() {
            "TRACECONTEXT" => Some(Propagation::TraceContext),
            "B3" => Some(Propagation::B3),
            _ => None,
        }
    }
}

/// The trace id and parent span id a request carries, in the first of `formats` it has;
/// `header` looks a request header up by lower-case name.
pub fn incoming_context<'h>(
    formats: &[Propagation],
    header: impl Fn(&str) -> Option<&'h str>,
) -> Option<([u8; 16], [u8; 8])> {
    formats.iter().find_map(|format| match format {
        Propagation::TraceContext => header("traceparent").and_then(parse_traceparent),
        Propagation::B3 => header("b3")
            .and_then(parse_b3_single)
            .or_else(|| parse_b3_ids(header("x-b3-traceid")?, header("x-b3-spanid")?)),
    })
}

/// Parses a B3 single header, `traceid-spanid[-sampling[-parentspanid]]` (a bare sampling
/// decision, `0` or `d`, carries no ids).
pub fn parse_b3_single(value: &str) -> Option<([u8; 16], [u8; 8])> {
    let mut parts = value.trim().split('-');
    parse_b3_ids(parts.next()?, parts.next()?)
}

/// B3 ids: a trace id of 32 or 16 hex digits (a 64-bit one is the low half of the 128-bit
/// id, as OpenTelemetry reads it) and a span id of 16; all-zero ids are invalid.
fn parse_b3_ids(trace: &str, span: &str) -> Option<([u8; 16], [u8; 8])> {
    let trace = trace.trim().to_ascii_lowercase();
    let trace: [u8; 16] = match trace.len() {
        32 => unhex(&trace)?,
        16 => {
            let low: [u8; 8] = unhex(&trace)?;
            let mut id = [0u8; 16];
            id[8..].copy_from_slice(&low);
            id
        }
        _ => return None,
    };
    let span: [u8; 8] = unhex(&span.trim().to_ascii_lowercase())?;
    if trace == [0; 16] || span == [0; 8] {
        return None;
    }
    Some((trace, span))
}

/// The connection, seen from the client's side, and the exchange's position on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExchangeKey {
    /// The client's end.
    pub client: SocketAddr,
    /// The server's end.
    pub server: SocketAddr,
    /// The exchange travels inside TLS. A connection can carry plaintext HTTP and then TLS —
    /// a tunnel through a proxy is a `CONNECT` exchange, then the tunnelled ones — and each
    /// numbers its exchanges from 0.
    pub tls: bool,
    /// 0 for the connection's (or its TLS stream's) first exchange, then 1, 2, ...
    pub seq: u64,
}

impl ExchangeKey {
    /// The key of exchange `seq` on a connection of a process in `role` (a connection of
    /// unknown role is taken for a server's, as the record does), in its TLS stream or its
    /// plaintext; `None` without both addresses (unix sockets, unknown peers).
    pub fn of(
        role: Role,
        local: Option<SocketAddr>,
        remote: Option<SocketAddr>,
        tls: bool,
        seq: u64,
    ) -> Option<ExchangeKey> {
        let (client, server) = match role {
            Role::Client => (local?, remote?),
            Role::Server | Role::Unknown => (remote?, local?),
        };
        Some(ExchangeKey {
            client,
            server,
            tls,
            seq,
        })
    }
}

/// What a client exchange takes from the server request its thread was serving when it
/// wrote the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    /// The server span's trace id.
    pub trace_id: [u8; 16],
    /// The server span's id: the client span's parent.
    pub parent_span_id: [u8; 8],
}

/// Derives ids from a key; `salt` is fixed for the sensor's lifetime (both ends of a
/// connection on this host are seen by the same sensor).
fn derive<const N: usize>(salt: u64, key: &ExchangeKey, role: &str) -> [u8; N] {
    let mut out = [0u8; N];
    // The key is hashed once; each 8 bytes continue from there with their index (the same
    // values as hashing `(salt, key, role, i)` afresh for each).
    let mut prefix = std::collections::hash_map::DefaultHasher::new();
    (salt, key, role).hash(&mut prefix);
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        let mut hasher = prefix.clone();
        i.hash(&mut hasher);
        let value = hasher.finish().to_be_bytes();
        chunk.copy_from_slice(&value[..chunk.len()]);
    }
    if out.iter().all(|b| *b == 0) {
        out[N - 1] = 1;
    }
    out
}

/// Ids of a client span; `link` is the server request the call was made for, if known
/// (the span is then its child, in its trace).
pub fn client_ids(
    salt: u64,
    key: Option<&ExchangeKey>,
    incoming: Option<([u8; 16], [u8; 8])>,
    link: Option<&Link>,
) -> Option<SpanIds> {
    if let Some((trace_id, parent)) = incoming {
        return Some(SpanIds {
            trace_id,
            span_id: parent,
            parent_span_id: None,
        });
    }
    let key = key?;
    Some(SpanIds {
        trace_id: link.map_or_else(|| derive(salt, key, "trace"), |l| l.trace_id),
        span_id: derive(salt, key, "client"),
        parent_span_id: link.map(|l| l.parent_span_id),
    })
}

/// Ids of a server span (`incoming`: the request's trace context, see [`incoming_context`]);
/// `client_watched` says whether the client end of the connection is a
/// watched process on this host (its span then exists and is the parent), and
/// `client_link` is that client exchange's [`Link`], if it has one (the client span, and so
/// this one, are then in the trace of the request the client was serving).
pub fn server_ids(
    salt: u64,
    key: Option<&ExchangeKey>,
    incoming: Option<([u8; 16], [u8; 8])>,
    client_watched: bool,
    client_link: Option<&Link>,
) -> Option<SpanIds> {
    let key = key?;
    let span_id = derive(salt, key, "server");
    Some(match incoming {
        Some((trace_id, parent)) => SpanIds {
            trace_id,
            span_id,
            parent_span_id: Some(parent),
        },
        None => {
            let linked = client_link.filter(|_| client_watched);
            SpanIds {
                trace_id: linked.map_or_else(|| derive(salt, key, "trace"), |l| l.trace_id),
                span_id,
                parent_span_id: client_watched.then(|| derive(salt, key, "client")),
            }
        }
    })
}

/// How long a thread that was seen serving two requests at once is taken for an event loop.
const EVENT_LOOP_MEMORY_NS: u64 = 60_000_000_000;

/// Most threads followed, and most links kept, at once.
const MAX_ENTRIES: usize = 65_536;

/// A server request a thread read and that is not answered yet.
#[derive(Clone, Copy, Debug)]
struct Serving {
    conn_id: u64,
    /// The request's position on its connection: the number of exchanges finished there
    /// when the thread read it. It is answered once that number has grown.
    seq: u64,
}

#[derive(Debug, Default)]
struct ThreadState {
    serving: Vec<Serving>,
    /// When the thread was last seen with two unanswered requests.
    multiplexed_ns: Option<u64>,
    last_ns: u64,
}

/// Which server request each thread serves, and the [`Link`]s of the client calls made for
/// them.
///
/// The rule: a client request written by thread T is the child of server request R when T
/// read R, R is not answered yet (its exchange is not finished), R is the only such request
/// of T, and T has not been seen with two unanswered requests in the last 60 seconds.
///
/// - In a thread-per-request server (gunicorn sync and gthread workers, `ThreadingHTTPServer`)
///   the thread that reads a request runs the application for it and writes its response,
///   and serves nothing else meanwhile: every call it makes in between is made for that
///   request.
/// - An event-loop thread (asyncio: uvicorn, aiohttp) reads the requests of many
///   connections and runs their handlers interleaved; with two requests in flight, which
///   one a call is made for cannot be told from system calls, so its calls are not parented,
///   and once seen with two the thread is taken for an event loop for a while. With a single
///   request in flight (all it was seen serving for a minute) a call is parented to that
///   request, which is the only one the thread serves; the exception is work started by no
///   request (a background task running at that moment), which is then mis-parented.
/// - A call made after the response was written (a WSGI close callback, a background task
///   after the response) is not parented: the request is answered.
/// - The parent's ids are those its own record will get ([`server_ids`]), computed when the
///   call's first bytes are written, from the connection's addresses, the request's position
///   and its `traceparent` header: the client record is finished before the server's (its
///   response is read before the server writes its own), and the server on the other end,
///   if watched, is finished before both.
/// - Requests on connections without both addresses (unix sockets) have no derived ids and
///   parent nothing.
pub struct Threads {
    threads: HashMap<(u32, u32), ThreadState>,
    links: HashMap<ExchangeKey, (u64, Link, u64)>,
    /// Links in the order they were made, to expire them.
    order: VecDeque<(ExchangeKey, u64)>,
    retention_ns: u64,
}

impl Threads {
    /// An empty table whose links are kept `retention_ns` (longer than a request may wait
    /// for its response, so that both ends' records find them).
    pub fn new(retention_ns: u64) -> Self {
        Threads {
            threads: HashMap::new(),
            links: HashMap::new(),
            order: VecDeque::new(),
            retention_ns,
        }
    }

    /// Thread `tid` of process `pid` read request bytes on server connection `conn_id`, on
    /// which `seq` exchanges are finished. `finished` gives that number for any connection
    /// (`None`: the connection is gone).
    pub fn request_read(
        &mut self,
        (pid, tid): (u32, u32),
        conn_id: u64,
        seq: u64,
        now_ns: u64,
        finished: impl Fn(u64) -> Option<u64>,
    ) {
        if self.threads.len() >= MAX_ENTRIES && !self.threads.contains_key(&(pid, tid)) {
            self.expire(now_ns);
            if self.threads.len() >= MAX_ENTRIES {
                return;
            }
        }
        let state = self.threads.entry((pid, tid)).or_default();
        state.last_ns = now_ns;
        state
            .serving
            .retain(|s| s.conn_id != conn_id && finished(s.conn_id) == Some(s.seq));
        if !state.serving.is_empty() {
            state.multiplexed_ns = Some(now_ns);
        }
        state.serving.push(Serving { conn_id, seq });
    }

    /// The server request (connection and position) thread `tid` of `pid` is serving alone,
    /// by the rule above.
    pub fn serving(
        &self,
        (pid, tid): (u32, u32),
        now_ns: u64,
        finished: impl Fn(u64) -> Option<u64>,
    ) -> Option<(u64, u64)> {
        let state = self.threads.get(&(pid, tid))?;
        if state
            .multiplexed_ns
            .is_some_and(|at| now_ns.saturating_sub(at) < EVENT_LOOP_MEMORY_NS)
        {
            return None;
        }
        let mut open = state
            .serving
            .iter()
            .filter(|s| finished(s.conn_id) == Some(s.seq));
        let only = open.next()?;
        if open.next().is_some() {
            return None;
        }
        Some((only.conn_id, only.seq))
    }

    /// The link of client exchange `key` made on connection `conn_id`, if it has one.
    pub fn link(&self, key: &ExchangeKey, conn_id: u64) -> Option<Link> {
        self.links
            .get(key)
            .filter(|(id, _, _)| *id == conn_id)
            .map(|(_, link, _)| *link)
    }

    /// The link of client exchange `key`, whichever connection made it (for the server end
    /// of the connection, which knows only the addresses).
    pub fn link_of(&self, key: &ExchangeKey) -> Option<Link> {
        self.links.get(key).map(|(_, link, _)| *link)
    }

    /// Client connection `conn_id` is writing exchange `key`: a link another connection
    /// left under the same addresses is stale, and forgotten. Returns whether the exchange
    /// is linked already.
    pub fn client_writes(&mut self, key: &ExchangeKey, conn_id: u64) -> bool {
        match self.links.get(key) {
            Some((id, _, _)) if *id == conn_id => true,
            Some(_) => {
                self.links.remove(key);
                false
            }
            None => false,
        }
    }

    /// Links client exchange `key` of connection `conn_id`.
    pub fn add_link(&mut self, key: ExchangeKey, conn_id: u64, link: Link, now_ns: u64) {
        if self.links.len() >= MAX_ENTRIES {
            self.expire(now_ns);
            while self.links.len() >= MAX_ENTRIES {
                let Some((old, at)) = self.order.pop_front() else {
                    break;
                };
                if self.links.get(&old).is_some_and(|(_, _, t)| *t == at) {
                    self.links.remove(&old);
                }
            }
        }
        self.links.insert(key, (conn_id, link, now_ns));
        self.order.push_back((key, now_ns));
    }

    /// A process ended or replaced its program: its threads are forgotten.
    pub fn forget_process(&mut self, pid: u32) {
        self.threads.retain(|(p, _), _| *p != pid);
    }

    /// Forgets links older than the retention and threads idle as long.
    pub fn expire(&mut self, now_ns: u64) {
        let retention = self.retention_ns;
        while let Some((key, at)) = self.order.front().copied() {
            if now_ns.saturating_sub(at) < retention {
                break;
            }
            self.order.pop_front();
            if self.links.get(&key).is_some_and(|(_, _, t)| *t == at) {
                self.links.remove(&key);
            }
        }
        self.threads
            .retain(|_, state| now_ns.saturating_sub(state.last_ns) < retention);
    }

    /// Threads followed and links kept.
    #[cfg(test)]
    fn sizes(&self) -> (usize, usize) {
        (self.threads.len(), self.links.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ExchangeKey {
        ExchangeKey {
            client: "127.0.0.1:50000".parse().unwrap(),
            server: "127.0.0.1:8080".parse().unwrap(),
            tls: false,
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

    /// Table-driven: which ids a request's headers give under which formats.
    #[test]
    fn incoming_context_by_format() {
        const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let both = [Propagation::TraceContext, Propagation::B3];
        /// Request headers, formats read, expected (trace id, parent span id).
        type Case<'a> = (
            &'a [(&'a str, &'a str)],
            &'a [Propagation],
            Option<(&'a str, &'a str)>,
        );
        let cases: &[Case] = &[
            (
                &[("traceparent", TP)],
                &both,
                Some(("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")),
            ),
            (
                &[(
                    "b3",
                    "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
                )],
                &both,
                Some(("80f198ee56343ba864fe8b2a57d3eff7", "e457b5a2e4d86bd1")),
            ),
            (
                &[("b3", "A3CE929D0E0E4736-00F067AA0BA902B7")],
                &both,
                Some(("0000000000000000a3ce929d0e0e4736", "00f067aa0ba902b7")),
            ),
            (
                &[
                    ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"),
                    ("x-b3-spanid", "a2fb4a1d1a96d312"),
                    ("x-b3-sampled", "1"),
                ],
                &both,
                Some(("463ac35c9f6413ad48485a3953bb6124", "a2fb4a1d1a96d312")),
            ),
            // Both present: the first format configured wins.
            (
                &[
                    ("traceparent", TP),
                    ("b3", "463ac35c9f6413ad48485a3953bb6124-a2fb4a1d1a96d312"),
                ],
                &[Propagation::B3, Propagation::TraceContext],
                Some(("463ac35c9f6413ad48485a3953bb6124", "a2fb4a1d1a96d312")),
            ),
            // A format not configured is not read.
            (&[("traceparent", TP)], &[Propagation::B3], None),
            (
                &[
                    ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"),
                    ("x-b3-spanid", "a2fb4a1d1a96d312"),
                ],
                &[Propagation::TraceContext],
                None,
            ),
            // Invalid or incomplete B3: no context.
            (&[("b3", "0")], &both, None),
            (&[("b3", "d")], &both, None),
            (&[("b3", "463ac35c9f6413ad48485a3953bb6124")], &both, None),
            (
                &[("b3", "00000000000000000000000000000000-a2fb4a1d1a96d312-1")],
                &both,
                None,
            ),
            (&[("b3", "463ac35c9f6413ad-0000000000000000")], &both, None),
            (&[("b3", "463ac35c9f6413ad4-a2fb4a1d1a96d312")], &both, None),
            (
                &[("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124")],
                &both,
                None,
            ),
            (&[("x-b3-spanid", "a2fb4a1d1a96d312")], &both, None),
            // An invalid first format falls back to the next.
            (
                &[
                    ("traceparent", "garbage"),
                    ("b3", "463ac35c9f6413ad48485a3953bb6124-a2fb4a1d1a96d312"),
                ],
                &both,
                Some(("463ac35c9f6413ad48485a3953bb6124", "a2fb4a1d1a96d312")),
            ),
        ];
        for (headers, formats, want) in cases {
            let got = incoming_context(formats, |name| {
                headers.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
            });
            let got = got.map(|(trace, span)| (hex(&trace), hex(&span)));
            let want = want.map(|(trace, span)| (trace.to_owned(), span.to_owned()));
            assert_eq!(got, want, "{headers:?} under {formats:?}");
        }
        for name in ["tracecontext", "B3", " b3 "] {
            assert!(Propagation::from_name(name).is_some(), "{name}");
        }
        assert_eq!(Propagation::from_name("jaeger"), None);
    }

    #[test]
    fn header_joins_the_trace() {
        let tp = parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let client = client_ids(7, Some(&key()), tp, None).unwrap();
        assert_eq!(hex(&client.span_id), "00f067aa0ba902b7");
        let server = server_ids(7, Some(&key()), tp, true, None).unwrap();
        assert_eq!(server.trace_id, client.trace_id);
        assert_eq!(server.parent_span_id, Some(client.span_id));
    }

    #[test]
    fn both_ends_on_this_host_are_stitched() {
        let client = client_ids(7, Some(&key()), None, None).unwrap();
        let server = server_ids(7, Some(&key()), None, true, None).unwrap();
        assert_eq!(server.trace_id, client.trace_id);
        assert_eq!(server.parent_span_id, Some(client.span_id));
        assert_ne!(server.span_id, client.span_id);
        let alone = server_ids(7, Some(&key()), None, false, None).unwrap();
        assert_eq!(alone.parent_span_id, None);
        let next = ExchangeKey { seq: 3, ..key() };
        assert_ne!(
            client_ids(7, Some(&next), None, None).unwrap().span_id,
            client.span_id
        );
        // The first exchange tunnelled through a CONNECT is not the CONNECT itself.
        let (connect, tunnelled) = (
            ExchangeKey { seq: 0, ..key() },
            ExchangeKey {
                seq: 0,
                tls: true,
                ..key()
            },
        );
        assert_ne!(
            client_ids(7, Some(&connect), None, None).unwrap().span_id,
            client_ids(7, Some(&tunnelled), None, None).unwrap().span_id
        );
        assert_ne!(
            client_ids(8, Some(&key()), None, None).unwrap().span_id,
            client.span_id
        );
    }

    #[test]
    fn keys_are_seen_from_the_client() {
        let a: SocketAddr = "127.0.0.1:50000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let client = ExchangeKey::of(Role::Client, Some(a), Some(b), false, 2).unwrap();
        let server = ExchangeKey::of(Role::Server, Some(b), Some(a), false, 2).unwrap();
        assert_eq!(client, key());
        assert_eq!(server, key());
        assert_eq!(ExchangeKey::of(Role::Client, Some(a), None, false, 0), None);
    }

    /// A linked client span is the child of the server request, in its trace; the server at
    /// the other end of the call, when watched, joins that trace with the client as parent.
    #[test]
    fn a_linked_call_is_a_child_of_the_server_span() {
        let inbound = key();
        let server = server_ids(7, Some(&inbound), None, false, None).unwrap();
        let link = Link {
            trace_id: server.trace_id,
            parent_span_id: server.span_id,
        };
        let call = ExchangeKey {
            client: "127.0.0.1:50001".parse().unwrap(),
            server: "127.0.0.1:9090".parse().unwrap(),
            tls: false,
            seq: 0,
        };
        let client = client_ids(7, Some(&call), None, Some(&link)).unwrap();
        assert_eq!(client.trace_id, server.trace_id);
        assert_eq!(client.parent_span_id, Some(server.span_id));
        assert_eq!(
            client.span_id,
            client_ids(7, Some(&call), None, None).unwrap().span_id,
            "the client's own id does not depend on the link"
        );
        let downstream = server_ids(7, Some(&call), None, true, Some(&link)).unwrap();
        assert_eq!(downstream.trace_id, server.trace_id);
        assert_eq!(downstream.parent_span_id, Some(client.span_id));
        let unwatched = server_ids(7, Some(&call), None, false, Some(&link)).unwrap();
        assert_ne!(unwatched.trace_id, server.trace_id);
        let tp = parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let headed = client_ids(7, Some(&call), tp, Some(&link)).unwrap();
        assert_eq!(hex(&headed.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    const SEC: u64 = 1_000_000_000;

    /// Exchanges finished per connection, as the connection tracker would say.
    struct Finished(HashMap<u64, u64>);

    impl Finished {
        fn of(&self) -> impl Fn(u64) -> Option<u64> + '_ {
            |conn| self.0.get(&conn).copied()
        }
    }

    #[test]
    fn a_thread_serving_one_request_parents_its_calls() {
        let mut threads = Threads::new(90 * SEC);
        let mut done = Finished(HashMap::from([(1, 0), (2, 0)]));
        let t = (100, 101);
        assert_eq!(threads.serving(t, SEC, done.of()), None);
        threads.request_read(t, 1, 0, SEC, done.of());
        assert_eq!(threads.serving(t, SEC, done.of()), Some((1, 0)));
        assert_eq!(
            threads.serving((100, 102), SEC, done.of()),
            None,
            "another thread"
        );
        // The response is written: the request is answered.
        done.0.insert(1, 1);
        assert_eq!(threads.serving(t, 2 * SEC, done.of()), None);
        // The next request on the same keep-alive connection.
        threads.request_read(t, 1, 1, 3 * SEC, done.of());
        assert_eq!(threads.serving(t, 3 * SEC, done.of()), Some((1, 1)));
        done.0.insert(1, 2);
        // A new connection (gunicorn sync: one per request).
        threads.request_read(t, 2, 0, 4 * SEC, done.of());
        assert_eq!(threads.serving(t, 4 * SEC, done.of()), Some((2, 0)));
        // Its connection closes without an answer: nothing is served.
        done.0.remove(&2);
        assert_eq!(threads.serving(t, 5 * SEC, done.of()), None);
        threads.forget_process(100);
        assert_eq!(threads.sizes().0, 0);
    }

    #[test]
    fn an_event_loop_serving_two_requests_parents_nothing() {
        let mut threads = Threads::new(90 * SEC);
        let mut done = Finished(HashMap::from([(1, 0), (2, 0), (3, 0)]));
        let t = (200, 200);
        threads.request_read(t, 1, 0, SEC, done.of());
        assert_eq!(threads.serving(t, SEC, done.of()), Some((1, 0)));
        threads.request_read(t, 2, 0, SEC + 1, done.of());
        assert_eq!(threads.serving(t, SEC + 2, done.of()), None, "two at once");
        done.0.insert(1, 1);
        assert_eq!(
            threads.serving(t, 2 * SEC, done.of()),
            None,
            "one left, but the thread is an event loop"
        );
        done.0.insert(2, 1);
        threads.request_read(t, 3, 0, 30 * SEC, done.of());
        assert_eq!(threads.serving(t, 30 * SEC, done.of()), None);
        assert_eq!(
            threads.serving(t, SEC + 1 + EVENT_LOOP_MEMORY_NS, done.of()),
            Some((3, 0)),
            "a minute later with one request at a time"
        );
    }

    #[test]
    fn links_belong_to_their_connection_and_expire() {
        let mut threads = Threads::new(90 * SEC);
        let link = Link {
            trace_id: [1; 16],
            parent_span_id: [2; 8],
        };
        assert!(!threads.client_writes(&key(), 5));
        threads.add_link(key(), 5, link, SEC);
        assert!(threads.client_writes(&key(), 5));
        assert_eq!(threads.link(&key(), 5), Some(link));
        assert_eq!(threads.link_of(&key()), Some(link));
        assert_eq!(threads.link(&key(), 6), None, "another connection");
        assert!(!threads.client_writes(&key(), 6), "same addresses reused");
        assert_eq!(threads.link_of(&key()), None, "the stale link is gone");
        threads.add_link(key(), 6, link, 2 * SEC);
        threads.expire(50 * SEC);
        assert_eq!(threads.link(&key(), 6), Some(link));
        threads.expire(93 * SEC);
        assert_eq!(threads.link(&key(), 6), None);
        assert_eq!(threads.sizes(), (0, 0));
    }
}
