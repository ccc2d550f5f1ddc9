//! One direction of a connection: stream offsets, gaps, and the message state machine.

use std::collections::VecDeque;

use super::body::{BodyAcc, Coding, Limits};
use super::core::{Core, Pairing, RequestFlags};
use super::head::{HeadEvent, HeadReader, ParsedHead, PartialHead};
use super::{Body, HttpRequest, HttpResponse, HttpSettings, HttpVersion, Stream};

/// Longest chunk-size line (size, extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;

/// Steps without progress after which a loop gives up (never reached by a correct machine;
/// a guard against spinning on input nobody foresaw).
const MAX_IDLE_STEPS: usize = 16;

/// Fixed memory cost counted for each queued segment.
const SEG_COST: usize = 64;

/// Adds to a byte counter that input can drive arbitrarily high.
fn add(counter: &mut u64, n: u64) {
    *counter = counter.saturating_add(n);
}

/// Input not yet consumed.
enum Seg {
    /// `bytes[start..]` not consumed yet.
    Data {
        bytes: Vec<u8>,
        start: usize,
        time: u64,
    },
    Gap {
        len: u64,
        time: u64,
    },
}

/// Where a chunked or length-delimited body stands.
#[derive(Clone, Debug)]
enum BodyPhase {
    /// `n` more bytes of a Content-Length body.
    Length(u64),
    /// Reading a chunk-size line.
    ChunkSize(Vec<u8>),
    /// `n` more bytes of chunk data.
    ChunkData(u64),
    /// The CRLF after chunk data; `true` once the CR was seen.
    ChunkEnd(bool),
    /// Trailer section: bytes of the current line, bytes of the section.
    Trailers { line: usize, total: usize },
    /// Until the connection closes.
    Close,
}

/// Where the direction stands.
enum Phase {
    /// Reading a head (or looking for one).
    Head,
    /// A response head waiting to learn which request it answers.
    WaitPair(Box<Waiting>),
    /// Reading a body.
    Body(BodyPhase),
    /// After an Upgrade or CONNECT request: waiting for the response to say whether what
    /// follows is still HTTP.
    Paused(u64),
    /// Nothing more is HTTP.
    Upgraded,
}

/// A response (complete head, or what a cut head told) waiting to be paired.
struct Waiting {
    head: Result<ParsedHead, PartialHead>,
    start_ns: u64,
    end_ns: u64,
}

/// How a message body is delimited.
enum Framing {
    None,
    Length(u64),
    Chunked,
    Close,
    Upgrade,
    Invalid,
}

/// The message being read.
struct Msg {
    head: ParsedHead,
    start_ns: u64,
    end_ns: u64,
    body: BodyAcc,
    incomplete: bool,
    /// Request: its own entry. Response: the request it answers (`None`: orphan).
    entry: Option<u64>,
    /// Request: pause after it (Upgrade header or CONNECT).
    pause_after: bool,
}

/// Result of one consumption step.
enum Step {
    /// Took this many bytes (possibly 0 when the phase changed).
    Used(u64),
    /// Cannot go on until something else happens.
    Blocked,
}

/// One direction of the connection.
pub(super) struct Side {
    dir: Stream,
    started: bool,
    /// Offset just past the last byte received (data or gap).
    next_off: u64,
    /// Offset of the next byte to consume.
    pos: u64,
    /// Time of the latest input.
    last_time: u64,
    queue: VecDeque<Seg>,
    /// Memory of `queue`: data bytes not consumed plus a fixed cost per segment.
    queued: usize,
    head: HeadReader,
    phase: Phase,
    msg: Option<Msg>,
    /// No more input will come.
    pub closed: bool,
    /// A head was parsed on this stream: from then on, losing sync means bytes of a
    /// message were lost (before, it is only the capture starting mid-stream).
    ever_synced: bool,
}

impl Side {
    /// The entry and header fields of the request whose body is being read, if any.
    pub(super) fn reading_request(&self) -> Option<(u64, &[super::HeaderField])> {
        let msg = self.msg.as_ref()?;
        if self.is_response() {
            return None;
        }
        Some((msg.entry?, &msg.head.headers))
    }
}

fn lower_list(headers: &[(String, Vec<u8>)], name: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut seen = false;
    for (n, v) in headers {
        if n.eq_ignore_ascii_case(name) {
            seen = true;
            out.extend(
                String::from_utf8_lossy(v)
                    .split(',')
                    .map(|s| s.trim().to_ascii_lowercase())
                    .filter(|s| !s.is_empty()),
            );
        }
    }
    seen.then_some(out)
}

fn has_header(headers: &[(String, Vec<u8>)], name: &str) -> bool {
    headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name))
}

/// Content-Length: `Ok(None)` absent, `Err` invalid or conflicting.
fn content_length(headers: &[(String, Vec<u8>)]) -> Result<Option<u64>, ()> {
    let mut value = None;
    for (n, v) in headers {
        if !n.eq_ignore_ascii_case("content-length") {
            continue;
        }
        for part in v.split(|&b| b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
                return Err(());
            }
            let n = part
                .iter()
                .fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0'));
            if value.is_some_and(|v| v != n) {
                return Err(());
            }
            value = Some(n);
        }
    }
    Ok(value)
}

/// Transfer-Encoding: `None` absent; else whether chunked is the final coding, and the
/// other codings.
fn transfer_coding(headers: &[(String, Vec<u8>)]) -> Option<(bool, Vec<String>)> {
    let list = lower_list(headers, "transfer-encoding")?;
    let chunked_last = list.last().is_some_and(|c| c == "chunked")
        && list.iter().filter(|c| *c == "chunked").count() == 1;
    let others = list.into_iter().filter(|c| c != "chunked").collect();
    Some((chunked_last, others))
}

fn request_framing(h: &ParsedHead) -> Framing {
    if let Some((chunked, _)) = transfer_coding(&h.headers) {
        return if chunked {
            Framing::Chunked
        } else {
            Framing::Invalid
        };
    }
    match content_length(&h.headers) {
        Ok(Some(0)) | Ok(None) => Framing::None,
        Ok(Some(n)) => Framing::Length(n),
        Err(()) => Framing::Invalid,
    }
}

fn response_framing(h: &ParsedHead, req: RequestFlags) -> Framing {
    let status = h.status;
    if status == 101 || (req.is_connect && (200..300).contains(&status)) {
        return Framing::Upgrade;
    }
    if req.is_head || (100..200).contains(&status) || status == 204 || status == 304 {
        return Framing::None;
    }
    if let Some((chunked, _)) = transfer_coding(&h.headers) {
        return if chunked {
            Framing::Chunked
        } else {
            Framing::Close
        };
    }
    match content_length(&h.headers) {
        Ok(Some(0)) => Framing::None,
        Ok(Some(n)) => Framing::Length(n),
        Ok(None) => Framing::Close,
        Err(()) => Framing::Invalid,
    }
}

/// Whether the message's Content-Type is one the settings allow. A message without one is kept
/// only when every type is allowed and it has a body (so a bodiless GET gets no empty body).
fn content_type_allowed(
    settings: &HttpSettings,
    headers: &[(String, Vec<u8>)],
    framing: &Framing,
) -> bool {
    let content_type = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-type"));
    match content_type {
        Some((_, v)) => super::content_type_allowed(&settings.allowed_content_types, v),
        None => !matches!(framing, Framing::None) && settings.allowed_content_types.is_empty(),
    }
}

/// The codings to undo: content codings, then transfer codings other than chunked.
fn body_coding(headers: &[(String, Vec<u8>)]) -> Coding {
    let mut names = lower_list(headers, "content-encoding").unwrap_or_default();
    if let Some((_, others)) = transfer_coding(headers) {
        names.extend(others);
    }
    Coding::from_names(&names)
}

fn limits(settings: &HttpSettings) -> Limits {
    Limits {
        limit: settings.body_max_size,
        ratio: settings.max_decompression_ratio,
        decoder_memory: settings.max_decoder_memory,
    }
}

fn version(minor: Option<u8>) -> HttpVersion {
    if minor == Some(0) {
        HttpVersion::Http10
    } else {
        HttpVersion::Http11
    }
}

/// The body of a message whose body is unknown (head cut or framing invalid).
fn unknown_body() -> Body {
    Body {
        captured: false,
        bytes: Vec::new(),
        truncated: false,
        wire_len: 0,
        incomplete: true,
        decode_error: None,
        shed: false,
    }
}

/// The accumulator of a body that starts now: shed under overload when it would be kept.
fn body_acc(core: &Core, captured: bool, headers: &[(String, Vec<u8>)]) -> BodyAcc {
    let settings = &core.settings;
    if captured && core.shed_bodies {
        return BodyAcc::shed(limits(settings));
    }
    BodyAcc::new(captured, body_coding(headers), limits(settings))
}

impl Side {
    /// A direction, nothing received yet.
    pub(super) fn new(dir: Stream) -> Self {
        Side {
            dir,
            started: false,
            next_off: 0,
            pos: 0,
            last_time: 0,
            queue: VecDeque::new(),
            queued: 0,
            head: HeadReader::new(dir == Stream::Response),
            phase: Phase::Head,
            msg: None,
            closed: false,
            ever_synced: false,
        }
    }

    fn is_response(&self) -> bool {
        self.dir == Stream::Response
    }

    /// Whether nothing after this point is HTTP.
    pub(super) fn upgraded(&self) -> bool {
        matches!(self.phase, Phase::Upgraded)
    }

    /// The earliest time a request head not yet known could have started.
    pub(super) fn horizon(&self) -> u64 {
        if self.closed || self.upgraded() {
            return u64::MAX;
        }
        if !self.head.is_empty() {
            return self.head.start_time();
        }
        match self.queue.front() {
            Some(Seg::Data { time, .. } | Seg::Gap { time, .. }) => *time,
            None if self.started => self.last_time,
            None => 0,
        }
    }

    /// Since when a response head has been waiting for its request.
    pub(super) fn waiting_since(&self) -> Option<u64> {
        match &self.phase {
            Phase::WaitPair(w) => Some(w.start_ns),
            _ => None,
        }
    }

    /// Memory held by this direction.
    pub(super) fn held_bytes(&self) -> usize {
        let msg = self.msg.as_ref().map_or(0, |m| {
            m.body.held_bytes()
                + m.head
                    .headers
                    .iter()
                    .map(|(n, v)| 48 + n.len() + v.len())
                    .sum::<usize>()
                + m.head.target.len()
        });
        let phase = match &self.phase {
            Phase::Body(BodyPhase::ChunkSize(line)) => line.capacity(),
            Phase::WaitPair(w) => match &w.head {
                Ok(h) => h.headers.iter().map(|(n, v)| 48 + n.len() + v.len()).sum(),
                Err(p) => p.headers.iter().map(|(n, v)| 48 + n.len() + v.len()).sum(),
            },
            _ => 0,
        };
        let queue: usize = self
            .queue
            .iter()
            .map(|s| match s {
                Seg::Data { bytes, .. } => bytes.capacity(),
                Seg::Gap { .. } => 0,
            })
            .sum();
        queue + self.queue.len() * SEG_COST + self.head.held_bytes() + msg + phase
    }

    /// Sheds the body being read, if any (overload).
    pub(super) fn shed_body(&mut self) {
        if let Some(msg) = self.msg.as_mut() {
            msg.body.shed_now();
        }
    }

    /// Where the parser needs no bytes before, if it is in such a stretch: see
    /// [`super::HttpConnection::skip_until`].
    pub(super) fn skip_until(&self) -> Option<u64> {
        if self.upgraded() {
            return Some(u64::MAX);
        }
        if !self.started || !self.queue.is_empty() || self.closed {
            return None;
        }
        let needed = self.msg.as_ref().is_none_or(|m| m.body.needed());
        if needed {
            return None;
        }
        match &self.phase {
            Phase::Body(BodyPhase::Length(n) | BodyPhase::ChunkData(n)) if *n > 0 => {
                Some(self.pos.saturating_add(*n))
            }
            Phase::Body(BodyPhase::Close) => Some(u64::MAX),
            _ => None,
        }
    }

    /// Places `[off, off+len)` on the stream: returns how many leading bytes were already
    /// seen (to drop) and the length of a hole before it (bytes never reported).
    fn place(&mut self, core: &mut Core, off: u64, len: u64) -> (u64, u64) {
        if !self.started {
            self.started = true;
            self.next_off = off;
            self.pos = off;
        }
        let end = off.saturating_add(len);
        if end <= self.next_off {
            add(&mut core.stats.duplicate_bytes, len);
            return (len, 0);
        }
        let (dup, hole) = if off < self.next_off {
            (self.next_off - off, 0)
        } else {
            (0, off - self.next_off)
        };
        add(&mut core.stats.duplicate_bytes, dup);
        self.next_off = end;
        (dup, hole)
    }

    /// Bytes `[off, off+data.len())` arrived at `time`.
    pub(super) fn on_data(&mut self, core: &mut Core, off: u64, data: &[u8], time: u64) {
        if self.closed || data.is_empty() {
            return;
        }
        let (dup, hole) = self.place(core, off, data.len() as u64);
        let data = data
            .get(usize::try_from(dup).unwrap_or(usize::MAX)..)
            .unwrap_or_default();
        if data.is_empty() {
            return;
        }
        self.last_time = time;
        if hole > 0 {
            self.push(Seg::Gap { len: hole, time });
        }
        if self.queue.is_empty() {
            let used = self.eat(core, data, time);
            if let Some(rest) = data.get(used..)
                && !rest.is_empty()
            {
                self.push(Seg::Data {
                    bytes: rest.to_vec(),
                    start: 0,
                    time,
                });
            }
        } else {
            self.push(Seg::Data {
                bytes: data.to_vec(),
                start: 0,
                time,
            });
        }
        self.run(core);
    }

    /// Bytes `[off, off+len)` will never come.
    pub(super) fn on_gap(&mut self, core: &mut Core, off: u64, len: u64, time: u64) {
        if self.closed || len == 0 {
            return;
        }
        let (dup, hole) = self.place(core, off, len);
        let len = (len - dup).saturating_add(hole);
        if len == 0 {
            return;
        }
        self.last_time = time;
        self.push(Seg::Gap { len, time });
        self.run(core);
    }

    /// Consumes as much of `data` as possible; returns how much was taken.
    fn eat(&mut self, core: &mut Core, data: &[u8], time: u64) -> usize {
        let mut i = 0usize;
        let mut idle = 0;
        while i < data.len() {
            self.refresh(core);
            match self.step_data(core, &data[i..], time) {
                Step::Blocked => break,
                Step::Used(n) => {
                    let n = usize::try_from(n).unwrap_or(usize::MAX).min(data.len() - i);
                    if n == 0 {
                        idle += 1;
                        if idle > MAX_IDLE_STEPS {
                            break;
                        }
                    } else {
                        idle = 0;
                    }
                    i += n;
                    self.pos = self.pos.saturating_add(n as u64);
                }
            }
        }
        i
    }

    /// Queues input behind what is already waiting (data of the same time as the last
    /// queued data joins it).
    fn push(&mut self, seg: Seg) {
        if let (
            Seg::Data {
                bytes: more,
                start: 0,
                time,
            },
            Some(Seg::Data {
                bytes, time: last, ..
            }),
        ) = (&seg, self.queue.back_mut())
            && *last == *time
        {
            bytes.extend_from_slice(more);
            self.queued += more.len();
            return;
        }
        self.queued += SEG_COST
            + match &seg {
                Seg::Data { bytes, start, .. } => bytes.len().saturating_sub(*start),
                Seg::Gap { .. } => 0,
            };
        self.queue.push_back(seg);
    }

    /// Consumes queued input until blocked or empty. Returns whether anything changed.
    pub(super) fn run(&mut self, core: &mut Core) -> bool {
        let mut progress = self.refresh(core);
        let mut idle = 0;
        while let Some(seg) = self.queue.pop_front() {
            match seg {
                Seg::Data { bytes, start, time } => {
                    let rest = bytes.get(start..).unwrap_or_default();
                    let used = self.eat(core, rest, time);
                    if used > 0 {
                        progress = true;
                    }
                    self.queued = self.queued.saturating_sub(used);
                    if used < rest.len() {
                        let start = start + used;
                        self.queue.push_front(Seg::Data { bytes, start, time });
                        break;
                    }
                    self.queued = self.queued.saturating_sub(SEG_COST);
                }
                Seg::Gap { len, time } => {
                    self.queued = self.queued.saturating_sub(SEG_COST);
                    self.refresh(core);
                    match self.step_gap(core, len, time) {
                        Step::Blocked => {
                            self.queued += SEG_COST;
                            self.queue.push_front(Seg::Gap { len, time });
                            break;
                        }
                        Step::Used(n) => {
                            let n = n.min(len);
                            self.pos = self.pos.saturating_add(n);
                            progress = true;
                            if n < len {
                                if n == 0 {
                                    idle += 1;
                                    if idle > MAX_IDLE_STEPS {
                                        // Never expected: drop the gap rather than spin.
                                        add(&mut core.stats.lost_bytes, len);
                                        self.pos = self.pos.saturating_add(len);
                                        continue;
                                    }
                                } else {
                                    idle = 0;
                                }
                                self.queued += SEG_COST;
                                self.queue.push_front(Seg::Gap { len: len - n, time });
                            }
                        }
                    }
                }
            }
        }
        progress |= self.refresh(core);
        progress
    }

    /// Applies what the other direction decided: upgrade, pause lifted, pairing possible.
    /// Returns whether the phase changed.
    fn refresh(&mut self, core: &mut Core) -> bool {
        if self.upgrade_due(core) {
            self.enter_upgraded(core);
            return true;
        }
        let mut changed = false;
        for _ in 0..MAX_IDLE_STEPS {
            match &self.phase {
                Phase::Paused(id) => {
                    let id = *id;
                    let cap = self.queued > core.settings.max_header_bytes;
                    if cap {
                        core.stats.pause_overflows += 1;
                    }
                    if cap || self.closed || core.resolved(id) {
                        self.phase = Phase::Head;
                        changed = true;
                    } else {
                        break;
                    }
                }
                Phase::WaitPair(_) => {
                    if self.resolve(core) {
                        changed = true;
                    } else {
                        break;
                    }
                }
                _ => break,
            }
            if self.upgrade_due(core) {
                self.enter_upgraded(core);
                return true;
            }
        }
        changed
    }

    /// Whether the connection switched protocols and this direction must stop now. The
    /// request that asked for the switch is read to its end first: its content precedes the
    /// switch (RFC 9110, 7.8).
    fn upgrade_due(&self, core: &Core) -> bool {
        if !core.upgraded || self.upgraded() {
            return false;
        }
        let finishing = !self.is_response()
            && matches!(self.phase, Phase::Body(_))
            && self
                .msg
                .as_ref()
                .and_then(|m| m.entry)
                .zip(core.upgrade_entry)
                .is_some_and(|(mine, upgraded)| mine <= upgraded);
        !finishing
    }

    fn enter_upgraded(&mut self, core: &mut Core) {
        if let Some(msg) = self.msg.take() {
            let in_body = matches!(self.phase, Phase::Body(_));
            if in_body {
                self.finish(core, msg, true);
            } else {
                self.finish(core, msg, false);
            }
        }
        self.phase = Phase::Upgraded;
        self.head.clear();
        let dropped: usize = self
            .queue
            .iter()
            .map(|s| match s {
                Seg::Data { bytes, start, .. } => bytes.len().saturating_sub(*start),
                Seg::Gap { len, .. } => usize::try_from(*len).unwrap_or(usize::MAX),
            })
            .fold(0usize, usize::saturating_add);
        add(&mut core.stats.upgraded_bytes, dropped as u64);
        self.queue.clear();
        self.queued = 0;
    }

    /// Takes bytes from `data` in the current phase.
    fn step_data(&mut self, core: &mut Core, data: &[u8], time: u64) -> Step {
        match &mut self.phase {
            Phase::Upgraded => {
                add(&mut core.stats.upgraded_bytes, data.len() as u64);
                Step::Used(data.len() as u64)
            }
            Phase::Paused(_) | Phase::WaitPair(_) => Step::Blocked,
            Phase::Head => self.step_head(core, data, time),
            Phase::Body(_) => self.step_body(core, data, time),
        }
    }

    fn step_head(&mut self, core: &mut Core, data: &[u8], time: u64) -> Step {
        let max = core.settings.max_header_bytes;
        let step = self.head.feed(data, time, max, &mut core.stats);
        if let Some(t) = step.lost_sync_at
            && self.is_response()
        {
            core.response_loss(t);
        }
        match step.event {
            HeadEvent::NeedMore => {}
            HeadEvent::Complete => self.on_head(core, time),
            HeadEvent::Oversize => {
                core.stats.oversized_heads += 1;
                self.lose_head(core, time);
            }
        }
        Step::Used(step.used as u64)
    }

    /// The head reader holds a complete head.
    fn on_head(&mut self, core: &mut Core, time: u64) {
        let start_ns = self.head.start_time();
        let parsed = self.head.parse();
        let Some(head) = parsed else {
            core.stats.parse_errors += 1;
            self.lose_head(core, time);
            return;
        };
        self.head.clear();
        self.head.synced = true;
        self.ever_synced = true;
        if self.is_response() {
            if (100..200).contains(&head.status) && head.status != 101 {
                return;
            }
            self.phase = Phase::WaitPair(Box::new(Waiting {
                head: Ok(head),
                start_ns,
                end_ns: time,
            }));
            self.resolve(core);
            return;
        }
        let framing = request_framing(&head);
        let flags = RequestFlags {
            is_head: head.method.eq_ignore_ascii_case("HEAD"),
            is_connect: head.method.eq_ignore_ascii_case("CONNECT"),
        };
        let entry = core.new_request(start_ns, flags);
        if matches!(framing, Framing::Invalid) {
            core.stats.parse_errors += 1;
            self.give_up_request(core, entry, &head, start_ns, time);
            self.lose_sync(core, time);
            return;
        }
        let settings = &core.settings;
        let captured = settings.capture_request_body
            && content_type_allowed(settings, &head.headers, &framing);
        let pause_after = flags.is_connect || has_header(&head.headers, "upgrade");
        let body = body_acc(core, captured, &head.headers);
        let msg = Msg {
            head,
            start_ns,
            end_ns: time,
            body,
            incomplete: false,
            entry,
            pause_after,
        };
        self.begin_body(core, msg, framing);
    }

    /// Starts reading the body of `msg` (or finishes it when it has none).
    fn begin_body(&mut self, core: &mut Core, mut msg: Msg, framing: Framing) {
        match framing {
            Framing::None => self.finish(core, msg, false),
            Framing::Upgrade => {
                let entry = msg.entry;
                self.finish(core, msg, false);
                core.upgrade(entry);
            }
            Framing::Invalid => {
                core.stats.parse_errors += 1;
                msg.body.mark_incomplete();
                self.finish(core, msg, true);
                self.lose_sync(core, self.head.last_time);
            }
            Framing::Length(n) => {
                msg.body.expect_more();
                msg.body.expect_len(n);
                self.msg = Some(msg);
                self.phase = Phase::Body(BodyPhase::Length(n));
            }
            Framing::Chunked => {
                self.msg = Some(msg);
                self.phase = Phase::Body(BodyPhase::ChunkSize(Vec::new()));
            }
            Framing::Close => {
                self.msg = Some(msg);
                self.phase = Phase::Body(BodyPhase::Close);
            }
        }
    }

    /// Emits a request known only by its head (framing invalid, or head cut).
    fn give_up_request(
        &mut self,
        core: &mut Core,
        entry: Option<u64>,
        head: &ParsedHead,
        start_ns: u64,
        end_ns: u64,
    ) {
        let Some(id) = entry else { return };
        let headers = if core.settings.capture_request_headers {
            head.headers.clone()
        } else {
            Vec::new()
        };
        let req = HttpRequest {
            method: head.method.clone(),
            target: head.target.clone(),
            version: version(Some(head.minor)),
            headers,
            body: unknown_body(),
            start_ns,
            end_ns,
        };
        core.request_done(id, req, true);
    }

    /// The stream is no longer at a known message boundary.
    fn lose_sync(&mut self, core: &mut Core, time: u64) {
        self.head.clear();
        if self.head.synced {
            self.head.synced = false;
            core.stats.resyncs += 1;
        }
        if self.is_response() && self.ever_synced {
            core.response_loss(time);
        }
        self.phase = Phase::Head;
    }

    /// The head being read cannot be completed (cut by a gap, oversized, unparsable, or the
    /// connection closed): emits what it tells when it is surely a message start, then
    /// resynchronises.
    fn lose_head(&mut self, core: &mut Core, time: u64) {
        let start_ns = self.head.start_time();
        let partial = self.head.partial();
        self.lose_sync(core, time);
        let Some(p) = partial else { return };
        if self.is_response() {
            if p.fields
                .status
                .is_some_and(|s| (100..200).contains(&s) && s != 101)
            {
                return;
            }
            self.phase = Phase::WaitPair(Box::new(Waiting {
                head: Err(p),
                start_ns,
                end_ns: time,
            }));
            self.resolve(core);
            return;
        }
        let method = p.fields.method.clone().unwrap_or_default();
        let flags = RequestFlags {
            is_head: method.eq_ignore_ascii_case("HEAD"),
            is_connect: method.eq_ignore_ascii_case("CONNECT"),
        };
        let entry = core.new_request(start_ns, flags);
        let head = ParsedHead {
            method,
            target: p.fields.target.unwrap_or_default(),
            minor: p.fields.minor.unwrap_or(1),
            headers: p.headers,
            ..ParsedHead::default()
        };
        self.give_up_request(core, entry, &head, start_ns, time);
    }

    /// Tries to pair the waiting response. Returns whether it was decided.
    fn resolve(&mut self, core: &mut Core) -> bool {
        let Phase::WaitPair(w) = &self.phase else {
            return false;
        };
        let cap = core
            .settings
            .max_header_bytes
            .saturating_add(core.settings.body_max_size);
        let force = self.closed || self.queued > cap;
        let decision = core.decide(w.start_ns, force);
        let entry = match decision {
            Pairing::Wait => return false,
            Pairing::Orphan => {
                core.stats.orphan_responses += 1;
                None
            }
            Pairing::Entry(id) => {
                core.pair(id);
                Some(id)
            }
        };
        let Phase::WaitPair(w) = std::mem::replace(&mut self.phase, Phase::Head) else {
            return false;
        };
        let Waiting {
            head,
            start_ns,
            end_ns,
        } = *w;
        let head = match head {
            Ok(h) => h,
            Err(p) => {
                let headers = if core.settings.capture_response_headers {
                    p.headers
                } else {
                    Vec::new()
                };
                let resp = HttpResponse {
                    status: p.fields.status.unwrap_or(0),
                    reason: p.fields.reason.unwrap_or_default(),
                    version: version(p.fields.minor),
                    headers,
                    body: unknown_body(),
                    start_ns,
                    end_ns,
                };
                if resp.status == 101 {
                    core.response_done(entry, resp, true);
                    core.upgrade(entry);
                } else {
                    core.response_done(entry, resp, true);
                }
                return true;
            }
        };
        let flags = entry.map_or_else(RequestFlags::default, |id| core.flags(id));
        let framing = response_framing(&head, flags);
        let settings = &core.settings;
        let captured = entry.is_some()
            && settings.capture_response_body
            && content_type_allowed(settings, &head.headers, &framing);
        let body = body_acc(core, captured, &head.headers);
        let msg = Msg {
            head,
            start_ns,
            end_ns,
            body,
            incomplete: false,
            entry,
            pause_after: false,
        };
        self.begin_body(core, msg, framing);
        true
    }

    /// Completes `msg` and hands it over.
    fn finish(&mut self, core: &mut Core, msg: Msg, incomplete: bool) {
        let incomplete = incomplete || msg.incomplete;
        let body = msg.body.finish();
        let incomplete = incomplete || body.incomplete;
        if body.decode_error.is_some() {
            core.stats.decode_errors += 1;
        }
        if body.truncated {
            core.stats.truncated_bodies += 1;
        }
        self.phase = Phase::Head;
        if self.is_response() {
            let headers = if core.settings.capture_response_headers {
                msg.head.headers
            } else {
                Vec::new()
            };
            let resp = HttpResponse {
                status: msg.head.status,
                reason: msg.head.reason,
                version: version(Some(msg.head.minor)),
                headers,
                body,
                start_ns: msg.start_ns,
                end_ns: msg.end_ns,
            };
            core.response_done(msg.entry, resp, incomplete);
            return;
        }
        let Some(id) = msg.entry else { return };
        let headers = if core.settings.capture_request_headers {
            msg.head.headers
        } else {
            Vec::new()
        };
        let req = HttpRequest {
            method: msg.head.method,
            target: msg.head.target,
            version: version(Some(msg.head.minor)),
            headers,
            body,
            start_ns: msg.start_ns,
            end_ns: msg.end_ns,
        };
        core.request_done(id, req, incomplete);
        if msg.pause_after && !core.resolved(id) {
            self.phase = Phase::Paused(id);
        }
    }

    /// Ends the current message (framing lost or connection closed).
    fn end_msg(&mut self, core: &mut Core, incomplete: bool) {
        if let Some(mut msg) = self.msg.take() {
            if incomplete {
                msg.body.mark_incomplete();
            }
            self.finish(core, msg, incomplete);
        } else {
            self.phase = Phase::Head;
        }
    }

    fn step_body(&mut self, core: &mut Core, data: &[u8], time: u64) -> Step {
        let Phase::Body(bp) = &mut self.phase else {
            return Step::Blocked;
        };
        let Some(msg) = self.msg.as_mut() else {
            self.phase = Phase::Head;
            return Step::Used(0);
        };
        msg.end_ns = time;
        match bp {
            BodyPhase::Length(n) => {
                let take = usize::try_from(*n).unwrap_or(usize::MAX).min(data.len());
                msg.body.push(&data[..take]);
                *n -= take as u64;
                if *n == 0 {
                    self.end_msg(core, false);
                } else {
                    msg.body.expect_more();
                }
                Step::Used(take as u64)
            }
            BodyPhase::ChunkData(n) => {
                let take = usize::try_from(*n).unwrap_or(usize::MAX).min(data.len());
                msg.body.push(&data[..take]);
                *n -= take as u64;
                if *n == 0 {
                    *bp = BodyPhase::ChunkEnd(false);
                } else {
                    msg.body.expect_more();
                }
                Step::Used(take as u64)
            }
            BodyPhase::Close => {
                msg.body.push(data);
                Step::Used(data.len() as u64)
            }
            BodyPhase::ChunkEnd(seen_cr) => {
                let b = data[0];
                match (b, *seen_cr) {
                    (b'\r', false) => *seen_cr = true,
                    (b'\n', _) => *bp = BodyPhase::ChunkSize(Vec::new()),
                    _ => {
                        core.stats.parse_errors += 1;
                        self.end_msg(core, true);
                        self.lose_sync(core, time);
                        return Step::Used(0);
                    }
                }
                Step::Used(1)
            }
            BodyPhase::ChunkSize(line) => {
                let upto = data.iter().position(|&b| b == b'\n');
                let take = upto.map_or(data.len(), |p| p + 1);
                let room = (MAX_CHUNK_LINE + 1).saturating_sub(line.len());
                let take = take.min(room);
                line.extend_from_slice(&data[..take]);
                if line.last() != Some(&b'\n') {
                    if line.len() > MAX_CHUNK_LINE {
                        core.stats.parse_errors += 1;
                        self.end_msg(core, true);
                        self.lose_sync(core, time);
                    }
                    return Step::Used(take as u64);
                }
                match parse_chunk_size(line) {
                    Some(0) => *bp = BodyPhase::Trailers { line: 0, total: 0 },
                    Some(size) => {
                        *bp = BodyPhase::ChunkData(size);
                        msg.body.expect_more();
                    }
                    None => {
                        core.stats.parse_errors += 1;
                        self.end_msg(core, true);
                        self.lose_sync(core, time);
                    }
                }
                Step::Used(take as u64)
            }
            BodyPhase::Trailers { line, total } => {
                let max = core.settings.max_header_bytes;
                let mut used = 0usize;
                for &b in data {
                    used += 1;
                    *total += 1;
                    if b == b'\n' {
                        if *line == 0 {
                            self.end_msg(core, false);
                            return Step::Used(used as u64);
                        }
                        *line = 0;
                    } else if b != b'\r' || *line > 0 {
                        *line += 1;
                    }
                    if *total > max {
                        core.stats.parse_errors += 1;
                        self.end_msg(core, false);
                        self.lose_sync(core, time);
                        return Step::Used(used as u64);
                    }
                }
                Step::Used(used as u64)
            }
        }
    }

    /// `len` bytes never come, in the current phase.
    fn step_gap(&mut self, core: &mut Core, len: u64, time: u64) -> Step {
        match &mut self.phase {
            Phase::Upgraded => {
                add(&mut core.stats.upgraded_bytes, len);
                Step::Used(len)
            }
            Phase::Paused(_) | Phase::WaitPair(_) => Step::Blocked,
            Phase::Head => {
                if !self.head.is_empty() {
                    self.lose_head(core, time);
                    return Step::Used(0);
                }
                add(&mut core.stats.lost_bytes, len);
                self.lose_sync(core, time);
                Step::Used(len)
            }
            Phase::Body(bp) => {
                let Some(msg) = self.msg.as_mut() else {
                    self.phase = Phase::Head;
                    return Step::Used(0);
                };
                msg.end_ns = time;
                match bp {
                    BodyPhase::Length(n) | BodyPhase::ChunkData(n) => {
                        let take = len.min(*n);
                        if msg.body.gap(take) {
                            msg.incomplete = true;
                            add(&mut core.stats.lost_bytes, take);
                        } else {
                            add(&mut core.stats.skipped_bytes, take);
                        }
                        *n -= take;
                        if *n == 0 {
                            if matches!(bp, BodyPhase::Length(_)) {
                                self.end_msg(core, false);
                            } else {
                                *bp = BodyPhase::ChunkEnd(false);
                            }
                        }
                        Step::Used(take)
                    }
                    BodyPhase::Close => {
                        if msg.body.gap(len) {
                            msg.incomplete = true;
                            add(&mut core.stats.lost_bytes, len);
                        } else {
                            add(&mut core.stats.skipped_bytes, len);
                        }
                        Step::Used(len)
                    }
                    BodyPhase::ChunkSize(_) | BodyPhase::ChunkEnd(_) => {
                        self.end_msg(core, true);
                        self.lose_sync(core, time);
                        Step::Used(0)
                    }
                    BodyPhase::Trailers { .. } => {
                        self.end_msg(core, false);
                        self.lose_sync(core, time);
                        Step::Used(0)
                    }
                }
            }
        }
    }

    /// No more input: ends whatever is in progress.
    pub(super) fn finalize(&mut self, core: &mut Core, time: u64) {
        self.closed = true;
        self.run(core);
        for _ in 0..MAX_IDLE_STEPS {
            match &self.phase {
                Phase::Upgraded => return,
                Phase::Paused(_) => self.phase = Phase::Head,
                Phase::WaitPair(_) => {
                    if !self.resolve(core) {
                        return;
                    }
                }
                Phase::Head => {
                    if self.head.is_empty() {
                        return;
                    }
                    self.lose_head(core, time);
                }
                Phase::Body(BodyPhase::Close) => self.end_msg(core, false),
                Phase::Body(BodyPhase::Trailers { .. }) => self.end_msg(core, false),
                Phase::Body(_) => self.end_msg(core, true),
            }
            self.run(core);
        }
    }
}

/// Parses a chunk-size line (`\n` included): hex size, optional extensions.
fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\n")?;
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return None;
    }
    let rest = line.get(digits..)?;
    let rest = rest.trim_ascii_start();
    if !(rest.is_empty() || rest.first() == Some(&b';')) {
        return None;
    }
    let mut size = 0u64;
    for &d in line.get(..digits)? {
        let v = char::from(d).to_digit(16)?;
        size = size.checked_mul(16)?.checked_add(u64::from(v))?;
    }
    Some(size)
}

#[cfg(test)]
mod tests {
    use super::parse_chunk_size;

    #[test]
    fn chunk_size_lines() {
        assert_eq!(parse_chunk_size(b"1a\r\n"), Some(26));
        assert_eq!(parse_chunk_size(b"1A;ext=1;b\r\n"), Some(26));
        assert_eq!(parse_chunk_size(b"0\n"), Some(0));
        assert_eq!(parse_chunk_size(b"5 ;x\r\n"), Some(5));
        assert_eq!(parse_chunk_size(b"\r\n"), None);
        assert_eq!(parse_chunk_size(b"zz\r\n"), None);
        assert_eq!(parse_chunk_size(b"11111111111111111\r\n"), None);
        assert_eq!(parse_chunk_size(b"ffffffffffffffff\r\n"), Some(u64::MAX));
    }
}
