//! Reading a head (start line and header fields) out of a byte stream, and resynchronising
//! on a plausible message start when the stream is not at one.

use super::HttpStats;
use super::line::{LineCheck, LineFields, LineKind, LineState, can_start, line_fields};

/// Most time marks kept for one head; beyond, later bytes share the last mark's time.
const MAX_MARKS: usize = 1024;

/// What feeding a head produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum HeadEvent {
    /// The head is not complete yet.
    NeedMore,
    /// The buffer holds a complete head (up to and including its empty line).
    Complete,
    /// The head grew past the limit without ending.
    Oversize,
}

/// The outcome of one [`HeadReader::feed`].
pub(super) struct HeadStep {
    /// Bytes of the input taken.
    pub used: usize,
    /// Where the head stands.
    pub event: HeadEvent,
    /// Set when the stream was in sync and the bytes at a message start were not one: the
    /// time of those bytes.
    pub lost_sync_at: Option<u64>,
}

/// A parsed head.
#[derive(Clone, Debug, Default)]
pub(super) struct ParsedHead {
    /// Request method (requests).
    pub method: String,
    /// Request target (requests).
    pub target: String,
    /// Status code (responses).
    pub status: u16,
    /// Reason phrase (responses).
    pub reason: String,
    /// Minor version: 0 or 1.
    pub minor: u8,
    /// Header fields: name as sent, raw value.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// What a cut-off head tells.
pub(super) struct PartialHead {
    /// Start-line fields known.
    pub fields: LineFields,
    /// Header fields from complete lines.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Header slots the parser gets on the stack; a head with more lines gets them on the heap.
const HEADERS_ON_STACK: usize = 32;

/// Bytes reserved when a head begins (at most what the chunk still holds): most heads fit.
const HEAD_INITIAL_CAPACITY: usize = 1024;

/// Accumulates a head, checking the start line as it comes.
pub(super) struct HeadReader {
    response: bool,
    /// Whether the stream is at a message boundary it can trust (lenient start-line check),
    /// rather than resynchronising (strict check, junk skipped).
    pub synced: bool,
    buf: Vec<u8>,
    /// `(index in buf, time)` from which bytes arrived at that time.
    marks: Vec<(usize, u64)>,
    check: LineCheck,
    /// Whether the start line was seen complete and valid.
    line_done: bool,
    /// End of the start line (index after its `\n`).
    line_end: usize,
    /// Start of the header line being read.
    line_start: usize,
    /// Whether the head was started in sync mode.
    started_synced: bool,
    /// Time of the latest byte taken.
    pub last_time: u64,
}

impl HeadReader {
    /// A reader for requests (`response == false`) or responses, starting out of sync.
    pub(super) fn new(response: bool) -> Self {
        HeadReader {
            response,
            synced: false,
            buf: Vec::new(),
            marks: Vec::new(),
            check: LineCheck::new(Self::kind_for(response, true)),
            line_done: false,
            line_end: 0,
            line_start: 0,
            started_synced: false,
            last_time: 0,
        }
    }

    fn kind_for(response: bool, strict: bool) -> LineKind {
        if response {
            LineKind::Response
        } else {
            LineKind::Request { strict }
        }
    }

    fn kind(&self, strict: bool) -> LineKind {
        Self::kind_for(self.response, strict)
    }

    /// Whether some bytes of a head are held.
    pub(super) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Time of the first byte held.
    pub(super) fn start_time(&self) -> u64 {
        self.marks.first().map_or(self.last_time, |m| m.1)
    }

    /// Memory held.
    pub(super) fn held_bytes(&self) -> usize {
        self.buf.capacity() + self.marks.capacity() * std::mem::size_of::<(usize, u64)>()
    }

    /// Drops the held bytes (after a complete head was taken, or a partial one given up).
    pub(super) fn clear(&mut self) {
        self.buf = Vec::new();
        self.marks = Vec::new();
        self.line_done = false;
        self.line_end = 0;
        self.line_start = 0;
    }

    fn begin(&mut self, time: u64) {
        self.started_synced = self.synced;
        self.check = LineCheck::new(self.kind(!self.synced));
        self.line_done = false;
        self.line_end = 0;
        self.line_start = 0;
        self.marks.clear();
        self.marks.push((0, time));
    }

    fn append(&mut self, bytes: &[u8], time: u64) {
        if self.marks.last().is_none_or(|m| m.1 != time) && self.marks.len() < MAX_MARKS {
            self.marks.push((self.buf.len(), time));
        }
        self.buf.extend_from_slice(bytes);
        self.last_time = time;
    }

    /// Drops the first `n` bytes held (junk before a candidate start).
    fn drop_front(&mut self, n: usize) {
        self.buf.drain(..n);
        let keep_from = self.marks.iter().rposition(|m| m.0 <= n).unwrap_or(0);
        self.marks.drain(..keep_from);
        for m in &mut self.marks {
            m.0 = m.0.saturating_sub(n);
        }
    }

    /// After the start line held was found invalid: looks for a plausible start inside it
    /// (strict check). Keeps the bytes from there, or drops everything as junk.
    fn rescan(&mut self, stats: &mut HttpStats) {
        let kind = self.kind(true);
        self.started_synced = false;
        for q in 1..self.buf.len() {
            if !can_start(kind, self.buf[q]) {
                continue;
            }
            let mut check = LineCheck::new(kind);
            let state = check.feed(&self.buf[q..]);
            if state == LineState::Invalid {
                continue;
            }
            stats.junk_bytes += q as u64;
            self.drop_front(q);
            self.check = check;
            if state == LineState::Done {
                self.line_done = true;
                self.line_end = self.buf.len();
                self.line_start = self.buf.len();
            }
            return;
        }
        stats.junk_bytes += self.buf.len() as u64;
        self.clear();
    }

    /// Takes bytes of `data` (arrived at `time`) into the head, stopping right after the
    /// head's empty line. `max` is the head size limit.
    pub(super) fn feed(
        &mut self,
        data: &[u8],
        time: u64,
        max: usize,
        stats: &mut HttpStats,
    ) -> HeadStep {
        let mut i = 0;
        let mut lost_sync_at = None;
        while i < data.len() {
            if self.buf.is_empty() {
                let rest = &data[i..];
                if self.synced {
                    // Empty lines before a start line are allowed (RFC 9112, 2.2).
                    i += rest
                        .iter()
                        .take_while(|&&b| b == b'\r' || b == b'\n')
                        .count();
                } else {
                    let kind = self.kind(true);
                    match rest.iter().position(|&b| can_start(kind, b)) {
                        Some(p) => {
                            stats.junk_bytes += p as u64;
                            i += p;
                        }
                        None => {
                            stats.junk_bytes += rest.len() as u64;
                            i = data.len();
                        }
                    }
                }
                if i == data.len() {
                    break;
                }
                self.begin(time);
                // One allocation for a usual head, not a doubling per line read.
                self.buf
                    .reserve((data.len() - i).min(HEAD_INITIAL_CAPACITY));
            }
            let rest = &data[i..];
            let upto = rest
                .iter()
                .position(|&b| b == b'\n')
                .map_or(rest.len(), |p| p + 1);
            let room = max.saturating_add(1).saturating_sub(self.buf.len());
            let take = upto.min(room);
            self.append(&rest[..take], time);
            i += take;
            if !self.line_done {
                match self.check.feed(&self.buf) {
                    LineState::Invalid => {
                        if self.synced {
                            self.synced = false;
                            stats.resyncs += 1;
                            lost_sync_at.get_or_insert(self.start_time());
                        }
                        self.rescan(stats);
                        continue;
                    }
                    LineState::Done => {
                        self.line_done = true;
                        self.line_end = self.buf.len();
                        self.line_start = self.buf.len();
                    }
                    LineState::Partial => {}
                }
            } else if self.buf.last() == Some(&b'\n') {
                let line = &self.buf[self.line_start..self.buf.len() - 1];
                if line.is_empty() || line == b"\r" {
                    if self.buf.len() > max {
                        return self.step(i, HeadEvent::Oversize, lost_sync_at);
                    }
                    return self.step(i, HeadEvent::Complete, lost_sync_at);
                }
                self.line_start = self.buf.len();
            }
            if self.buf.len() > max {
                if !self.line_done && !self.started_synced {
                    // A candidate start line that never ends: junk, look further inside it.
                    self.rescan(stats);
                    continue;
                }
                return self.step(i, HeadEvent::Oversize, lost_sync_at);
            }
        }
        self.step(i, HeadEvent::NeedMore, lost_sync_at)
    }

    fn step(&self, used: usize, event: HeadEvent, lost_sync_at: Option<u64>) -> HeadStep {
        HeadStep {
            used,
            event,
            lost_sync_at,
        }
    }

    /// What the held, incomplete head tells, if it is known to be the start of a message: a
    /// start line that was checked complete, or, when the stream was in sync, a start line
    /// that is a valid prefix so far.
    pub(super) fn partial(&self) -> Option<PartialHead> {
        if self.buf.is_empty() {
            return None;
        }
        if !self.line_done {
            if !self.started_synced || self.check.state() == LineState::Invalid {
                return None;
            }
            return Some(PartialHead {
                fields: line_fields(self.kind(false), &self.buf),
                headers: Vec::new(),
            });
        }
        let line = self.buf.get(..self.line_end).unwrap_or_default();
        let lines = self
            .buf
            .get(self.line_end..self.line_start)
            .unwrap_or_default();
        Some(PartialHead {
            fields: line_fields(self.kind(false), line),
            headers: complete_header_lines(lines),
        })
    }

    /// Parses the complete head held. `None` when httparse rejects it.
    pub(super) fn parse(&self) -> Option<ParsedHead> {
        let n_lines = self.buf.iter().filter(|&&b| b == b'\n').count();
        let mut on_stack = [httparse::EMPTY_HEADER; HEADERS_ON_STACK];
        let mut on_heap = Vec::new();
        let storage: &mut [httparse::Header<'_>] = if n_lines <= HEADERS_ON_STACK {
            &mut on_stack
        } else {
            on_heap.resize(n_lines, httparse::EMPTY_HEADER);
            &mut on_heap
        };
        let mut out = ParsedHead::default();
        let headers: &[httparse::Header<'_>] = if self.response {
            let mut resp = httparse::Response::new(storage);
            let mut config = httparse::ParserConfig::default();
            config
                .allow_spaces_after_header_name_in_responses(true)
                .allow_obsolete_multiline_headers_in_responses(true);
            match config.parse_response(&mut resp, &self.buf) {
                Ok(httparse::Status::Complete(n)) if n == self.buf.len() => {}
                _ => return None,
            }
            out.status = resp.code?;
            out.reason = resp.reason.unwrap_or_default().to_owned();
            out.minor = resp.version?;
            resp.headers
        } else {
            let mut req = httparse::Request::new(storage);
            match req.parse(&self.buf) {
                Ok(httparse::Status::Complete(n)) if n == self.buf.len() => {}
                _ => return None,
            }
            out.method = req.method?.to_owned();
            out.target = req.path?.to_owned();
            out.minor = req.version?;
            req.headers
        };
        out.headers = headers
            .iter()
            .map(|h| (h.name.to_owned(), h.value.to_vec()))
            .collect();
        Some(out)
    }
}

/// Header fields of `lines`, a run of complete header lines (each ending with `\n`), without
/// the empty line. Empty when they do not parse.
fn complete_header_lines(lines: &[u8]) -> Vec<(String, Vec<u8>)> {
    if lines.is_empty() {
        return Vec::new();
    }
    let mut buf = Vec::with_capacity(lines.len() + 2);
    buf.extend_from_slice(lines);
    buf.extend_from_slice(b"\r\n");
    let n_lines = buf.iter().filter(|&&b| b == b'\n').count();
    let mut storage = vec![httparse::EMPTY_HEADER; n_lines];
    match httparse::parse_headers(&buf, &mut storage) {
        Ok(httparse::Status::Complete((_, headers))) => headers
            .iter()
            .map(|h| (h.name.to_owned(), h.value.to_vec()))
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(r: &mut HeadReader, data: &[u8], split: usize) -> (usize, HeadEvent, HttpStats) {
        let mut stats = HttpStats::default();
        let mut used = 0;
        let mut event = HeadEvent::NeedMore;
        for part in data.chunks(split) {
            let s = r.feed(part, 1, 1024, &mut stats);
            used += s.used;
            event = s.event;
            if event != HeadEvent::NeedMore {
                break;
            }
        }
        (used, event, stats)
    }

    #[test]
    fn resync_skips_junk_any_split() {
        let input = b"xx ET /a HTTP/1.1\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\nrest";
        for split in 1..input.len() {
            let mut r = HeadReader::new(false);
            let (used, event, stats) = feed_all(&mut r, input, split);
            assert_eq!(event, HeadEvent::Complete, "split {split}");
            assert_eq!(used, input.len() - 4);
            assert_eq!(stats.junk_bytes, 19, "split {split}");
            let h = r.parse().unwrap();
            assert_eq!(h.target, "/b");
            assert_eq!(h.headers, vec![("Host".to_owned(), b"h".to_vec())]);
        }
    }

    #[test]
    fn heads_with_more_lines_than_the_stack_slots_parse_whole() {
        for count in [
            HEADERS_ON_STACK - 2,
            HEADERS_ON_STACK - 1,
            HEADERS_ON_STACK,
            60,
        ] {
            for response in [false, true] {
                let mut head = if response {
                    b"HTTP/1.1 200 OK\r\n".to_vec()
                } else {
                    b"GET / HTTP/1.1\r\n".to_vec()
                };
                for i in 0..count {
                    head.extend_from_slice(format!("X-{i}: {i}\r\n").as_bytes());
                }
                head.extend_from_slice(b"\r\n");
                let mut r = HeadReader::new(response);
                let (used, event, _) = feed_all(&mut r, &head, head.len());
                assert_eq!((used, event), (head.len(), HeadEvent::Complete), "{count}");
                let parsed = r.parse().unwrap_or_else(|| panic!("{count} headers"));
                assert_eq!(parsed.headers.len(), count);
                assert_eq!(
                    parsed.headers.last(),
                    Some(&(
                        format!("X-{}", count - 1),
                        (count - 1).to_string().into_bytes()
                    ))
                );
            }
        }
    }

    #[test]
    fn synced_reader_loses_sync_on_garbage() {
        let mut r = HeadReader::new(true);
        r.synced = true;
        let mut stats = HttpStats::default();
        let s = r.feed(b"\r\n\x01\x02HTTP/1.1 204 No\r\n\r\n", 7, 1024, &mut stats);
        assert_eq!(s.event, HeadEvent::Complete);
        assert_eq!(s.lost_sync_at, Some(7));
        assert_eq!(stats.junk_bytes, 2);
        assert_eq!(stats.resyncs, 1);
        assert_eq!(r.parse().unwrap().status, 204);
    }

    #[test]
    fn oversize_and_partial() {
        let mut r = HeadReader::new(false);
        r.synced = true;
        let mut stats = HttpStats::default();
        let mut input = b"GET /x HTTP/1.1\r\nA: b\r\nC: ".to_vec();
        input.extend(std::iter::repeat_n(b'c', 2000));
        let s = r.feed(&input, 1, 1024, &mut stats);
        assert_eq!(s.event, HeadEvent::Oversize);
        let p = r.partial().unwrap();
        assert_eq!(p.fields.method.as_deref(), Some("GET"));
        assert_eq!(p.headers, vec![("A".to_owned(), b"b".to_vec())]);
    }
}
