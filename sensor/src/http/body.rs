//! Body capture: content codings undone on the fly, bounded by the decoded-size limit.
//!
//! A [`BodyAcc`] receives the body bytes of one message after framing (de-chunked) and
//! keeps at most `limit` decoded bytes. Decoders are driven eagerly (all output a prefix of
//! the input can give is produced before more input is taken), so what is kept, and when
//! the body stops needing bytes, depends only on the bytes, never on how they were split.

use brotli::enc::StandardAlloc;
use brotli::{Allocator, BrotliDecompressStream, BrotliResult, BrotliState};
use flate2::{Crc, Decompress, FlushDecompress, Status};
use zstd::zstd_safe::{self, DCtx, DParameter, InBuffer, OutBuffer};

use super::Body;

/// Size of the scratch buffer decoders write into.
const SCRATCH: usize = 8192;

/// Longest gzip header accepted (file name and comment included).
const MAX_GZIP_HEADER: usize = 4096;

/// Decoded output below which the decompression ratio is not checked.
const RATIO_FLOOR: usize = 64 * 1024;

/// Rough size of a flate decoder's state, for memory accounting.
const INFLATE_STATE_BYTES: usize = 48 * 1024;

/// Rough size of a brotli decoder's fixed state, for memory accounting.
const BROTLI_STATE_BYTES: usize = 32 * 1024;

/// A content (or transfer) coding, as named in the header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Coding {
    /// No coding.
    Identity,
    /// `gzip` / `x-gzip`.
    Gzip,
    /// `deflate`: zlib, or raw deflate as some servers send.
    Deflate,
    /// `br`.
    Brotli,
    /// `zstd` (RFC 8878).
    Zstd,
    /// Anything else, or a chain of several codings: kept raw, with this description.
    Unsupported(String),
}

impl Coding {
    /// The coding to undo for a list of coding names in the order they were applied.
    pub(super) fn from_names(names: &[String]) -> Coding {
        let real: Vec<&str> = names
            .iter()
            .map(String::as_str)
            .filter(|n| !n.is_empty() && *n != "identity")
            .collect();
        match real.as_slice() {
            [] => Coding::Identity,
            ["gzip" | "x-gzip"] => Coding::Gzip,
            ["deflate"] => Coding::Deflate,
            ["br"] => Coding::Brotli,
            ["zstd"] => Coding::Zstd,
            _ => Coding::Unsupported(real.join(", ")),
        }
    }
}

/// Brotli allocator refusing any single allocation above a cap: the decoder then fails
/// cleanly (an allocation error) instead of holding a window a hostile stream asked for.
#[derive(Clone, Copy)]
struct CappedAlloc {
    cap: usize,
}

impl<T: Clone + Default> Allocator<T> for CappedAlloc {
    type AllocatedMemory = <StandardAlloc as Allocator<T>>::AllocatedMemory;

    fn alloc_cell(&mut self, len: usize) -> Self::AllocatedMemory {
        let bytes = len.saturating_mul(std::mem::size_of::<T>());
        let len = if bytes > self.cap { 0 } else { len };
        StandardAlloc::default().alloc_cell(len)
    }

    fn free_cell(&mut self, _data: Self::AllocatedMemory) {}
}

type BrState = BrotliState<CappedAlloc, CappedAlloc, CappedAlloc>;

/// Where a gzip member stands.
enum GzPhase {
    /// Collecting the header.
    Header(Vec<u8>),
    /// Inflating the member's data.
    Data,
    /// Collecting the 8-byte trailer.
    Trailer(Vec<u8>),
    /// A member ended: another one may follow (`0x1f` next), else the stream is over.
    Between,
}

struct Gzip {
    phase: GzPhase,
    inflate: Decompress,
    crc: Crc,
}

#[derive(Default)]
enum Decoder {
    /// Bytes kept as they are (identity, or an unsupported coding).
    Plain,
    /// `deflate` before its first two bytes tell zlib from raw.
    DeflateSniff(Vec<u8>),
    /// zlib or raw deflate.
    Inflate(Box<Decompress>),
    /// gzip members.
    Gzip(Box<Gzip>),
    /// brotli.
    Brotli(Box<BrState>),
    /// zstd frames.
    Zstd(Box<Zstd>),
    /// The compressed stream ended; further input is ignored.
    #[default]
    Finished,
}

/// A zstd decoder and where its frames stand.
struct Zstd {
    ctx: DCtx<'static>,
    /// The last call ended a frame and flushed it all: the stream may end here.
    at_frame_end: bool,
}

impl Zstd {
    /// A decoder refusing frames whose window exceeds `cap` bytes (zstd then fails cleanly
    /// instead of allocating the window a hostile frame declares).
    fn new(cap: usize) -> Result<Zstd, String> {
        let mut ctx = DCtx::try_create().ok_or("zstd: cannot create a decoder")?;
        let window_log = cap.max(1).ilog2().clamp(10, 31);
        ctx.set_parameter(DParameter::WindowLogMax(window_log))
            .map_err(|code| format!("zstd: {}", zstd_safe::get_error_name(code)))?;
        Ok(Zstd {
            ctx,
            at_frame_end: true,
        })
    }
}

/// Bounds of one body's capture.
#[derive(Clone, Copy, Debug)]
pub(super) struct Limits {
    /// Most decoded bytes kept.
    pub limit: usize,
    /// Most decoded bytes per compressed byte.
    pub ratio: u64,
    /// Largest single allocation a decoder may make.
    pub decoder_memory: usize,
}

/// Accumulates one message body.
pub(super) struct BodyAcc {
    captured: bool,
    limit: usize,
    ratio: u64,
    bytes: Vec<u8>,
    truncated: bool,
    wire_len: u64,
    incomplete: bool,
    decode_error: Option<String>,
    decoder: Decoder,
    /// Whether no more bytes are needed (limit reached, decoding stopped).
    stopped: bool,
    /// Compressed bytes handed to the decoder.
    coded_in: u64,
    /// The body would be kept but the overload policy sheds it.
    shed: bool,
}

fn brotli_state(cap: usize) -> BrState {
    let alloc = CappedAlloc { cap };
    BrotliState::new_strict(alloc, alloc, alloc)
}

/// Parses a gzip header: `Ok(Some(len))` when complete, `Ok(None)` when more bytes are needed.
fn gzip_header_len(h: &[u8]) -> Result<Option<usize>, &'static str> {
    let at = |i: usize| h.get(i).copied();
    match (at(0), at(1), at(2)) {
        (Some(0x1f), Some(0x8b), Some(8)) => {}
        (Some(0x1f), Some(0x8b), None) | (Some(0x1f), None, None) | (None, None, None) => {
            return Ok(None);
        }
        _ => return Err("invalid gzip header"),
    }
    let Some(flags) = at(3) else { return Ok(None) };
    if flags & 0xe0 != 0 {
        return Err("invalid gzip header flags");
    }
    let mut pos = 10usize;
    if h.len() < pos {
        return Ok(None);
    }
    if flags & 0x04 != 0 {
        let (Some(lo), Some(hi)) = (at(pos), at(pos + 1)) else {
            return Ok(None);
        };
        pos += 2 + usize::from(u16::from_le_bytes([lo, hi]));
        if h.len() < pos {
            return Ok(None);
        }
    }
    for flag in [0x08u8, 0x10] {
        if flags & flag != 0 {
            match h
                .get(pos..)
                .and_then(|rest| rest.iter().position(|&b| b == 0))
            {
                Some(nul) => pos += nul + 1,
                None => return Ok(None),
            }
        }
    }
    if flags & 0x02 != 0 {
        pos += 2;
        if h.len() < pos {
            return Ok(None);
        }
    }
    Ok(Some(pos))
}

/// Whether two bytes start a zlib stream (rather than raw deflate).
fn is_zlib_header(b0: u8, b1: u8) -> bool {
    b0 & 0x0f == 8 && b0 >> 4 <= 7 && (u16::from(b0) << 8 | u16::from(b1)) % 31 == 0
}

/// Most bytes a body reserves before they arrive (see [`BodyAcc::expect_len`]).
const BODY_INITIAL_CAPACITY: usize = 64 * 1024;

impl BodyAcc {
    /// A body accumulator. `captured` is whether the bytes are kept at all.
    pub(super) fn new(captured: bool, coding: Coding, limits: Limits) -> Self {
        let Limits { limit, ratio, .. } = limits;
        let mut decode_error = None;
        let decoder = if !captured {
            Decoder::Plain
        } else {
            match coding {
                Coding::Identity => Decoder::Plain,
                Coding::Gzip => Decoder::Gzip(Box::new(Gzip {
                    phase: GzPhase::Header(Vec::new()),
                    inflate: Decompress::new(false),
                    crc: Crc::new(),
                })),
                Coding::Deflate => Decoder::DeflateSniff(Vec::new()),
                Coding::Brotli => Decoder::Brotli(Box::new(brotli_state(limits.decoder_memory))),
                Coding::Zstd => match Zstd::new(limits.decoder_memory) {
                    Ok(zstd) => Decoder::Zstd(Box::new(zstd)),
                    Err(e) => {
                        decode_error = Some(e);
                        Decoder::Plain
                    }
                },
                Coding::Unsupported(name) => {
                    decode_error = Some(format!("unsupported content-encoding: {name}"));
                    Decoder::Plain
                }
            }
        };
        BodyAcc {
            captured,
            limit,
            ratio,
            bytes: Vec::new(),
            truncated: false,
            wire_len: 0,
            incomplete: false,
            decode_error,
            decoder,
            stopped: limit == 0,
            coded_in: 0,
            shed: false,
        }
    }

    /// A body the overload policy sheds: nothing is kept, whatever the content type says.
    pub(super) fn shed(limits: Limits) -> Self {
        let mut acc = BodyAcc::new(false, Coding::Identity, limits);
        acc.shed = true;
        acc
    }

    /// Stops keeping a body being read (overload): what was kept is freed, the rest is not
    /// needed, and the body is flagged shed.
    pub(super) fn shed_now(&mut self) {
        if !self.captured {
            return;
        }
        self.captured = false;
        self.shed = true;
        self.bytes = Vec::new();
        self.truncated = false;
        self.decode_error = None;
        self.decoder = Decoder::Plain;
    }

    /// Whether the bytes still matter: when this is false a gap over the rest of the body
    /// loses nothing.
    pub(super) fn needed(&self) -> bool {
        self.captured && !self.stopped && !self.incomplete
    }

    /// Whether bytes are kept as they come (no decoder running).
    fn plain(&self) -> bool {
        matches!(self.decoder, Decoder::Plain)
    }

    /// Memory held, for the connection's accounting.
    pub(super) fn held_bytes(&self) -> usize {
        let dec = match &self.decoder {
            Decoder::Plain | Decoder::Finished => 0,
            Decoder::DeflateSniff(v) => v.capacity(),
            Decoder::Inflate(_) => INFLATE_STATE_BYTES,
            Decoder::Gzip(g) => {
                INFLATE_STATE_BYTES
                    + match &g.phase {
                        GzPhase::Header(v) | GzPhase::Trailer(v) => v.capacity(),
                        GzPhase::Data | GzPhase::Between => 0,
                    }
            }
            Decoder::Brotli(s) => {
                BROTLI_STATE_BYTES + usize::try_from(s.ringbuffer_size.max(0)).unwrap_or(0)
            }
            Decoder::Zstd(z) => z.ctx.sizeof(),
        };
        self.bytes.capacity() + dec
    }

    /// Tells that more body bytes are known to follow (the framing says so): a plain body
    /// already at the limit is then truncated.
    pub(super) fn expect_more(&mut self) {
        if self.captured && self.plain() && self.bytes.len() >= self.limit {
            self.truncated = true;
            self.stopped = true;
        }
    }

    /// Tells that the framing announces `len` body bytes: a kept plain body reserves room for
    /// them up front (at most [`BODY_INITIAL_CAPACITY`] and its limit), one allocation instead
    /// of a doubling per chunk. The cap keeps a large announced length from holding memory
    /// before its bytes arrive.
    pub(super) fn expect_len(&mut self, len: u64) {
        if self.needed() && self.plain() {
            let room = self.limit.min(BODY_INITIAL_CAPACITY);
            self.bytes
                .reserve(usize::try_from(len).unwrap_or(usize::MAX).min(room));
        }
    }

    /// Body bytes, in order.
    pub(super) fn push(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        self.wire_len = self.wire_len.saturating_add(data.len() as u64);
        if !self.needed() {
            if self.captured && !self.incomplete && self.plain() && self.stopped {
                self.truncated = true;
            }
            return;
        }
        if self.plain() {
            let room = self.limit - self.bytes.len();
            let take = room.min(data.len());
            self.bytes.extend_from_slice(&data[..take]);
            if take < data.len() {
                self.truncated = true;
            }
            if self.bytes.len() >= self.limit {
                self.stopped = true;
            }
            return;
        }
        self.decode(data);
    }

    /// `n` body bytes that never come. Returns whether they were needed (real loss).
    pub(super) fn gap(&mut self, n: u64) -> bool {
        if n == 0 {
            return false;
        }
        self.wire_len = self.wire_len.saturating_add(n);
        if !self.needed() {
            if self.captured && !self.incomplete && self.plain() && self.stopped {
                self.truncated = true;
            }
            return false;
        }
        self.incomplete = true;
        self.decoder = Decoder::Finished;
        true
    }

    /// Marks the body as cut short (framing lost, connection closed early).
    pub(super) fn mark_incomplete(&mut self) {
        self.incomplete = true;
    }

    /// The finished body. `complete` tells whether the framing ended normally.
    pub(super) fn finish(mut self) -> Body {
        if self.captured && !self.incomplete && !self.stopped {
            self.finish_decoder();
        }
        if !self.captured {
            self.bytes = Vec::new();
            self.truncated = false;
            self.decode_error = None;
        }
        Body {
            captured: self.captured,
            bytes: self.bytes,
            truncated: self.truncated,
            wire_len: self.wire_len,
            incomplete: self.incomplete,
            decode_error: self.decode_error,
            shed: self.shed && self.wire_len > 0,
        }
    }

    fn finish_decoder(&mut self) {
        if let Decoder::DeflateSniff(buf) = &mut self.decoder
            && !buf.is_empty()
        {
            // Fewer than two bytes: try them as raw deflate, which cannot end there.
            let head = std::mem::take(buf);
            self.decoder = Decoder::Inflate(Box::new(Decompress::new(false)));
            self.run_inflate(&head);
        }
        let unfinished = match &self.decoder {
            Decoder::Plain | Decoder::Finished => false,
            Decoder::DeflateSniff(buf) => !buf.is_empty(),
            Decoder::Gzip(g) => match &g.phase {
                GzPhase::Header(h) => !h.is_empty(),
                GzPhase::Data | GzPhase::Trailer(_) => true,
                GzPhase::Between => false,
            },
            Decoder::Inflate(_) | Decoder::Brotli(_) => self.coded_in > 0,
            Decoder::Zstd(z) => !z.at_frame_end,
        };
        if unfinished && self.decode_error.is_none() && !self.stopped {
            self.decode_error = Some("compressed stream ended early".to_owned());
        }
        self.decoder = Decoder::Finished;
    }

    fn fail(&mut self, msg: String) {
        if self.decode_error.is_none() {
            self.decode_error = Some(msg);
        }
        self.stopped = true;
        self.decoder = Decoder::Finished;
    }

    /// Appends decoded output, enforcing the limit and the ratio. Returns false when
    /// decoding must stop.
    fn emit(&mut self, out: &[u8]) -> bool {
        let room = self.limit.saturating_sub(self.bytes.len());
        if out.len() > room {
            self.bytes.extend_from_slice(&out[..room]);
            self.truncated = true;
            self.stopped = true;
            self.decoder = Decoder::Finished;
            return false;
        }
        self.bytes.extend_from_slice(out);
        let ratio_cap = self.ratio.saturating_mul(self.coded_in.max(1));
        if self.bytes.len() > RATIO_FLOOR && self.bytes.len() as u64 > ratio_cap {
            self.fail("decompression ratio exceeded".to_owned());
            return false;
        }
        true
    }

    fn decode(&mut self, data: &[u8]) {
        self.coded_in = self.coded_in.saturating_add(data.len() as u64);
        match &mut self.decoder {
            Decoder::Plain | Decoder::Finished => {}
            Decoder::DeflateSniff(buf) => {
                let need = 2 - buf.len().min(2);
                let take = need.min(data.len());
                buf.extend_from_slice(&data[..take]);
                if buf.len() < 2 {
                    return;
                }
                let head = std::mem::take(buf);
                let zlib = is_zlib_header(head[0], head[1]);
                self.decoder = Decoder::Inflate(Box::new(Decompress::new(zlib)));
                self.run_inflate(&head);
                if matches!(self.decoder, Decoder::Inflate(_)) {
                    self.run_inflate(&data[take..]);
                }
            }
            Decoder::Inflate(_) => self.run_inflate(data),
            Decoder::Gzip(_) => self.run_gzip(data),
            Decoder::Brotli(_) => self.run_brotli(data),
            Decoder::Zstd(_) => self.run_zstd(data),
        }
    }

    /// Inflates `input` until it is used up or the stream ends.
    fn run_inflate(&mut self, mut input: &[u8]) {
        let mut scratch = [0u8; SCRATCH];
        loop {
            let Decoder::Inflate(d) = &mut self.decoder else {
                return;
            };
            let (in0, out0) = (d.total_in(), d.total_out());
            let res = d.decompress(input, &mut scratch, FlushDecompress::None);
            let used = usize::try_from(d.total_in() - in0).unwrap_or(input.len());
            let made = usize::try_from(d.total_out() - out0).unwrap_or(0);
            input = input.get(used..).unwrap_or_default();
            match res {
                Err(e) => {
                    self.fail(format!("deflate: {e}"));
                    return;
                }
                Ok(status) => {
                    if !self.emit(&scratch[..made]) {
                        return;
                    }
                    if status == Status::StreamEnd {
                        self.decoder = Decoder::Finished;
                        return;
                    }
                    if used == 0 && made == 0 {
                        return;
                    }
                }
            }
        }
    }

    /// Runs gzip members over `input`.
    fn run_gzip(&mut self, mut input: &[u8]) {
        let mut scratch = [0u8; SCRATCH];
        while !input.is_empty() {
            let Decoder::Gzip(g) = &mut self.decoder else {
                return;
            };
            match &mut g.phase {
                GzPhase::Header(h) => {
                    // Take bytes one header field at a time: copy up to the cap, then give back
                    // what lies past the header.
                    let before = h.len();
                    let take = (MAX_GZIP_HEADER + 1 - before).min(input.len());
                    h.extend_from_slice(&input[..take]);
                    match gzip_header_len(h) {
                        Err(e) => {
                            self.fail(e.to_owned());
                            return;
                        }
                        Ok(None) => {
                            if h.len() > MAX_GZIP_HEADER {
                                self.fail("gzip header too long".to_owned());
                                return;
                            }
                            input = &input[take..];
                        }
                        Ok(Some(len)) => {
                            let used = len.saturating_sub(before).min(take);
                            input = &input[used..];
                            g.phase = GzPhase::Data;
                        }
                    }
                }
                GzPhase::Data => {
                    let (in0, out0) = (g.inflate.total_in(), g.inflate.total_out());
                    let res = g
                        .inflate
                        .decompress(input, &mut scratch, FlushDecompress::None);
                    let used = usize::try_from(g.inflate.total_in() - in0).unwrap_or(input.len());
                    let made = usize::try_from(g.inflate.total_out() - out0).unwrap_or(0);
                    input = input.get(used..).unwrap_or_default();
                    g.crc.update(&scratch[..made]);
                    let ended = matches!(res, Ok(Status::StreamEnd));
                    if ended {
                        g.phase = GzPhase::Trailer(Vec::new());
                    }
                    if let Err(e) = res {
                        self.fail(format!("gzip: {e}"));
                        return;
                    }
                    if !self.emit(&scratch[..made]) {
                        return;
                    }
                    if !ended && used == 0 && made == 0 {
                        return;
                    }
                }
                GzPhase::Trailer(t) => {
                    let take = (8 - t.len()).min(input.len());
                    t.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    if t.len() == 8 {
                        let crc = u32::from_le_bytes([t[0], t[1], t[2], t[3]]);
                        let size = u32::from_le_bytes([t[4], t[5], t[6], t[7]]);
                        if crc != g.crc.sum() || size != g.crc.amount() {
                            self.fail("gzip checksum mismatch".to_owned());
                            return;
                        }
                        g.phase = GzPhase::Between;
                    }
                }
                GzPhase::Between => {
                    if input.first() == Some(&0x1f) {
                        g.phase = GzPhase::Header(Vec::new());
                        g.inflate = Decompress::new(false);
                        g.crc = Crc::new();
                    } else {
                        self.decoder = Decoder::Finished;
                        return;
                    }
                }
            }
        }
    }

    /// Runs the zstd decoder over `input`: frames follow one another (a frame's end is not
    /// the stream's), skippable frames are skipped.
    fn run_zstd(&mut self, input: &[u8]) {
        let mut scratch = [0u8; SCRATCH];
        let mut input = InBuffer::around(input);
        loop {
            let Decoder::Zstd(z) = &mut self.decoder else {
                return;
            };
            let before = input.pos();
            let mut output = OutBuffer::around(&mut scratch[..]);
            let res = z.ctx.decompress_stream(&mut output, &mut input);
            let made = output.pos();
            match res {
                Err(code) => {
                    self.fail(format!("zstd: {}", zstd_safe::get_error_name(code)));
                    return;
                }
                Ok(hint) => {
                    z.at_frame_end = hint == 0;
                    if !self.emit(&scratch[..made]) {
                        return;
                    }
                    let used_up = input.pos() == input.src.len();
                    if (used_up && made < SCRATCH) || (made == 0 && input.pos() == before) {
                        return;
                    }
                }
            }
        }
    }

    /// Runs the brotli decoder over `input`.
    fn run_brotli(&mut self, input: &[u8]) {
        let mut scratch = [0u8; SCRATCH];
        let mut avail_in = input.len();
        let mut in_off = 0usize;
        loop {
            let Decoder::Brotli(state) = &mut self.decoder else {
                return;
            };
            let mut avail_out = scratch.len();
            let mut out_off = 0usize;
            let mut total = 0usize;
            let res = BrotliDecompressStream(
                &mut avail_in,
                &mut in_off,
                input,
                &mut avail_out,
                &mut out_off,
                &mut scratch,
                &mut total,
                state,
            );
            let made = out_off.min(scratch.len());
            match res {
                BrotliResult::ResultFailure => {
                    self.fail("brotli: invalid data".to_owned());
                    return;
                }
                BrotliResult::ResultSuccess => {
                    self.emit(&scratch[..made]);
                    if matches!(self.decoder, Decoder::Brotli(_)) {
                        self.decoder = Decoder::Finished;
                    }
                    return;
                }
                BrotliResult::NeedsMoreInput => {
                    self.emit(&scratch[..made]);
                    return;
                }
                BrotliResult::NeedsMoreOutput => {
                    if !self.emit(&scratch[..made]) {
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn limits(limit: usize) -> Limits {
        Limits {
            limit,
            ratio: 1000,
            decoder_memory: 1 << 20,
        }
    }

    fn run(coding: Coding, input: &[u8], limit: usize, split: usize) -> Body {
        let mut b = BodyAcc::new(true, coding, limits(limit));
        for part in input.chunks(split.max(1)) {
            b.push(part);
        }
        b.finish()
    }

    #[test]
    fn gzip_any_split() {
        let data: Vec<u8> = (0..5000u32).flat_map(|i| i.to_le_bytes()).collect();
        let enc = gz(&data);
        for split in [1, 2, 3, 7, 100, enc.len()] {
            let b = run(Coding::Gzip, &enc, 1 << 20, split);
            assert_eq!(b.bytes, data, "split {split}");
            assert_eq!(b.decode_error, None);
            assert!(!b.truncated);
        }
    }

    #[test]
    fn gzip_truncates_at_limit() {
        let data = vec![b'a'; 100_000];
        let enc = gz(&data);
        for split in [1, 5, enc.len()] {
            let b = run(Coding::Gzip, &enc, 1000, split);
            assert_eq!(b.bytes, vec![b'a'; 1000]);
            assert!(b.truncated);
            assert_eq!(b.wire_len, enc.len() as u64);
        }
        let b = run(Coding::Gzip, &gz(&[b'x'; 1000]), 1000, 3);
        assert_eq!(b.bytes.len(), 1000);
        assert!(!b.truncated);
    }

    #[test]
    fn gzip_header_fields() {
        let mut e = flate2::GzBuilder::new()
            .filename("f.json")
            .comment("c")
            .extra(vec![1, 2, 3])
            .write(Vec::new(), flate2::Compression::fast());
        e.write_all(b"{\"a\":1}").unwrap();
        let enc = e.finish().unwrap();
        for split in [1, 4, enc.len()] {
            assert_eq!(run(Coding::Gzip, &enc, 100, split).bytes, b"{\"a\":1}");
        }
    }

    #[test]
    fn corrupt_and_short_streams() {
        let b = run(Coding::Gzip, b"not gzip at all", 100, 4);
        assert!(b.decode_error.is_some());
        let enc = gz(b"hello world");
        let b = run(Coding::Gzip, &enc[..enc.len() - 4], 100, 4);
        assert_eq!(b.bytes, b"hello world");
        assert_eq!(
            b.decode_error.as_deref(),
            Some("compressed stream ended early")
        );
        let b = run(Coding::Brotli, b"\xff\xff\xff\xff", 100, 1);
        assert!(b.decode_error.is_some());
        let b = run(Coding::Deflate, b"x", 100, 1);
        assert!(b.decode_error.is_some());
    }

    #[test]
    fn unsupported_keeps_raw() {
        let b = run(Coding::from_names(&["compress".to_owned()]), b"abc", 2, 1);
        assert_eq!(b.bytes, b"ab");
        assert!(b.truncated);
        assert_eq!(
            b.decode_error.as_deref(),
            Some("unsupported content-encoding: compress")
        );
    }

    #[test]
    fn zstd_any_split_limit_ratio_and_corruption() {
        assert_eq!(Coding::from_names(&["zstd".to_owned()]), Coding::Zstd);
        // A streaming compressor declares its level's window (2 MiB at level 3), whatever
        // the content: the cap must admit the windows of the usual levels.
        let zstd_limits = |limit| Limits {
            decoder_memory: 16 << 20,
            ..limits(limit)
        };
        let run_zstd = |input: &[u8], limit: usize, split: usize| {
            let mut b = BodyAcc::new(true, Coding::Zstd, zstd_limits(limit));
            for part in input.chunks(split) {
                b.push(part);
            }
            b.finish()
        };
        let data: Vec<u8> = (0..5000u32).flat_map(|i| i.to_le_bytes()).collect();
        let enc = zstd::encode_all(&data[..], 3).unwrap();
        for split in [1, 2, 3, 7, 100, enc.len()] {
            let b = run_zstd(&enc, 1 << 20, split);
            assert_eq!(b.decode_error, None, "split {split}");
            assert!(b.bytes == data, "split {split}: {} bytes", b.bytes.len());
            assert!(!b.truncated);
        }
        let b = run_zstd(&enc, 1000, 5);
        assert!(b.bytes == data[..1000] && b.truncated);
        assert_eq!(b.wire_len, enc.len() as u64);

        let zeros = zstd::encode_all(&vec![0u8; 1 << 20][..], 19).unwrap();
        let b = run_zstd(&zeros, 1 << 21, 64);
        assert_eq!(
            b.decode_error.as_deref(),
            Some("decompression ratio exceeded"),
            "1 MiB of zeros from {} bytes",
            zeros.len()
        );

        let b = run(Coding::Zstd, &enc, 1 << 20, 100);
        assert_eq!(
            b.decode_error.as_deref(),
            Some("zstd: Frame requires too much memory for decoding"),
            "a 2 MiB window over a 1 MiB cap is refused"
        );
        assert!(b.bytes.is_empty());

        let b = run_zstd(b"\x28\xb5\x2f\xfd garbage", 100, 3);
        assert!(
            b.decode_error
                .as_deref()
                .unwrap_or("")
                .starts_with("zstd: "),
            "{:?}",
            b.decode_error
        );
        let mut acc = BodyAcc::new(true, Coding::Zstd, zstd_limits(1 << 20));
        assert!(acc.held_bytes() > 0, "the decoder's state is accounted");
        acc.push(&enc);
        assert!(acc.finish().bytes == data);
    }

    #[test]
    fn plain_limit_and_gap() {
        let mut b = BodyAcc::new(true, Coding::Identity, limits(4));
        b.push(b"abcd");
        assert!(!b.needed());
        assert!(!b.gap(10));
        let body = b.finish();
        assert_eq!(body.bytes, b"abcd");
        assert!(body.truncated);
        assert!(!body.incomplete);
        let mut b = BodyAcc::new(true, Coding::Identity, limits(4));
        b.push(b"ab");
        assert!(b.gap(1));
        b.push(b"d");
        let body = b.finish();
        assert_eq!(body.bytes, b"ab");
        assert!(body.incomplete);
        assert!(!body.truncated);
        assert_eq!(body.wire_len, 4);
    }

    #[test]
    fn an_announced_length_is_reserved_up_to_the_cap_and_limit() {
        let mut b = BodyAcc::new(true, Coding::Identity, limits(1 << 20));
        b.expect_len(16_000);
        assert_eq!(b.bytes.capacity(), 16_000);
        b.push(&[b'x'; 16_000]);
        assert_eq!(b.bytes.capacity(), 16_000, "no reallocation");
        let mut b = BodyAcc::new(true, Coding::Identity, limits(1 << 20));
        b.expect_len(1 << 40);
        assert_eq!(b.bytes.capacity(), BODY_INITIAL_CAPACITY);
        let mut b = BodyAcc::new(true, Coding::Identity, limits(100));
        b.expect_len(16_000);
        assert_eq!(b.bytes.capacity(), 100);
        for mut b in [
            BodyAcc::new(false, Coding::Identity, limits(1 << 20)),
            BodyAcc::new(true, Coding::Gzip, limits(1 << 20)),
        ] {
            b.expect_len(16_000);
            assert_eq!(b.bytes.capacity(), 0, "nothing kept as it comes");
        }
    }
}
