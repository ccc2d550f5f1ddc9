//! HTTP/1.x reassembly: per-connection byte streams in, request/response exchanges out.
//!
//! The capture hands each TCP connection over as two byte streams (requests, responses), in
//! chunks placed by absolute stream offset, plus gaps (bytes known to exist but not copied)
//! and the close. [`HttpConnection`] turns them into [`HttpExchange`]s following RFC 9112:
//! Content-Length, chunked (extensions and trailers ignored) and close-delimited bodies;
//! bodiless responses (HEAD, 1xx, 204, 304); interim responses (`100 Continue`) skipped;
//! 101 / CONNECT 2xx ending HTTP on the connection; keep-alive and pipelining (first in,
//! first out); content codings (gzip, deflate, br) undone within the body size limit.
//!
//! The result depends only on the bytes and gaps of each stream, never on how the streams
//! were cut into chunks, nor on how request and response chunks were interleaved (a
//! response read before its request waits for it).
//!
//! # Sync, loss and resynchronisation
//!
//! A stream whose first bytes are the middle of something (the capture started
//! mid-connection), or that lost framing, is resynchronised at the next plausible message
//! start (`METHOD SP target SP HTTP/1.x` with a well-known method, or `HTTP/1.x SP ddd`);
//! the bytes skipped are counted in [`HttpStats::junk_bytes`], never emitted. A gap inside a
//! body of known length (Content-Length, chunk data) keeps framing: the exchange is marked
//! incomplete and parsing goes on right after the body. A gap inside a head or a chunk-size
//! line loses framing: the message is emitted as far as it is known, marked incomplete, and
//! the stream resynchronises. A gap the parser announced with
//! [`HttpConnection::skip_until`] (bytes it does not need) is not a loss.
//!
//! # Pairing
//!
//! Responses pair with requests first in, first out, under time causality: a response that
//! starts before the oldest waiting request started answers a request the capture never
//! saw, and is dropped ([`HttpStats::orphan_responses`]). After a loss on the response
//! stream, a waiting request whose successor also started after the loss and before the
//! response is emitted without response (its response was in the lost bytes). The caller
//! gives both streams timestamps from one clock.
//!
//! # Memory
//!
//! Per connection: a head is at most `max_header_bytes`, a kept body at most `body_max_size`
//! decoded bytes (plus decoder state: about 48 KiB for gzip/deflate, and for brotli a window
//! the stream declares, at most `max_decoder_memory`), at most `max_pipelined` requests wait
//! with their content (further ones are kept as bare placeholders, up to 16 times as many,
//! so pairing stays aligned, then dropped), and input held while a response waits for its
//! request (`max_header_bytes + body_max_size`) or an upgrade request waits for its verdict
//! (`max_header_bytes`) is capped: past the cap the response is taken for an orphan, the
//! request side resumes parsing. [`HttpConnection::buffered_bytes`] reports the total,
//! finished exchanges not yet taken included.

mod body;
mod core;
mod head;
mod line;
mod side;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use self::core::Core;
use self::side::Side;

/// Whether a body with this `Content-Type` value is kept: some entry of `allowed` occurs in
/// it, ignoring ASCII case (`json` admits `application/vnd.api+json; charset=utf-8`); an
/// empty list admits every type. The one rule for the parser, which decides which bodies to
/// keep, and the policy stage, which decides per service which to export.
pub fn content_type_allowed(allowed: &[String], content_type: &[u8]) -> bool {
    allowed.is_empty()
        || allowed
            .iter()
            .any(|entry| contains_ignore_ascii_case(content_type, entry.as_bytes()))
}

/// Whether `needle` occurs in `haystack`, ignoring ASCII case: a byte compare per position,
/// the rest compared only where the first byte matches (this runs for every message).
fn contains_ignore_ascii_case(haystack: &[u8], needle: &[u8]) -> bool {
    let Some((first, rest)) = needle.split_first() else {
        return true;
    };
    let Some(last_start) = haystack.len().checked_sub(needle.len()) else {
        return false;
    };
    haystack[..=last_start].iter().enumerate().any(|(at, b)| {
        b.eq_ignore_ascii_case(first)
            && haystack[at + 1..at + needle.len()].eq_ignore_ascii_case(rest)
    })
}

/// What the HTTP layer captures, and its bounds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpSettings {
    /// Most decoded body bytes kept per message; beyond, the body is marked truncated.
    pub body_max_size: usize,
    /// Content types whose bodies are kept: see [`content_type_allowed`].
    pub allowed_content_types: Vec<String>,
    /// Keep request header fields.
    pub capture_request_headers: bool,
    /// Keep response header fields.
    pub capture_response_headers: bool,
    /// Keep request bodies (of allowed content types).
    pub capture_request_body: bool,
    /// Keep response bodies (of allowed content types).
    pub capture_response_body: bool,
    /// Largest head (start line and header fields) accepted; a larger one is a parse failure
    /// ([`HttpStats::oversized_heads`]) and the stream resynchronises.
    pub max_header_bytes: usize,
    /// Most requests kept waiting for their responses on one connection.
    pub max_pipelined: usize,
    /// Decoding stops with an error once the decoded size exceeds this many times the
    /// compressed size (checked past the first 64 KiB of output).
    pub max_decompression_ratio: u64,
    /// Largest single allocation a decoder may make (in practice brotli's window, which the
    /// stream declares); a stream needing more fails with a decode error. The default
    /// admits every standard brotli stream (16 MiB window); gzip and deflate need about
    /// 48 KiB whatever this says.
    pub max_decoder_memory: usize,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            body_max_size: 131_072,
            allowed_content_types: crate::config::DEFAULT_ALLOWED_CONTENT_TYPES
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            capture_request_headers: true,
            capture_response_headers: true,
            capture_request_body: true,
            capture_response_body: true,
            max_header_bytes: 65_536,
            max_pipelined: 64,
            max_decompression_ratio: 1000,
            max_decoder_memory: (16 << 20) + (64 << 10),
        }
    }
}

/// One direction of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stream {
    /// Bytes from client to server.
    Request,
    /// Bytes from server to client.
    Response,
}

/// Protocol version of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HttpVersion {
    /// HTTP/1.0.
    Http10,
    /// HTTP/1.1.
    Http11,
}

/// One header field: the name as sent, the raw value.
pub type HeaderField = (String, Vec<u8>);

/// A message body as captured.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Body {
    /// Whether the body was kept: its content type is allowed and capture is on.
    pub captured: bool,
    /// The decoded body, at most `body_max_size` bytes; empty when not captured.
    pub bytes: Vec<u8>,
    /// The decoded body was longer than `body_max_size`.
    pub truncated: bool,
    /// Body bytes on the wire (after de-chunking, before decoding).
    pub wire_len: u64,
    /// Some body bytes were missing (a gap), or the body was cut short.
    pub incomplete: bool,
    /// Why decoding failed or was not possible (unknown coding: `bytes` are then raw).
    pub decode_error: Option<String>,
    /// The body would have been kept but the overload policy shed it: `bytes` are empty and
    /// `captured` is false, so users can tell a shed body from one never captured.
    pub shed: bool,
}

impl Body {
    /// Drops a kept body under overload: the bytes are freed and the body is flagged
    /// [`Body::shed`]. Returns whether there was a body to shed (kept, with bytes on the wire).
    pub fn shed(&mut self) -> bool {
        if !self.captured || self.wire_len == 0 {
            return false;
        }
        self.captured = false;
        self.bytes = Vec::new();
        self.truncated = false;
        self.decode_error = None;
        self.shed = true;
        true
    }
}

impl HttpExchange {
    /// Sheds both bodies (see [`Body::shed`]); returns how many were shed.
    pub fn shed_bodies(&mut self) -> u64 {
        let request = self.request.as_mut().is_some_and(|r| r.body.shed());
        let response = self.response.as_mut().is_some_and(|r| r.body.shed());
        u64::from(request) + u64::from(response)
    }

    /// Bodies of this exchange the overload policy shed (flagged [`Body::shed`]).
    pub fn shed_body_count(&self) -> u64 {
        let request = self.request.as_ref().is_some_and(|r| r.body.shed);
        let response = self.response.as_ref().is_some_and(|r| r.body.shed);
        u64::from(request) + u64::from(response)
    }

    /// Whether the exchange is an API call that would be reported: it has a request whose
    /// method is known (placeholders for unreadable heads are never reported).
    pub fn is_reportable(&self) -> bool {
        self.request.as_ref().is_some_and(|r| !r.method.is_empty())
    }
}

/// A request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpRequest {
    /// Method, as sent (empty when a cut head did not tell).
    pub method: String,
    /// Request target, as sent (empty when a cut head did not tell).
    pub target: String,
    /// Protocol version.
    pub version: HttpVersion,
    /// Header fields: name as sent, raw value, in order (empty when not captured).
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body.
    pub body: Body,
    /// Time of the chunk holding the first byte.
    pub start_ns: u64,
    /// Time of the chunk holding the last byte.
    pub end_ns: u64,
}

/// A response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    /// Status code (0 when a cut head did not tell).
    pub status: u16,
    /// Reason phrase.
    pub reason: String,
    /// Protocol version.
    pub version: HttpVersion,
    /// Header fields: name as sent, raw value, in order (empty when not captured).
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body.
    pub body: Body,
    /// Time of the chunk holding the first byte.
    pub start_ns: u64,
    /// Time of the chunk holding the last byte.
    pub end_ns: u64,
}

/// A request and what answered it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpExchange {
    /// The request (always present in exchanges emitted by [`HttpConnection`]).
    pub request: Option<HttpRequest>,
    /// The final response; `None` when none came (timeout, close, or lost).
    pub response: Option<HttpResponse>,
    /// Bytes were missing somewhere in this exchange.
    pub incomplete: bool,
    /// A request without a response while every byte was seen: when the wait for it ended —
    /// the connection's close (a client that gave up, a server that never answered) or the
    /// response timeout; never before the request ended. The exchange lasted until then.
    /// `None` otherwise.
    pub gave_up_ns: Option<u64>,
}

/// Counters of one connection; every byte or message dropped is counted here.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HttpStats {
    /// Exchanges emitted.
    pub exchanges: u64,
    /// Exchanges emitted with `incomplete` set.
    pub incomplete_exchanges: u64,
    /// Heads rejected by the parser, invalid framing headers, bad chunk syntax.
    pub parse_errors: u64,
    /// Heads larger than `max_header_bytes`.
    pub oversized_heads: u64,
    /// Times a stream that was in sync lost it and started looking for a message start.
    pub resyncs: u64,
    /// Bytes skipped while looking for a message start.
    pub junk_bytes: u64,
    /// Bytes of gaps that were needed (a loss).
    pub lost_bytes: u64,
    /// Bytes of gaps over body bytes that were not needed (skipped on purpose, or lost
    /// where nothing was kept anyway).
    pub skipped_bytes: u64,
    /// Bytes received twice (overlapping offsets), ignored.
    pub duplicate_bytes: u64,
    /// Responses dropped because the capture never saw their request.
    pub orphan_responses: u64,
    /// Requests emitted without a response (timeout, close, response lost).
    pub unanswered_requests: u64,
    /// Requests past `max_pipelined` waiting ones (kept as bare placeholders, or dropped).
    pub pipeline_overflows: u64,
    /// Requests queued after an upgrade, dropped.
    pub dropped_after_upgrade: u64,
    /// Bytes ignored after an upgrade.
    pub upgraded_bytes: u64,
    /// Times an Upgrade/CONNECT request stopped waiting for its verdict because too many
    /// bytes followed it.
    pub pause_overflows: u64,
    /// Bodies whose decoding failed or was not possible.
    pub decode_errors: u64,
    /// Bodies truncated at `body_max_size`.
    pub truncated_bodies: u64,
}

impl HttpStats {
    /// Adds another connection's counters (the tracker totals every connection's for metrics).
    pub fn add(&mut self, other: &HttpStats) {
        let values = other.named().map(|(_, _, value)| value);
        for (total, value) in self.fields_mut().into_iter().zip(values) {
            *total = total.saturating_add(value);
        }
    }

    /// `(name, help, value)` of every counter, for metrics (`pysensor_http_<name>_total`).
    pub fn named(&self) -> [(&'static str, &'static str, u64); 17] {
        // Destructured without `..`: a new counter cannot be left out of the metrics.
        let HttpStats {
            exchanges,
            incomplete_exchanges,
            parse_errors,
            oversized_heads,
            resyncs,
            junk_bytes,
            lost_bytes,
            skipped_bytes,
            duplicate_bytes,
            orphan_responses,
            unanswered_requests,
            pipeline_overflows,
            dropped_after_upgrade,
            upgraded_bytes,
            pause_overflows,
            decode_errors,
            truncated_bodies,
        } = self;
        [
            (
                "exchanges",
                "exchanges emitted by HTTP reassembly",
                *exchanges,
            ),
            (
                "incomplete_exchanges",
                "exchanges emitted with bytes missing",
                *incomplete_exchanges,
            ),
            (
                "parse_errors",
                "heads rejected, invalid framing headers, bad chunk syntax",
                *parse_errors,
            ),
            (
                "oversized_heads",
                "heads larger than the header size limit, dropped",
                *oversized_heads,
            ),
            (
                "resyncs",
                "times a stream lost sync and looked for a message start",
                *resyncs,
            ),
            (
                "junk_bytes",
                "bytes skipped while looking for a message start",
                *junk_bytes,
            ),
            (
                "lost_bytes",
                "bytes of gaps that were needed (a loss)",
                *lost_bytes,
            ),
            (
                "skipped_bytes",
                "bytes of gaps over body bytes that were not needed",
                *skipped_bytes,
            ),
            (
                "duplicate_bytes",
                "bytes received twice, ignored",
                *duplicate_bytes,
            ),
            (
                "orphan_responses",
                "responses dropped because their request was never seen",
                *orphan_responses,
            ),
            (
                "unanswered_requests",
                "requests emitted without a response",
                *unanswered_requests,
            ),
            (
                "pipeline_overflows",
                "requests past the pipelining limit",
                *pipeline_overflows,
            ),
            (
                "dropped_after_upgrade",
                "requests queued after a protocol switch, dropped",
                *dropped_after_upgrade,
            ),
            (
                "upgraded_bytes",
                "bytes ignored after a protocol switch",
                *upgraded_bytes,
            ),
            (
                "pause_overflows",
                "upgrade requests that stopped waiting for their verdict",
                *pause_overflows,
            ),
            (
                "decode_errors",
                "bodies whose content decoding failed",
                *decode_errors,
            ),
            (
                "truncated_bodies",
                "bodies truncated at the body size limit",
                *truncated_bodies,
            ),
        ]
    }

    /// Every counter, in the order of [`HttpStats::named`].
    fn fields_mut(&mut self) -> [&mut u64; 17] {
        [
            &mut self.exchanges,
            &mut self.incomplete_exchanges,
            &mut self.parse_errors,
            &mut self.oversized_heads,
            &mut self.resyncs,
            &mut self.junk_bytes,
            &mut self.lost_bytes,
            &mut self.skipped_bytes,
            &mut self.duplicate_bytes,
            &mut self.orphan_responses,
            &mut self.unanswered_requests,
            &mut self.pipeline_overflows,
            &mut self.dropped_after_upgrade,
            &mut self.upgraded_bytes,
            &mut self.pause_overflows,
            &mut self.decode_errors,
            &mut self.truncated_bodies,
        ]
    }
}

fn headers_bytes(headers: &[(String, Vec<u8>)]) -> usize {
    headers
        .iter()
        .map(|(n, v)| std::mem::size_of::<(String, Vec<u8>)>() + n.capacity() + v.capacity())
        .sum()
}

impl HttpRequest {
    /// Heap memory held.
    fn held_bytes(&self) -> usize {
        self.method.capacity()
            + self.target.capacity()
            + headers_bytes(&self.headers)
            + self.body.bytes.capacity()
    }
}

impl HttpResponse {
    /// Heap memory held.
    fn held_bytes(&self) -> usize {
        self.reason.capacity() + headers_bytes(&self.headers) + self.body.bytes.capacity()
    }
}

/// Reassembly of one TCP connection.
pub struct HttpConnection {
    core: Core,
    req: Side,
    resp: Side,
    closed: bool,
}

impl HttpConnection {
    /// A connection nothing has been seen of yet.
    pub fn new(settings: Arc<HttpSettings>) -> Self {
        HttpConnection {
            core: Core::new(settings),
            req: Side::new(Stream::Request),
            resp: Side::new(Stream::Response),
            closed: false,
        }
    }

    /// Bytes `[offset, offset + data.len())` of `stream`, seen at `time_ns`.
    ///
    /// Offsets are absolute stream offsets; the first chunk (or gap) of a stream sets where
    /// it starts. Bytes already received are ignored ([`HttpStats::duplicate_bytes`]); a
    /// jump forward is a gap over the bytes skipped.
    pub fn on_data(&mut self, stream: Stream, offset: u64, data: &[u8], time_ns: u64) {
        if self.closed {
            return;
        }
        match stream {
            Stream::Request => self.req.on_data(&mut self.core, offset, data, time_ns),
            Stream::Response => {
                self.core.req_horizon = self.req.horizon();
                self.resp.on_data(&mut self.core, offset, data, time_ns);
            }
        }
        self.pump();
    }

    /// Bytes `[offset, offset + len)` of `stream` exist but never come.
    pub fn on_gap(&mut self, stream: Stream, offset: u64, len: u64, time_ns: u64) {
        if self.closed {
            return;
        }
        match stream {
            Stream::Request => self.req.on_gap(&mut self.core, offset, len, time_ns),
            Stream::Response => {
                self.core.req_horizon = self.req.horizon();
                self.resp.on_gap(&mut self.core, offset, len, time_ns);
            }
        }
        self.pump();
    }

    /// The connection ended: a close-delimited response ends here, messages cut short are
    /// emitted as incomplete, requests still waiting are emitted without response.
    pub fn on_close(&mut self, time_ns: u64) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.pump();
        self.req.finalize(&mut self.core, time_ns);
        self.core.req_horizon = u64::MAX;
        self.core.force = true;
        self.resp.run(&mut self.core);
        self.resp.finalize(&mut self.core, time_ns);
        self.core.close(time_ns);
    }

    /// The capture of the connection ended while the connection may go on (the sensor is
    /// stopping, or stops tracking it): what is complete is emitted as on a close, and what
    /// was still in progress — a message being read, a request waiting for its response, a
    /// body delimited by the close — is emitted as incomplete, never as a request that got
    /// no response.
    pub fn on_capture_end(&mut self, time_ns: u64) {
        if self.closed {
            return;
        }
        self.pump();
        self.core.capture_ended = true;
        self.on_close(time_ns);
    }

    /// Emits requests that have waited more than `response_timeout_ns` (since their last
    /// byte) for a response, without response; drops a response that has waited as long
    /// for its request.
    pub fn expire(&mut self, now_ns: u64, response_timeout_ns: u64) {
        if self.closed {
            return;
        }
        if let Some(since) = self.resp.waiting_since()
            && now_ns.saturating_sub(since) > response_timeout_ns
        {
            self.core.force = true;
            self.pump();
            self.core.force = false;
        }
        self.core.expire(now_ns, response_timeout_ns);
        self.pump();
    }

    /// Exchanges finished since the last call, oldest first.
    pub fn take_exchanges(&mut self) -> Vec<HttpExchange> {
        std::mem::take(&mut self.core.done)
    }

    /// The stream offset before which the parser needs no bytes of `stream`, when it is in
    /// such a stretch: the rest of a Content-Length body (or of the current chunk) that is
    /// not kept (content type not captured, limit reached, or bytes already lost), or, with
    /// `Some(u64::MAX)`, the rest of a close-delimited body not kept or anything after an
    /// upgrade. The caller may have the kernel skip copying those bytes and report them as a
    /// gap: a gap within that range is taken as normal, not as a loss. `None`: every byte
    /// is needed (or the answer depends on input not processed yet).
    pub fn skip_until(&self, stream: Stream) -> Option<u64> {
        match stream {
            Stream::Request => self.req.skip_until(),
            Stream::Response => self.resp.skip_until(),
        }
    }

    /// Turns body shedding (overload) on or off. While on, bodies that start are not kept and
    /// are flagged [`Body::shed`], so [`HttpConnection::skip_until`] lets the kernel skip their
    /// bytes; turning it on also sheds the bodies being read or held in waiting exchanges,
    /// freeing their memory. Framing is kept: heads are still parsed and exchanges emitted.
    pub fn set_shed_bodies(&mut self, shed: bool) {
        if self.core.shed_bodies == shed {
            return;
        }
        self.core.shed_bodies = shed;
        if shed {
            self.req.shed_body();
            self.resp.shed_body();
            self.core.shed_held_bodies();
        }
    }

    /// Whether the connection switched protocols (101, or 2xx to CONNECT): nothing after
    /// is parsed.
    pub fn is_upgraded(&self) -> bool {
        self.core.upgraded
    }

    /// Memory held by this connection (buffers, queued exchanges, finished exchanges not
    /// yet taken), in bytes.
    pub fn buffered_bytes(&self) -> usize {
        self.req.held_bytes() + self.resp.held_bytes() + self.core.held_bytes()
    }

    /// Header fields of the oldest request whose exchange is not finished yet, as soon as its
    /// head is parsed (its body may still be arriving); `None` when there is no such request.
    /// Empty when request headers are not captured.
    pub fn unfinished_request_headers(&self) -> Option<&[HeaderField]> {
        let (id, request) = self.core.oldest_unfinished()?;
        if let Some(request) = request {
            return Some(&request.headers);
        }
        let (reading, headers) = self.req.reading_request()?;
        if reading != id {
            return None;
        }
        Some(if self.core.settings.capture_request_headers {
            headers
        } else {
            &[]
        })
    }

    /// Counters.
    pub fn stats(&self) -> &HttpStats {
        &self.core.stats
    }

    /// Runs both directions until neither can make progress.
    fn pump(&mut self) {
        for _ in 0..64 {
            let a = self.req.run(&mut self.core);
            self.core.req_horizon = self.req.horizon();
            let b = self.resp.run(&mut self.core);
            if !a && !b {
                break;
            }
        }
    }
}
