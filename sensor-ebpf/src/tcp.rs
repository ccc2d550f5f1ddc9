//! Both addresses of new TCP connections, from `sock:inet_sock_set_state`.
//!
//! `connect` knows only the peer and `accept` only the peer; the kernel picks the local address
//! and port. This tracepoint reports the full 4-tuple:
//! - `CLOSE -> SYN_SENT` runs inside `connect` on the connecting thread, before the local port is
//!   chosen: it records which socket the thread connects;
//! - `SYN_SENT -> ESTABLISHED` (softirq, any context) has the full tuple: stored by socket for
//!   `sys_exit_connect`, or, when connect already returned (non-blocking), sent to userspace as
//!   a `ConnAddress` record for the connection;
//! - `SYN_RECV -> ESTABLISHED` (server side) is stored by remote address for `accept`.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use sensor_common::{
    event::{ConnAddrEvent, Endpoint, EventKind, Family},
    maps::Counter,
};

use crate::state::{
    ACCEPT_TUPLES, EVENTS, SK_CONNS, SK_TUPLES, THREAD_SK, TcpTuple, count, current_tgid, header,
    is_watched, pid_tgid, settings,
};

const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;
const IPPROTO_TCP: u16 = 6;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let _ = try_set_state(&ctx);
    0
}

#[inline(always)]
fn read<T>(ctx: &TracePointContext, offset: u32) -> Option<T> {
    // SAFETY: offsets come from the tracepoint's format file via the settings map.
    unsafe { ctx.read_at::<T>(offset as usize) }.ok()
}

fn try_set_state(ctx: &TracePointContext) -> Option<()> {
    let layout = settings().layout;
    if layout.sk_newstate == 0 {
        return None;
    }
    let protocol: u16 = read(ctx, layout.sk_protocol)?;
    if protocol != IPPROTO_TCP {
        return None;
    }
    let old: i32 = read(ctx, layout.sk_oldstate)?;
    let new: i32 = read(ctx, layout.sk_newstate)?;
    let sk: u64 = read(ctx, 8)?;
    if new == TCP_SYN_SENT {
        if is_watched(current_tgid()) {
            THREAD_SK.insert(pid_tgid(), sk, 0).ok()?;
        }
        return None;
    }
    let connected = old == TCP_SYN_SENT && new == TCP_ESTABLISHED;
    let accepted = old == TCP_SYN_RECV && new == TCP_ESTABLISHED;
    if !connected && !accepted {
        return None;
    }
    let family: u16 = read(ctx, layout.sk_family)?;
    let mut tuple = TcpTuple {
        local: Endpoint::default(),
        remote: Endpoint::default(),
    };
    tuple.local.port = read(ctx, layout.sk_sport)?;
    tuple.remote.port = read(ctx, layout.sk_dport)?;
    match family {
        AF_INET => {
            tuple.local.family = Family::Inet as u8;
            tuple.remote.family = Family::Inet as u8;
            let saddr: [u8; 4] = read(ctx, layout.sk_saddr)?;
            let daddr: [u8; 4] = read(ctx, layout.sk_daddr)?;
            tuple.local.addr[..4].copy_from_slice(&saddr);
            tuple.remote.addr[..4].copy_from_slice(&daddr);
        }
        AF_INET6 => {
            tuple.local.family = Family::Inet6 as u8;
            tuple.remote.family = Family::Inet6 as u8;
            tuple.local.addr = read(ctx, layout.sk_saddr_v6)?;
            tuple.remote.addr = read(ctx, layout.sk_daddr_v6)?;
        }
        _ => return None,
    }
    if accepted {
        return ACCEPT_TUPLES.insert(tuple.remote, tuple.local, 0).ok();
    }
    match SK_CONNS.get_ptr(sk) {
        Some(conn_id) => {
            let conn_id = unsafe { *conn_id };
            let _ = SK_CONNS.remove(sk);
            let event = ConnAddrEvent {
                header: header(EventKind::ConnAddress),
                conn_id,
                local: tuple.local,
                remote: tuple.remote,
            };
            if EVENTS.output(event, crate::emit::wakeup_flags()).is_err() {
                count(Counter::RingbufFull, 1);
            }
            Some(())
        }
        None => SK_TUPLES.insert(sk, tuple, 0).ok(),
    }
}
