//! Payload-carrying syscalls on tracked connections.
//!
//! Each syscall has one `sys_exit_*_regs` program that reads the call's arguments at exit from
//! the thread's saved registers ([`syscall_args_at_exit`]), and, for kernels whose verifier
//! refuses that, a `sys_enter_*`/`sys_exit_*` pair that remembers them at entry (userspace
//! attaches one or the other). At exit the syscall's return value says how many bytes really
//! moved: the connection's stream offset advances by exactly that, the protocol is classified on
//! first use, and the bytes are copied (bounded) unless the connection is ignored, stopped, or
//! inside userspace's skip range.

use aya_ebpf::{
    helpers::{bpf_probe_read_user, bpf_probe_read_user_buf},
    macros::tracepoint,
    programs::TracePointContext,
};
use sensor_common::{
    event::{DATA_CHUNK_MAX, DataSource, Direction, EventKind, IOV_MAX_SCANNED},
    maps::{
        ConnControl, ConnState, Counter, Protocol, SOCKET_FLAG_MIDSTREAM, SOCKET_FLAG_TUNNEL,
        SocketKey,
    },
};

use crate::{
    Outcome, Skip,
    classify::{PEEK_LEN, classify},
    emit::{CHUNKS_PER_SYSCALL, COPY_BUDGET, Copy},
    finish,
    state::{
        CIPHER_SEEN, CONN_CONTROL, CONNS, CipherKey, FDS, PENDING_IO, PendingIo, SocketRef, count,
        current_tgid, is_watched, pid_tgid, syscall_arg, syscall_args_at_exit, syscall_ret,
    },
    tls,
};

const MSG_PEEK: u64 = 2;
/// Messages of a recvmmsg/sendmmsg whose lengths are summed (to keep offsets exact).
const MMSG_SUMMED: u32 = 64;
const MMSGHDR_SIZE: u64 = 64;
const MSGHDR_IOV: u64 = 16;
const MSGHDR_IOVLEN: u64 = 24;
const MMSGHDR_LEN: u64 = 56;
/// Steps of the iovec copy loop: one per entry opened, one per chunk copied (at most one
/// partial chunk per entry besides the budget's full ones).
const IOV_STEPS: usize = 2 * IOV_MAX_SCANNED + CHUNKS_PER_SYSCALL;

/// Remembers a payload syscall on a tracked connection until its exit.
#[inline(always)]
fn enter(fd: u64, direction: Direction, source: DataSource, ptr: u64, count: u64) -> Outcome {
    let tgid = current_tgid();
    if !is_watched(tgid) {
        return Err(Skip::NotTracked);
    }
    // Descriptors not (yet) known as connections are remembered too: userspace may adopt a
    // pre-existing socket while this very call is blocked in it (a keep-alive server waiting for
    // the next request); the exit then finds the connection and still copies the bytes.
    let conn_id = FDS
        .get_ptr(SocketKey {
            tgid,
            fd: fd as i32,
        })
        .map(|entry| unsafe { (*entry).conn_id })
        .unwrap_or(0);
    if conn_id != 0 {
        // A socket call inside an OpenSSL call: that `SSL` object's ciphertext goes here.
        tls::bind_nested_syscall(tgid, conn_id, fd as i32);
    }
    let pending = PendingIo {
        conn_id,
        ptr,
        count,
        fd: fd as i32,
        direction: direction as u8,
        source: source as u8,
        _pad: [0; 2],
    };
    PENDING_IO
        .insert(pid_tgid(), pending, 0)
        .map_err(|_| Skip::Failed)
}

macro_rules! plain_io {
    ($enter:ident, $exit:ident, $exit_regs:ident, $direction:expr, $source:expr, $peek_flags_arg:expr) => {
        #[tracepoint]
        pub fn $enter(ctx: TracePointContext) -> u32 {
            let flags_arg: Option<usize> = $peek_flags_arg;
            if let Some(index) = flags_arg {
                if syscall_arg(&ctx, index) & MSG_PEEK != 0 {
                    return 0;
                }
            }
            finish(enter(
                syscall_arg(&ctx, 0),
                $direction,
                $source,
                syscall_arg(&ctx, 1),
                syscall_arg(&ctx, 2),
            ))
        }

        #[tracepoint]
        pub fn $exit(ctx: TracePointContext) -> u32 {
            finish(exit::<{ shape($source) }>(&ctx))
        }

        #[tracepoint]
        pub fn $exit_regs(ctx: TracePointContext) -> u32 {
            finish(exit_regs::<{ shape($source) }>(
                &ctx,
                $direction,
                $source,
                $peek_flags_arg,
            ))
        }
    };
}

/// How a syscall's buffer is laid out, fixed per program so each verifies only its own path.
pub const CONTIGUOUS: u8 = 0;
const IOVEC: u8 = 1;
const MMSG: u8 = 2;
const COUNTED: u8 = 3;

const fn shape(source: DataSource) -> u8 {
    match source {
        DataSource::ReadWrite | DataSource::RecvSend | DataSource::Tls => CONTIGUOUS,
        DataSource::Vectored | DataSource::Msg => IOVEC,
        DataSource::MultiMsg => MMSG,
        DataSource::Sendfile => COUNTED,
    }
}

plain_io!(
    sys_enter_read,
    sys_exit_read,
    sys_exit_read_regs,
    Direction::Ingress,
    DataSource::ReadWrite,
    None
);
plain_io!(
    sys_enter_write,
    sys_exit_write,
    sys_exit_write_regs,
    Direction::Egress,
    DataSource::ReadWrite,
    None
);
plain_io!(
    sys_enter_recvfrom,
    sys_exit_recvfrom,
    sys_exit_recvfrom_regs,
    Direction::Ingress,
    DataSource::RecvSend,
    Some(3)
);
plain_io!(
    sys_enter_sendto,
    sys_exit_sendto,
    sys_exit_sendto_regs,
    Direction::Egress,
    DataSource::RecvSend,
    None
);
plain_io!(
    sys_enter_readv,
    sys_exit_readv,
    sys_exit_readv_regs,
    Direction::Ingress,
    DataSource::Vectored,
    None
);
plain_io!(
    sys_enter_writev,
    sys_exit_writev,
    sys_exit_writev_regs,
    Direction::Egress,
    DataSource::Vectored,
    None
);
plain_io!(
    sys_enter_recvmmsg,
    sys_exit_recvmmsg,
    sys_exit_recvmmsg_regs,
    Direction::Ingress,
    DataSource::MultiMsg,
    Some(3)
);
plain_io!(
    sys_enter_sendmmsg,
    sys_exit_sendmmsg,
    sys_exit_sendmmsg_regs,
    Direction::Egress,
    DataSource::MultiMsg,
    None
);

/// recvmsg/sendmsg: the iovec array is read from the msghdr.
macro_rules! msg_io {
    ($enter:ident, $exit:ident, $exit_regs:ident, $direction:expr, $peek:expr) => {
        #[tracepoint]
        pub fn $enter(ctx: TracePointContext) -> u32 {
            if $peek && syscall_arg(&ctx, 2) & MSG_PEEK != 0 {
                return 0;
            }
            let (iov, iovlen) = msghdr_iov(syscall_arg(&ctx, 1));
            finish(enter(
                syscall_arg(&ctx, 0),
                $direction,
                DataSource::Msg,
                iov,
                iovlen,
            ))
        }

        #[tracepoint]
        pub fn $exit(ctx: TracePointContext) -> u32 {
            finish(exit::<IOVEC>(&ctx))
        }

        #[tracepoint]
        pub fn $exit_regs(ctx: TracePointContext) -> u32 {
            let flags_arg = if $peek { Some(2) } else { None };
            finish(exit_regs::<IOVEC>(
                &ctx,
                $direction,
                DataSource::Msg,
                flags_arg,
            ))
        }
    };
}

/// The iovec array and its length from a msghdr.
#[inline(always)]
fn msghdr_iov(msg: u64) -> (u64, u64) {
    // SAFETY: user memory through the checking helper.
    let iov = unsafe { bpf_probe_read_user((msg + MSGHDR_IOV) as *const u64) }.unwrap_or(0);
    let iovlen = unsafe { bpf_probe_read_user((msg + MSGHDR_IOVLEN) as *const u64) }.unwrap_or(0);
    (iov, iovlen)
}

msg_io!(
    sys_enter_recvmsg,
    sys_exit_recvmsg,
    sys_exit_recvmsg_regs,
    Direction::Ingress,
    true
);
msg_io!(
    sys_enter_sendmsg,
    sys_exit_sendmsg,
    sys_exit_sendmsg_regs,
    Direction::Egress,
    false
);

#[tracepoint]
pub fn sys_enter_sendfile64(ctx: TracePointContext) -> u32 {
    finish(enter(
        syscall_arg(&ctx, 0),
        Direction::Egress,
        DataSource::Sendfile,
        0,
        syscall_arg(&ctx, 3),
    ))
}

#[tracepoint]
pub fn sys_exit_sendfile64(ctx: TracePointContext) -> u32 {
    finish(exit::<COUNTED>(&ctx))
}

#[tracepoint]
pub fn sys_exit_sendfile64_regs(ctx: TracePointContext) -> u32 {
    finish(exit_regs::<COUNTED>(
        &ctx,
        Direction::Egress,
        DataSource::Sendfile,
        None,
    ))
}

/// Reads `(base, len)` of iovec `index` of the array at `iov`.
#[inline(always)]
fn iovec(iov: u64, index: u64) -> Option<(u64, u64)> {
    // SAFETY: user memory through the checking helper.
    let entry = unsafe { bpf_probe_read_user((iov + index * 16) as *const [u64; 2]) }.ok()?;
    Some((entry[0], entry[1]))
}

/// First buffer of the syscall and its usable length, for classification.
#[inline(always)]
fn first_buffer<const SHAPE: u8>(io: &PendingIo, total: u64) -> Option<(u64, u64)> {
    let (base, len) = match SHAPE {
        CONTIGUOUS => (io.ptr, total),
        IOVEC => iovec(io.ptr, 0)?,
        MMSG => {
            let iov = unsafe { bpf_probe_read_user((io.ptr + MSGHDR_IOV) as *const u64) }.ok()?;
            iovec(iov, 0)?
        }
        _ => return None,
    };
    Some((base, if len < total { len } else { total }))
}

/// Exit of a payload syscall whose entry program remembered its arguments.
fn exit<const SHAPE: u8>(ctx: &TracePointContext) -> Outcome {
    let id = pid_tgid();
    let io = PENDING_IO
        .get_ptr(id)
        .map(|p| unsafe { *p })
        .ok_or(Skip::NotTracked)?;
    let _ = PENDING_IO.remove(id);
    complete::<SHAPE>(ctx, io)
}

/// Exit of a payload syscall with no entry program: its arguments are read from the thread's
/// saved registers, and only calls on tracked connections of watched processes go on.
#[inline(always)]
fn exit_regs<const SHAPE: u8>(
    ctx: &TracePointContext,
    direction: Direction,
    source: DataSource,
    peek_flags_arg: Option<usize>,
) -> Outcome {
    let tgid = current_tgid();
    if !is_watched(tgid) {
        return Err(Skip::NotTracked);
    }
    let Some(args) = syscall_args_at_exit() else {
        count(Counter::ReadFailed, 1);
        return Err(Skip::Failed);
    };
    if let Some(index) = peek_flags_arg
        && args[index & 3] & MSG_PEEK != 0
    {
        return Err(Skip::NotTracked);
    }
    let fd = args[0] as i32;
    let conn_id = FDS
        .get_ptr(SocketKey { tgid, fd })
        .map(|entry| unsafe { (*entry).conn_id })
        .filter(|conn_id| *conn_id != 0)
        .ok_or(Skip::NotTracked)?;
    // A socket call inside an OpenSSL call: that `SSL` object's ciphertext goes here.
    tls::bind_nested_syscall(tgid, conn_id, fd);
    let (ptr, count) = match source {
        DataSource::Msg => msghdr_iov(args[1]),
        DataSource::Sendfile => (0, args[3]),
        _ => (args[1], args[2]),
    };
    let io = PendingIo {
        conn_id,
        ptr,
        count,
        fd,
        direction: direction as u8,
        source: source as u8,
        _pad: [0; 2],
    };
    complete::<SHAPE>(ctx, io)
}

/// What both exits share: the bytes the call moved, on the connection its descriptor is.
#[inline(always)]
fn complete<const SHAPE: u8>(ctx: &TracePointContext, io: PendingIo) -> Outcome {
    let ret = syscall_ret(ctx);
    if ret <= 0 {
        return Err(Skip::NotTracked);
    }
    let mut io = io;
    if io.conn_id == 0 {
        let key = SocketKey {
            tgid: current_tgid(),
            fd: io.fd,
        };
        io.conn_id = FDS
            .get_ptr(key)
            .map(|entry| unsafe { (*entry).conn_id })
            .filter(|conn_id| *conn_id != 0)
            .ok_or(Skip::NotTracked)?;
    }
    let total = if SHAPE == MMSG {
        mmsg_total(io.ptr, ret as u64)
    } else {
        ret as u64
    };
    let conn = CONNS.get_ptr_mut(io.conn_id).ok_or(Skip::NotTracked)?;
    // SAFETY: map value pointer from a successful lookup.
    let conn = unsafe { &mut *conn };
    deliver::<SHAPE>(conn, &io, total, ret as u64)
}

/// Accounts `total` bytes moved on a stream (a socket connection, or a TLS stream's plaintext):
/// advances its offset, classifies it on first use, and copies the bytes (bounded) unless the
/// stream is ignored, stopped, or inside userspace's skip range. `ret` is the call's return
/// value (the message count for `*mmsg`).
#[inline(always)]
pub fn deliver<const SHAPE: u8>(
    conn: &mut ConnState,
    io: &PendingIo,
    total: u64,
    ret: u64,
) -> Outcome {
    let direction = (io.direction & 1) as usize;
    let offset = conn.bytes[direction];
    conn.bytes[direction] = offset + total;

    let control = match CONN_CONTROL.get_ptr(io.conn_id) {
        Some(control) => unsafe { *control },
        None => ConnControl::default(),
    };
    let protocol = Protocol::from_u8(conn.protocol);
    let ignored = matches!(protocol, Protocol::Http2 | Protocol::Tls | Protocol::Other);
    if direction == Direction::Ingress as usize
        && (protocol == Protocol::Tls || conn.flags & SOCKET_FLAG_TUNNEL != 0)
    {
        remember_ciphertext::<SHAPE>(io, total);
    }
    if control.stop != 0 || ignored {
        count(Counter::IgnoredBytes, total);
        return Ok(());
    }
    if SHAPE != COUNTED
        && (protocol == Protocol::Unclassified || conn.flags & SOCKET_FLAG_MIDSTREAM != 0)
    {
        let mut peek = [0u8; PEEK_LEN];
        let mut peeked = 0usize;
        if let Some((base, len)) = first_buffer::<SHAPE>(io, total) {
            let mut n = len as usize;
            if n > PEEK_LEN {
                n = PEEK_LEN;
            }
            if n > 0
                && unsafe { bpf_probe_read_user_buf(base as *const u8, &mut peek[..n]) }.is_ok()
            {
                peeked = n;
            }
        }
        let found = classify(&peek, peeked);
        if conn.flags & SOCKET_FLAG_MIDSTREAM != 0 {
            // A socket adopted mid-stream waits for an HTTP start, but TLS records mean TLS
            // (a TLS stream's plaintext is never TLS: it stays waiting).
            let tls_socket = found == Protocol::Tls && io.source != DataSource::Tls as u8;
            if found != Protocol::Http1 && !tls_socket {
                count(Counter::IgnoredBytes, total);
                return Ok(());
            }
            conn.flags &= !SOCKET_FLAG_MIDSTREAM;
        }
        match found {
            Protocol::Unclassified => {}
            Protocol::Http1 => {
                conn.protocol = Protocol::Http1 as u8;
                if direction == Direction::Egress as usize && peek.starts_with(b"CONNECT ") {
                    conn.flags |= SOCKET_FLAG_TUNNEL;
                }
            }
            other => {
                conn.protocol = other as u8;
                if other == Protocol::Tls && direction == Direction::Ingress as usize {
                    remember_ciphertext::<SHAPE>(io, total);
                }
                count(
                    match other {
                        Protocol::Http2 => Counter::IgnoredHttp2,
                        Protocol::Tls => Counter::IgnoredTls,
                        _ => Counter::IgnoredOther,
                    },
                    1,
                );
                count(Counter::IgnoredBytes, total);
                return Ok(());
            }
        }
    }

    let skip_until = control.skip_until[direction];
    let end = offset + total;
    let copy_from = if skip_until > offset {
        skip_until
    } else {
        offset
    };
    let skipped = if copy_from < end { copy_from } else { end } - offset;
    let mut copy = Copy {
        conn_id: io.conn_id,
        fd: io.fd,
        direction: io.direction,
        source: io.source,
        syscall_offset: offset,
        syscall_len: total,
        copy_from,
        chunks_left: CHUNKS_PER_SYSCALL as u32,
        wakeup: crate::emit::wakeup_flags(),
        kind: if SHAPE == COUNTED {
            EventKind::Uncopied
        } else {
            EventKind::Data
        },
    };
    if copy_from < end {
        match SHAPE {
            CONTIGUOUS => copy.segment(io.ptr, offset, total),
            IOVEC => copy_iovecs(&mut copy, io.ptr, io.count, offset, total),
            MMSG => copy_first_message(&mut copy, io.ptr, ret, offset),
            _ => {}
        }
    }
    copy.finish(skipped);
    Ok(())
}

/// Remembers the first bytes and length of ciphertext received on a TLS socket (or a proxy
/// tunnel, which turns TLS after its `CONNECT`), so that a memory BIO the application then
/// feeds the same bytes can be tied to this socket.
#[inline(always)]
fn remember_ciphertext<const SHAPE: u8>(io: &PendingIo, total: u64) {
    if SHAPE != CONTIGUOUS || total < 16 || total > u64::from(u32::MAX) {
        return;
    }
    // SAFETY: user memory through the checking helper.
    let Ok(head) = (unsafe { bpf_probe_read_user(io.ptr as *const [u64; 2]) }) else {
        return;
    };
    let key = CipherKey {
        tgid: current_tgid(),
        len: total as u32,
        head,
    };
    let socket = SocketRef {
        conn_id: io.conn_id,
        fd: io.fd,
        _pad: 0,
    };
    let _ = CIPHER_SEEN.insert(key, socket, 0);
}

/// Copies the first `len` bytes spread over an iovec array, starting at stream offset `offset`:
/// from `copy_from` on (userspace's skip offset, else the first byte), at most `COPY_BUDGET`
/// bytes, whichever entries hold them; the rest is counted as truncated.
///
/// One flat loop walks entries and chunks alike, and carries only values the verifier does not
/// know exactly (stream positions, the entry pointer, the entries left), so the paths that reach
/// one step merge and the cost stays linear in the number of steps.
#[inline(always)]
fn copy_iovecs(copy: &mut Copy, iov: u64, iovcnt: u64, offset: u64, len: u64) {
    let end = offset + len;
    let budget_end = copy.copy_from + COPY_BUDGET;
    let stop = if end < budget_end { end } else { budget_end };
    let copy_from = copy.copy_from;
    let mut entries_left = iovcnt;
    let mut entry = iov;
    let mut base = 0u64;
    let mut seg_offset = offset;
    let mut seg_end = offset;
    let mut pos = offset;
    for _ in 0..IOV_STEPS {
        if pos >= stop {
            break;
        }
        if pos >= seg_end {
            // The current entry is done (or skipped): on to the next one.
            if entries_left == 0 {
                break;
            }
            let Some((b, l)) = iovec(entry, 0) else {
                count(Counter::ReadFailed, 1);
                break;
            };
            entries_left -= 1;
            entry += 16;
            base = b;
            seg_offset = seg_end;
            let room = end - seg_end;
            seg_end += if l < room { l } else { room };
            pos = if copy_from > seg_offset {
                copy_from
            } else {
                seg_offset
            };
            continue;
        }
        let limit = if seg_end < stop { seg_end } else { stop };
        let mut n = limit - pos;
        if n > DATA_CHUNK_MAX as u64 {
            n = DATA_CHUNK_MAX as u64;
        }
        copy.chunk(base + (pos - seg_offset), pos, n as usize);
        pos += n;
    }
    let done = if pos > copy_from { pos } else { copy_from };
    if end > done {
        count(Counter::TruncatedBytes, end - done);
    }
    // Nothing is left for `finish` to count: everything was copied or counted above.
    copy.copy_from = end;
    copy.chunks_left = 0;
}

/// Sum of the byte counts of the first `messages` entries of an mmsghdr array.
#[inline(always)]
fn mmsg_total(vec: u64, messages: u64) -> u64 {
    let mut total = 0u64;
    for i in 0..MMSG_SUMMED {
        if u64::from(i) >= messages {
            break;
        }
        let addr = vec + u64::from(i) * MMSGHDR_SIZE + MMSGHDR_LEN;
        total += u64::from(unsafe { bpf_probe_read_user(addr as *const u32) }.unwrap_or(0));
    }
    total
}

/// Copies the first message of a recvmmsg/sendmmsg; later messages are counted, not copied
/// (HTTP clients and servers do not batch TCP writes this way).
#[inline(always)]
fn copy_first_message(copy: &mut Copy, vec: u64, messages: u64, offset: u64) {
    if messages == 0 {
        return;
    }
    let (iov, iovlen) = msghdr_iov(vec);
    let len =
        u64::from(unsafe { bpf_probe_read_user((vec + MMSGHDR_LEN) as *const u32) }.unwrap_or(0));
    copy_iovecs(copy, iov, iovlen, offset, len);
}
