//! Records the kernel programs write into the ring buffer.
//!
//! Each record starts with an [`EventHeader`]; its `kind` says which struct follows. Payload
//! records ([`DataEvent`]) are written with only as many payload bytes as were captured, so
//! userspace must read them through [`DATA_EVENT_HEADER_LEN`] plus `len`.

/// What a ring-buffer record is; the first field of every record.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// Bytes read from or written to a tracked socket ([`DataEvent`]).
    Data = 1,
    /// A tracked socket became a connection: accepted, connected, or adopted ([`ConnEvent`]).
    ConnOpen = 2,
    /// A tracked socket was closed ([`ConnCloseEvent`]).
    ConnClose = 3,
    /// A watched process forked; the child is now watched too ([`ProcessEvent`]).
    ProcessFork = 4,
    /// A process replaced its program ([`ExecEvent`]).
    ProcessExec = 5,
    /// A watched process exited; all its connections are finished ([`ProcessEvent`]).
    ProcessExit = 6,
    /// One argument or environment string of an `execve` call ([`ExecArgEvent`]).
    ExecArg = 7,
    /// Bytes moved on a tracked socket that were deliberately not copied, e.g. by `sendfile`
    /// ([`DataEvent`] with `len == 0`).
    Uncopied = 8,
    /// A watched process called `close_range` ([`CloseRangeEvent`]); the kernel released the
    /// first descriptors of the range itself, userspace finishes the rest.
    CloseRange = 9,
    /// Both addresses of a client connection became known after its `ConnOpen` (a
    /// non-blocking connect completes later) ([`ConnAddrEvent`]).
    ConnAddress = 10,
    /// A TLS stream (the plaintext of one OpenSSL `SSL` object) was tied to the socket
    /// connection carrying its ciphertext ([`TlsBindEvent`]).
    TlsBind = 11,
    /// A watched process mapped a file executable (`mmap` with `PROT_EXEC` and a descriptor):
    /// it may have loaded an OpenSSL the sensor has not probed yet ([`ProcessEvent`], `value`
    /// the descriptor).
    ExecMapping = 12,
}

impl EventKind {
    /// Decodes the tag written by the kernel; `None` for a tag this build does not know.
    pub fn from_u32(value: u32) -> Option<Self> {
        Some(match value {
            1 => Self::Data,
            2 => Self::ConnOpen,
            3 => Self::ConnClose,
            4 => Self::ProcessFork,
            5 => Self::ProcessExec,
            6 => Self::ProcessExit,
            7 => Self::ExecArg,
            8 => Self::Uncopied,
            9 => Self::CloseRange,
            10 => Self::ConnAddress,
            11 => Self::TlsBind,
            12 => Self::ExecMapping,
            _ => return None,
        })
    }
}

/// Common prefix of every ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHeader {
    /// An [`EventKind`] as `u32`.
    pub kind: u32,
    /// Process id (thread-group id) of the task that caused the event.
    pub tgid: u32,
    /// Thread id of that task.
    pub tid: u32,
    /// CPU the event was recorded on (diagnostics only).
    pub cpu: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the event was recorded.
    pub timestamp_ns: u64,
}

/// Which way bytes moved, seen from the watched process.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The process received the bytes (read, recv*).
    Ingress = 0,
    /// The process sent the bytes (write, send*).
    Egress = 1,
}

impl Direction {
    /// Decodes the byte written by the kernel.
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            0 => Some(Self::Ingress),
            1 => Some(Self::Egress),
            _ => None,
        }
    }

    /// Index of this direction in per-direction arrays.
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// The syscall (or library call) that moved the bytes of a [`DataEvent`].
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataSource {
    /// `read` / `write`.
    ReadWrite = 0,
    /// `recvfrom` / `sendto`.
    RecvSend = 1,
    /// `readv` / `writev`.
    Vectored = 2,
    /// `recvmsg` / `sendmsg`.
    Msg = 3,
    /// `recvmmsg` / `sendmmsg`.
    MultiMsg = 4,
    /// `sendfile`: never copied, counted only.
    Sendfile = 5,
    /// Plaintext of OpenSSL's `SSL_read`/`SSL_write` (and `_ex`): the record's `conn_id` is a
    /// TLS stream id (see [`TLS_STREAM_ID_BIT`]).
    Tls = 6,
}

impl DataSource {
    /// Decodes the byte written by the kernel.
    pub fn from_u8(value: u8) -> Option<Self> {
        Some(match value {
            0 => Self::ReadWrite,
            1 => Self::RecvSend,
            2 => Self::Vectored,
            3 => Self::Msg,
            4 => Self::MultiMsg,
            5 => Self::Sendfile,
            6 => Self::Tls,
            _ => return None,
        })
    }

    /// Short name for logs and the `trace` view.
    pub fn name(self) -> &'static str {
        match self {
            Self::ReadWrite => "rw",
            Self::RecvSend => "sendrecv",
            Self::Vectored => "vec",
            Self::Msg => "msg",
            Self::MultiMsg => "mmsg",
            Self::Sendfile => "sendfile",
            Self::Tls => "tls",
        }
    }
}

/// Largest payload one [`DataEvent`] carries. A power of two, so the kernel can bound copies
/// with a mask the verifier understands.
pub const DATA_CHUNK_MAX: usize = 16 * 1024;

/// Most chunks one syscall is copied into (256 KiB: the largest head the parser accepts plus
/// the default body limit); the rest of a larger transfer is counted, not copied.
pub const DATA_CHUNKS_PER_SYSCALL: usize = 16;

/// Most iovec entries looked at per vectored syscall.
pub const IOV_MAX_SCANNED: usize = 16;

/// Bytes moved on a tracked socket, copied up to [`DATA_CHUNK_MAX`] per record.
///
/// A syscall that moved more bytes than one record holds is split into several records with the
/// same `syscall_offset`/`syscall_len`; bytes that were never copied show up as the difference
/// between one record's end (`offset + len`) and the next record's `offset`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DataEvent {
    /// Kind [`EventKind::Data`] (or [`EventKind::Uncopied`]) and the caller's identity.
    pub header: EventHeader,
    /// Kernel-assigned connection id; unique for the life of the loaded programs, never reused
    /// when a file descriptor number is.
    pub conn_id: u64,
    /// Stream offset, in this direction, of the syscall's first byte.
    pub syscall_offset: u64,
    /// Bytes the syscall really moved (its return value).
    pub syscall_len: u64,
    /// Stream offset of `payload[0]`.
    pub offset: u64,
    /// File descriptor in the calling process.
    pub fd: i32,
    /// Valid bytes in `payload`.
    pub len: u32,
    /// A [`Direction`] as `u8`.
    pub direction: u8,
    /// A [`DataSource`] as `u8`.
    pub source: u8,
    /// Reserved for flags (zero).
    pub flags: u8,
    /// Explicit padding (zero).
    pub _pad: [u8; 5],
    /// The captured bytes; only `len` of them are present in the ring-buffer record.
    pub payload: [u8; DATA_CHUNK_MAX],
}

/// Size of a [`DataEvent`] without its payload: the fixed part every data record has.
pub const DATA_EVENT_HEADER_LEN: usize = core::mem::offset_of!(DataEvent, payload);

/// Address family of a tracked socket.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// Not known (a socket adopted without its addresses).
    Unknown = 0,
    /// `AF_INET`.
    Inet = 1,
    /// `AF_INET6`.
    Inet6 = 2,
    /// `AF_UNIX` stream socket.
    Unix = 3,
}

impl Family {
    /// Decodes the byte written by the kernel.
    pub fn from_u8(value: u8) -> Self {
        match value {
            1 => Self::Inet,
            2 => Self::Inet6,
            3 => Self::Unix,
            _ => Self::Unknown,
        }
    }
}

/// Which end of the connection the watched process is.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Not known yet.
    Unknown = 0,
    /// The process accepted the connection.
    Server = 1,
    /// The process connected.
    Client = 2,
}

impl Role {
    /// Decodes the byte written by the kernel.
    pub fn from_u8(value: u8) -> Self {
        match value {
            1 => Self::Server,
            2 => Self::Client,
            _ => Self::Unknown,
        }
    }
}

/// An IPv4 or IPv6 endpoint as the kernel saw it. `port` is in host byte order; an IPv4 address
/// occupies the first four bytes of `addr`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Endpoint {
    /// A [`Family`] as `u8` (`Unknown` when the endpoint was not observed).
    pub family: u8,
    /// Explicit padding (zero).
    pub _pad: u8,
    /// Port in host byte order.
    pub port: u16,
    /// Explicit padding (zero).
    pub _pad2: u32,
    /// Address bytes in network order.
    pub addr: [u8; 16],
}

/// Longest `sun_path` a unix socket address can carry.
pub const UNIX_PATH_MAX: usize = 108;

/// A socket file descriptor became a connection the sensor tracks.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ConnEvent {
    /// Kind [`EventKind::ConnOpen`].
    pub header: EventHeader,
    /// The id every later record of this connection carries.
    pub conn_id: u64,
    /// File descriptor in the process.
    pub fd: i32,
    /// A [`Role`] as `u8`.
    pub role: u8,
    /// A [`Family`] as `u8`.
    pub family: u8,
    /// Explicit padding (zero).
    pub _pad: [u8; 2],
    /// The process's own end, when the kernel saw it.
    pub local: Endpoint,
    /// The peer's end, when the kernel saw it.
    pub remote: Endpoint,
    /// For unix sockets: the path connected to or listened on (NUL-terminated if shorter).
    pub unix_path: [u8; UNIX_PATH_MAX],
    /// Explicit padding (zero).
    pub _pad2: [u8; 4],
}

/// Late addresses of a connection.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ConnAddrEvent {
    /// Kind [`EventKind::ConnAddress`].
    pub header: EventHeader,
    /// The connection.
    pub conn_id: u64,
    /// The process's end.
    pub local: Endpoint,
    /// The peer's end.
    pub remote: Endpoint,
}

/// A tracked connection's file descriptor was closed.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ConnCloseEvent {
    /// Kind [`EventKind::ConnClose`].
    pub header: EventHeader,
    /// The connection's id.
    pub conn_id: u64,
    /// Total bytes received and sent over the connection's life, by [`Direction`] index: lets
    /// userspace tell whether the stream's tail was lost.
    pub bytes: [u64; 2],
    /// The file descriptor that was closed.
    pub fd: i32,
    /// Explicit padding (zero).
    pub _pad: u32,
}

/// Ids of TLS streams (one per OpenSSL `SSL` object) have this bit set; socket connection ids
/// never do. A TLS stream has its own offsets, ids and copy instructions, like a connection.
pub const TLS_STREAM_ID_BIT: u64 = 1 << 62;

/// How the kernel tied a TLS stream to its socket.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsBinding {
    /// A socket syscall happened inside an `SSL_*` call of the stream (socket BIO).
    NestedSyscall = 1,
    /// The stream's read BIO was fed the exact bytes a `recv` on the socket returned (memory
    /// BIO, as asyncio uses it).
    MemoryBio = 2,
}

/// A TLS stream is carried by a socket connection.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TlsBindEvent {
    /// Kind [`EventKind::TlsBind`].
    pub header: EventHeader,
    /// The TLS stream (its data records carry this id).
    pub stream_id: u64,
    /// The socket connection (its `ConnOpen` gave the addresses and role).
    pub socket_conn_id: u64,
    /// The OpenSSL `SSL` object's address in the process (diagnostics).
    pub ssl: u64,
    /// The socket's descriptor.
    pub fd: i32,
    /// A [`TlsBinding`] as `u32`.
    pub binding: u32,
}

/// A watched process forked, ended, or mapped a file executable.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ProcessEvent {
    /// Kind [`EventKind::ProcessFork`], [`EventKind::ProcessExit`] or
    /// [`EventKind::ExecMapping`]; `tgid` is the parent (fork) or the process itself.
    pub header: EventHeader,
    /// Fork: the child's pid. Exit: the exit code. Executable mapping: the file's descriptor.
    pub value: i32,
    /// Explicit padding (zero).
    pub _pad: u32,
}

/// A `close_range(first, last, flags)` call without `CLOSE_RANGE_CLOEXEC`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CloseRangeEvent {
    /// Kind [`EventKind::CloseRange`].
    pub header: EventHeader,
    /// First descriptor closed.
    pub first: u32,
    /// Last descriptor closed.
    pub last: u32,
}

/// Descriptors the kernel releases itself per `close_range` call.
pub const CLOSE_RANGE_SCAN: u32 = 64;

/// Longest program path an [`ExecEvent`] carries.
pub const EXEC_FILENAME_MAX: usize = 256;

/// A process called `execve` successfully.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExecEvent {
    /// Kind [`EventKind::ProcessExec`].
    pub header: EventHeader,
    /// The pid before `execve` when a non-leader thread called it (else equal to `tgid`).
    pub old_pid: u32,
    /// Whether the kernel now watches the process (see [`crate::maps::WatchState`]).
    pub watch_state: u32,
    /// The program path as passed to `execve` (NUL-terminated if shorter).
    pub filename: [u8; EXEC_FILENAME_MAX],
}

/// Longest argument or environment string an [`ExecArgEvent`] carries.
pub const EXEC_ARG_MAX: usize = 512;
/// Most arguments copied per `execve`.
pub const EXEC_ARGV_MAX: usize = 32;
/// Most environment entries scanned per `execve` (only `HT_` and `OTEL_` ones are copied).
pub const EXEC_ENV_SCANNED: usize = 192;

/// One string of an `execve` call, sent at the call's entry while the caller's memory is still
/// readable, so a process's command line and telemetry settings are known even if it exits
/// before userspace can read `/proc`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExecArgEvent {
    /// Kind [`EventKind::ExecArg`]; `tid` identifies the calling thread.
    pub header: EventHeader,
    /// [`EXEC_ARG_ARGV`] or [`EXEC_ARG_ENV`].
    pub which: u32,
    /// Position of the string in argv or envp.
    pub index: u32,
    /// Valid bytes in `data` (without the NUL).
    pub len: u32,
    /// Explicit padding (zero).
    pub _pad: u32,
    /// The string's bytes.
    pub data: [u8; EXEC_ARG_MAX],
}

/// [`ExecArgEvent::which`] for a command-line argument.
pub const EXEC_ARG_ARGV: u32 = 0;
/// [`ExecArgEvent::which`] for an environment entry.
pub const EXEC_ARG_ENV: u32 = 1;

const _: () = assert!(core::mem::size_of::<EventHeader>() == 24);
const _: () = assert!(DATA_EVENT_HEADER_LEN == 72);
const _: () = assert!(core::mem::size_of::<Endpoint>() == 24);
const _: () = assert!(core::mem::size_of::<ConnEvent>() == 40 + 48 + UNIX_PATH_MAX + 4);
const _: () = assert!(core::mem::size_of::<ConnCloseEvent>() == 56);
const _: () = assert!(core::mem::size_of::<TlsBindEvent>() == 56);
const _: () = assert!(DATA_CHUNK_MAX.is_power_of_two());
