//! `sensor trace`: the raw capture of some processes, one line per chunk, for debugging.

use std::{collections::HashMap, fmt::Write as _, net::SocketAddr, path::Path, time::Duration};

use anyhow::Result;
use sensor_common::event::Direction;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    capture::{Capture, CaptureEvent, CaptureOptions, Clock, seed, tls},
    daemon::with_descendants,
};

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

/// Prints every chunk of the given processes (and their children) until interrupted.
pub async fn run(pids: &[u32], payload: Option<usize>) -> Result<()> {
    let mut capture = Capture::load(&CaptureOptions::default())?;
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
    eprintln!("tracing {} process(es); Ctrl-C to stop", pids.len());
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    loop {
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
                if let Some(limit) = payload.filter(|_| !chunk.payload.is_empty()) {
                    let _ = write!(
                        line,
                        " payload=\"{}\"",
                        escape_prefix(&chunk.payload, limit)
                    );
                }
                println!("{line}");
            }
            _ => {}
        };
        tokio::select! {
            result = capture.next_batch(handle) => result?,
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
        }
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
}
