//! The maps. Those userspace reads or writes are named after the constants in
//! `sensor_common::maps`; the rest carry state from a syscall's entry to its exit.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns},
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use sensor_common::{
    event::{DataEvent, Endpoint, EventHeader, EventKind, ExecArgEvent, UNIX_PATH_MAX},
    maps::{
        CONNS_MAX, COUNTER_COUNT, ConnControl, ConnState, Counter, EVENTS_BYTES, FDS_MAX, FdEntry,
        SocketKey, WATCHED_MAX,
    },
    settings::Settings,
};

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

#[map]
pub static WATCHED_PROCESSES: HashMap<u32, u32> = HashMap::with_max_entries(WATCHED_MAX, 0);

#[map]
pub static FDS: HashMap<SocketKey, FdEntry> = HashMap::with_max_entries(FDS_MAX, 0);

#[map]
pub static CONNS: HashMap<u64, ConnState> = HashMap::with_max_entries(CONNS_MAX, 0);

#[map]
pub static CONN_CONTROL: HashMap<u64, ConnControl> = HashMap::with_max_entries(CONNS_MAX, 0);

#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);

#[map]
pub static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);

/// Staging area for payload records: too large for the 512-byte stack.
#[map]
pub static DATA_SCRATCH: PerCpuArray<DataEvent> = PerCpuArray::with_max_entries(1, 0);

/// Staging area for exec argument records.
#[map]
pub static EXEC_SCRATCH: PerCpuArray<ExecArgEvent> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU sequence for connection ids.
#[map]
pub static CONN_SEQ: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Arguments of a payload syscall between its entry and exit, by thread.
#[map]
pub static PENDING_IO: HashMap<u64, PendingIo> = HashMap::with_max_entries(16_384, 0);

/// Arguments of socket/accept/connect/dup calls between entry and exit, by thread.
#[map]
pub static PENDING_SOCKET: HashMap<u64, PendingSocket> = HashMap::with_max_entries(16_384, 0);

/// The socket (kernel address) a watched thread's connect put into SYN_SENT, by thread.
#[map]
pub static THREAD_SK: LruHashMap<u64, u64> = LruHashMap::with_max_entries(16_384, 0);

/// Both ends of a client TCP connection established before its connect call returned, by socket.
#[map]
pub static SK_TUPLES: LruHashMap<u64, TcpTuple> = LruHashMap::with_max_entries(16_384, 0);

/// Connection id of a client socket whose connect returned before it was established, by socket.
#[map]
pub static SK_CONNS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(16_384, 0);

/// Local address of newly established server-side TCP connections, by remote address, for
/// `accept` to pick up.
#[map]
pub static ACCEPT_TUPLES: LruHashMap<Endpoint, Endpoint> = LruHashMap::with_max_entries(65_536, 0);

/// Clone flags of a watched thread's clone/clone3 call, for `sched_process_fork` to tell a new
/// thread from a new process.
#[map]
pub static CLONE_FLAGS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(16_384, 0);

/// The OpenSSL call each thread of a watched process is inside, by thread.
#[map]
pub static SSL_CALLS: LruHashMap<u64, SslCall> = LruHashMap::with_max_entries(16_384, 0);

/// One TLS stream per OpenSSL `SSL` object of a watched process.
#[map]
pub static TLS_STREAMS: LruHashMap<TlsKey, TlsStream> = LruHashMap::with_max_entries(65_536, 0);

/// Recent ciphertext received on watched sockets, by its first bytes and length: lets a memory
/// BIO fed those exact bytes be tied to the socket.
#[map]
pub static CIPHER_SEEN: LruHashMap<CipherKey, SocketRef> = LruHashMap::with_max_entries(16_384, 0);

/// The `SSL *` reading from each BIO of a watched process (`SSL_set_bio`), by BIO: ciphertext
/// the application feeds into that BIO ties the stream to the socket it came from.
#[map]
pub static READ_BIOS: LruHashMap<TlsKey, u64> = LruHashMap::with_max_entries(65_536, 0);

/// Ciphertext a thread just fed into a BIO whose `SSL_set_bio` came before the probes (a
/// connection older than the sensor), by thread: the thread's next `SSL_*` call is that BIO's.
#[map]
pub static FED_BIOS: LruHashMap<u64, FedBio> = LruHashMap::with_max_entries(16_384, 0);

/// A BIO fed a socket's ciphertext (see [`FED_BIOS`]).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FedBio {
    pub bio: u64,
    pub socket: SocketRef,
}

/// An OpenSSL call in progress on a thread.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SslCall {
    /// The `SSL *`.
    pub ssl: u64,
    /// The caller's buffer (0 for a handshake).
    pub buf: u64,
    /// `_ex` variants: where the byte count is written (0 for the plain variants).
    pub count_ptr: u64,
    /// A `Direction` as `u8`.
    pub direction: u8,
    /// Non-zero for `SSL_do_handshake` (no payload).
    pub handshake: u8,
    pub _pad: [u8; 6],
}

/// An object (`SSL *` or `BIO *`) in a process.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TlsKey {
    pub tgid: u32,
    pub _pad: u32,
    pub ptr: u64,
}

/// A TLS stream: its plaintext offsets and classification, and its socket once known.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TlsStream {
    /// `conn_id` is the stream id (with `TLS_STREAM_ID_BIT`); `refs` is unused.
    pub state: ConnState,
    /// The socket connection carrying the ciphertext; 0 until bound.
    pub socket_conn_id: u64,
    /// The socket's descriptor; -1 until bound.
    pub fd: i32,
    pub _pad: u32,
}

/// The first bytes and length of a `recv` result.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CipherKey {
    pub tgid: u32,
    pub len: u32,
    pub head: [u64; 2],
}

/// A socket connection and its descriptor.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SocketRef {
    pub conn_id: u64,
    pub fd: i32,
    pub _pad: u32,
}

/// A payload syscall in flight.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PendingIo {
    pub conn_id: u64,
    /// Buffer, iovec array or mmsghdr array.
    pub ptr: u64,
    /// Buffer length, iovec count or message count.
    pub count: u64,
    pub fd: i32,
    pub direction: u8,
    pub source: u8,
    pub _pad: [u8; 2],
}

/// What a socket-shaping syscall was called with.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PendingSocket {
    /// socket: domain; connect, get*name: the fd; accept: the listening fd; dup*: the old fd.
    pub fd_or_domain: i64,
    /// socket: type; accept, get*name: the sockaddr out-pointer; dup2/3: the new fd (-1 for
    /// dup/fcntl).
    pub arg: u64,
    /// connect: the peer address read at entry.
    pub remote: Endpoint,
    /// connect on a unix socket: the path.
    pub unix_path: [u8; UNIX_PATH_MAX],
    /// getsockname/getpeername: the flag (`SOCKET_FLAG_NEED_*`) of the address asked for.
    pub wanted: u32,
}

/// Both ends of a TCP connection, as `inet_sock_set_state` reports them.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TcpTuple {
    pub local: Endpoint,
    pub remote: Endpoint,
}

/// Adds `value` to a kernel-side counter.
#[inline(always)]
pub fn count(counter: Counter, value: u64) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it.
        unsafe { *slot += value };
    }
}

/// The settings userspace wrote, or the defaults before it did.
#[inline(always)]
pub fn settings() -> Settings {
    match SETTINGS.get(0) {
        Some(settings) => *settings,
        None => Settings::default(),
    }
}

/// The calling thread's `(tgid << 32) | tid`.
#[inline(always)]
pub fn pid_tgid() -> u64 {
    bpf_get_current_pid_tgid()
}

/// The calling process's id.
#[inline(always)]
pub fn current_tgid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

/// Whether the calling process is watched.
#[inline(always)]
pub fn is_watched(tgid: u32) -> bool {
    WATCHED_PROCESSES.get_ptr(tgid).is_some()
}

/// A fresh connection id: a per-CPU sequence with the CPU number in the low bits, so ids are
/// unique without atomics. Never has `USER_CONN_ID_BIT` set.
#[inline(always)]
pub fn next_conn_id() -> u64 {
    let cpu = u64::from(unsafe { bpf_get_smp_processor_id() }) & 0x3ff;
    let seq = match CONN_SEQ.get_ptr_mut(0) {
        Some(slot) => unsafe {
            *slot += 1;
            *slot
        },
        None => 0,
    };
    ((seq << 10) | cpu) & !sensor_common::maps::USER_CONN_ID_BIT
}

/// The header every record starts with, for the calling task.
#[inline(always)]
pub fn header(kind: EventKind) -> EventHeader {
    let id = bpf_get_current_pid_tgid();
    EventHeader {
        kind: kind as u32,
        tgid: (id >> 32) as u32,
        tid: id as u32,
        cpu: unsafe { bpf_get_smp_processor_id() },
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
    }
}

/// Argument `index` of a `sys_enter_*` tracepoint (each is an 8-byte slot after the header).
#[inline(always)]
pub fn syscall_arg(ctx: &aya_ebpf::programs::TracePointContext, index: usize) -> u64 {
    // SAFETY: syscall tracepoint records hold six 8-byte argument slots from offset 16.
    unsafe { ctx.read_at::<u64>(16 + 8 * index) }.unwrap_or(0)
}

/// The first four arguments of the system call the current thread is returning from, read at
/// `sys_exit_*` from the user registers the kernel saved at syscall entry (they stay as the
/// caller set them until the return to user space). Spares the payload syscalls an entry
/// program: one program per call instead of two, no per-thread map entry, and a call already
/// blocked when the programs were attached still has its arguments at exit. Needs the BTF task
/// helpers (Linux 5.15 with vmlinux BTF); where the verifier refuses them, userspace attaches
/// the entry programs instead.
#[cfg(bpf_target_arch = "x86_64")]
#[inline(always)]
pub fn syscall_args_at_exit() -> Option<[u64; 4]> {
    use aya_ebpf::helpers::{bpf_get_current_task_btf, bpf_probe_read_kernel, bpf_task_pt_regs};
    /// Offset of `r10` in x86-64's `struct pt_regs`, followed by r9, r8, ax, cx, dx, si, di
    /// (syscall arguments are di, si, dx, r10, r8, r9).
    const R10_OFFSET: u64 = 56;
    // SAFETY: the helpers return the current task and its saved user registers; the read goes
    // through the checking helper.
    let saved = unsafe {
        let regs = bpf_task_pt_regs(bpf_get_current_task_btf()) as u64;
        bpf_probe_read_kernel((regs + R10_OFFSET) as *const [u64; 8])
    }
    .ok()?;
    Some([saved[7], saved[6], saved[5], saved[0]])
}

/// Only x86-64's registers are read; elsewhere the entry programs remember the arguments.
#[cfg(not(bpf_target_arch = "x86_64"))]
#[inline(always)]
pub fn syscall_args_at_exit() -> Option<[u64; 4]> {
    None
}

/// Return value of a `sys_exit_*` tracepoint.
#[inline(always)]
pub fn syscall_ret(ctx: &aya_ebpf::programs::TracePointContext) -> i64 {
    // SAFETY: syscall exit records hold the return value at offset 16.
    unsafe { ctx.read_at::<i64>(16) }.unwrap_or(-1)
}
