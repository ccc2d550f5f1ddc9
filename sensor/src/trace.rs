//! `sensor trace`: the raw capture of some processes, one line per chunk, for debugging.
//!
//! With `--payload`, the configured redaction applies to the bytes shown: each connection's
//! streams go through a [`ConnScrubber`], and a chunk's line is printed once every byte of it
//! is decided (masked runs print as `[REDACTED]`). Lines of one stream keep their order; a
//! line held for a body that is not complete yet is printed when it completes, when the
//! connection closes, or after [`HOLD_LIMIT`] with the undecided bytes masked.

use std::{
    collections::{HashMap, VecDeque},
    fmt::Write as _,
    net::SocketAddr,
    ops::Range,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Result;
use sensor_common::event::Direction;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    capture::{Capture, CaptureEvent, CaptureOptions, Clock, seed, tls},
    daemon::with_descendants,
    redact::{ConnScrubber, REDACTED, StreamRules},
};

/// Longest time a chunk line waits for its bytes to be decided before they are masked.
pub const HOLD_LIMIT: Duration = Duration::from_secs(2);

fn addr(a: Option<SocketAddr>) -> String {
    a.map_or_else(|| "?".to_owned(), |a| a.to_string())
}

/// Printable prefix of a payload, at most `limit` bytes: ASCII as is, the rest as `\xNN`,
/// CR/LF as `\r`/`\n`, backslash and quote escaped.
pub fn escape_prefix(bytes: &[u8], limit: usize) -> String {
    let mut out = String::new();
    for &b in bytes.iter().take(limit) {
        match b {
            b'\r' => out.push_str("\\r"),
            b'\n' => out.push_str("\\n"),
            b'\\' => out.push_str("\\\\"),
            b'"' => out.push_str("\\\""),
            0x20..=0x7e => out.push(b as char),
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
    out
}

/// As [`escape_prefix`], with the masked runs of the payload (sorted, disjoint, relative to
/// its start) shown as `[REDACTED]`.
pub fn escape_masked(bytes: &[u8], limit: usize, masked: &[Range<usize>]) -> String {
    let shown = &bytes[..bytes.len().min(limit)];
    let mut out = String::new();
    let mut last = 0;
    for run in masked {
        if run.start >= shown.len() {
            break;
        }
        out.push_str(&escape_prefix(&shown[last..run.start], usize::MAX));
        out.push_str(REDACTED);
        last = run.end.min(shown.len());
    }
    out.push_str(&escape_prefix(&shown[last..], usize::MAX));
    out
}

/// A chunk line waiting for its payload bytes to be decided.
struct HeldLine {
    head: String,
    offset: u64,
    payload: Vec<u8>,
    /// The bytes overlap bytes already seen: shown masked whole.
    refused: bool,
    since: Instant,
}

/// Redaction of one connection's payloads and its held lines, by direction.
#[derive(Default)]
struct RedactedConn {
    scrubber: ConnScrubber,
    held: [VecDeque<HeldLine>; 2],
}

/// Payload redaction for `trace`: every connection's scrubber and held lines.
struct Redaction {
    rules: StreamRules,
    limit: usize,
    conns: HashMap<u64, RedactedConn>,
}

impl Redaction {
    /// Takes a chunk's line and payload; prints what can be printed.
    fn chunk(
        &mut self,
        conn_id: u64,
        direction: Direction,
        head: String,
        offset: u64,
        payload: Vec<u8>,
    ) {
        let conn = self.conns.entry(conn_id).or_default();
        let refused = !conn.scrubber.feed(&self.rules, direction, offset, &payload);
        conn.held[direction.index()].push_back(HeldLine {
            head,
            offset,
            payload,
            refused,
            since: Instant::now(),
        });
        print_decided(conn, direction, self.limit);
    }

    /// The connection closed: everything it held is decided and printed.
    fn close(&mut self, conn_id: u64) {
        if let Some(mut conn) = self.conns.remove(&conn_id) {
            conn.scrubber.close(&self.rules);
            for direction in [Direction::Ingress, Direction::Egress] {
                print_decided(&mut conn, direction, self.limit);
            }
        }
    }

    /// Streams holding a line longer than `limit` (or all, with `None`) are decided now,
    /// masking what is undecided, and printed.
    fn flush(&mut self, limit: Option<Duration>) {
        for conn in self.conns.values_mut() {
            for direction in [Direction::Ingress, Direction::Egress] {
                let stale = conn.held[direction.index()]
                    .front()
                    .is_some_and(|line| limit.is_none_or(|l| line.since.elapsed() >= l));
                if stale {
                    conn.scrubber.flush(&self.rules, direction);
                    print_decided(conn, direction, self.limit);
                }
            }
        }
    }
}

/// Set once stdout's reader is gone (`sensor trace … | head`): tracing stops, as programs in
/// a pipe do.
static STDOUT_CLOSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Prints one line on stdout. `println!` would panic on a closed pipe; here a closed pipe
/// sets [`STDOUT_CLOSED`], and a line that cannot be written otherwise is left out.
fn print_line(text: &str) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    let written = writeln!(stdout, "{text}").and_then(|()| stdout.flush());
    if written.is_err_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) {
        STDOUT_CLOSED.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Prints a stream's held lines whose bytes are all decided, in order.
fn print_decided(conn: &mut RedactedConn, direction: Direction, limit: usize) {
    let settled = conn.scrubber.settled(direction);
    let held = &mut conn.held[direction.index()];
    while let Some(line) = held.front() {
        let end = line.offset + line.payload.len() as u64;
        if !line.refused && end > settled {
            break;
        }
        let mut text = line.head.clone();
        if !line.payload.is_empty() {
            let masked = if line.refused {
                std::iter::once(0..line.payload.len()).collect()
            } else {
                conn.scrubber
                    .masked_runs(direction, line.offset, line.payload.len())
            };
            let _ = write!(
                text,
                " payload=\"{}\"",
                escape_masked(&line.payload, limit, &masked)
            );
        }
        print_line(&text);
        if !line.refused {
            conn.scrubber.release(direction, end);
        }
        held.pop_front();
    }
}

/// What `trace` shows of a connection.
#[derive(Clone, Debug)]
struct ConnView {
    local: Option<SocketAddr>,
    remote: Option<SocketAddr>,
    unix_path: Option<String>,
    role: &'static str,
}

impl Default for ConnView {
    fn default() -> Self {
        ConnView {
            local: None,
            remote: None,
            unix_path: None,
            role: "unknown",
        }
    }
}

impl ConnView {
    fn of(open: &crate::capture::events::ConnOpen) -> Self {
        ConnView {
            local: open.local,
            remote: open.remote,
            unix_path: open.unix_path.clone(),
            role: match open.role {
                sensor_common::event::Role::Server => "server",
                sensor_common::event::Role::Client => "client",
                sensor_common::event::Role::Unknown => "unknown",
            },
        }
    }
}

/// Prints every chunk of the given processes (and their children) until interrupted; with
/// `payload`, the first bytes of each chunk, redacted by `rules` unless they are empty.
pub async fn run(
    pids: &[u32],
    payload: Option<usize>,
    rules: Option<StreamRules>,
    capture: &CaptureOptions,
) -> Result<()> {
    crate::daemon::require_running(Path::new("/proc"), pids)?;
    let mut capture = Capture::load(capture)?;
    let clock = Clock::now()?;
    let mut conns: HashMap<u64, ConnView> = HashMap::new();
    let mut symbols = tls::SymbolCache::default();
    for pid in with_descendants(Path::new("/proc"), pids) {
        capture.watch(pid)?;
        let libraries = tls::libraries(Path::new("/proc"), pid, &mut symbols);
        capture.attach_tls(pid, &libraries);
        for adoption in seed::adoptions(Path::new("/proc"), pid, 0) {
            if capture
                .adopt(adoption.key, adoption.entry, adoption.state)
                .is_ok()
            {
                let o = adoption.open;
                conns.insert(o.conn_id, ConnView::of(&o));
            }
        }
    }
    let mut redaction = match (payload, rules) {
        (Some(limit), Some(rules)) if !rules.is_empty() => Some(Redaction {
            rules,
            limit,
            conns: HashMap::new(),
        }),
        _ => None,
    };
    match (payload, &redaction) {
        (Some(limit), Some(_)) => {
            tracing::info!(
                payload_bytes = limit,
                "trace payloads redacted as configured"
            );
        }
        (Some(limit), None) => tracing::info!(
            payload_bytes = limit,
            "no redaction rule configured: trace payloads shown as captured"
        ),
        (None, _) => {}
    }
    eprintln!("tracing {} process(es); Ctrl-C to stop", pids.len());
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut ticker = tokio::time::interval(Duration::from_millis(500));
    loop {
        let mut tick = false;
        let handle = |_: &mut Capture, event: CaptureEvent| match event {
            CaptureEvent::Open(o) => {
                conns.insert(o.conn_id, ConnView::of(&o));
            }
            CaptureEvent::Address {
                conn_id,
                local,
                remote,
            } => {
                if let Some(view) = conns.get_mut(&conn_id) {
                    view.local = local.or(view.local);
                    view.remote = remote.or(view.remote);
                }
            }
            CaptureEvent::Close(c) => {
                conns.remove(&c.conn_id);
                if let Some(redaction) = redaction.as_mut() {
                    redaction.close(c.conn_id);
                }
            }
            CaptureEvent::TlsBind(bind) => {
                // A TLS stream's plaintext is shown with its socket's ends.
                if let Some(view) = conns.get(&bind.socket_conn_id).cloned() {
                    conns.insert(bind.stream_id, view);
                }
            }
            CaptureEvent::Data(chunk) => {
                let view = conns.get(&chunk.conn_id).cloned().unwrap_or_default();
                let ends = match view.unix_path {
                    Some(p) => format!("unix:{p}"),
                    None => format!("{}->{}", addr(view.local), addr(view.remote)),
                };
                let ts = clock.to_unix_nanos(chunk.time_ns);
                let dir = match chunk.direction {
                    Direction::Ingress => "in ",
                    Direction::Egress => "out",
                };
                let mut line = format!(
                    "{}.{:09} pid={} fd={} conn={:x} role={} {} {} len={} copied={} off={} sys_off={} via={}",
                    ts / 1_000_000_000,
                    ts % 1_000_000_000,
                    chunk.pid,
                    chunk.fd,
                    chunk.conn_id,
                    view.role,
                    dir,
                    ends,
                    chunk.syscall_len,
                    chunk.payload.len(),
                    chunk.offset,
                    chunk.syscall_offset,
                    chunk.source.name(),
                );
                if let Some(redaction) = redaction.as_mut() {
                    redaction.chunk(
                        chunk.conn_id,
                        chunk.direction,
                        line,
                        chunk.offset,
                        chunk.payload.to_vec(),
                    );
                    return;
                }
                if let Some(limit) = payload.filter(|_| !chunk.payload.is_empty()) {
                    let _ = write!(line, " payload=\"{}\"", escape_prefix(chunk.payload, limit));
                }
                print_line(&line);
            }
            _ => {}
        };
        tokio::select! {
            result = capture.next_batch(handle) => result?,
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = ticker.tick() => tick = true,
        }
        if tick && let Some(redaction) = redaction.as_mut() {
            redaction.flush(Some(HOLD_LIMIT));
        }
        if STDOUT_CLOSED.load(std::sync::atomic::Ordering::Relaxed) {
            tracing::info!("the reader of stdout is gone; stopping");
            break;
        }
    }
    if let Some(redaction) = redaction.as_mut() {
        redaction.flush(None);
    }
    let counters = capture.counters()?;
    let summary: Vec<String> = counters
        .named()
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    eprintln!("kernel counters: {}", summary.join(" "));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_escaped_and_bounded() {
        assert_eq!(
            escape_prefix(b"GET / HTTP/1.1\r\n", 64),
            "GET / HTTP/1.1\\r\\n"
        );
        assert_eq!(escape_prefix(b"\x00\xff\\\"", 64), "\\x00\\xff\\\\\\\"");
        assert_eq!(escape_prefix(&[b'a'; 100], 64).len(), 64);
    }

    #[test]
    fn masked_runs_print_as_redacted_within_the_limit() {
        let bytes = b"Authorization: Bearer x\r\nHost: a";
        let value = 14..23;
        let runs = std::slice::from_ref(&value);
        assert_eq!(
            escape_masked(bytes, 64, runs),
            "Authorization:[REDACTED]\\r\\nHost: a"
        );
        assert_eq!(escape_masked(bytes, 16, runs), "Authorization:[REDACTED]");
        assert_eq!(escape_masked(bytes, 10, runs), "Authorizat");
        let whole = 0..3;
        assert_eq!(
            escape_masked(b"abc", 64, std::slice::from_ref(&whole)),
            "[REDACTED]"
        );
    }
}
