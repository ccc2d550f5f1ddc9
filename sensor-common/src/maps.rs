//! Names, keys and values of the maps the kernel programs and userspace share.

/// Ring buffer carrying every record of [`crate::event`] to userspace.
pub const EVENTS: &str = "EVENTS";

/// Unread bytes in [`EVENTS`] from which a payload record wakes the reader at once. Below it,
/// payload records are written without a wakeup (`BPF_RB_NO_WAKEUP`) and the reader collects
/// them on its next wakeup or poll (every [`RING_POLL_MS`]): one wakeup then carries many
/// records instead of one each, which is most of the reader's cost at moderate rates.
///
/// A sixteenth of the ring, at most [`RING_WAKEUP_BYTES_MAX`]: far enough from full that the
/// woken reader catches up, large enough that a stream of 16 KiB bodies does not wake it for
/// every exchange (each wakeup also costs the application's syscall an `irq_work`).
pub const fn ring_wakeup_bytes(ring_bytes: u32) -> u64 {
    let sixteenth = ring_bytes as u64 / 16;
    if sixteenth < RING_WAKEUP_BYTES_MAX {
        sixteenth
    } else {
        RING_WAKEUP_BYTES_MAX
    }
}

/// The largest [`ring_wakeup_bytes`].
pub const RING_WAKEUP_BYTES_MAX: u64 = 1024 * 1024;

/// Name of the programs' read-only global holding [`ring_wakeup_bytes`] of the loaded ring;
/// userspace sets it when it resizes [`EVENTS`].
pub const RING_WAKEUP_GLOBAL: &str = "RING_WAKEUP_BYTES";

/// How often, in milliseconds, the reader drains [`EVENTS`] without a wakeup while records keep
/// coming: the longest a payload record waits under traffic. Each drain is a wakeup of the
/// sensor, which on a virtual machine costs tens of microseconds; at 10 ms those wakeups were
/// a third of the sensor's CPU under 250 16 KB POSTs/s. Records wait in the ring meanwhile
/// (a wakeup comes earlier once [`ring_wakeup_bytes`] are pending), and spans wait for their
/// batch far longer (`sensor.batch_timeout_ms`, 1 s), so the delay costs nothing downstream.
pub const RING_POLL_MS: u64 = 100;

/// The reader's longest interval between drains, in milliseconds: while drains find nothing the
/// interval doubles from [`RING_POLL_MS`] up to this, so an idle sensor wakes once a second for
/// the ring; the first record after a quiet spell waits at most this long. Exec and fork
/// records wake the reader at once.
pub const RING_POLL_IDLE_MS: u64 = 1000;

/// `HashMap<u32 tgid, u32 WatchState>`: the processes whose sockets are captured.
pub const WATCHED_PROCESSES: &str = "WATCHED_PROCESSES";
/// `HashMap<SocketKey, FdEntry>`: the socket file descriptors of watched processes.
pub const FDS: &str = "FDS";
/// `HashMap<u64 conn_id, ConnState>`: the connections those descriptors refer to (several
/// descriptors share one entry after `dup` or `fork`).
pub const CONNS: &str = "CONNS";
/// `HashMap<u64 conn_id, ConnControl>`: userspace's per-connection copy instructions.
pub const CONN_CONTROL: &str = "CONN_CONTROL";
/// `PerCpuArray<u64>` indexed by [`Counter`]: everything the kernel drops or refuses.
pub const COUNTERS: &str = "COUNTERS";
/// `Array<Settings>` with one entry, written by userspace before attaching.
pub const SETTINGS: &str = "SETTINGS";

/// Default capacity of [`EVENTS`] in bytes (userspace may resize it at load time).
pub const EVENTS_BYTES: u32 = 16 * 1024 * 1024;
/// Capacity of [`FDS`].
pub const FDS_MAX: u32 = 131_072;
/// Capacity of [`CONNS`].
pub const CONNS_MAX: u32 = 131_072;
/// Capacity of [`WATCHED_PROCESSES`].
pub const WATCHED_MAX: u32 = 16_384;

/// How the kernel treats a process in [`WATCHED_PROCESSES`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchState {
    /// Not in the map.
    NotWatched = 0,
    /// Captured; chosen by userspace or inherited from a watched parent.
    Watched = 1,
    /// Captured provisionally: started under discovery, userspace has not decided yet.
    Pending = 2,
}

/// Key of [`FDS`]: a file descriptor in a process.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SocketKey {
    /// Process id.
    pub tgid: u32,
    /// File descriptor.
    pub fd: i32,
}

/// The protocol the kernel decided a connection speaks, from its first bytes.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// No payload seen yet.
    Unclassified = 0,
    /// HTTP/1.x: payload is copied.
    Http1 = 1,
    /// HTTP/2 connection preface: ignored.
    Http2 = 2,
    /// TLS records on the raw socket: ignored (plaintext comes from the OpenSSL probes).
    Tls = 3,
    /// Anything else: ignored.
    Other = 4,
}

impl Protocol {
    /// Decodes the byte stored by the kernel.
    pub fn from_u8(value: u8) -> Self {
        match value {
            1 => Self::Http1,
            2 => Self::Http2,
            3 => Self::Tls,
            4 => Self::Other,
            _ => Self::Unclassified,
        }
    }
}

/// What kind of socket a descriptor in [`FDS`] is.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketKind {
    /// A stream socket (TCP or unix) whose payload may be captured.
    Stream = 1,
    /// Any other socket (UDP, raw, netlink): remembered only so `connect` on it is ignored.
    Other = 2,
}

/// Value of [`FDS`]: one socket file descriptor of a watched process.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FdEntry {
    /// The connection the descriptor refers to; 0 while the socket is not connected.
    pub conn_id: u64,
    /// A [`SocketKind`] as `u8`.
    pub kind: u8,
    /// A [`crate::event::Family`] as `u8` (from `socket()`; `Unknown` when not seen).
    pub family: u8,
    /// Explicit padding (zero).
    pub _pad: [u8; 6],
}

/// Value of [`CONNS`]: what the kernel knows of one connection.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConnState {
    /// Connection id (also the key).
    pub conn_id: u64,
    /// Bytes received and sent so far, by [`crate::event::Direction`] index.
    pub bytes: [u64; 2],
    /// A [`crate::event::Family`] as `u8`.
    pub family: u8,
    /// A [`crate::event::Role`] as `u8`.
    pub role: u8,
    /// A [`Protocol`] as `u8`.
    pub protocol: u8,
    /// [`SOCKET_FLAG_MIDSTREAM`] and friends.
    pub flags: u8,
    /// Open descriptors referring to the connection (dup, fork); closed when it drops to 0.
    pub refs: u32,
}

/// The socket was adopted from `/proc` with traffic already under way: classification retries
/// on every syscall until one starts with an HTTP message, instead of judging the first bytes.
pub const SOCKET_FLAG_MIDSTREAM: u8 = 1;
/// The connection's local address is not known yet (an `accept` whose tuple was not seen): the
/// next `getsockname` on it reports it with a `ConnAddress` record.
pub const SOCKET_FLAG_NEED_LOCAL: u8 = 2;
/// The connection's peer address is not known yet (`accept(fd, NULL, NULL)`, as libuv and so
/// uvloop do): the next `getpeername` on it reports it with a `ConnAddress` record.
pub const SOCKET_FLAG_NEED_REMOTE: u8 = 4;
/// The connection's first request was a `CONNECT` (a client asking a forward proxy for a
/// tunnel): TLS that follows on it may run in a memory BIO (asyncio), which is tied to the
/// socket by the ciphertext its reads return, so those are remembered as on a TLS socket.
pub const SOCKET_FLAG_TUNNEL: u8 = 8;
/// Connection ids chosen by userspace (adopted sockets) have this bit set; kernel ones never do.
pub const USER_CONN_ID_BIT: u64 = 1 << 63;

/// Value of [`CONN_CONTROL`]: how much of a connection userspace wants copied.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnControl {
    /// Per [`crate::event::Direction`] index: stream offset below which bytes are not copied
    /// (counted only). Absolute offsets make the instruction idempotent and race-free.
    pub skip_until: [u64; 2],
    /// Non-zero: copy nothing more from this connection.
    pub stop: u32,
    /// Explicit padding (zero).
    pub _pad: u32,
}

/// Indexes of [`COUNTERS`]: every way the kernel side can lose, drop or refuse something.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// A record could not be written because the ring buffer was full.
    RingbufFull = 0,
    /// Bytes moved on captured connections that were not copied because a syscall moved more
    /// than the per-syscall copy bound.
    TruncatedBytes = 1,
    /// Bytes not copied because userspace asked to skip them.
    SkippedBytes = 2,
    /// Bytes sent by `sendfile` (never copied).
    SendfileBytes = 3,
    /// Connections ignored because they started with the HTTP/2 preface.
    IgnoredHttp2 = 4,
    /// Connections ignored because they carried TLS records on the raw socket.
    IgnoredTls = 5,
    /// Connections ignored because their first bytes were no known protocol.
    IgnoredOther = 6,
    /// A socket could not be tracked because [`FDS`] or [`CONNS`] was full.
    SocketsFull = 7,
    /// A child could not be watched because [`WATCHED_PROCESSES`] was full.
    WatchedFull = 8,
    /// A user-memory read failed (page not resident, bad pointer).
    ReadFailed = 9,
    /// Data records written.
    DataEvents = 10,
    /// Bytes copied into data records.
    CopiedBytes = 11,
    /// Bytes not copied because the connection was ignored or stopped.
    IgnoredBytes = 12,
    /// OpenSSL read/write calls that moved plaintext on a watched process's TLS stream.
    TlsCalls = 13,
    /// Ciphertext written into a memory BIO by the application whose bytes matched no recent
    /// `recv` of a watched socket (the stream cannot be tied to its connection that way).
    TlsBioUnmatched = 14,
}

/// Number of [`Counter`] slots.
pub const COUNTER_COUNT: u32 = 15;

impl Counter {
    /// Every counter, in index order, for userspace to read and name.
    pub const ALL: [Counter; COUNTER_COUNT as usize] = [
        Counter::RingbufFull,
        Counter::TruncatedBytes,
        Counter::SkippedBytes,
        Counter::SendfileBytes,
        Counter::IgnoredHttp2,
        Counter::IgnoredTls,
        Counter::IgnoredOther,
        Counter::SocketsFull,
        Counter::WatchedFull,
        Counter::ReadFailed,
        Counter::DataEvents,
        Counter::CopiedBytes,
        Counter::IgnoredBytes,
        Counter::TlsCalls,
        Counter::TlsBioUnmatched,
    ];

    /// Metric-friendly name.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::RingbufFull => "ringbuf_full",
            Counter::TruncatedBytes => "truncated_bytes",
            Counter::SkippedBytes => "skipped_bytes",
            Counter::SendfileBytes => "sendfile_bytes",
            Counter::IgnoredHttp2 => "ignored_http2_connections",
            Counter::IgnoredTls => "ignored_tls_connections",
            Counter::IgnoredOther => "ignored_other_connections",
            Counter::SocketsFull => "sockets_map_full",
            Counter::WatchedFull => "watched_map_full",
            Counter::ReadFailed => "user_read_failed",
            Counter::DataEvents => "data_events",
            Counter::CopiedBytes => "copied_bytes",
            Counter::IgnoredBytes => "ignored_bytes",
            Counter::TlsCalls => "tls_calls",
            Counter::TlsBioUnmatched => "tls_bio_unmatched",
        }
    }
}

const _: () = assert!(core::mem::size_of::<FdEntry>() == 16);
const _: () = assert!(core::mem::size_of::<ConnState>() == 32);
const _: () = assert!(core::mem::size_of::<ConnControl>() == 24);
const _: () = assert!(ring_wakeup_bytes(64 * 1024) == 4 * 1024);
const _: () = assert!(ring_wakeup_bytes(EVENTS_BYTES) == RING_WAKEUP_BYTES_MAX);
const _: () = assert!(ring_wakeup_bytes(1 << 30) == RING_WAKEUP_BYTES_MAX);
