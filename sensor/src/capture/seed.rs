//! Sockets that existed before the sensor started: found through `/proc/PID/fd` and the socket
//! tables of the process's own network namespace (`/proc/PID/net/{tcp,tcp6,unix}`), so that
//! containers are read in their own namespace.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
    sync::atomic::{AtomicU64, Ordering},
};

use sensor_common::{
    event::{Family, Role},
    maps::{
        ConnState, FdEntry, Protocol, SOCKET_FLAG_MIDSTREAM, SocketKey, SocketKind,
        USER_CONN_ID_BIT,
    },
};

use super::events::ConnOpen;

/// One socket of a process, as the kernel tables describe it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketRow {
    /// Socket inode.
    pub inode: u64,
    /// Address family.
    pub family: Family,
    /// Local endpoint (TCP).
    pub local: Option<SocketAddr>,
    /// Remote endpoint (TCP).
    pub remote: Option<SocketAddr>,
    /// Unix path (unix sockets).
    pub path: Option<String>,
    /// Connected (TCP ESTABLISHED / unix SS_CONNECTED).
    pub connected: bool,
    /// Listening.
    pub listening: bool,
}

fn parse_v4(hex: &str) -> Option<Ipv4Addr> {
    let raw = u32::from_str_radix(hex, 16).ok()?;
    Some(Ipv4Addr::from(raw.to_le_bytes()))
}

fn parse_v6(hex: &str) -> Option<Ipv6Addr> {
    if hex.len() != 32 {
        return None;
    }
    let mut bytes = [0u8; 16];
    for word in 0..4 {
        let raw = u32::from_str_radix(&hex[word * 8..word * 8 + 8], 16).ok()?;
        bytes[word * 4..word * 4 + 4].copy_from_slice(&raw.to_le_bytes());
    }
    Some(Ipv6Addr::from(bytes))
}

fn parse_endpoint(text: &str, v6: bool) -> Option<SocketAddr> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = if v6 {
        let v6 = parse_v6(addr)?;
        match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        }
    } else {
        IpAddr::V4(parse_v4(addr)?)
    };
    Some(SocketAddr::new(ip, port))
}

/// Parses `/proc/net/tcp` or `tcp6` text.
pub fn parse_tcp_table(text: &str, v6: bool) -> Vec<SocketRow> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 10 {
                return None;
            }
            let state = u8::from_str_radix(cols[3], 16).ok()?;
            Some(SocketRow {
                inode: cols[9].parse().ok()?,
                family: if v6 { Family::Inet6 } else { Family::Inet },
                local: parse_endpoint(cols[1], v6),
                remote: parse_endpoint(cols[2], v6),
                path: None,
                connected: state == 0x01,
                listening: state == 0x0a,
            })
        })
        .collect()
}

/// Parses `/proc/net/unix` text (stream sockets only).
pub fn parse_unix_table(text: &str) -> Vec<SocketRow> {
    const SOCK_STREAM: u32 = 1;
    const SS_CONNECTED: u32 = 3;
    const ACCEPTCON: u32 = 0x10000;
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 7 {
                return None;
            }
            let flags = u32::from_str_radix(cols[3], 16).ok()?;
            let kind = u32::from_str_radix(cols[4], 16).ok()?;
            let state = u32::from_str_radix(cols[5], 16).ok()?;
            if kind != SOCK_STREAM {
                return None;
            }
            Some(SocketRow {
                inode: cols[6].parse().ok()?,
                family: Family::Unix,
                local: None,
                remote: None,
                path: cols.get(7).map(|p| p.to_string()),
                connected: state == SS_CONNECTED,
                listening: flags & ACCEPTCON != 0,
            })
        })
        .collect()
}

/// The socket tables of `pid`'s network namespace, by inode.
pub fn socket_tables(proc_root: &Path, pid: u32) -> HashMap<u64, SocketRow> {
    let net = proc_root.join(pid.to_string()).join("net");
    let mut rows = HashMap::new();
    for (file, v6) in [("tcp", false), ("tcp6", true)] {
        if let Ok(text) = std::fs::read_to_string(net.join(file)) {
            rows.extend(parse_tcp_table(&text, v6).into_iter().map(|r| (r.inode, r)));
        }
    }
    if let Ok(text) = std::fs::read_to_string(net.join("unix")) {
        rows.extend(parse_unix_table(&text).into_iter().map(|r| (r.inode, r)));
    }
    rows
}

/// Socket inodes of `pid` by descriptor.
pub fn socket_fds(proc_root: &Path, pid: u32) -> Vec<(i32, u64)> {
    let dir = proc_root.join(pid.to_string()).join("fd");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let fd: i32 = e.file_name().to_str()?.parse().ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            let inode = target
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()?;
            Some((fd, inode))
        })
        .collect()
}

/// What the kernel's tables say of descriptor `fd` of `pid`, if it is a socket.
pub fn resolve(proc_root: &Path, pid: u32, fd: i32) -> Option<SocketRow> {
    let target = std::fs::read_link(
        proc_root
            .join(pid.to_string())
            .join("fd")
            .join(fd.to_string()),
    )
    .ok()?;
    let inode: u64 = target
        .to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()?;
    socket_tables(proc_root, pid).remove(&inode)
}

static NEXT_USER_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// A fresh userspace connection id (never equal to a kernel one).
pub fn user_conn_id() -> u64 {
    USER_CONN_ID_BIT | NEXT_USER_CONN_ID.fetch_add(1, Ordering::Relaxed)
}

/// An existing connected socket to adopt: what goes into the kernel maps, and the open record.
#[derive(Clone, Debug)]
pub struct Adoption {
    /// Key in the descriptor table.
    pub key: SocketKey,
    /// Descriptor entry.
    pub entry: FdEntry,
    /// Connection state (marked mid-stream).
    pub state: ConnState,
    /// The synthetic open record for userspace.
    pub open: ConnOpen,
}

/// The connected stream sockets `pid` holds, ready to adopt. The role of a TCP connection is
/// server when its local port is one the namespace listens on.
pub fn adoptions(proc_root: &Path, pid: u32, now_ns: u64) -> Vec<Adoption> {
    let tables = socket_tables(proc_root, pid);
    let listening: HashSet<u16> = tables
        .values()
        .filter(|r| r.listening)
        .filter_map(|r| r.local.map(|a| a.port()))
        .collect();
    let mut out = Vec::new();
    for (fd, inode) in socket_fds(proc_root, pid) {
        let Some(row) = tables.get(&inode) else {
            continue;
        };
        if !row.connected {
            continue;
        }
        let role = match row.family {
            Family::Unix => Role::Unknown,
            _ => match row.local {
                Some(local) if listening.contains(&local.port()) => Role::Server,
                _ => Role::Client,
            },
        };
        let conn_id = user_conn_id();
        out.push(Adoption {
            key: SocketKey { tgid: pid, fd },
            entry: FdEntry {
                conn_id,
                kind: SocketKind::Stream as u8,
                family: row.family as u8,
                _pad: [0; 6],
            },
            state: ConnState {
                conn_id,
                bytes: [0, 0],
                family: row.family as u8,
                role: role as u8,
                protocol: Protocol::Unclassified as u8,
                flags: SOCKET_FLAG_MIDSTREAM,
                refs: 1,
            },
            open: ConnOpen {
                pid,
                time_ns: now_ns,
                conn_id,
                fd,
                role,
                family: row.family,
                local: row.local,
                remote: row.remote,
                unix_path: row.path.clone(),
                midstream: true,
            },
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0000000000000000 20 4 30 10 -1
";

    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:0050 00000000000000000000000001000000:D431 01 00000000:00000000 00:00000000 00000000     0        0 777 1 0000000000000000 20 4 0 10 -1
   1: 0000000000000000FFFF00000100007F:1F90 0000000000000000FFFF00000100007F:C351 01 00000000:00000000 00:00000000 00000000     0        0 778 1 0000000000000000 20 4 0 10 -1
";

    const UNIX: &str = "Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 5000 /run/app.sock
0000000000000000: 00000003 00000000 00000000 0001 03 5001 /run/app.sock
0000000000000000: 00000003 00000000 00000000 0002 01 5002
";

    #[test]
    fn tcp_rows() {
        let rows = parse_tcp_table(TCP, false);
        assert_eq!(rows.len(), 2);
        assert!(rows[0].listening && !rows[0].connected);
        assert_eq!(rows[0].local, Some("127.0.0.1:8080".parse().unwrap()));
        assert!(rows[1].connected);
        assert_eq!(rows[1].remote, Some("127.0.0.1:50000".parse().unwrap()));
        assert_eq!(rows[1].inode, 4343);
    }

    #[test]
    fn tcp6_rows_and_mapped_v4() {
        let rows = parse_tcp_table(TCP6, true);
        assert_eq!(rows[0].local, Some("[::1]:80".parse().unwrap()));
        assert_eq!(rows[0].remote, Some("[::1]:54321".parse().unwrap()));
        assert_eq!(rows[1].local, Some("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(rows[1].remote, Some("127.0.0.1:50001".parse().unwrap()));
    }

    #[test]
    fn unix_stream_rows_only() {
        let rows = parse_unix_table(UNIX);
        assert_eq!(rows.len(), 2);
        assert!(rows[0].listening);
        assert!(rows[1].connected);
        assert_eq!(rows[1].path.as_deref(), Some("/run/app.sock"));
    }

    #[test]
    fn user_ids_never_collide_with_kernel_ids() {
        let a = user_conn_id();
        let b = user_conn_id();
        assert_ne!(a, b);
        assert!(a & USER_CONN_ID_BIT != 0);
    }

    #[test]
    fn adopts_this_process_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client = std::net::TcpStream::connect(addr).unwrap();
        let (_server, _) = listener.accept().unwrap();
        let pid = std::process::id();
        let found = adoptions(Path::new("/proc"), pid, 0);
        let client_local = client.local_addr().unwrap();
        let mine = found
            .iter()
            .find(|a| a.open.local == Some(client_local))
            .expect("the client socket is adopted");
        assert_eq!(mine.open.role, Role::Client);
        assert_eq!(mine.open.remote, Some(addr));
        let server_side = found
            .iter()
            .find(|a| a.open.remote == Some(client_local))
            .expect("the accepted socket is adopted");
        assert_eq!(server_side.open.role, Role::Server);
    }
}
