//! Redaction of raw byte streams, for `sensor trace --payload`, which shows what the kernel
//! copied chunk by chunk rather than parsed exchanges.
//!
//! Each connection's two streams are followed through their HTTP/1 framing (heads,
//! Content-Length, chunked and close-delimited bodies) and every byte is decided *masked* or
//! *clear*. A byte is shown only once it is decided ([`ConnScrubber::settled`]), so a secret
//! split across chunks is masked whole:
//! - a head (start line and header fields) is decided when it is complete: values of the
//!   redacted headers (and their continuation lines), values of the redacted query
//!   parameters, and every pattern match in the head are masked;
//! - a body no rule looks into is shown as it comes;
//! - a body some rule looks into (JSONPaths of its direction, form fields of a form body,
//!   patterns) is decided when it is complete: the values the JSONPaths select in the parsed
//!   document, the listed form fields, and pattern matches (in the raw text, in decoded JSON
//!   strings, in decoded form names and values) are masked. A body that cannot be redacted —
//!   not JSON where JSONPaths apply, content-coded, longer than the processing limit, cut by
//!   lost bytes, or still incomplete when it must be shown ([`ConnScrubber::flush`]) — is
//!   masked whole;
//! - bytes that cannot be placed in a message (the capture started mid-message, bytes were
//!   lost, the framing is unknown or invalid, the protocol switched, a response whose request
//!   was not seen) are masked until the next line that starts an HTTP message.
//!
//! The rules are the union of every service's rules ([`StreamRules`]): the tracer does not
//! know which service a connection belongs to.

use std::{
    collections::{HashSet, VecDeque},
    ops::Range,
};

use sensor_common::event::Direction;
use serde_json::Value;
use serde_json_path::{JsonPath, PathElement};

use super::{Patterns, form_decode, policy::every_service};
use crate::config::Config;

/// Largest head (start line and header fields) followed; a longer one is masked.
const MAX_HEAD: usize = 65_536;
/// Longest chunk-size or trailer line followed; a longer one is masked.
const MAX_LINE: usize = 8_192;
/// Most requests remembered while they wait for their responses.
const MAX_WAITING: usize = 4_096;
/// Methods a message is recognised by when looking for the next message.
const METHODS: &[&[u8]] = &[
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
];

/// Redaction rules for raw streams: the union of the rules of every service.
#[derive(Clone, Debug)]
pub struct StreamRules {
    headers: Vec<String>,
    request_paths: Vec<JsonPath>,
    response_paths: Vec<JsonPath>,
    query_params: Vec<String>,
    form_fields: Vec<String>,
    patterns: Patterns,
    max_body: usize,
}

impl StreamRules {
    /// The rules of a configuration: for each kind of rule, the union over the global
    /// `data_capture` settings and every service override; bodies are redacted whole up to
    /// the largest `body_max_processing_size_bytes`. The error names the bad entry.
    pub fn from_config(config: &Config) -> Result<Self, String> {
        fn add(list: &mut Vec<String>, items: &[String], lower: bool) {
            for item in items {
                let item = item.trim();
                let item = if lower {
                    item.to_ascii_lowercase()
                } else {
                    item.to_owned()
                };
                if !item.is_empty() && !list.contains(&item) {
                    list.push(item);
                }
            }
        }
        let (mut headers, mut query_params, mut form_fields) = (vec![], vec![], vec![]);
        let (mut request_paths, mut response_paths, mut user) = (vec![], vec![], vec![]);
        let (mut cards, mut emails, mut max_body) = (false, false, 0usize);
        for dc in every_service(config) {
            add(&mut headers, &dc.redact_headers, true);
            add(&mut query_params, &dc.redact_query_params, true);
            add(&mut form_fields, &dc.redact_form_fields, true);
            add(&mut request_paths, &dc.redact_request_body, false);
            add(&mut response_paths, &dc.redact_response_body, false);
            add(&mut user, &dc.redact_patterns, false);
            cards |= dc.redact_card_numbers;
            emails |= dc.redact_emails;
            max_body = max_body
                .max(usize::try_from(dc.body_max_processing_size_bytes).unwrap_or(usize::MAX));
        }
        let paths = |list: &[String], key: &str| -> Result<Vec<JsonPath>, String> {
            list.iter()
                .map(|p| {
                    JsonPath::parse(p).map_err(|e| {
                        format!("data_capture.{key}: {p:?} is not a valid JSONPath: {e}")
                    })
                })
                .collect()
        };
        Ok(StreamRules {
            headers,
            request_paths: paths(&request_paths, "redact_request_body")?,
            response_paths: paths(&response_paths, "redact_response_body")?,
            query_params,
            form_fields,
            patterns: Patterns::new(cards, emails, &user)
                .map_err(|e| format!("data_capture.redact_patterns: {e}"))?,
            max_body,
        })
    }

    /// Whether there is nothing to redact: streams can be shown as they are.
    pub fn is_empty(&self) -> bool {
        self.headers.is_empty()
            && self.request_paths.is_empty()
            && self.response_paths.is_empty()
            && self.query_params.is_empty()
            && self.form_fields.is_empty()
            && self.patterns.is_empty()
    }
}

/// What a request asked, as far as its response's framing depends on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Asked {
    Head,
    Connect,
    Other,
}

/// Requests waiting for their responses, shared by a connection's two streams.
#[derive(Debug, Default)]
struct Pairing {
    waiting: VecDeque<Asked>,
    /// Too many requests waited: responses can no longer be paired.
    lost: bool,
}

/// Redaction state of one connection's two streams.
#[derive(Debug, Default)]
pub struct ConnScrubber {
    streams: [StreamScrubber; 2],
    pairing: Pairing,
}

impl ConnScrubber {
    /// A connection nothing has been seen of.
    pub fn new() -> Self {
        ConnScrubber::default()
    }

    /// Bytes of one stream at stream offset `offset`. A jump forward is a gap (bytes lost or
    /// not copied). Returns false, ignoring the bytes, when they overlap bytes already fed:
    /// the caller must then show them masked.
    pub fn feed(
        &mut self,
        rules: &StreamRules,
        direction: Direction,
        offset: u64,
        bytes: &[u8],
    ) -> bool {
        self.streams[direction.index()].feed(rules, &mut self.pairing, offset, bytes)
    }

    /// The connection closed: a body delimited by the close is complete; everything else
    /// still undecided is masked. Both streams are then settled.
    pub fn close(&mut self, rules: &StreamRules) {
        for stream in &mut self.streams {
            stream.flush(rules, true);
        }
    }

    /// Decides every byte of a stream received so far, now: an incomplete head or body under
    /// rules is masked (with the rest of that body as it comes).
    pub fn flush(&mut self, rules: &StreamRules, direction: Direction) {
        self.streams[direction.index()].flush(rules, false);
    }

    /// Every byte of the stream below this offset is decided.
    pub fn settled(&self, direction: Direction) -> u64 {
        self.streams[direction.index()].settled()
    }

    /// The masked runs of the decided bytes `[offset, offset + len)` of a stream, relative to
    /// `offset`, sorted and merged.
    pub fn masked_runs(&self, direction: Direction, offset: u64, len: usize) -> Vec<Range<usize>> {
        self.streams[direction.index()].masked_runs(offset, len)
    }

    /// Forgets what was decided about a stream's bytes below `offset` (they were shown).
    pub fn release(&mut self, direction: Direction, offset: u64) {
        self.streams[direction.index()]
            .masks
            .retain(|m| m.end > offset);
    }
}

/// Where a stream is.
#[derive(Debug, Default)]
enum State {
    /// At a message boundary: the next bytes should start a message.
    #[default]
    Start,
    /// Not in a known message: bytes are masked until a line that starts a message.
    Unknown,
    /// In a message body.
    Body(Box<Body>),
}

/// How a body ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// After this many more bytes.
    Length(u64),
    /// Chunked transfer coding, in this part.
    Chunked(Chunk),
    /// At the close.
    ToClose,
}

/// Where a chunked body is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    /// A chunk-size line is next.
    Size,
    /// This many more chunk-data bytes.
    Data(u64),
    /// The line end after chunk data.
    DataEnd,
    /// Trailer fields, up to an empty line.
    Trailers,
}

/// How a body's bytes are shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// As they come: no rule looks into this body.
    Clear,
    /// Masked: the body cannot be redacted.
    Withheld,
    /// Kept until the body is complete, then redacted whole.
    Buffered,
}

/// A body being followed.
#[derive(Debug)]
struct Body {
    framing: Framing,
    mode: Mode,
    request: bool,
    form: bool,
    /// The content so far (de-chunked), when buffered.
    content: Vec<u8>,
    /// Where each contiguous stretch of `content` starts: (content index, stream offset).
    pieces: Vec<(usize, u64)>,
}

/// What the body state machine does next.
enum Next {
    Stay,
    Done,
    Broken,
}

/// One stream of a connection.
#[derive(Debug, Default)]
struct StreamScrubber {
    /// Bytes received and not consumed yet; `buf[0]` is at stream offset `base`.
    buf: Vec<u8>,
    base: u64,
    started: bool,
    state: State,
    /// In [`State::Unknown`]: `buf[0]` starts a line.
    line_start: bool,
    /// A buffered body starts here: nothing from here on is decided.
    hold: Option<u64>,
    /// Masked stream ranges not released yet.
    masks: Vec<Range<u64>>,
    /// Where the search for the end of a head resumes.
    scan: usize,
}

impl StreamScrubber {
    fn feed(
        &mut self,
        rules: &StreamRules,
        pairing: &mut Pairing,
        offset: u64,
        bytes: &[u8],
    ) -> bool {
        if !self.started {
            self.started = true;
            self.base = offset;
            if offset != 0 {
                // The stream's first bytes were not seen: wherever this is, it is not known.
                self.lose_place(false);
            }
        }
        let expected = self.base + self.buf.len() as u64;
        if offset < expected {
            return false;
        }
        if offset > expected {
            self.gap(offset - expected);
        }
        self.buf.extend_from_slice(bytes);
        while self.step(rules, pairing) {}
        true
    }

    fn settled(&self) -> u64 {
        self.hold.unwrap_or(self.base)
    }

    fn masked_runs(&self, offset: u64, len: usize) -> Vec<Range<usize>> {
        let end = offset + len as u64;
        let mut runs: Vec<Range<u64>> = self
            .masks
            .iter()
            .filter(|m| m.start < end && m.end > offset)
            .map(|m| m.start.max(offset)..m.end.min(end))
            .collect();
        runs.sort_by_key(|r| r.start);
        let mut merged: Vec<Range<usize>> = Vec::with_capacity(runs.len());
        for run in runs {
            let run = (run.start - offset) as usize..(run.end - offset) as usize;
            match merged.last_mut() {
                Some(last) if run.start <= last.end => last.end = last.end.max(run.end),
                _ => merged.push(run),
            }
        }
        merged
    }

    fn mask(&mut self, range: Range<u64>) {
        if range.start >= range.end {
            return;
        }
        match self.masks.last_mut() {
            Some(last) if last.end == range.start => last.end = range.end,
            _ => self.masks.push(range),
        }
    }

    /// Marks the first `n` buffered bytes decided (masked or not) and drops them.
    fn consume(&mut self, n: usize, masked: bool) {
        if n == 0 {
            return;
        }
        if masked {
            self.mask(self.base..self.base + n as u64);
        }
        self.buf.drain(..n);
        self.base += n as u64;
        self.scan = 0;
    }

    /// Not in a known message any more: masks until a message starts.
    fn lose_place(&mut self, line_start: bool) {
        self.state = State::Unknown;
        self.line_start = line_start;
    }

    /// `len` bytes after what was received are missing.
    fn gap(&mut self, len: u64) {
        if let State::Body(mut body) = std::mem::take(&mut self.state) {
            self.withhold(&mut body);
            // Known-length body data survives a gap; anything else loses its place.
            let kept = self.buf.is_empty()
                && match &mut body.framing {
                    Framing::Length(left) | Framing::Chunked(Chunk::Data(left)) if len <= *left => {
                        *left -= len;
                        true
                    }
                    _ => false,
                };
            if kept {
                self.base += len;
                self.state = State::Body(body);
                return;
            }
        }
        let n = self.buf.len();
        self.consume(n, true);
        self.base += len;
        self.lose_place(false);
    }

    /// Decides everything received: at a close a body delimited by the close is complete;
    /// anything incomplete is masked.
    fn flush(&mut self, rules: &StreamRules, closing: bool) {
        let state = std::mem::take(&mut self.state);
        self.state = match state {
            State::Body(mut body) => {
                if closing && body.framing == Framing::ToClose && self.buf.is_empty() {
                    self.complete(&mut body, rules);
                    State::Start
                } else {
                    self.withhold(&mut body);
                    State::Body(body)
                }
            }
            other => other,
        };
        if !self.buf.is_empty() {
            let n = self.buf.len();
            self.consume(n, true);
            self.lose_place(false);
        }
    }

    /// One step of the state machine; false when it needs more bytes.
    fn step(&mut self, rules: &StreamRules, pairing: &mut Pairing) -> bool {
        match self.state {
            State::Start => self.start(rules, pairing),
            State::Unknown => self.unknown(),
            State::Body(_) => {
                let State::Body(mut body) = std::mem::take(&mut self.state) else {
                    return false;
                };
                let (progress, next) = self.body_step(&mut body, rules);
                match next {
                    Next::Stay => self.state = State::Body(body),
                    Next::Done => self.complete(&mut body, rules),
                    Next::Broken => {
                        self.withhold(&mut body);
                        self.lose_place(false);
                    }
                }
                progress
            }
        }
    }

    /// At a message boundary: waits for a whole head, decides it, and follows its body.
    fn start(&mut self, rules: &StreamRules, pairing: &mut Pairing) -> bool {
        let blank = self
            .buf
            .iter()
            .take_while(|&&b| b == b'\r' || b == b'\n')
            .count();
        if blank > 0 {
            self.consume(blank, false);
            return true;
        }
        if self.buf.is_empty() {
            return false;
        }
        if !may_start_message(&self.buf) {
            self.lose_place(false);
            return true;
        }
        let Some(end) = self.head_end() else {
            if self.buf.len() > MAX_HEAD {
                self.lose_place(false);
                return true;
            }
            return false;
        };
        let Some(head) = parse_head(&self.buf[..end], rules) else {
            self.lose_place(false);
            return true;
        };
        let at = self.base;
        for m in &head.masks {
            self.mask(at + m.start as u64..at + m.end as u64);
        }
        self.consume(end, false);
        let framing = match head.asked {
            Some(asked) => {
                if pairing.waiting.len() >= MAX_WAITING {
                    pairing.lost = true;
                } else {
                    pairing.waiting.push_back(asked);
                }
                head.request_framing()
            }
            None => head.response_framing(pairing),
        };
        match framing {
            None => self.lose_place(true),
            Some(Framing::Length(0)) => self.state = State::Start,
            Some(framing) => {
                let request = head.asked.is_some();
                let paths = if request {
                    &rules.request_paths
                } else {
                    &rules.response_paths
                };
                let structural = if head.form {
                    !rules.form_fields.is_empty()
                } else {
                    !paths.is_empty()
                };
                let mode = if !structural && rules.patterns.is_empty() {
                    Mode::Clear
                } else if head.encoded {
                    Mode::Withheld
                } else {
                    self.hold = Some(self.base);
                    Mode::Buffered
                };
                self.state = State::Body(Box::new(Body {
                    framing,
                    mode,
                    request,
                    form: head.form,
                    content: Vec::new(),
                    pieces: Vec::new(),
                }));
            }
        }
        true
    }

    /// The length of the head at the start of `buf` (through its empty line), once complete.
    fn head_end(&mut self) -> Option<usize> {
        let b = &self.buf;
        let mut i = self.scan;
        while i < b.len() {
            if b[i] == b'\n' {
                match (b.get(i + 1), b.get(i + 2)) {
                    (Some(b'\n'), _) => return Some(i + 2),
                    (Some(b'\r'), Some(b'\n')) => return Some(i + 3),
                    (None, _) | (Some(b'\r'), None) => {
                        self.scan = i;
                        return None;
                    }
                    _ => {}
                }
            }
            i += 1;
        }
        self.scan = i;
        None
    }

    /// Outside messages: masks bytes up to a line that starts a message.
    fn unknown(&mut self) -> bool {
        let mut line_start = self.line_start;
        let mut i = 0;
        while i < self.buf.len() {
            if line_start {
                match starts_message(&self.buf[i..]) {
                    None => {
                        self.consume(i, true);
                        self.line_start = true;
                        return i > 0;
                    }
                    Some(true) => {
                        self.consume(i, true);
                        self.state = State::Start;
                        return true;
                    }
                    Some(false) => {}
                }
            }
            line_start = self.buf[i] == b'\n';
            i += 1;
        }
        self.consume(i, true);
        self.line_start = line_start;
        false
    }

    /// One step in a body.
    fn body_step(&mut self, body: &mut Body, rules: &StreamRules) -> (bool, Next) {
        match body.framing {
            Framing::Length(0) => (true, Next::Done),
            Framing::Length(left) | Framing::Chunked(Chunk::Data(left)) => {
                if left == 0 {
                    body.framing = Framing::Chunked(Chunk::DataEnd);
                    return (true, Next::Stay);
                }
                if self.buf.is_empty() {
                    return (false, Next::Stay);
                }
                let k = left.min(self.buf.len() as u64);
                body.framing = match body.framing {
                    Framing::Length(_) => Framing::Length(left - k),
                    _ if left == k => Framing::Chunked(Chunk::DataEnd),
                    _ => Framing::Chunked(Chunk::Data(left - k)),
                };
                self.content(body, k as usize, rules);
                (true, Next::Stay)
            }
            Framing::ToClose => {
                if self.buf.is_empty() {
                    return (false, Next::Stay);
                }
                let k = self.buf.len();
                self.content(body, k, rules);
                (true, Next::Stay)
            }
            Framing::Chunked(Chunk::DataEnd) => {
                let n = match self.buf.as_slice() {
                    [b'\r', b'\n', ..] => 2,
                    [b'\n', ..] => 1,
                    [] | [b'\r'] => return (false, Next::Stay),
                    _ => return (true, Next::Broken),
                };
                self.consume(n, false);
                body.framing = Framing::Chunked(Chunk::Size);
                (true, Next::Stay)
            }
            Framing::Chunked(Chunk::Size) => {
                let Some(len) = self.line() else {
                    return self.line_missing();
                };
                let Some(size) = chunk_size(trim_cr(&self.buf[..len - 1])) else {
                    return (true, Next::Broken);
                };
                self.consume(len, false);
                body.framing = Framing::Chunked(if size == 0 {
                    Chunk::Trailers
                } else {
                    Chunk::Data(size)
                });
                (true, Next::Stay)
            }
            Framing::Chunked(Chunk::Trailers) => {
                let Some(len) = self.line() else {
                    return self.line_missing();
                };
                let line = trim_cr(&self.buf[..len - 1]);
                if line.is_empty() {
                    self.consume(len, false);
                    return (true, Next::Done);
                }
                let masks = match field_masks(line, rules) {
                    Some(masks) => masks,
                    None => std::iter::once(0..line.len()).collect(),
                };
                let at = self.base;
                for m in masks {
                    self.mask(at + m.start as u64..at + m.end as u64);
                }
                self.consume(len, false);
                (true, Next::Stay)
            }
        }
    }

    /// The length of the line at the start of `buf`, with its `\n`.
    fn line(&self) -> Option<usize> {
        self.buf
            .iter()
            .take(MAX_LINE)
            .position(|&b| b == b'\n')
            .map(|i| i + 1)
    }

    /// No whole line yet: wait, or give up on a line that is too long.
    fn line_missing(&self) -> (bool, Next) {
        if self.buf.len() >= MAX_LINE {
            (true, Next::Broken)
        } else {
            (false, Next::Stay)
        }
    }

    /// Takes `k` bytes of body content.
    fn content(&mut self, body: &mut Body, k: usize, rules: &StreamRules) {
        match body.mode {
            Mode::Clear => self.consume(k, false),
            Mode::Withheld => self.consume(k, true),
            Mode::Buffered => {
                if body.content.len() + k > rules.max_body {
                    self.withhold(body);
                    self.consume(k, true);
                    return;
                }
                let at = self.base;
                let contiguous = body
                    .pieces
                    .last()
                    .is_some_and(|&(c, s)| s + (body.content.len() - c) as u64 == at);
                if !contiguous {
                    body.pieces.push((body.content.len(), at));
                }
                body.content.extend_from_slice(&self.buf[..k]);
                self.consume(k, false);
            }
        }
    }

    /// A buffered body cannot be redacted: what was kept is masked, and so is the rest.
    fn withhold(&mut self, body: &mut Body) {
        if body.mode != Mode::Buffered {
            return;
        }
        let all = 0..body.content.len();
        for range in stream_ranges(&body.pieces, body.content.len(), &all) {
            self.mask(range);
        }
        body.content = Vec::new();
        body.pieces.clear();
        body.mode = Mode::Withheld;
        self.hold = None;
    }

    /// The body is complete: a buffered one is redacted whole.
    fn complete(&mut self, body: &mut Body, rules: &StreamRules) {
        if body.mode == Mode::Buffered {
            let spans = content_spans(&body.content, body.request, body.form, rules);
            for span in &spans {
                for range in stream_ranges(&body.pieces, body.content.len(), span) {
                    self.masks.push(range);
                }
            }
            body.content = Vec::new();
            body.pieces.clear();
            self.hold = None;
        }
        self.state = State::Start;
    }
}

/// The stream ranges holding content bytes `span`, given where each contiguous piece of the
/// content starts.
fn stream_ranges(pieces: &[(usize, u64)], len: usize, span: &Range<usize>) -> Vec<Range<u64>> {
    let mut out = Vec::new();
    for (i, &(start, at)) in pieces.iter().enumerate() {
        let end = pieces.get(i + 1).map_or(len, |&(next, _)| next);
        let (from, to) = (span.start.max(start), span.end.min(end));
        if from < to {
            out.push(at + (from - start) as u64..at + (to - start) as u64);
        }
    }
    out
}

/// A parsed head: what its masks are and what its body's framing depends on.
struct Head {
    /// For a request, what it asked; `None` for a response.
    asked: Option<Asked>,
    status: u16,
    /// Masked ranges, relative to the head.
    masks: Vec<Range<usize>>,
    /// Content-Length: absent, valid, or invalid (`Some(None)`).
    content_length: Option<Option<u64>>,
    /// A Transfer-Encoding field was present.
    transfer_encoding: bool,
    /// Its last coding is chunked.
    chunked: bool,
    /// The body is content- or transfer-coded (other than chunked): its text is not visible.
    encoded: bool,
    /// The body is `application/x-www-form-urlencoded`.
    form: bool,
}

impl Head {
    /// A request's body framing; `None` when it cannot be known.
    fn request_framing(&self) -> Option<Framing> {
        if self.transfer_encoding {
            return self.chunked.then_some(Framing::Chunked(Chunk::Size));
        }
        match self.content_length {
            None => Some(Framing::Length(0)),
            Some(n) => n.map(Framing::Length),
        }
    }

    /// A response's body framing, pairing it with its request; `None` when it cannot be
    /// known (its request was not seen, the protocol switched, invalid framing).
    fn response_framing(&self, pairing: &mut Pairing) -> Option<Framing> {
        let status = self.status;
        if (100..200).contains(&status) && status != 101 {
            return Some(Framing::Length(0));
        }
        let asked = if pairing.lost {
            None
        } else {
            pairing.waiting.pop_front()
        };
        if status == 101 || (asked == Some(Asked::Connect) && (200..300).contains(&status)) {
            return None;
        }
        if asked == Some(Asked::Head) || status == 204 || status == 304 {
            return Some(Framing::Length(0));
        }
        let framing = if self.transfer_encoding {
            if self.chunked {
                Framing::Chunked(Chunk::Size)
            } else {
                Framing::ToClose
            }
        } else {
            match self.content_length {
                None => Framing::ToClose,
                Some(n) => Framing::Length(n?),
            }
        };
        // Without its request, a response's length is a guess (HEAD): not followed.
        (asked.is_some() || framing == Framing::Length(0)).then_some(framing)
    }
}

/// Whether `b` is a token character (RFC 9110).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Whether the bytes can be the beginning of a request or status line.
fn may_start_message(b: &[u8]) -> bool {
    let response = b"HTTP/1.";
    let n = b.len().min(response.len());
    if b[..n] == response[..n] {
        return true;
    }
    let token = b.iter().take_while(|&&c| is_tchar(c)).count();
    (1..=24).contains(&token) && (token == b.len() || b[token] == b' ')
}

/// Whether a line starting with these bytes starts a message (a well-known method, or a
/// status line); `None` when more bytes are needed to tell.
fn starts_message(b: &[u8]) -> Option<bool> {
    let mut undecided = false;
    for method in METHODS {
        if b.len() >= method.len() {
            if b.starts_with(method) {
                return Some(true);
            }
        } else if method.starts_with(b) {
            undecided = true;
        }
    }
    let status = b"HTTP/1.";
    if b.len() >= status.len() + 2 {
        if b.starts_with(status) && b[7].is_ascii_digit() && b[8] == b' ' {
            return Some(true);
        }
    } else {
        let n = b.len().min(status.len());
        if b[..n] == status[..n] && b[n..].iter().take(1).all(u8::is_ascii_digit) {
            undecided = true;
        }
    }
    if undecided { None } else { Some(false) }
}

/// A line without its `\r`.
fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The size on a chunk-size line (hex digits, then optional extensions).
fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 15 {
        return None;
    }
    let rest = &line[digits..];
    if !rest.is_empty() && !matches!(rest[0], b';' | b' ' | b'\t') {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(&line[..digits]).ok()?, 16).ok()
}

/// Text with the same byte offsets as `bytes`: each invalid UTF-8 byte becomes U+001A.
fn text_of(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for _ in chunk.invalid() {
            out.push('\u{1a}');
        }
    }
    out
}

/// The masks of one header (or trailer) field line: the value of a redacted field, and
/// pattern matches. `None` when the line is not a field.
fn field_masks(line: &[u8], rules: &StreamRules) -> Option<Vec<Range<usize>>> {
    let colon = line.iter().position(|&b| b == b':')?;
    let name = &line[..colon];
    if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
        return None;
    }
    let mut masks = rules.patterns.spans(&text_of(line));
    let name = String::from_utf8_lossy(name).to_ascii_lowercase();
    if rules.headers.contains(&name) {
        masks.push(colon + 1..line.len());
    }
    Some(masks)
}

/// Parses a complete head and finds what to mask in it; `None` when it is not a valid
/// HTTP/1 head.
fn parse_head(head: &[u8], rules: &StreamRules) -> Option<Head> {
    let mut lines = Vec::new();
    let mut start = 0;
    for (i, &b) in head.iter().enumerate() {
        if b == b'\n' {
            lines.push(start..start + trim_cr(&head[start..i]).len());
            start = i + 1;
        }
    }
    let first = head.get(lines.first()?.clone())?;
    let mut parsed = Head {
        asked: None,
        status: 0,
        masks: rules.patterns.spans(&text_of(head)),
        content_length: None,
        transfer_encoding: false,
        chunked: false,
        encoded: false,
        form: false,
    };
    if first.starts_with(b"HTTP/1.") {
        let ok = first.len() >= 12
            && first[7].is_ascii_digit()
            && first[8] == b' '
            && first[9..12].iter().all(u8::is_ascii_digit)
            && (first.len() == 12 || first[12] == b' ');
        if !ok {
            return None;
        }
        parsed.status = std::str::from_utf8(&first[9..12]).ok()?.parse().ok()?;
    } else {
        let mut parts = first.split(|&b| b == b' ');
        let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
        let ok = parts.next().is_none()
            && !method.is_empty()
            && method.iter().all(|&b| is_tchar(b))
            && !target.is_empty()
            && target.iter().all(|&b| b > b' ' && b != 0x7f)
            && version.len() == 8
            && version.starts_with(b"HTTP/1.")
            && version[7].is_ascii_digit();
        if !ok {
            return None;
        }
        parsed.asked = Some(match method {
            b"HEAD" => Asked::Head,
            b"CONNECT" => Asked::Connect,
            _ => Asked::Other,
        });
        if let Some(q) = target.iter().position(|&b| b == b'?') {
            let query_end = target
                .iter()
                .position(|&b| b == b'#')
                .unwrap_or(target.len());
            let offset = method.len() + 1 + q + 1;
            if q < query_end {
                let query = &target[q + 1..query_end];
                for m in pair_spans(query, &rules.query_params, &rules.patterns) {
                    parsed.masks.push(offset + m.start..offset + m.end);
                }
            }
        }
    }
    let mut lengths: Vec<&[u8]> = Vec::new();
    let mut codings: Vec<String> = Vec::new();
    let mut folded_masked = false;
    for range in &lines[1..] {
        let line = &head[range.clone()];
        if line.is_empty() {
            break;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            // An obsolete continuation line: part of the previous field's value.
            if folded_masked {
                parsed.masks.push(range.clone());
            }
            continue;
        }
        let colon = line.iter().position(|&b| b == b':')?;
        let name = &line[..colon];
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return None;
        }
        let name = String::from_utf8_lossy(name).to_ascii_lowercase();
        let value = String::from_utf8_lossy(&line[colon + 1..]);
        folded_masked = rules.headers.contains(&name);
        if folded_masked {
            parsed.masks.push(range.start + colon + 1..range.end);
        }
        match name.as_str() {
            "content-length" => lengths.extend(line[colon + 1..].split(|&b| b == b',')),
            "transfer-encoding" => {
                parsed.transfer_encoding = true;
                codings.extend(
                    value
                        .split(',')
                        .map(|c| c.trim().to_ascii_lowercase())
                        .filter(|c| !c.is_empty()),
                );
            }
            "content-encoding" => {
                parsed.encoded |= value
                    .split(',')
                    .map(str::trim)
                    .any(|c| !c.is_empty() && !c.eq_ignore_ascii_case("identity"));
            }
            "content-type" => {
                parsed.form |= value
                    .to_ascii_lowercase()
                    .contains("application/x-www-form-urlencoded");
            }
            _ => {}
        }
    }
    parsed.chunked = codings.last().is_some_and(|c| c == "chunked");
    parsed.encoded |= codings.iter().any(|c| c != "chunked" && c != "identity");
    if !lengths.is_empty() {
        let values: Vec<Option<u64>> = lengths
            .iter()
            .map(|v| {
                let v = v.trim_ascii();
                (!v.is_empty() && v.len() <= 19 && v.iter().all(u8::is_ascii_digit))
                    .then(|| std::str::from_utf8(v).ok()?.parse().ok())
                    .flatten()
            })
            .collect();
        parsed.content_length = Some(match values[0] {
            Some(n) if values.iter().all(|v| *v == Some(n)) => Some(n),
            _ => None,
        });
    }
    Some(parsed)
}

/// Masks of `name=value&...` text (a query string or a form body): values of the listed
/// names (compared decoded, trimmed, ignoring case), and names and values whose decoded text
/// a pattern matches.
fn pair_spans(text: &[u8], names: &[String], patterns: &Patterns) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    for pair in text.split(|&b| b == b'&') {
        let end = start + pair.len();
        let (name, value) = match pair.iter().position(|&b| b == b'=') {
            Some(eq) => (start..start + eq, Some(start + eq + 1..end)),
            None => (start..end, None),
        };
        let decoded = form_decode(&String::from_utf8_lossy(&text[name.clone()]));
        if patterns.matches(&decoded) {
            out.push(name);
        }
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            let key = decoded.trim().to_ascii_lowercase();
            let listed = names.contains(&key);
            if listed
                || patterns.matches(&form_decode(&String::from_utf8_lossy(&text[value.clone()])))
            {
                out.push(value);
            }
        }
        start = end + 1;
    }
    out
}

/// The masks of a complete body's content.
fn content_spans(
    content: &[u8],
    request: bool,
    form: bool,
    rules: &StreamRules,
) -> Vec<Range<usize>> {
    let mut spans = rules.patterns.spans(&text_of(content));
    if form {
        spans.extend(pair_spans(content, &rules.form_fields, &rules.patterns));
        return spans;
    }
    let paths = if request {
        &rules.request_paths
    } else {
        &rules.response_paths
    };
    match serde_json::from_slice::<Value>(content) {
        Ok(doc) => {
            let mut targets: HashSet<Vec<Step>> = HashSet::new();
            for path in paths {
                for location in path.query_located(&doc).locations() {
                    targets.insert(location.iter().map(Step::of).collect());
                }
            }
            let mut scan = JsonSpans {
                bytes: content,
                i: 0,
                path: Vec::new(),
                targets: &targets,
                patterns: &rules.patterns,
                out: &mut spans,
            };
            scan.value();
        }
        Err(_) if !paths.is_empty() => spans.push(0..content.len()),
        Err(_) => {}
    }
    spans
}

/// One step of a JSON location.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Step {
    Name(String),
    Index(usize),
}

impl Step {
    fn of(element: &PathElement<'_>) -> Step {
        match element {
            PathElement::Name(name) => Step::Name((*name).to_owned()),
            PathElement::Index(index) => Step::Index(*index),
        }
    }
}

/// Finds the byte ranges of selected values, and of strings a pattern matches once decoded,
/// in a document already known to be valid JSON.
struct JsonSpans<'a> {
    bytes: &'a [u8],
    i: usize,
    path: Vec<Step>,
    targets: &'a HashSet<Vec<Step>>,
    patterns: &'a Patterns,
    out: &'a mut Vec<Range<usize>>,
}

impl JsonSpans<'_> {
    fn whitespace(&mut self) {
        while self
            .bytes
            .get(self.i)
            .is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        {
            self.i += 1;
        }
    }

    /// One value (the input's nesting is bounded by serde_json's recursion limit).
    fn value(&mut self) {
        self.whitespace();
        let start = self.i;
        let selected = self.targets.contains(&self.path);
        match self.bytes.get(self.i) {
            Some(b'{') => {
                self.i += 1;
                loop {
                    self.whitespace();
                    match self.bytes.get(self.i) {
                        None => break,
                        Some(b'}') => {
                            self.i += 1;
                            break;
                        }
                        Some(b',') => {
                            self.i += 1;
                            continue;
                        }
                        Some(_) => {}
                    }
                    let (key, _) = self.string();
                    self.whitespace();
                    if self.bytes.get(self.i) == Some(&b':') {
                        self.i += 1;
                    }
                    self.path.push(Step::Name(key));
                    self.value();
                    self.path.pop();
                }
            }
            Some(b'[') => {
                self.i += 1;
                let mut index = 0;
                loop {
                    self.whitespace();
                    match self.bytes.get(self.i) {
                        None => break,
                        Some(b']') => {
                            self.i += 1;
                            break;
                        }
                        Some(b',') => {
                            self.i += 1;
                            continue;
                        }
                        Some(_) => {}
                    }
                    self.path.push(Step::Index(index));
                    self.value();
                    self.path.pop();
                    index += 1;
                }
            }
            Some(b'"') => {
                // Matches in the raw text are masked already; an escaped string can hide one.
                let (text, escaped) = self.string();
                if escaped && self.patterns.matches(&text) {
                    self.out.push(start..self.i);
                }
            }
            Some(_) => {
                self.i += 1;
                while self.bytes.get(self.i).is_some_and(|b| {
                    !matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
                }) {
                    self.i += 1;
                }
            }
            None => {}
        }
        if selected {
            self.out.push(start..self.i);
        }
    }

    /// A string token, decoded, and whether it held escapes.
    fn string(&mut self) -> (String, bool) {
        let start = self.i;
        self.i += 1;
        let mut escaped = false;
        while let Some(&b) = self.bytes.get(self.i) {
            match b {
                b'\\' => {
                    escaped = true;
                    self.i += 2;
                }
                b'"' => {
                    self.i += 1;
                    break;
                }
                _ => self.i += 1,
            }
        }
        self.i = self.i.min(self.bytes.len());
        let raw = &self.bytes[start..self.i];
        let text = if escaped {
            serde_json::from_slice::<String>(raw).unwrap_or_default()
        } else if raw.len() >= 2 {
            String::from_utf8_lossy(&raw[1..raw.len() - 1]).into_owned()
        } else {
            String::new()
        };
        (text, escaped)
    }
}

#[cfg(test)]
#[path = "stream_tests.rs"]
mod tests;
