//! Kernel programs of the sensor.
//!
//! Only syscall tracepoints, `sched:*`, `sock:inet_sock_set_state` and uprobes on OpenSSL are
//! used: the kernels we target have neither kprobes nor BPF trampolines, and Rust eBPF has no CO-RE, so all state is
//! tracked from syscall arguments and return values rather than kernel structs.
//!
//! Layout, one module per concern:
//! - [`state`]: the maps, shared with userspace by name;
//! - [`emit`]: ring-buffer records and the bounded payload copy;
//! - [`classify`]: the protocol of a connection from its first bytes;
//! - [`sockets`]: which descriptors are sockets and connections (socket, accept, connect, dup,
//!   close, close_range);
//! - [`io`]: payload-carrying syscalls (read/write family, vectored, msg, mmsg, sendfile);
//! - [`process`]: fork, exec and exit of watched processes;
//! - [`tcp`]: the addresses of new TCP connections from `inet_sock_set_state`;
//! - [`tls`]: OpenSSL uprobes: TLS plaintext, and the socket each `SSL` object uses.
#![no_std]
#![no_main]

mod classify;
mod emit;
mod io;
mod process;
mod sockets;
mod state;
mod tcp;
mod tls;

/// Reasons a program gave up early; they only decide the return value, every loss that matters
/// is counted in `COUNTERS` where it happens.
#[derive(Clone, Copy)]
pub enum Skip {
    /// The calling process is not watched or the descriptor is not tracked.
    NotTracked,
    /// A map operation or user-memory read failed (counted at the failure).
    Failed,
}

/// Result type of the `try_*` bodies of the programs.
pub type Outcome = Result<(), Skip>;

/// Converts a program body's outcome into the tracepoint's return value.
#[inline(always)]
pub fn finish(outcome: Outcome) -> u32 {
    match outcome {
        Ok(()) | Err(Skip::NotTracked) => 0,
        Err(Skip::Failed) => 1,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
