//! Which descriptors of watched processes are sockets, and which of those are connections.
//!
//! `socket` records the kind of a new descriptor; `accept`/`accept4` and `connect` turn one into
//! a connection with an id and send a `ConnOpen` record; `dup*`/`fcntl(F_DUPFD*)` add another
//! descriptor for the same connection; `close` and `close_range` release descriptors and send
//! `ConnClose` when the last one goes; `getsockname`/`getpeername` on a connection whose
//! `accept` did not show its addresses send them as `ConnAddress` records.

use aya_ebpf::{
    helpers::{bpf_probe_read_user, bpf_probe_read_user_buf},
    macros::tracepoint,
    programs::TracePointContext,
};
use sensor_common::{
    event::{
        CLOSE_RANGE_SCAN, CloseRangeEvent, ConnAddrEvent, ConnCloseEvent, ConnEvent, Endpoint,
        EventKind, Family, Role, UNIX_PATH_MAX,
    },
    maps::{
        ConnState, Counter, FdEntry, SOCKET_FLAG_NEED_LOCAL, SOCKET_FLAG_NEED_REMOTE, SocketKey,
        SocketKind,
    },
};

use crate::{
    Outcome, Skip, finish,
    state::{
        ACCEPT_TUPLES, CONN_CONTROL, CONNS, EVENTS, FDS, PENDING_SOCKET, PendingSocket, SK_CONNS,
        SK_TUPLES, THREAD_SK, count, current_tgid, header, is_watched, next_conn_id, pid_tgid,
        syscall_arg, syscall_ret,
    },
};

const AF_UNIX: u16 = 1;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const SOCK_STREAM: u64 = 1;
const SOCK_TYPE_MASK: u64 = 0xf;
const EINPROGRESS: i64 = 115;
const F_DUPFD: u64 = 0;
const F_DUPFD_CLOEXEC: u64 = 1030;
const CLOSE_RANGE_CLOEXEC: u64 = 4;
/// `PendingSocket::arg` when a dup call has no explicit new descriptor.
const NO_NEW_FD: u64 = u64::MAX;

fn empty_pending() -> PendingSocket {
    PendingSocket {
        fd_or_domain: 0,
        arg: 0,
        remote: Endpoint::default(),
        unix_path: [0; UNIX_PATH_MAX],
        wanted: 0,
    }
}

/// Remembers a socket-shaping call's arguments until its exit, for watched processes only.
#[inline(always)]
fn remember(pending: &PendingSocket) -> Outcome {
    if !is_watched(current_tgid()) {
        return Err(Skip::NotTracked);
    }
    PENDING_SOCKET
        .insert(pid_tgid(), pending, 0)
        .map_err(|_| Skip::Failed)
}

/// Takes back what [`remember`] stored for the calling thread.
#[inline(always)]
fn take_pending() -> Option<PendingSocket> {
    let id = pid_tgid();
    let pending = PENDING_SOCKET.get_ptr(id).map(|p| unsafe { *p })?;
    let _ = PENDING_SOCKET.remove(id);
    Some(pending)
}

#[tracepoint]
pub fn sys_enter_socket(ctx: TracePointContext) -> u32 {
    let mut pending = empty_pending();
    pending.fd_or_domain = syscall_arg(&ctx, 0) as i64;
    pending.arg = syscall_arg(&ctx, 1);
    finish(remember(&pending))
}

#[tracepoint]
pub fn sys_exit_socket(ctx: TracePointContext) -> u32 {
    finish(try_exit_socket(&ctx))
}

fn try_exit_socket(ctx: &TracePointContext) -> Outcome {
    let pending = take_pending().ok_or(Skip::NotTracked)?;
    let fd = syscall_ret(ctx);
    if fd < 0 {
        return Err(Skip::NotTracked);
    }
    let family = match pending.fd_or_domain as u16 {
        AF_INET => Family::Inet,
        AF_INET6 => Family::Inet6,
        AF_UNIX => Family::Unix,
        _ => return Err(Skip::NotTracked),
    };
    let kind = if pending.arg & SOCK_TYPE_MASK == SOCK_STREAM {
        SocketKind::Stream
    } else {
        SocketKind::Other
    };
    let tgid = current_tgid();
    release_fd(tgid, fd as i32);
    let entry = FdEntry {
        conn_id: 0,
        kind: kind as u8,
        family: family as u8,
        _pad: [0; 6],
    };
    FDS.insert(
        SocketKey {
            tgid,
            fd: fd as i32,
        },
        entry,
        0,
    )
    .map_err(|_| {
        count(Counter::SocketsFull, 1);
        Skip::Failed
    })
}

/// Reads a `struct sockaddr` from user memory into an endpoint (and a unix path).
#[inline(always)]
fn read_sockaddr(ptr: u64, len: u64, endpoint: &mut Endpoint, unix_path: &mut [u8; UNIX_PATH_MAX]) {
    if ptr == 0 {
        return;
    }
    // SAFETY: user memory is read through the checking helper.
    let Ok(family) = (unsafe { bpf_probe_read_user(ptr as *const u16) }) else {
        count(Counter::ReadFailed, 1);
        return;
    };
    match family {
        AF_INET => {
            let port = unsafe { bpf_probe_read_user((ptr + 2) as *const u16) }.unwrap_or(0);
            let addr =
                unsafe { bpf_probe_read_user((ptr + 4) as *const [u8; 4]) }.unwrap_or([0; 4]);
            endpoint.family = Family::Inet as u8;
            endpoint.port = u16::from_be(port);
            endpoint.addr[..4].copy_from_slice(&addr);
        }
        AF_INET6 => {
            let port = unsafe { bpf_probe_read_user((ptr + 2) as *const u16) }.unwrap_or(0);
            let addr =
                unsafe { bpf_probe_read_user((ptr + 8) as *const [u8; 16]) }.unwrap_or([0; 16]);
            endpoint.family = Family::Inet6 as u8;
            endpoint.port = u16::from_be(port);
            endpoint.addr = addr;
        }
        AF_UNIX => {
            endpoint.family = Family::Unix as u8;
            let mut n = len.saturating_sub(2) as usize;
            if n > UNIX_PATH_MAX {
                n = UNIX_PATH_MAX;
            }
            if n > 0 {
                // SAFETY: as above; `n` is bounded by the buffer.
                let _ =
                    unsafe { bpf_probe_read_user_buf((ptr + 2) as *const u8, &mut unix_path[..n]) };
            }
        }
        _ => {}
    }
}

#[tracepoint]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    if !is_watched(current_tgid()) {
        return 0;
    }
    let mut pending = empty_pending();
    pending.fd_or_domain = syscall_arg(&ctx, 0) as i64;
    read_sockaddr(
        syscall_arg(&ctx, 1),
        syscall_arg(&ctx, 2),
        &mut pending.remote,
        &mut pending.unix_path,
    );
    finish(remember(&pending))
}

#[tracepoint]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    finish(try_exit_connect(&ctx))
}

fn try_exit_connect(ctx: &TracePointContext) -> Outcome {
    let id = pid_tgid();
    let sk = THREAD_SK.get_ptr(id).map(|s| unsafe { *s });
    let _ = THREAD_SK.remove(id);
    let tuple = sk.and_then(|sk| {
        let tuple = SK_TUPLES.get_ptr(sk).map(|t| unsafe { *t });
        let _ = SK_TUPLES.remove(sk);
        tuple
    });
    let pending = PENDING_SOCKET.get_ptr(id).ok_or(Skip::NotTracked)?;
    let _ = PENDING_SOCKET.remove(id);
    let ret = syscall_ret(ctx);
    if ret != 0 && ret != -EINPROGRESS {
        return Err(Skip::NotTracked);
    }
    // SAFETY: the pointer came from a successful lookup; the entry is this thread's own.
    let pending = unsafe { &*pending };
    let family = Family::from_u8(pending.remote.family);
    if family == Family::Unknown {
        return Err(Skip::NotTracked);
    }
    let tgid = current_tgid();
    let fd = pending.fd_or_domain as i32;
    if let Some(entry) = FDS.get_ptr(SocketKey { tgid, fd })
        && unsafe { (*entry).kind } == SocketKind::Other as u8
    {
        return Err(Skip::NotTracked);
    }
    let (local, remote) = match tuple {
        Some(tuple) => (tuple.local, tuple.remote),
        None => (Endpoint::default(), pending.remote),
    };
    let conn_id = open_conn(
        tgid,
        fd,
        Role::Client,
        family,
        &local,
        &remote,
        Some(&pending.unix_path),
    )?;
    if tuple.is_none()
        && let Some(sk) = sk
    {
        // Established later: inet_sock_set_state sends the addresses for this connection.
        let _ = SK_CONNS.insert(sk, conn_id, 0);
    }
    Ok(())
}

#[tracepoint]
pub fn sys_enter_accept(ctx: TracePointContext) -> u32 {
    enter_accept(&ctx)
}

#[tracepoint]
pub fn sys_enter_accept4(ctx: TracePointContext) -> u32 {
    enter_accept(&ctx)
}

#[inline(always)]
fn enter_accept(ctx: &TracePointContext) -> u32 {
    let mut pending = empty_pending();
    pending.fd_or_domain = syscall_arg(ctx, 0) as i64;
    pending.arg = syscall_arg(ctx, 1);
    finish(remember(&pending))
}

#[tracepoint]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    finish(try_exit_accept(&ctx))
}

#[tracepoint]
pub fn sys_exit_accept4(ctx: TracePointContext) -> u32 {
    finish(try_exit_accept(&ctx))
}

fn try_exit_accept(ctx: &TracePointContext) -> Outcome {
    let fd = syscall_ret(ctx);
    let tgid = current_tgid();
    let pending = match take_pending() {
        Some(pending) => pending,
        // An accept already blocked when the programs were attached: the connection is still
        // tracked, its addresses are found by userspace.
        None if fd >= 0 && is_watched(tgid) => empty_pending(),
        None => return Err(Skip::NotTracked),
    };
    if fd < 0 {
        return Err(Skip::NotTracked);
    }
    let mut remote = Endpoint::default();
    let mut unix_path = [0u8; UNIX_PATH_MAX];
    read_sockaddr(
        pending.arg,
        UNIX_PATH_MAX as u64 + 2,
        &mut remote,
        &mut unix_path,
    );
    let mut family = Family::from_u8(remote.family);
    if family == Family::Unknown
        && let Some(listener) = FDS.get_ptr(SocketKey {
            tgid,
            fd: pending.fd_or_domain as i32,
        })
    {
        family = Family::from_u8(unsafe { (*listener).family });
    }
    let mut local = Endpoint::default();
    if (family == Family::Inet || family == Family::Inet6)
        && let Some(found) = ACCEPT_TUPLES.get_ptr(remote)
    {
        local = unsafe { *found };
        let _ = ACCEPT_TUPLES.remove(remote);
    }
    // A unix peer's address is almost always unnamed; the listener's path is found by userspace.
    open_conn(tgid, fd as i32, Role::Server, family, &local, &remote, None).map(|_| ())
}

#[tracepoint]
pub fn sys_enter_getsockname(ctx: TracePointContext) -> u32 {
    finish(enter_get_name(&ctx, SOCKET_FLAG_NEED_LOCAL))
}

#[tracepoint]
pub fn sys_enter_getpeername(ctx: TracePointContext) -> u32 {
    finish(enter_get_name(&ctx, SOCKET_FLAG_NEED_REMOTE))
}

/// Remembers a getsockname/getpeername on a connection still missing that address.
#[inline(always)]
fn enter_get_name(ctx: &TracePointContext, wanted: u8) -> Outcome {
    let tgid = current_tgid();
    if !is_watched(tgid) {
        return Err(Skip::NotTracked);
    }
    let fd = syscall_arg(ctx, 0) as i32;
    let entry = FDS
        .get_ptr(SocketKey { tgid, fd })
        .ok_or(Skip::NotTracked)?;
    let conn = CONNS
        .get_ptr(unsafe { (*entry).conn_id })
        .ok_or(Skip::NotTracked)?;
    if unsafe { (*conn).flags } & wanted == 0 {
        return Err(Skip::NotTracked);
    }
    let mut pending = empty_pending();
    pending.fd_or_domain = i64::from(fd);
    pending.arg = syscall_arg(ctx, 1);
    pending.wanted = u32::from(wanted);
    remember(&pending)
}

#[tracepoint]
pub fn sys_exit_getsockname(ctx: TracePointContext) -> u32 {
    finish(try_exit_get_name(&ctx))
}

#[tracepoint]
pub fn sys_exit_getpeername(ctx: TracePointContext) -> u32 {
    finish(try_exit_get_name(&ctx))
}

/// The address a getsockname/getpeername returned, sent as a `ConnAddress` record once.
fn try_exit_get_name(ctx: &TracePointContext) -> Outcome {
    let pending = take_pending().ok_or(Skip::NotTracked)?;
    if syscall_ret(ctx) != 0 {
        return Err(Skip::NotTracked);
    }
    let tgid = current_tgid();
    let entry = FDS
        .get_ptr(SocketKey {
            tgid,
            fd: pending.fd_or_domain as i32,
        })
        .ok_or(Skip::NotTracked)?;
    let conn_id = unsafe { (*entry).conn_id };
    let conn = CONNS.get_ptr_mut(conn_id).ok_or(Skip::NotTracked)?;
    let mut address = Endpoint::default();
    let mut unix_path = [0u8; UNIX_PATH_MAX];
    read_sockaddr(pending.arg, 0, &mut address, &mut unix_path);
    let family = Family::from_u8(address.family);
    if family != Family::Inet && family != Family::Inet6 {
        return Err(Skip::NotTracked);
    }
    let wanted = pending.wanted as u8;
    // SAFETY: map value pointer from a successful lookup.
    unsafe { (*conn).flags &= !wanted };
    let event = ConnAddrEvent {
        header: header(EventKind::ConnAddress),
        conn_id,
        local: if wanted == SOCKET_FLAG_NEED_LOCAL {
            address
        } else {
            Endpoint::default()
        },
        remote: if wanted == SOCKET_FLAG_NEED_REMOTE {
            address
        } else {
            Endpoint::default()
        },
    };
    if EVENTS.output(event, crate::emit::wakeup_flags()).is_err() {
        count(Counter::RingbufFull, 1);
        return Err(Skip::Failed);
    }
    Ok(())
}

/// Tracks `fd` of `tgid` as a new connection and tells userspace about it; returns its id.
#[inline(always)]
fn open_conn(
    tgid: u32,
    fd: i32,
    role: Role,
    family: Family,
    local: &Endpoint,
    remote: &Endpoint,
    unix_path: Option<&[u8; UNIX_PATH_MAX]>,
) -> Result<u64, Skip> {
    release_fd(tgid, fd);
    // Addresses an accept did not show are reported by the process's own getsockname and
    // getpeername (libuv accepts with a NULL address and asks for both right after). A
    // connect's local address comes from `inet_sock_set_state`.
    let mut flags = 0;
    if role == Role::Server && family != Family::Unix {
        if local.family == Family::Unknown as u8 {
            flags |= SOCKET_FLAG_NEED_LOCAL;
        }
        if remote.family == Family::Unknown as u8 {
            flags |= SOCKET_FLAG_NEED_REMOTE;
        }
    }
    let conn_id = next_conn_id();
    let state = ConnState {
        conn_id,
        bytes: [0, 0],
        family: family as u8,
        role: role as u8,
        protocol: 0,
        flags,
        refs: 1,
    };
    if CONNS.insert(conn_id, state, 0).is_err() {
        count(Counter::SocketsFull, 1);
        return Err(Skip::Failed);
    }
    let entry = FdEntry {
        conn_id,
        kind: SocketKind::Stream as u8,
        family: family as u8,
        _pad: [0; 6],
    };
    if FDS.insert(SocketKey { tgid, fd }, entry, 0).is_err() {
        let _ = CONNS.remove(conn_id);
        count(Counter::SocketsFull, 1);
        return Err(Skip::Failed);
    }
    let Some(mut record) = EVENTS.reserve::<ConnEvent>(0) else {
        count(Counter::RingbufFull, 1);
        return Err(Skip::Failed);
    };
    let event = record.as_mut_ptr();
    // SAFETY: `event` points at a reserved ring-buffer slot of the right size; every field is
    // written before it is submitted.
    unsafe {
        (*event).header = header(EventKind::ConnOpen);
        (*event).conn_id = conn_id;
        (*event).fd = fd;
        (*event).role = role as u8;
        (*event).family = family as u8;
        (*event)._pad = [0; 2];
        (*event).local = *local;
        (*event).remote = *remote;
        match unix_path {
            Some(path) => (*event).unix_path = *path,
            None => (*event).unix_path = [0; UNIX_PATH_MAX],
        }
        (*event)._pad2 = [0; 4];
    }
    record.submit(crate::emit::wakeup_flags());
    Ok(conn_id)
}

/// Forgets descriptor `fd` of `tgid`; when it was the last descriptor of a connection, sends
/// `ConnClose` with the connection's byte totals.
#[inline(always)]
pub fn release_fd(tgid: u32, fd: i32) {
    let key = SocketKey { tgid, fd };
    let Some(entry) = FDS.get_ptr(key) else {
        return;
    };
    let conn_id = unsafe { (*entry).conn_id };
    let _ = FDS.remove(key);
    if conn_id == 0 {
        return;
    }
    let Some(conn) = CONNS.get_ptr_mut(conn_id) else {
        return;
    };
    // SAFETY: map value pointer from a successful lookup.
    let conn = unsafe { &mut *conn };
    if conn.refs > 1 {
        conn.refs -= 1;
        return;
    }
    let bytes = conn.bytes;
    let _ = CONNS.remove(conn_id);
    let _ = CONN_CONTROL.remove(conn_id);
    let close = ConnCloseEvent {
        header: header(EventKind::ConnClose),
        conn_id,
        bytes,
        fd,
        _pad: 0,
    };
    if EVENTS.output(close, crate::emit::wakeup_flags()).is_err() {
        count(Counter::RingbufFull, 1);
    }
}

#[tracepoint]
pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
    let tgid = current_tgid();
    if is_watched(tgid) {
        release_fd(tgid, syscall_arg(&ctx, 0) as i32);
    }
    0
}

#[tracepoint]
pub fn sys_enter_close_range(ctx: TracePointContext) -> u32 {
    let tgid = current_tgid();
    if !is_watched(tgid) || syscall_arg(&ctx, 2) & CLOSE_RANGE_CLOEXEC != 0 {
        return 0;
    }
    let first = syscall_arg(&ctx, 0) as u32;
    let last = syscall_arg(&ctx, 1) as u32;
    for i in 0..CLOSE_RANGE_SCAN {
        let fd = first.wrapping_add(i);
        if fd > last || fd > i32::MAX as u32 {
            break;
        }
        release_fd(tgid, fd as i32);
    }
    let event = CloseRangeEvent {
        header: header(EventKind::CloseRange),
        first,
        last,
    };
    if EVENTS.output(event, crate::emit::wakeup_flags()).is_err() {
        count(Counter::RingbufFull, 1);
    }
    0
}

#[tracepoint]
pub fn sys_enter_dup(ctx: TracePointContext) -> u32 {
    enter_dup(syscall_arg(&ctx, 0), NO_NEW_FD)
}

#[tracepoint]
pub fn sys_enter_dup2(ctx: TracePointContext) -> u32 {
    enter_dup(syscall_arg(&ctx, 0), syscall_arg(&ctx, 1))
}

#[tracepoint]
pub fn sys_enter_dup3(ctx: TracePointContext) -> u32 {
    enter_dup(syscall_arg(&ctx, 0), syscall_arg(&ctx, 1))
}

#[tracepoint]
pub fn sys_enter_fcntl(ctx: TracePointContext) -> u32 {
    let cmd = syscall_arg(&ctx, 1);
    if cmd != F_DUPFD && cmd != F_DUPFD_CLOEXEC {
        return 0;
    }
    enter_dup(syscall_arg(&ctx, 0), NO_NEW_FD)
}

#[inline(always)]
fn enter_dup(old_fd: u64, new_fd: u64) -> u32 {
    let mut pending = empty_pending();
    pending.fd_or_domain = old_fd as i64;
    pending.arg = new_fd;
    finish(remember(&pending))
}

#[tracepoint]
pub fn sys_exit_dup(ctx: TracePointContext) -> u32 {
    finish(exit_dup(&ctx))
}

#[tracepoint]
pub fn sys_exit_dup2(ctx: TracePointContext) -> u32 {
    finish(exit_dup(&ctx))
}

#[tracepoint]
pub fn sys_exit_dup3(ctx: TracePointContext) -> u32 {
    finish(exit_dup(&ctx))
}

#[tracepoint]
pub fn sys_exit_fcntl(ctx: TracePointContext) -> u32 {
    finish(exit_dup(&ctx))
}

fn exit_dup(ctx: &TracePointContext) -> Outcome {
    let pending = take_pending().ok_or(Skip::NotTracked)?;
    let new_fd = syscall_ret(ctx);
    let old_fd = pending.fd_or_domain as i32;
    if new_fd < 0 || new_fd as i32 == old_fd {
        return Err(Skip::NotTracked);
    }
    let tgid = current_tgid();
    // dup2/dup3 silently close whatever the new descriptor referred to.
    release_fd(tgid, new_fd as i32);
    let entry = FDS
        .get_ptr(SocketKey { tgid, fd: old_fd })
        .map(|e| unsafe { *e })
        .ok_or(Skip::NotTracked)?;
    if entry.conn_id != 0
        && let Some(conn) = CONNS.get_ptr_mut(entry.conn_id)
    {
        unsafe { (*conn).refs += 1 };
    }
    FDS.insert(
        SocketKey {
            tgid,
            fd: new_fd as i32,
        },
        entry,
        0,
    )
    .map_err(|_| {
        count(Counter::SocketsFull, 1);
        Skip::Failed
    })
}
