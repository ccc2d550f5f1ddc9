//! OpenSSL uprobes: the plaintext of TLS connections, and which socket each `SSL` object uses.
//!
//! Every `SSL *` of a watched process is a TLS stream with its own id, offsets and copy
//! instructions; its plaintext goes through the same [`deliver`] path as socket payload, with
//! `DataSource::Tls`. The stream is tied to its socket connection deterministically, never by
//! "the thread's last descriptor":
//! - socket BIO (blocking sockets, gunicorn `--certfile`, requests): a socket syscall made inside
//!   an `SSL_*` call of the stream ([`bind_nested_syscall`], called from the syscall entry);
//! - memory BIO (asyncio): the application feeds the read BIO exactly the bytes a `recv` on the
//!   socket returned (`BIO_write` matched by length and first 16 bytes against `CIPHER_SEEN`),
//!   and `SSL_set_bio` said which stream reads that BIO. For a connection set up before the
//!   probes, the thread's next `SSL_*` call after the feed is the BIO's stream (asyncio feeds
//!   and reads in one callback).
//!
//! Nothing is probed inside OpenSSL's record layer (`BIO_read` runs for every record): each
//! uprobe hit costs the application a trap.
//!
//! The probes are attached per watched process by userspace, so other processes using the same
//! library never trap.

use aya_ebpf::{
    helpers::bpf_probe_read_user,
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use sensor_common::{
    event::{
        ConnCloseEvent, DataSource, Direction, EventKind, TLS_STREAM_ID_BIT, TlsBindEvent,
        TlsBinding,
    },
    maps::{ConnState, Counter, SOCKET_FLAG_MIDSTREAM},
};

use crate::{
    Outcome, Skip, finish,
    io::{CONTIGUOUS, deliver},
    state::{
        CIPHER_SEEN, CONN_CONTROL, CipherKey, EVENTS, FED_BIOS, FedBio, PendingIo, READ_BIOS,
        SSL_CALLS, SslCall, TLS_STREAMS, TlsKey, TlsStream, count, current_tgid, header,
        is_watched, next_conn_id, pid_tgid,
    },
};

/// Remembers an `SSL_*` call of a watched process until it returns.
#[inline(always)]
fn enter_call(ctx: &ProbeContext, direction: Direction, ex: bool, handshake: bool) -> Outcome {
    let tgid = current_tgid();
    if !is_watched(tgid) {
        return Err(Skip::NotTracked);
    }
    let ssl: u64 = ctx.arg(0).ok_or(Skip::Failed)?;
    let call = SslCall {
        ssl,
        buf: if handshake {
            0
        } else {
            ctx.arg(1).ok_or(Skip::Failed)?
        },
        count_ptr: if ex {
            ctx.arg(3).ok_or(Skip::Failed)?
        } else {
            0
        },
        direction: direction as u8,
        handshake: u8::from(handshake),
        _pad: [0; 6],
    };
    if handshake {
        // A stream that starts with its handshake is judged from its first plaintext byte.
        stream(tgid, ssl, false)?;
    }
    SSL_CALLS
        .insert(pid_tgid(), call, 0)
        .map_err(|_| Skip::Failed)
}

#[uprobe]
pub fn ssl_read(ctx: ProbeContext) -> u32 {
    finish(enter_call(&ctx, Direction::Ingress, false, false))
}

#[uprobe]
pub fn ssl_read_ex(ctx: ProbeContext) -> u32 {
    finish(enter_call(&ctx, Direction::Ingress, true, false))
}

#[uprobe]
pub fn ssl_write(ctx: ProbeContext) -> u32 {
    finish(enter_call(&ctx, Direction::Egress, false, false))
}

#[uprobe]
pub fn ssl_write_ex(ctx: ProbeContext) -> u32 {
    finish(enter_call(&ctx, Direction::Egress, true, false))
}

#[uprobe]
pub fn ssl_do_handshake(ctx: ProbeContext) -> u32 {
    finish(enter_call(&ctx, Direction::Ingress, false, true))
}

/// Return of any probed `SSL_*` call: the plaintext it moved, if any.
#[uretprobe]
pub fn ssl_return(ctx: RetProbeContext) -> u32 {
    finish(try_ssl_return(&ctx))
}

fn try_ssl_return(ctx: &RetProbeContext) -> Outcome {
    let id = pid_tgid();
    let call = SSL_CALLS
        .get_ptr(id)
        .map(|call| unsafe { *call })
        .ok_or(Skip::NotTracked)?;
    let _ = SSL_CALLS.remove(id);
    let tgid = (id >> 32) as u32;
    bind_fed_bio(tgid, call.ssl);
    if call.handshake != 0 {
        return Ok(());
    }
    let ret = ctx.ret::<i64>() as i32;
    let moved = if call.count_ptr != 0 {
        if ret != 1 {
            return Ok(());
        }
        // SAFETY: user memory through the checking helper.
        unsafe { bpf_probe_read_user(call.count_ptr as *const u64) }.map_err(|_| {
            count(Counter::ReadFailed, 1);
            Skip::Failed
        })?
    } else if ret > 0 {
        ret as u64
    } else {
        0
    };
    if moved == 0 {
        return Ok(());
    }
    let stream = stream(tgid, call.ssl, true)?;
    count(Counter::TlsCalls, 1);
    let io = PendingIo {
        conn_id: stream.state.conn_id,
        ptr: call.buf,
        count: moved,
        fd: stream.fd,
        direction: call.direction,
        source: DataSource::Tls as u8,
        _pad: [0; 2],
    };
    deliver::<CONTIGUOUS>(&mut stream.state, &io, moved, moved)
}

#[uprobe]
pub fn ssl_free(ctx: ProbeContext) -> u32 {
    let tgid = current_tgid();
    let Some(ssl) = ctx.arg::<u64>(0) else {
        return 1;
    };
    let key = TlsKey {
        tgid,
        _pad: 0,
        ptr: ssl,
    };
    if let Some(stream) = TLS_STREAMS.get_ptr(key) {
        // SAFETY: map value pointer from a successful lookup.
        close_stream(unsafe { &*stream });
        let _ = TLS_STREAMS.remove(key);
    }
    0
}

/// `SSL_set_bio(ssl, rbio, wbio)`: the stream reads `rbio`. Called as a connection is set up,
/// so the stream is seen from its start.
#[uprobe]
pub fn ssl_set_bio(ctx: ProbeContext) -> u32 {
    finish(try_ssl_set_bio(&ctx))
}

fn try_ssl_set_bio(ctx: &ProbeContext) -> Outcome {
    let tgid = current_tgid();
    if !is_watched(tgid) {
        return Err(Skip::NotTracked);
    }
    let ssl: u64 = ctx.arg(0).ok_or(Skip::Failed)?;
    let rbio: u64 = ctx.arg(1).ok_or(Skip::Failed)?;
    if rbio == 0 {
        return Err(Skip::NotTracked);
    }
    stream(tgid, ssl, false)?;
    let key = TlsKey {
        tgid,
        _pad: 0,
        ptr: rbio,
    };
    READ_BIOS.insert(key, ssl, 0).map_err(|_| Skip::Failed)
}

/// A connection older than the probes: the BIO the calling thread just fed is read by this
/// call's stream, unless the stream is already tied to a socket.
#[inline(always)]
fn bind_fed_bio(tgid: u32, ssl: u64) {
    let id = pid_tgid();
    let Some(fed) = FED_BIOS.get_ptr(id).map(|f| unsafe { *f }) else {
        return;
    };
    let _ = FED_BIOS.remove(id);
    let Ok(stream) = stream(tgid, ssl, true) else {
        return;
    };
    if stream.socket_conn_id != 0 {
        return;
    }
    let key = TlsKey {
        tgid,
        _pad: 0,
        ptr: fed.bio,
    };
    let _ = READ_BIOS.insert(key, ssl, 0);
    bind(
        tgid,
        ssl,
        fed.socket.conn_id,
        fed.socket.fd,
        TlsBinding::MemoryBio,
    );
}

/// `BIO_write` by the application (not inside an `SSL_*` call): feeding ciphertext into a memory
/// BIO. When the bytes are exactly what a `recv` on a watched socket just returned, the BIO is
/// that socket's.
#[uprobe]
pub fn bio_write(ctx: ProbeContext) -> u32 {
    finish(try_bio_write(&ctx))
}

fn try_bio_write(ctx: &ProbeContext) -> Outcome {
    let id = pid_tgid();
    let tgid = (id >> 32) as u32;
    if !is_watched(tgid) || SSL_CALLS.get_ptr(id).is_some() {
        return Err(Skip::NotTracked);
    }
    let bio: u64 = ctx.arg(0).ok_or(Skip::Failed)?;
    let buf: u64 = ctx.arg(1).ok_or(Skip::Failed)?;
    let len: i64 = ctx.arg(2).ok_or(Skip::Failed)?;
    let len = len as i32;
    if len < 16 {
        return Err(Skip::NotTracked);
    }
    // SAFETY: user memory through the checking helper.
    let head = unsafe { bpf_probe_read_user(buf as *const [u64; 2]) }.map_err(|_| Skip::Failed)?;
    let key = CipherKey {
        tgid,
        len: len as u32,
        head,
    };
    match CIPHER_SEEN.get_ptr(key).map(|s| unsafe { *s }) {
        Some(socket) => {
            let _ = CIPHER_SEEN.remove(key);
            let bio_key = TlsKey {
                tgid,
                _pad: 0,
                ptr: bio,
            };
            match READ_BIOS.get_ptr(bio_key).map(|ssl| unsafe { *ssl }) {
                Some(ssl) => {
                    bind(tgid, ssl, socket.conn_id, socket.fd, TlsBinding::MemoryBio);
                    Ok(())
                }
                None => FED_BIOS
                    .insert(id, FedBio { bio, socket }, 0)
                    .map_err(|_| Skip::Failed),
            }
        }
        None => {
            // Only TLS records count: memory BIOs also carry PEM certificates and the like.
            let first = head[0] as u8;
            let major = (head[0] >> 8) as u8;
            if (0x14..=0x17).contains(&first) && major == 3 {
                count(Counter::TlsBioUnmatched, 1);
            }
            Err(Skip::NotTracked)
        }
    }
}

/// A socket syscall (descriptor `fd` of connection `conn_id`) was entered by a thread of `tgid`:
/// inside an `SSL_*` call, it carries that call's stream.
#[inline(always)]
pub fn bind_nested_syscall(tgid: u32, conn_id: u64, fd: i32) {
    if let Some(call) = SSL_CALLS.get_ptr(pid_tgid()).map(|c| unsafe { *c }) {
        bind(tgid, call.ssl, conn_id, fd, TlsBinding::NestedSyscall);
    }
}

/// Ties the stream of `ssl` to a socket connection, telling userspace once. An `SSL` object
/// found on a different socket than before was freed unseen and reused: its old stream ends and
/// a new one begins.
#[inline(always)]
fn bind(tgid: u32, ssl: u64, socket_conn_id: u64, fd: i32, binding: TlsBinding) {
    let Ok(stream) = stream(tgid, ssl, true) else {
        return;
    };
    if stream.socket_conn_id == socket_conn_id {
        return;
    }
    if stream.socket_conn_id != 0 {
        close_stream(stream);
        stream.state = new_state(true);
    }
    stream.socket_conn_id = socket_conn_id;
    stream.fd = fd;
    let event = TlsBindEvent {
        header: header(EventKind::TlsBind),
        stream_id: stream.state.conn_id,
        socket_conn_id,
        ssl,
        fd,
        binding: binding as u32,
    };
    if EVENTS.output(event, crate::emit::wakeup_flags()).is_err() {
        count(Counter::RingbufFull, 1);
    }
}

/// The stream of `ssl` in `tgid`, created when first seen (`midstream` when it was not seen
/// from its handshake on, so classification waits for an HTTP message start).
#[inline(always)]
fn stream(tgid: u32, ssl: u64, midstream: bool) -> Result<&'static mut TlsStream, Skip> {
    let key = TlsKey {
        tgid,
        _pad: 0,
        ptr: ssl,
    };
    if TLS_STREAMS.get_ptr(key).is_none() {
        let fresh = TlsStream {
            state: new_state(midstream),
            socket_conn_id: 0,
            fd: -1,
            _pad: 0,
        };
        TLS_STREAMS
            .insert(key, fresh, 0)
            .map_err(|_| Skip::Failed)?;
    }
    let stream = TLS_STREAMS.get_ptr_mut(key).ok_or(Skip::Failed)?;
    // SAFETY: map value pointer from a successful lookup; programs run to completion.
    Ok(unsafe { &mut *stream })
}

#[inline(always)]
fn new_state(midstream: bool) -> ConnState {
    ConnState {
        conn_id: next_conn_id() | TLS_STREAM_ID_BIT,
        bytes: [0, 0],
        family: 0,
        role: 0,
        protocol: 0,
        flags: if midstream { SOCKET_FLAG_MIDSTREAM } else { 0 },
        refs: 1,
    }
}

/// Tells userspace a stream ended, with its plaintext byte totals.
#[inline(always)]
fn close_stream(stream: &TlsStream) {
    let _ = CONN_CONTROL.remove(stream.state.conn_id);
    let close = ConnCloseEvent {
        header: header(EventKind::ConnClose),
        conn_id: stream.state.conn_id,
        bytes: stream.state.bytes,
        fd: stream.fd,
        _pad: 0,
    };
    if EVENTS.output(close, crate::emit::wakeup_flags()).is_err() {
        count(Counter::RingbufFull, 1);
    }
}
