//! Writing records into the ring buffer, and the bounded payload copy.
//!
//! A syscall's bytes are copied through the per-CPU `DATA_SCRATCH` record into at most
//! [`CHUNKS_PER_SYSCALL`] ring-buffer records of at most `DATA_CHUNK_MAX` bytes (at most
//! [`COPY_BUDGET`] bytes from where copying starts, however they are spread over iovecs); each
//! record is written with only its valid payload bytes. Bytes that are not copied (over the bound, or
//! before userspace's skip offset) are counted and show up to userspace as a jump in offsets.
//!
//! The bound matters because userspace can only ask to skip a body once it has parsed the head
//! in front of it: a single syscall carrying a whole message (a head and a large body in one
//! `send`, `sendmsg([head, body])`, or one large `recv`) must be copied far enough for the
//! parser to keep a body up to the capture limit. 256 KiB covers the largest head the parser
//! accepts (64 KiB) plus the default body limit (128 KiB), and asyncio's 256 KiB reads.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::bpf_probe_read_user_buf,
};
use sensor_common::{
    event::{DATA_CHUNK_MAX, DATA_EVENT_HEADER_LEN, DataEvent, EventKind},
    maps::{Counter, EVENTS_BYTES, ring_wakeup_bytes},
};

use crate::state::{DATA_SCRATCH, EVENTS, count, header};

/// Most chunks one syscall is copied into; the rest of a larger transfer is counted, not copied.
pub const CHUNKS_PER_SYSCALL: usize = sensor_common::event::DATA_CHUNKS_PER_SYSCALL;

/// Most bytes of one syscall copied (from its first byte, or from userspace's skip offset).
pub const COPY_BUDGET: u64 = (CHUNKS_PER_SYSCALL * DATA_CHUNK_MAX) as u64;

/// Where one syscall's bytes go: fixed for the syscall, updated as segments are copied.
pub struct Copy {
    pub conn_id: u64,
    pub fd: i32,
    pub direction: u8,
    pub source: u8,
    /// Stream offset of the syscall's first byte.
    pub syscall_offset: u64,
    /// Bytes the syscall moved.
    pub syscall_len: u64,
    /// Stream offset below which nothing is copied (userspace's skip, or progress so far).
    pub copy_from: u64,
    /// Chunks still allowed for this syscall.
    pub chunks_left: u32,
    /// Ring-buffer flags of this syscall's records (see [`wakeup_flags`]), decided once.
    pub wakeup: u64,
    /// Record kind: `Data`, or `Uncopied` for counted-only transfers.
    pub kind: EventKind,
}

impl Copy {
    /// Copies the part of a user buffer at stream offset `seg_offset`, `seg_len` bytes long,
    /// that lies at or after `copy_from`, while chunks remain.
    #[inline(always)]
    pub fn segment(&mut self, base: u64, seg_offset: u64, seg_len: u64) {
        for _ in 0..CHUNKS_PER_SYSCALL {
            if self.step(base, seg_offset, seg_len) {
                return;
            }
        }
    }

    /// Copies at most one chunk of a segment; `true` when nothing more of it will be copied
    /// (all of it is done, or the chunk budget is spent).
    #[inline(always)]
    pub fn step(&mut self, base: u64, seg_offset: u64, seg_len: u64) -> bool {
        let seg_end = seg_offset + seg_len;
        let start = if self.copy_from > seg_offset {
            self.copy_from
        } else {
            seg_offset
        };
        if start >= seg_end || self.chunks_left == 0 {
            return true;
        }
        let mut n = seg_end - start;
        if n > DATA_CHUNK_MAX as u64 {
            n = DATA_CHUNK_MAX as u64;
        }
        self.chunks_left -= 1;
        self.copy_from = start + n;
        // Success or failure must not change loop-carried state: the verifier can then merge
        // both paths at the next iteration instead of exploring each.
        self.chunk(base + (start - seg_offset), start, n as usize);
        start + n >= seg_end
    }

    /// Writes one record of `len` (at most `DATA_CHUNK_MAX`) bytes read from `src`, at stream
    /// offset `offset`; failures are counted (`ReadFailed`, `RingbufFull`).
    #[inline(always)]
    pub fn chunk(&self, src: u64, offset: u64, len: usize) {
        let Some(event) = DATA_SCRATCH.get_ptr_mut(0) else {
            return;
        };
        // SAFETY: `event` points at this CPU's scratch record, which nothing else uses while this
        // program runs.
        let event = unsafe { &mut *event };
        self.fill_header(event, offset);
        let len = len & (DATA_CHUNK_MAX * 2 - 1);
        if len > DATA_CHUNK_MAX {
            return;
        }
        // SAFETY: reads user memory through the helper, which checks the address.
        if unsafe { bpf_probe_read_user_buf(src as *const u8, &mut event.payload[..len]) }.is_err()
        {
            count(Counter::ReadFailed, 1);
            return;
        }
        event.len = len as u32;
        if self.output(event, DATA_EVENT_HEADER_LEN + len) {
            count(Counter::CopiedBytes, len as u64);
        }
    }

    /// After all segments: writes a payload-less record if no chunk was attempted, so userspace
    /// always learns how far the stream advanced and when; then counts what was not copied.
    #[inline(always)]
    pub fn finish(&self, skipped: u64) {
        if self.chunks_left == CHUNKS_PER_SYSCALL as u32
            && let Some(event) = DATA_SCRATCH.get_ptr_mut(0)
        {
            // SAFETY: as in `chunk`.
            let event = unsafe { &mut *event };
            self.fill_header(event, self.syscall_offset + self.syscall_len);
            event.len = 0;
            self.output(event, DATA_EVENT_HEADER_LEN);
        }
        count(Counter::SkippedBytes, skipped);
        let end = self.syscall_offset + self.syscall_len;
        let done = if self.copy_from > self.syscall_offset + skipped {
            self.copy_from
        } else {
            self.syscall_offset + skipped
        };
        if end > done {
            count(
                if self.kind == EventKind::Uncopied {
                    Counter::SendfileBytes
                } else {
                    Counter::TruncatedBytes
                },
                end - done,
            );
        }
    }

    #[inline(always)]
    fn fill_header(&self, event: &mut DataEvent, offset: u64) {
        event.header = header(self.kind);
        event.conn_id = self.conn_id;
        event.syscall_offset = self.syscall_offset;
        event.syscall_len = self.syscall_len;
        event.offset = offset;
        event.fd = self.fd;
        event.direction = self.direction;
        event.source = self.source;
    }

    #[inline(always)]
    fn output(&self, event: &DataEvent, size: usize) -> bool {
        if size > core::mem::size_of::<DataEvent>() {
            return false;
        }
        // SAFETY: `size` is at most the record's size, checked above.
        let bytes =
            unsafe { core::slice::from_raw_parts(event as *const DataEvent as *const u8, size) };
        match EVENTS.output::<[u8]>(bytes, self.wakeup) {
            Ok(()) => {
                count(Counter::DataEvents, 1);
                true
            }
            Err(_) => {
                count(Counter::RingbufFull, 1);
                false
            }
        }
    }
}

/// Unread bytes from which a payload record wakes the reader (`RING_WAKEUP_GLOBAL`): set by
/// userspace at load time for the ring it sized, this default for the compiled-in size.
#[unsafe(no_mangle)]
static RING_WAKEUP_BYTES: u64 = ring_wakeup_bytes(EVENTS_BYTES);

/// Records wake the reader only once `RING_WAKEUP_BYTES` are waiting; the reader polls for the
/// rest (see `RING_POLL_MS`). Payload and connection records use it; only exec and fork, which
/// userspace must act on before the new program runs far, wake it at once. (The kernel's
/// default, flags 0, wakes the reader whenever it had caught up: a wakeup per new connection
/// for clients that open one per request.)
#[inline(always)]
pub fn wakeup_flags() -> u64 {
    // SAFETY: a plain u64 global; the volatile read keeps the compiler from folding in the
    // default, since the loader may have rewritten it.
    let threshold = unsafe { core::ptr::read_volatile(&RING_WAKEUP_BYTES) };
    if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= threshold {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}
