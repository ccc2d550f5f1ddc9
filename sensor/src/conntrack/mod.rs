//! Connection tracking: per-connection state between capture and HTTP reassembly.
//!
//! Each connection gets its two byte streams put in order by stream offset: a jump forward is a
//! gap (bytes the kernel did not copy: lost, truncated, skipped on request, or sent by
//! `sendfile`), an overlap is trimmed. The streams are fed to an [`HttpConnection`] oriented by
//! the connection's role, and the parser's wishes (skip a body, stop after an upgrade) are
//! turned into per-connection instructions for the kernel. Memory is bounded: a cap on tracked
//! connections and an idle timeout, each eviction counted.

use std::{collections::HashMap, net::SocketAddr, sync::Arc};

use sensor_common::{
    event::{Direction, Family, Role, TLS_STREAM_ID_BIT},
    maps::ConnControl,
};
use tracing::{debug, warn};

use crate::{
    capture::events::{ConnClose, ConnOpen, DataChunk, TlsBind},
    http::{HttpConnection, HttpExchange, HttpSettings, HttpStats, Stream},
    ratelimit::RateLimit,
};

/// Shortest time between two warnings about oversized HTTP heads.
const OVERSIZED_HEAD_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// What is known of a connection's identity.
#[derive(Clone, Debug, PartialEq)]
pub struct ConnMeta {
    /// Connection id (kernel or adopted).
    pub conn_id: u64,
    /// Owning process.
    pub pid: u32,
    /// Descriptor at open.
    pub fd: i32,
    /// Server or client side.
    pub role: Role,
    /// Address family.
    pub family: Family,
    /// The process's end.
    pub local: Option<SocketAddr>,
    /// The peer's end.
    pub remote: Option<SocketAddr>,
    /// Unix socket path.
    pub unix_path: Option<String>,
    /// Adopted mid-stream from `/proc` (or a TLS stream first seen after its start).
    pub midstream: bool,
    /// The plaintext of a TLS stream (OpenSSL probes), not a socket's bytes.
    pub tls: bool,
}

/// An exchange finished on a connection.
#[derive(Debug)]
pub struct Completed {
    /// The connection it happened on.
    pub meta: Arc<ConnMeta>,
    /// Its position on the connection: 0 for the first exchange.
    pub seq: u64,
    /// The exchange.
    pub exchange: HttpExchange,
}

/// Limits of connection tracking.
#[derive(Clone, Debug)]
pub struct TrackerSettings {
    /// Most connections tracked at once; beyond it the least recently active is evicted.
    pub max_connections: usize,
    /// A connection silent this long is finished and forgotten.
    pub idle_timeout_ns: u64,
    /// A request without a response for this long is emitted without one.
    pub response_timeout_ns: u64,
}

impl Default for TrackerSettings {
    fn default() -> Self {
        TrackerSettings {
            max_connections: 65_536,
            idle_timeout_ns: 300_000_000_000,
            response_timeout_ns: 120_000_000_000,
        }
    }
}

/// Everything connection tracking dropped or noticed, for metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrackerStats {
    /// Connections opened (kernel or adopted).
    pub opened: u64,
    /// Connections finished by close, exit or eviction.
    pub closed: u64,
    /// Connections evicted because the cap was reached.
    pub evicted_capacity: u64,
    /// Connections evicted after the idle timeout.
    pub evicted_idle: u64,
    /// Data records for connections whose open record was never seen.
    pub unknown_connection: u64,
    /// Gaps in streams (bytes not copied and not asked to be skipped).
    pub gaps: u64,
    /// Bytes in those gaps.
    pub gap_bytes: u64,
    /// Overlapping bytes trimmed.
    pub overlap_bytes: u64,
    /// TLS streams tied to their socket connection.
    pub tls_bound: u64,
    /// TLS streams whose socket connection was not (or no longer) tracked when they were tied.
    pub tls_bound_unknown_socket: u64,
}

struct Conn {
    meta: Arc<ConnMeta>,
    parser: HttpConnection,
    next: [u64; 2],
    started: [bool; 2],
    last_seen_ns: u64,
    control: ConnControl,
    exchanges: u64,
}

impl Conn {
    /// The kernel instruction the parser's needs call for, when it differs from the last one
    /// sent (which it then becomes).
    fn instruction(&mut self) -> Option<ConnControl> {
        let mut wanted = self.control;
        for (direction, s) in [
            (
                Direction::Ingress,
                stream_of(self.meta.role, Direction::Ingress),
            ),
            (
                Direction::Egress,
                stream_of(self.meta.role, Direction::Egress),
            ),
        ] {
            if let Some(until) = self.parser.skip_until(s) {
                let slot = &mut wanted.skip_until[direction.index()];
                *slot = (*slot).max(until);
            }
        }
        if self.parser.is_upgraded() {
            wanted.stop = 1;
        }
        if wanted.skip_until != self.control.skip_until || wanted.stop != self.control.stop {
            self.control = wanted;
            return Some(wanted);
        }
        None
    }

    fn take(&mut self, out: &mut Vec<Completed>) {
        for exchange in self.parser.take_exchanges() {
            out.push(Completed {
                meta: self.meta.clone(),
                seq: self.exchanges,
                exchange,
            });
            self.exchanges += 1;
        }
    }
}

/// The table of live connections.
pub struct Tracker {
    /// Boxed: a parser's state is over a kilobyte, and a table sized for a burst of
    /// connections would otherwise keep that much per slot after they close.
    conns: HashMap<u64, Box<Conn>>,
    /// Client connections of watched processes, by (client end, server end), with the time
    /// they were last seen: lets a server exchange know that its client is watched too.
    clients: HashMap<(SocketAddr, SocketAddr), u64>,
    /// TLS streams by the socket connection carrying them, to finish them with the socket.
    tls_streams: HashMap<u64, Vec<u64>>,
    http: Arc<HttpSettings>,
    settings: TrackerSettings,
    stats: TrackerStats,
    /// Overload: bodies are not kept (see [`HttpConnection::set_shed_bodies`]).
    shed_bodies: bool,
    /// HTTP counters of the connections already finished (live ones are added on demand).
    finished_http: HttpStats,
    /// Warnings about heads over `max_header_bytes`.
    oversized_log: RateLimit,
    /// When [`Tracker::tick`] last swept the table for timeouts.
    last_sweep_ns: u64,
}

/// Shortest time between two sweeps of the table for timeouts. Sweeps are a sixteenth of the
/// shorter timeout apart, within [`SWEEP_MIN_NS`] and [`SWEEP_MAX_NS`]: a sweep visits every
/// connection, which for 10,000 idle ones is most of an idle sensor's work.
const SWEEP_MIN_NS: u64 = 500_000_000;
/// Longest time between two sweeps (see [`SWEEP_MIN_NS`]).
const SWEEP_MAX_NS: u64 = 5_000_000_000;

impl Tracker {
    /// An empty table.
    pub fn new(http: Arc<HttpSettings>, settings: TrackerSettings) -> Self {
        Tracker {
            conns: HashMap::new(),
            clients: HashMap::new(),
            tls_streams: HashMap::new(),
            http,
            settings,
            stats: TrackerStats::default(),
            shed_bodies: false,
            finished_http: HttpStats::default(),
            oversized_log: RateLimit::new(OVERSIZED_HEAD_LOG_INTERVAL),
            last_sweep_ns: 0,
        }
    }

    /// How long apart the timeout sweeps are (see [`SWEEP_MIN_NS`]).
    fn sweep_interval_ns(&self) -> u64 {
        (self
            .settings
            .idle_timeout_ns
            .min(self.settings.response_timeout_ns)
            / 16)
            .clamp(SWEEP_MIN_NS, SWEEP_MAX_NS)
    }

    /// HTTP reassembly counters totalled over every connection, finished and live.
    pub fn http_stats(&self) -> HttpStats {
        let mut total = self.finished_http.clone();
        for conn in self.conns.values() {
            total.add(conn.parser.stats());
        }
        total
    }

    /// Counters so far.
    pub fn stats(&self) -> &TrackerStats {
        &self.stats
    }

    /// Connections tracked now.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// Whether no connection is tracked.
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Bytes buffered by all parsers.
    pub fn buffered_bytes(&self) -> usize {
        self.conns.values().map(|c| c.parser.buffered_bytes()).sum()
    }

    /// A connection began.
    pub fn open(&mut self, open: &ConnOpen, out: &mut Vec<Completed>) {
        if let Some(old) = self.conns.remove(&open.conn_id) {
            self.finish(old, open.time_ns, out);
        }
        self.make_room(open.time_ns, out);
        self.stats.opened += 1;
        let meta = ConnMeta {
            conn_id: open.conn_id,
            pid: open.pid,
            fd: open.fd,
            role: open.role,
            family: open.family,
            local: open.local,
            remote: open.remote,
            unix_path: open.unix_path.clone(),
            midstream: open.midstream,
            tls: false,
        };
        self.insert(meta, open.time_ns);
    }

    fn note_client(&mut self, meta: &ConnMeta, now_ns: u64) {
        if meta.role == Role::Client
            && let (Some(local), Some(remote)) = (meta.local, meta.remote)
        {
            self.clients.insert((local, remote), now_ns);
        }
    }

    /// Whether `client -> server` is (or was recently) a connection of a watched process.
    pub fn is_watched_client(&self, client: SocketAddr, server: SocketAddr) -> bool {
        self.clients.contains_key(&(client, server))
    }

    fn insert(&mut self, meta: ConnMeta, now_ns: u64) -> &mut Conn {
        self.note_client(&meta, now_ns);
        let conn_id = meta.conn_id;
        let shed_bodies = self.shed_bodies;
        self.conns.entry(conn_id).or_insert_with(|| {
            Box::new(Conn {
                meta: Arc::new(meta),
                parser: {
                    let mut parser = HttpConnection::new(self.http.clone());
                    parser.set_shed_bodies(shed_bodies);
                    parser
                },
                next: [0, 0],
                started: [false, false],
                last_seen_ns: now_ns,
                control: ConnControl::default(),
                exchanges: 0,
            })
        })
    }

    fn make_room(&mut self, now_ns: u64, out: &mut Vec<Completed>) {
        while self.conns.len() >= self.settings.max_connections {
            let Some(oldest) = self
                .conns
                .iter()
                .min_by_key(|(_, c)| c.last_seen_ns)
                .map(|(id, _)| *id)
            else {
                return;
            };
            if let Some(conn) = self.conns.remove(&oldest) {
                self.stats.evicted_capacity += 1;
                self.abandon(conn, now_ns, out);
            }
        }
    }

    /// Bytes moved on a connection. Returns a new kernel instruction for the connection when the
    /// parser's needs changed.
    pub fn data(
        &mut self,
        chunk: &DataChunk,
        out: &mut Vec<Completed>,
    ) -> Option<(u64, ConnControl)> {
        if !self.conns.contains_key(&chunk.conn_id) {
            // A TLS stream's first plaintext may come before the kernel knows its socket.
            let tls = chunk.conn_id & TLS_STREAM_ID_BIT != 0;
            if !tls {
                self.stats.unknown_connection += 1;
            }
            self.make_room(chunk.time_ns, out);
            let role = guess_role(chunk);
            debug!(
                conn_id = chunk.conn_id,
                pid = chunk.pid,
                ?role,
                "data for an unknown connection"
            );
            self.insert(
                ConnMeta {
                    conn_id: chunk.conn_id,
                    pid: chunk.pid,
                    fd: chunk.fd,
                    role,
                    family: Family::Unknown,
                    local: None,
                    remote: None,
                    unix_path: None,
                    midstream: true,
                    tls,
                },
                chunk.time_ns,
            );
        }
        let conn = self.conns.get_mut(&chunk.conn_id)?;
        conn.last_seen_ns = chunk.time_ns;
        let stream = stream_of(conn.meta.role, chunk.direction);
        let dir = chunk.direction.index();
        let skip_until = conn.control.skip_until[dir];
        if !conn.started[dir] {
            conn.started[dir] = true;
            // Adopted or unknown connections start wherever the first record is.
            if conn.meta.midstream && chunk.offset > 0 {
                conn.next[dir] = chunk.offset;
            }
        }
        let mut offset = chunk.offset;
        let mut payload: &[u8] = chunk.payload;
        if offset > conn.next[dir] {
            let gap_start = conn.next[dir];
            let gap_len = offset - gap_start;
            if gap_start + gap_len > skip_until {
                self.stats.gaps += 1;
                self.stats.gap_bytes += gap_len;
            }
            conn.parser
                .on_gap(stream, gap_start, gap_len, chunk.time_ns);
        } else if offset < conn.next[dir] {
            let overlap = (conn.next[dir] - offset).min(payload.len() as u64);
            self.stats.overlap_bytes += overlap;
            payload = &payload[overlap as usize..];
            offset += overlap;
        }
        if !payload.is_empty() {
            let oversized = conn.parser.stats().oversized_heads;
            conn.parser.on_data(stream, offset, payload, chunk.time_ns);
            conn.next[dir] = offset + payload.len() as u64;
            let new = conn
                .parser
                .stats()
                .oversized_heads
                .saturating_sub(oversized);
            if new > 0
                && let Some(count) = self.oversized_log.hit(chunk.time_ns, new)
            {
                warn!(
                    pid = conn.meta.pid,
                    conn_id = chunk.conn_id,
                    remote = ?conn.meta.remote,
                    ?stream,
                    limit = self.http.max_header_bytes,
                    count,
                    "HTTP head larger than the header size limit dropped (counted in http_oversized_heads); the stream resynchronises"
                );
            }
        } else {
            conn.next[dir] = conn.next[dir].max(offset);
        }
        conn.take(out);
        conn.instruction().map(|control| (chunk.conn_id, control))
    }

    /// Overload: turns body shedding on or off for every connection, tracked now or later.
    /// Turning it on frees the bodies being read; returns the new kernel instructions of the
    /// connections whose body being read can now be skipped.
    pub fn set_shed_bodies(&mut self, shed: bool) -> Vec<(u64, ConnControl)> {
        if self.shed_bodies == shed {
            return Vec::new();
        }
        self.shed_bodies = shed;
        let mut instructions = Vec::new();
        for (conn_id, conn) in &mut self.conns {
            conn.parser.set_shed_bodies(shed);
            if let Some(control) = conn.instruction() {
                instructions.push((*conn_id, control));
            }
        }
        instructions
    }

    /// A TLS stream's ciphertext travels over socket connection `bind.socket_conn_id`: the
    /// stream takes the socket's process, role and addresses (its role from the data wins when
    /// the stream already guessed one from a request or status line).
    pub fn bind_tls(&mut self, bind: &TlsBind, out: &mut Vec<Completed>) {
        let Some(socket) = self.conns.get(&bind.socket_conn_id).map(|c| c.meta.clone()) else {
            self.stats.tls_bound_unknown_socket += 1;
            debug!(
                stream = bind.stream_id,
                socket = bind.socket_conn_id,
                "TLS stream tied to an untracked socket"
            );
            return;
        };
        self.stats.tls_bound += 1;
        let streams = self.tls_streams.entry(bind.socket_conn_id).or_default();
        if !streams.contains(&bind.stream_id) {
            streams.push(bind.stream_id);
        }
        if !self.conns.contains_key(&bind.stream_id) {
            self.make_room(bind.time_ns, out);
            let meta = ConnMeta {
                conn_id: bind.stream_id,
                midstream: true,
                tls: true,
                ..(*socket).clone()
            };
            self.insert(meta, bind.time_ns);
            return;
        }
        if let Some(conn) = self.conns.get_mut(&bind.stream_id) {
            let meta = Arc::make_mut(&mut conn.meta);
            meta.pid = socket.pid;
            meta.fd = socket.fd;
            meta.family = socket.family;
            meta.local = socket.local;
            meta.remote = socket.remote;
            meta.unix_path = socket.unix_path.clone();
            if meta.role == Role::Unknown {
                meta.role = socket.role;
            }
            let (meta, seen) = (meta.clone(), conn.last_seen_ns);
            self.note_client(&meta, seen);
        }
    }

    /// A connection's last descriptor was closed (or a TLS stream's `SSL` object was freed). The
    /// TLS streams a socket carried end with it.
    pub fn close(&mut self, close: &ConnClose, out: &mut Vec<Completed>) {
        if let Some(streams) = self.tls_streams.remove(&close.conn_id) {
            for stream in streams {
                if let Some(conn) = self.conns.remove(&stream) {
                    self.finish(conn, close.time_ns, out);
                }
            }
        }
        let Some(mut conn) = self.conns.remove(&close.conn_id) else {
            return;
        };
        for direction in [Direction::Ingress, Direction::Egress] {
            let dir = direction.index();
            let total = close.bytes[dir];
            if conn.started[dir] && total > conn.next[dir] {
                let stream = stream_of(conn.meta.role, direction);
                conn.parser.on_gap(
                    stream,
                    conn.next[dir],
                    total - conn.next[dir],
                    close.time_ns,
                );
                conn.next[dir] = total;
            }
        }
        self.finish(conn, close.time_ns, out);
    }

    /// Late addresses of a connection (a non-blocking connect completed, or the process asked
    /// getsockname/getpeername after an accept that did not show them); the TLS streams over
    /// the connection take them too.
    pub fn address(&mut self, conn_id: u64, local: Option<SocketAddr>, remote: Option<SocketAddr>) {
        let streams = self.tls_streams.get(&conn_id).cloned().unwrap_or_default();
        for id in std::iter::once(conn_id).chain(streams) {
            if let Some(conn) = self.conns.get_mut(&id) {
                let meta = Arc::make_mut(&mut conn.meta);
                meta.local = local.or(meta.local);
                meta.remote = remote.or(meta.remote);
                if meta.family == Family::Unknown
                    && let Some(addr) = meta.local.or(meta.remote)
                {
                    meta.family = if addr.is_ipv4() {
                        Family::Inet
                    } else {
                        Family::Inet6
                    };
                }
                let (meta, seen) = (meta.clone(), conn.last_seen_ns);
                self.note_client(&meta, seen);
            }
        }
    }

    /// Whether connection `conn_id` is tracked with an address still unknown.
    pub fn lacks_address(&self, conn_id: u64) -> bool {
        self.conns.get(&conn_id).is_some_and(|conn| {
            conn.meta.unix_path.is_none()
                && (conn.meta.local.is_none() || conn.meta.remote.is_none())
        })
    }

    /// Finishes one connection whose close record may never come (its descriptor was closed by
    /// `close_range` beyond what the kernel released itself).
    pub fn forget(&mut self, conn_id: u64, time_ns: u64, out: &mut Vec<Completed>) {
        if let Some(conn) = self.conns.remove(&conn_id) {
            self.finish(conn, time_ns, out);
        }
    }

    /// A process ended: all its connections are finished.
    pub fn process_exit(&mut self, pid: u32, time_ns: u64, out: &mut Vec<Completed>) {
        let ids: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.meta.pid == pid)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some(conn) = self.conns.remove(&id) {
                self.finish(conn, time_ns, out);
            }
        }
    }

    /// Connection ids and descriptors of a process.
    pub fn conns_of(&self, pid: u32) -> Vec<(u64, i32)> {
        self.conns
            .iter()
            .filter(|(_, c)| c.meta.pid == pid)
            .map(|(id, c)| (*id, c.meta.fd))
            .collect()
    }

    /// A connection's identity and how many of its exchanges are finished (the position
    /// the oldest unfinished one will get).
    pub fn progress(&self, conn_id: u64) -> Option<(&Arc<ConnMeta>, u64)> {
        self.conns.get(&conn_id).map(|c| (&c.meta, c.exchanges))
    }

    /// Header fields of the oldest request on a connection whose exchange is not finished,
    /// once its head is parsed.
    pub fn unfinished_request_headers(&self, conn_id: u64) -> Option<&[crate::http::HeaderField]> {
        self.conns
            .get(&conn_id)?
            .parser
            .unfinished_request_headers()
    }

    /// Periodic work, called often: response timeouts and idle connections, swept at most
    /// every sixteenth of the shorter timeout (see [`SWEEP_MIN_NS`]).
    pub fn tick(&mut self, now_ns: u64, out: &mut Vec<Completed>) {
        const CLIENT_MEMORY_NS: u64 = 60_000_000_000;
        if let Some(count) = self.oversized_log.hit(now_ns, 0) {
            warn!(
                limit = self.http.max_header_bytes,
                count,
                "HTTP heads larger than the header size limit dropped (counted in http_oversized_heads)"
            );
        }
        if now_ns.saturating_sub(self.last_sweep_ns) < self.sweep_interval_ns() {
            return;
        }
        self.last_sweep_ns = now_ns;
        if !self.clients.is_empty() {
            // Only client connections are remembered: a server-only process costs nothing here.
            let live: std::collections::HashSet<(SocketAddr, SocketAddr)> = self
                .conns
                .values()
                .filter(|c| c.meta.role == Role::Client)
                .filter_map(|c| Some((c.meta.local?, c.meta.remote?)))
                .collect();
            self.clients.retain(|tuple, seen| {
                live.contains(tuple) || now_ns.saturating_sub(*seen) < CLIENT_MEMORY_NS
            });
            for (tuple, seen) in self.clients.iter_mut() {
                if live.contains(tuple) {
                    *seen = now_ns;
                }
            }
        }
        let idle: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| now_ns.saturating_sub(c.last_seen_ns) > self.settings.idle_timeout_ns)
            .map(|(id, _)| *id)
            .collect();
        for id in idle {
            if let Some(conn) = self.conns.remove(&id) {
                self.stats.evicted_idle += 1;
                self.abandon(conn, now_ns, out);
            }
        }
        for conn in self.conns.values_mut() {
            conn.parser
                .expire(now_ns, self.settings.response_timeout_ns);
            conn.take(out);
        }
    }

    /// Finishes every connection (shutdown): what is still in progress is emitted as
    /// incomplete.
    pub fn finish_all(&mut self, now_ns: u64, out: &mut Vec<Completed>) {
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            if let Some(conn) = self.conns.remove(&id) {
                self.abandon(conn, now_ns, out);
            }
        }
    }

    fn finish(&mut self, conn: Box<Conn>, time_ns: u64, out: &mut Vec<Completed>) {
        self.end(conn, time_ns, Ending::Closed, out);
    }

    /// Stops tracking a connection that may go on (evicted, or the sensor is stopping).
    fn abandon(&mut self, conn: Box<Conn>, time_ns: u64, out: &mut Vec<Completed>) {
        self.end(conn, time_ns, Ending::CaptureEnded, out);
    }

    fn end(&mut self, mut conn: Box<Conn>, time_ns: u64, how: Ending, out: &mut Vec<Completed>) {
        self.stats.closed += 1;
        self.tls_streams.remove(&conn.meta.conn_id);
        match how {
            Ending::Closed => conn.parser.on_close(time_ns),
            Ending::CaptureEnded => conn.parser.on_capture_end(time_ns),
        }
        conn.take(out);
        self.finished_http.add(conn.parser.stats());
    }
}

/// How the tracking of a connection ended.
#[derive(Clone, Copy)]
enum Ending {
    /// The connection ended: what it carried is all there is.
    Closed,
    /// The sensor stopped following it: what was in progress is incomplete, not unanswered.
    CaptureEnded,
}

/// Which HTTP stream a direction carries for a role: a server receives requests, a client
/// sends them.
pub fn stream_of(role: Role, direction: Direction) -> Stream {
    match (role, direction) {
        (Role::Client, Direction::Egress) | (Role::Server, Direction::Ingress) => Stream::Request,
        (Role::Client, Direction::Ingress) | (Role::Server, Direction::Egress) => Stream::Response,
        (Role::Unknown, Direction::Ingress) => Stream::Request,
        (Role::Unknown, Direction::Egress) => Stream::Response,
    }
}

/// The role of a connection known only from its data: whoever sends a request line is the
/// client, whoever sends a status line is the server.
fn guess_role(chunk: &DataChunk) -> Role {
    let starts_response = chunk.payload.starts_with(b"HTTP/");
    let starts_request = !starts_response
        && chunk
            .payload
            .iter()
            .take_while(|b| **b != b' ')
            .all(|b| b.is_ascii_uppercase())
        && chunk.payload.contains(&b' ');
    match (chunk.direction, starts_request, starts_response) {
        (Direction::Ingress, true, _) | (Direction::Egress, _, true) => Role::Server,
        (Direction::Egress, true, _) | (Direction::Ingress, _, true) => Role::Client,
        _ => Role::Unknown,
    }
}

#[cfg(test)]
mod tests;
