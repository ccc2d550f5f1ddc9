//! Connection tracking on its own: records in stream order, gaps, and TLS streams tied to
//! their sockets.

use std::{net::SocketAddr, sync::Arc};

use sensor_common::event::{DataSource, Direction, Family, Role, TLS_STREAM_ID_BIT, TlsBinding};

use super::{Completed, Tracker, TrackerSettings};
use crate::{
    capture::events::{ConnClose, ConnOpen, DataChunk, TlsBind},
    http::HttpSettings,
};

const PID: u32 = 4242;
const SOCKET: u64 = 7 << 10;
const STREAM: u64 = (9 << 10) | TLS_STREAM_ID_BIT;

fn tracker() -> Tracker {
    Tracker::new(
        Arc::new(HttpSettings::default()),
        TrackerSettings::default(),
    )
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn open(conn_id: u64, role: Role) -> ConnOpen {
    ConnOpen {
        pid: PID,
        time_ns: 1,
        conn_id,
        fd: 5,
        role,
        family: Family::Inet,
        local: Some(addr("127.0.0.1:8443")),
        remote: Some(addr("127.0.0.1:50000")),
        unix_path: None,
        midstream: false,
    }
}

fn chunk(conn_id: u64, direction: Direction, offset: u64, bytes: &[u8]) -> DataChunk<'_> {
    DataChunk {
        pid: PID,
        tid: PID,
        time_ns: 10 + offset,
        conn_id,
        fd: 5,
        direction,
        source: if conn_id & TLS_STREAM_ID_BIT != 0 {
            DataSource::Tls
        } else {
            DataSource::ReadWrite
        },
        syscall_offset: offset,
        syscall_len: bytes.len() as u64,
        offset,
        payload: bytes,
        uncopied: false,
    }
}

const REQUEST: &[u8] = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

fn bind(stream: u64, socket: u64) -> TlsBind {
    TlsBind {
        pid: PID,
        time_ns: 5,
        stream_id: stream,
        socket_conn_id: socket,
        fd: 5,
        binding: TlsBinding::MemoryBio,
    }
}

fn exchange_on(t: &mut Tracker, conn_id: u64) -> Vec<Completed> {
    let mut out = Vec::new();
    t.data(&chunk(conn_id, Direction::Ingress, 0, REQUEST), &mut out);
    t.data(&chunk(conn_id, Direction::Egress, 0, RESPONSE), &mut out);
    out
}

#[test]
fn a_server_exchange_on_a_plain_connection() {
    let mut t = tracker();
    let mut out = Vec::new();
    t.open(&open(SOCKET, Role::Server), &mut out);
    let out = exchange_on(&mut t, SOCKET);
    assert_eq!(out.len(), 1);
    assert!(!out[0].meta.tls);
    assert_eq!(out[0].meta.role, Role::Server);
    assert_eq!(t.stats().unknown_connection, 0);
}

#[test]
fn a_tls_stream_bound_first_takes_its_sockets_identity() {
    let mut t = tracker();
    let mut out = Vec::new();
    t.open(&open(SOCKET, Role::Server), &mut out);
    t.bind_tls(&bind(STREAM, SOCKET), &mut out);
    let out = exchange_on(&mut t, STREAM);
    assert_eq!(out.len(), 1);
    let meta = &out[0].meta;
    assert!(meta.tls);
    assert_eq!(meta.conn_id, STREAM);
    assert_eq!(meta.role, Role::Server);
    assert_eq!(meta.local, Some(addr("127.0.0.1:8443")));
    assert_eq!(meta.remote, Some(addr("127.0.0.1:50000")));
    assert_eq!(t.stats().tls_bound, 1);
    assert_eq!(t.stats().unknown_connection, 0);
}

#[test]
fn plaintext_before_the_binding_gets_the_addresses_when_it_comes() {
    // A memory-BIO client writes its request before the kernel can tie the stream.
    let mut t = tracker();
    let mut out = Vec::new();
    t.open(&open(SOCKET, Role::Client), &mut out);
    t.data(&chunk(STREAM, Direction::Egress, 0, REQUEST), &mut out);
    t.bind_tls(&bind(STREAM, SOCKET), &mut out);
    t.data(&chunk(STREAM, Direction::Ingress, 0, RESPONSE), &mut out);
    assert_eq!(out.len(), 1);
    let meta = &out[0].meta;
    assert!(meta.tls);
    assert_eq!(meta.role, Role::Client, "guessed from the request line");
    assert_eq!(meta.remote, Some(addr("127.0.0.1:50000")));
    assert_eq!(t.stats().unknown_connection, 0, "TLS streams are expected");
}

#[test]
fn addresses_reported_after_the_accept_reach_the_socket_and_its_tls_stream() {
    // uvloop accepts with no address buffer, then asks getsockname and getpeername.
    let mut t = tracker();
    let mut out = Vec::new();
    t.open(
        &ConnOpen {
            family: Family::Unknown,
            local: None,
            remote: None,
            ..open(SOCKET, Role::Server)
        },
        &mut out,
    );
    assert!(t.lacks_address(SOCKET));
    t.bind_tls(&bind(STREAM, SOCKET), &mut out);
    t.address(SOCKET, Some(addr("127.0.0.1:8443")), None);
    assert!(t.lacks_address(SOCKET), "the peer is still unknown");
    t.address(SOCKET, None, Some(addr("127.0.0.1:50000")));
    assert!(!t.lacks_address(SOCKET));
    let out = exchange_on(&mut t, STREAM);
    assert_eq!(out.len(), 1);
    let meta = &out[0].meta;
    assert_eq!(meta.family, Family::Inet);
    assert_eq!(meta.local, Some(addr("127.0.0.1:8443")));
    assert_eq!(meta.remote, Some(addr("127.0.0.1:50000")));
    let socket = t.progress(SOCKET).expect("the socket is tracked").0;
    assert_eq!(socket.family, Family::Inet);
    assert_eq!(socket.remote, Some(addr("127.0.0.1:50000")));
}

#[test]
fn closing_the_socket_finishes_its_tls_stream() {
    let mut t = tracker();
    let mut out = Vec::new();
    t.open(&open(SOCKET, Role::Server), &mut out);
    t.bind_tls(&bind(STREAM, SOCKET), &mut out);
    t.data(&chunk(STREAM, Direction::Ingress, 0, REQUEST), &mut out);
    assert!(out.is_empty());
    t.close(
        &ConnClose {
            pid: PID,
            time_ns: 100,
            conn_id: SOCKET,
            bytes: [0, 0],
        },
        &mut out,
    );
    assert_eq!(out.len(), 1, "the request without a response is emitted");
    assert!(out[0].exchange.response.is_none());
    assert!(t.is_empty(), "socket and stream are both gone");
}

/// A request waiting for its response when its connection stops being followed, and how:
/// the close is the call's end (no response, given up then); eviction or the sensor stopping
/// is not (incomplete, no end known).
#[test]
fn a_waiting_request_is_unanswered_at_a_close_and_incomplete_when_tracking_stops() {
    let settings = TrackerSettings {
        max_connections: 1,
        idle_timeout_ns: 1_000_000_000,
        ..TrackerSettings::default()
    };
    let waiting = |end: &dyn Fn(&mut Tracker, &mut Vec<Completed>)| {
        let mut t = Tracker::new(Arc::new(HttpSettings::default()), settings.clone());
        let mut out = Vec::new();
        t.open(&open(SOCKET, Role::Server), &mut out);
        t.data(&chunk(SOCKET, Direction::Ingress, 0, REQUEST), &mut out);
        assert!(out.is_empty());
        end(&mut t, &mut out);
        assert_eq!(out.len(), 1, "the waiting request is emitted");
        assert!(out[0].exchange.response.is_none());
        (out[0].exchange.incomplete, out[0].exchange.gave_up_ns)
    };
    let close = ConnClose {
        pid: PID,
        time_ns: 500,
        conn_id: SOCKET,
        bytes: [REQUEST.len() as u64, 0],
    };
    assert_eq!(waiting(&|t, out| t.close(&close, out)), (false, Some(500)));
    assert_eq!(waiting(&|t, out| t.finish_all(500, out)), (true, None));
    let idle = |t: &mut Tracker, out: &mut Vec<Completed>| t.tick(10_000_000_000, out);
    assert_eq!(waiting(&idle), (true, None), "idle");
    let evicted = |t: &mut Tracker, out: &mut Vec<Completed>| {
        t.open(&open(SOCKET + 1024, Role::Server), out);
    };
    assert_eq!(waiting(&evicted), (true, None), "evicted for room");
}

#[test]
fn a_binding_to_an_untracked_socket_is_counted() {
    let mut t = tracker();
    let mut out = Vec::new();
    t.bind_tls(&bind(STREAM, SOCKET), &mut out);
    assert_eq!(t.stats().tls_bound_unknown_socket, 1);
    assert!(t.is_empty());
}

#[test]
fn a_gap_in_a_stream_is_counted() {
    let mut t = tracker();
    let mut out = Vec::new();
    t.open(&open(SOCKET, Role::Server), &mut out);
    t.data(&chunk(SOCKET, Direction::Ingress, 0, REQUEST), &mut out);
    t.data(
        &chunk(SOCKET, Direction::Egress, 10, b"tail of a lost response"),
        &mut out,
    );
    assert_eq!(t.stats().gaps, 1);
    assert_eq!(t.stats().gap_bytes, 10);
}

/// Overload: with bodies shed, the kernel is told to skip a body right after its head, the
/// skipped bytes are no gap, and the exchange is reported with its body flagged.
#[test]
fn shed_bodies_are_skipped_by_the_kernel() {
    let head = b"POST /a HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n";
    let mut t = tracker();
    let mut out = Vec::new();
    t.open(&open(SOCKET, Role::Server), &mut out);
    assert!(t.set_shed_bodies(true).is_empty(), "no body is being read");
    let control = t.data(&chunk(SOCKET, Direction::Ingress, 0, head), &mut out);
    let end = head.len() as u64 + 100;
    let (conn_id, control) = control.expect("a skip instruction");
    assert_eq!(conn_id, SOCKET);
    assert_eq!(control.skip_until[Direction::Ingress.index()], end);
    // The kernel copies nothing of the body: the response comes next, then the next request
    // past the skipped body (not a loss).
    t.data(&chunk(SOCKET, Direction::Egress, 0, RESPONSE), &mut out);
    t.data(&chunk(SOCKET, Direction::Ingress, end, REQUEST), &mut out);
    assert_eq!(t.stats().gaps, 0);
    assert_eq!(out.len(), 1);
    let body = &out[0].exchange.request.as_ref().unwrap().body;
    assert!(
        body.shed && body.bytes.is_empty() && body.wire_len == 100,
        "{body:?}"
    );
    assert!(!out[0].exchange.incomplete);

    // A connection opened while shedding is on sheds too; turning it off keeps bodies again.
    const OTHER: u64 = 8 << 10;
    t.open(&open(OTHER, Role::Server), &mut out);
    assert!(
        t.data(&chunk(OTHER, Direction::Ingress, 0, head), &mut out)
            .is_some()
    );
    t.set_shed_bodies(false);
    const THIRD: u64 = 10 << 10;
    t.open(&open(THIRD, Role::Server), &mut out);
    assert!(
        t.data(&chunk(THIRD, Direction::Ingress, 0, head), &mut out)
            .is_none(),
        "the body is needed"
    );
}

/// Overload: shedding turned on while a body is being read asks the kernel at once to skip
/// the rest of it.
#[test]
fn shedding_mid_body_instructs_the_kernel_at_once() {
    let head = b"POST /a HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n";
    let mut t = tracker();
    let mut out = Vec::new();
    t.open(&open(SOCKET, Role::Server), &mut out);
    assert!(
        t.data(&chunk(SOCKET, Direction::Ingress, 0, head), &mut out)
            .is_none()
    );
    let instructions = t.set_shed_bodies(true);
    assert_eq!(instructions.len(), 1);
    let (conn_id, control) = instructions[0];
    assert_eq!(conn_id, SOCKET);
    assert_eq!(
        control.skip_until[Direction::Ingress.index()],
        head.len() as u64 + 100
    );
    assert!(t.set_shed_bodies(true).is_empty(), "nothing new");
}

#[test]
fn http_counters_are_totalled_over_live_and_finished_connections() {
    let mut t = tracker();
    let mut out = Vec::new();
    t.open(&open(SOCKET, Role::Server), &mut out);
    exchange_on(&mut t, SOCKET);
    let other = SOCKET + 1;
    t.open(&open(other, Role::Server), &mut out);
    // A head over the limit (64 KiB): dropped, counted, the stream resynchronises.
    let mut oversized = b"GET /big HTTP/1.1\r\nX-Big: ".to_vec();
    oversized.extend(std::iter::repeat_n(b'x', 70_000));
    t.data(&chunk(other, Direction::Ingress, 0, &oversized), &mut out);
    assert_eq!(t.http_stats().exchanges, 1);
    assert_eq!(t.http_stats().oversized_heads, 1);
    assert!(t.buffered_bytes() > 0 || t.len() == 2);
    for conn_id in [SOCKET, other] {
        t.close(
            &ConnClose {
                pid: PID,
                time_ns: 100_000,
                conn_id,
                bytes: [0, 0],
            },
            &mut out,
        );
    }
    assert!(t.is_empty());
    assert_eq!(t.buffered_bytes(), 0, "every connection's memory released");
    let totals = t.http_stats();
    assert_eq!(totals.oversized_heads, 1, "kept after the close");
    assert_eq!(
        totals.exchanges, 2,
        "the exchange on the first connection and the cut request on the second"
    );
    assert_eq!(totals.unanswered_requests, 1);
}

#[test]
fn timeouts_are_swept_a_sixteenth_of_the_timeout_apart() {
    let mut t = Tracker::new(
        Arc::new(HttpSettings::default()),
        TrackerSettings {
            response_timeout_ns: 16_000_000_000,
            ..TrackerSettings::default()
        },
    );
    let mut out = Vec::new();
    t.open(&open(SOCKET, Role::Server), &mut out);
    t.data(&chunk(SOCKET, Direction::Ingress, 0, REQUEST), &mut out);
    t.tick(15_500_000_000, &mut out);
    assert!(out.is_empty(), "not timed out yet");
    t.tick(16_200_000_000, &mut out);
    assert!(
        out.is_empty(),
        "timed out, but the last sweep was 0.7 s ago (interval 1 s)"
    );
    t.tick(16_600_000_000, &mut out);
    assert_eq!(
        out.len(),
        1,
        "the next sweep emits the request without its response"
    );
    assert!(out[0].exchange.response.is_none());
}
