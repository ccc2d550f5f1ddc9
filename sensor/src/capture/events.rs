//! Typed views of the kernel's ring-buffer records. A payload is borrowed from the ring buffer
//! (it is handed over in place and copied only by whoever keeps it); everything else is owned.
//!
//! Decoding checks every length: a short or unknown record becomes a [`DecodeError`] (counted by
//! the caller), never a panic.

use std::{
    mem::offset_of,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use sensor_common::event::{
    CloseRangeEvent, ConnAddrEvent, ConnCloseEvent, ConnEvent, DATA_EVENT_HEADER_LEN, DataEvent,
    DataSource, Direction, EXEC_ARG_ENV, Endpoint, EventHeader, EventKind, ExecArgEvent, ExecEvent,
    Family, ProcessEvent, Role, TlsBindEvent, TlsBinding,
};

/// One decoded kernel record.
#[derive(Clone, Debug, PartialEq)]
pub enum CaptureEvent<'a> {
    /// Payload (or a payload-less progress record) of a tracked connection.
    Data(DataChunk<'a>),
    /// A connection began (accepted, connected, or adopted from `/proc`).
    Open(ConnOpen),
    /// A connection's last descriptor was closed.
    Close(ConnClose),
    /// A watched process forked `child`.
    Fork {
        /// The parent.
        pid: u32,
        /// The new process.
        child: u32,
        /// When (monotonic time, ns).
        time_ns: u64,
    },
    /// A process replaced its program.
    Exec(ExecInfo),
    /// One argv/env string of an `execve` in progress on thread `tid`.
    ExecArg(ExecArg),
    /// A watched process ended.
    Exit {
        /// The process.
        pid: u32,
        /// When (monotonic time, ns).
        time_ns: u64,
    },
    /// A watched process mapped a file executable: a library loaded, maybe an OpenSSL.
    ExecMapping {
        /// The process that mapped it.
        pid: u32,
    },
    /// A client connection's addresses, known once it was established.
    Address {
        /// The connection.
        conn_id: u64,
        /// Its local address, when the kernel had one.
        local: Option<SocketAddr>,
        /// Its peer's address, when the kernel had one.
        remote: Option<SocketAddr>,
    },
    /// A TLS stream's ciphertext travels over a socket connection.
    TlsBind(TlsBind),
    /// A watched process closed the descriptors `first..=last` at once.
    CloseRange {
        /// The process.
        pid: u32,
        /// The first descriptor closed.
        first: u32,
        /// The last descriptor closed (inclusive).
        last: u32,
        /// When (monotonic time, ns).
        time_ns: u64,
    },
}

/// Bytes moved on a connection, and where they sit in its stream.
#[derive(Clone, Debug, PartialEq)]
pub struct DataChunk<'a> {
    /// Process and thread.
    pub pid: u32,
    /// Thread that made the syscall.
    pub tid: u32,
    /// Monotonic time of the syscall's return.
    pub time_ns: u64,
    /// Kernel connection id.
    pub conn_id: u64,
    /// Descriptor used.
    pub fd: i32,
    /// Received or sent.
    pub direction: Direction,
    /// Which syscall.
    pub source: DataSource,
    /// Stream offset of the syscall's first byte.
    pub syscall_offset: u64,
    /// Bytes the syscall moved.
    pub syscall_len: u64,
    /// Stream offset of `payload[0]`.
    pub offset: u64,
    /// The copied bytes (possibly fewer than the syscall moved, possibly none), in place in
    /// the ring buffer.
    pub payload: &'a [u8],
    /// True for counted-only transfers (sendfile).
    pub uncopied: bool,
}

impl DataChunk<'_> {
    /// Stream offset just past the syscall's last byte.
    pub fn syscall_end(&self) -> u64 {
        self.syscall_offset + self.syscall_len
    }
}

/// A connection's identity and addresses.
#[derive(Clone, Debug, PartialEq)]
pub struct ConnOpen {
    /// Owning process.
    pub pid: u32,
    /// Monotonic time.
    pub time_ns: u64,
    /// Kernel (or userspace, for adopted sockets) connection id.
    pub conn_id: u64,
    /// Descriptor.
    pub fd: i32,
    /// Server (accepted) or client (connected).
    pub role: Role,
    /// Address family.
    pub family: Family,
    /// The process's end, when known.
    pub local: Option<SocketAddr>,
    /// The peer's end, when known.
    pub remote: Option<SocketAddr>,
    /// Unix socket path, when known.
    pub unix_path: Option<String>,
    /// Adopted from `/proc` with traffic possibly under way.
    pub midstream: bool,
}

/// The end of a connection.
#[derive(Clone, Debug, PartialEq)]
pub struct ConnClose {
    /// Owning process.
    pub pid: u32,
    /// Monotonic time.
    pub time_ns: u64,
    /// Connection id.
    pub conn_id: u64,
    /// Total bytes received and sent over the connection's life.
    pub bytes: [u64; 2],
}

/// A TLS stream (one OpenSSL `SSL` object's plaintext) tied to its socket connection.
#[derive(Clone, Debug, PartialEq)]
pub struct TlsBind {
    /// Owning process.
    pub pid: u32,
    /// Monotonic time.
    pub time_ns: u64,
    /// The TLS stream's id (its data records carry it).
    pub stream_id: u64,
    /// The socket connection carrying the ciphertext.
    pub socket_conn_id: u64,
    /// The socket's descriptor.
    pub fd: i32,
    /// How the kernel knew.
    pub binding: TlsBinding,
}

/// A successful `execve`.
#[derive(Clone, Debug, PartialEq)]
pub struct ExecInfo {
    /// The process.
    pub pid: u32,
    /// The thread that called `execve` (argument records were sent under this id).
    pub old_tid: u32,
    /// Monotonic time.
    pub time_ns: u64,
    /// Path passed to `execve`.
    pub filename: String,
    /// Whether the kernel watches the process now (pending under discovery, or inherited).
    pub watch_state: u32,
}

/// One string of an `execve`.
#[derive(Clone, Debug, PartialEq)]
pub struct ExecArg {
    /// Calling thread.
    pub tid: u32,
    /// Environment entry (true) or argument (false).
    pub env: bool,
    /// Position in argv/envp.
    pub index: u32,
    /// The string (lossy UTF-8).
    pub value: String,
}

/// Why a record could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than its kind requires.
    Truncated,
    /// A kind tag this build does not know.
    UnknownKind(u32),
    /// A field with an impossible value.
    Invalid,
}

fn read<T: Copy>(bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() < std::mem::size_of::<T>() {
        return Err(DecodeError::Truncated);
    }
    // SAFETY: length checked; `T` is a plain-data #[repr(C)] type from sensor-common, valid for
    // every bit pattern; read_unaligned copes with the ring buffer's 8-byte alignment.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// Converts a kernel endpoint into a socket address, if it was observed.
pub fn endpoint_addr(endpoint: &Endpoint) -> Option<SocketAddr> {
    let ip = match Family::from_u8(endpoint.family) {
        Family::Inet => {
            let a = endpoint.addr;
            IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
        }
        Family::Inet6 => {
            let v6 = Ipv6Addr::from(endpoint.addr);
            match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            }
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, endpoint.port))
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<CaptureEvent<'_>, DecodeError> {
    let header: EventHeader = read(bytes)?;
    let kind = EventKind::from_u32(header.kind).ok_or(DecodeError::UnknownKind(header.kind))?;
    Ok(match kind {
        EventKind::Data | EventKind::Uncopied => {
            if bytes.len() < DATA_EVENT_HEADER_LEN {
                return Err(DecodeError::Truncated);
            }
            // Field by field: the record holds `len` payload bytes, not a whole `DataEvent`, and
            // copying one out (16 KiB) per chunk was a tenth of the sensor's time under bodies.
            let at = |offset| bytes.get(offset..).ok_or(DecodeError::Truncated);
            let len = read::<u32>(at(offset_of!(DataEvent, len))?)? as usize;
            let payload = bytes
                .get(DATA_EVENT_HEADER_LEN..DATA_EVENT_HEADER_LEN + len)
                .ok_or(DecodeError::Truncated)?;
            let direction: u8 = read(at(offset_of!(DataEvent, direction))?)?;
            let source: u8 = read(at(offset_of!(DataEvent, source))?)?;
            CaptureEvent::Data(DataChunk {
                pid: header.tgid,
                tid: header.tid,
                time_ns: header.timestamp_ns,
                conn_id: read(at(offset_of!(DataEvent, conn_id))?)?,
                fd: read(at(offset_of!(DataEvent, fd))?)?,
                direction: Direction::from_u8(direction).ok_or(DecodeError::Invalid)?,
                source: DataSource::from_u8(source).ok_or(DecodeError::Invalid)?,
                syscall_offset: read(at(offset_of!(DataEvent, syscall_offset))?)?,
                syscall_len: read(at(offset_of!(DataEvent, syscall_len))?)?,
                offset: read(at(offset_of!(DataEvent, offset))?)?,
                payload,
                uncopied: kind == EventKind::Uncopied,
            })
        }
        EventKind::ConnOpen => {
            let event: ConnEvent = read(bytes)?;
            let family = Family::from_u8(event.family);
            let unix_path = (family == Family::Unix)
                .then(|| c_string(&event.unix_path))
                .filter(|p| !p.is_empty());
            CaptureEvent::Open(ConnOpen {
                pid: header.tgid,
                time_ns: header.timestamp_ns,
                conn_id: event.conn_id,
                fd: event.fd,
                role: Role::from_u8(event.role),
                family,
                local: endpoint_addr(&event.local),
                remote: endpoint_addr(&event.remote),
                unix_path,
                midstream: false,
            })
        }
        EventKind::ConnClose => {
            let event: ConnCloseEvent = read(bytes)?;
            CaptureEvent::Close(ConnClose {
                pid: header.tgid,
                time_ns: header.timestamp_ns,
                conn_id: event.conn_id,
                bytes: event.bytes,
            })
        }
        EventKind::ProcessFork => {
            let event: ProcessEvent = read(bytes)?;
            let child = u32::try_from(event.value).map_err(|_| DecodeError::Invalid)?;
            CaptureEvent::Fork {
                pid: header.tgid,
                child,
                time_ns: header.timestamp_ns,
            }
        }
        EventKind::ConnAddress => {
            let event: ConnAddrEvent = read(bytes)?;
            CaptureEvent::Address {
                conn_id: event.conn_id,
                local: endpoint_addr(&event.local),
                remote: endpoint_addr(&event.remote),
            }
        }
        EventKind::TlsBind => {
            let event: TlsBindEvent = read(bytes)?;
            CaptureEvent::TlsBind(TlsBind {
                pid: header.tgid,
                time_ns: header.timestamp_ns,
                stream_id: event.stream_id,
                socket_conn_id: event.socket_conn_id,
                fd: event.fd,
                binding: match event.binding {
                    1 => TlsBinding::NestedSyscall,
                    2 => TlsBinding::MemoryBio,
                    _ => return Err(DecodeError::Invalid),
                },
            })
        }
        EventKind::CloseRange => {
            let event: CloseRangeEvent = read(bytes)?;
            CaptureEvent::CloseRange {
                pid: header.tgid,
                first: event.first,
                last: event.last,
                time_ns: header.timestamp_ns,
            }
        }
        EventKind::ProcessExit => CaptureEvent::Exit {
            pid: header.tgid,
            time_ns: header.timestamp_ns,
        },
        EventKind::ExecMapping => {
            let _: ProcessEvent = read(bytes)?;
            CaptureEvent::ExecMapping { pid: header.tgid }
        }
        EventKind::ProcessExec => {
            let event: ExecEvent = read(bytes)?;
            CaptureEvent::Exec(ExecInfo {
                pid: header.tgid,
                old_tid: event.old_pid,
                time_ns: header.timestamp_ns,
                filename: c_string(&event.filename),
                watch_state: event.watch_state,
            })
        }
        EventKind::ExecArg => {
            let event: ExecArgEvent = read(bytes)?;
            let len = (event.len as usize).min(event.data.len());
            CaptureEvent::ExecArg(ExecArg {
                tid: header.tid,
                env: event.which == EXEC_ARG_ENV,
                index: event.index,
                value: c_string(&event.data[..len]),
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sensor_common::event::DATA_CHUNK_MAX;

    fn as_bytes<T>(value: &T) -> Vec<u8> {
        // SAFETY: test-only view of a plain-data struct.
        unsafe {
            std::slice::from_raw_parts((value as *const T).cast::<u8>(), std::mem::size_of::<T>())
        }
        .to_vec()
    }

    fn data_event(payload: &[u8]) -> Vec<u8> {
        let mut event = DataEvent {
            header: EventHeader {
                kind: EventKind::Data as u32,
                tgid: 10,
                tid: 11,
                cpu: 0,
                timestamp_ns: 99,
            },
            conn_id: 7,
            syscall_offset: 100,
            syscall_len: 5,
            offset: 100,
            fd: 3,
            len: payload.len() as u32,
            direction: Direction::Egress as u8,
            source: DataSource::Vectored as u8,
            flags: 0,
            _pad: [0; 5],
            payload: [0; DATA_CHUNK_MAX],
        };
        event.payload[..payload.len()].copy_from_slice(payload);
        let mut bytes = as_bytes(&event);
        bytes.truncate(DATA_EVENT_HEADER_LEN + payload.len());
        bytes
    }

    #[test]
    fn data_record_with_only_its_payload() {
        let record = data_event(b"hello");
        let CaptureEvent::Data(chunk) = decode(&record).unwrap() else {
            panic!("expected a data chunk");
        };
        assert_eq!(chunk.payload, b"hello");
        assert_eq!(
            (chunk.pid, chunk.tid, chunk.conn_id, chunk.fd),
            (10, 11, 7, 3)
        );
        assert_eq!(chunk.direction, Direction::Egress);
        assert_eq!(chunk.source, DataSource::Vectored);
        assert_eq!(chunk.syscall_end(), 105);
    }

    #[test]
    fn tls_bind_record() {
        let mut event = TlsBindEvent {
            header: EventHeader {
                kind: EventKind::TlsBind as u32,
                tgid: 10,
                tid: 12,
                cpu: 1,
                timestamp_ns: 77,
            },
            stream_id: 5 | sensor_common::event::TLS_STREAM_ID_BIT,
            socket_conn_id: 9,
            ssl: 0xdead_beef,
            fd: 6,
            binding: TlsBinding::MemoryBio as u32,
        };
        let CaptureEvent::TlsBind(bind) = decode(&as_bytes(&event)).unwrap() else {
            panic!("expected a TLS binding");
        };
        assert_eq!(
            (bind.pid, bind.time_ns, bind.socket_conn_id, bind.fd),
            (10, 77, 9, 6)
        );
        assert_eq!(bind.stream_id, event.stream_id);
        assert_eq!(bind.binding, TlsBinding::MemoryBio);
        event.binding = 7;
        assert_eq!(decode(&as_bytes(&event)), Err(DecodeError::Invalid));
        assert_eq!(decode(&as_bytes(&event)[..40]), Err(DecodeError::Truncated));
    }

    #[test]
    fn executable_mapping_record() {
        let event = ProcessEvent {
            header: EventHeader {
                kind: EventKind::ExecMapping as u32,
                tgid: 31,
                tid: 32,
                cpu: 0,
                timestamp_ns: 5,
            },
            value: 4,
            _pad: 0,
        };
        let bytes = as_bytes(&event);
        assert_eq!(
            decode(&bytes).unwrap(),
            CaptureEvent::ExecMapping { pid: 31 }
        );
        assert_eq!(
            decode(&bytes[..bytes.len() - 1]),
            Err(DecodeError::Truncated)
        );
    }

    #[test]
    fn short_or_unknown_records_are_errors() {
        let bytes = data_event(b"hello");
        assert_eq!(
            decode(&bytes[..bytes.len() - 1]),
            Err(DecodeError::Truncated)
        );
        assert_eq!(decode(&bytes[..10]), Err(DecodeError::Truncated));
        let mut unknown = bytes.clone();
        unknown[0] = 200;
        assert_eq!(decode(&unknown), Err(DecodeError::UnknownKind(200)));
        let mut bad_direction = bytes;
        bad_direction[64] = 9;
        assert_eq!(decode(&bad_direction), Err(DecodeError::Invalid));
    }

    #[test]
    fn endpoints_v4_and_mapped_v6() {
        let mut v4 = Endpoint {
            family: Family::Inet as u8,
            port: 8080,
            ..Default::default()
        };
        v4.addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        assert_eq!(endpoint_addr(&v4), Some("127.0.0.1:8080".parse().unwrap()));
        let mapped = Endpoint {
            family: Family::Inet6 as u8,
            port: 443,
            addr: Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped().octets(),
            ..Default::default()
        };
        assert_eq!(
            endpoint_addr(&mapped),
            Some("10.1.2.3:443".parse().unwrap())
        );
        assert_eq!(endpoint_addr(&Endpoint::default()), None);
    }
}
