//! Fuzzes the HTTP reassembly engine: request and response streams, cut into chunks and gaps
//! and interleaved as the fuzz bytes say, either taken raw from the input or generated as
//! well-formed exchanges (bodies really encoded) and then cut, corrupted and skipped.
//! Asserts no panic, bounded memory and the invariants of every exchange; and, in another
//! mode, that the exchanges do not depend on chunking or interleaving.

#![no_main]

use std::io::Write;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use sensor::http::{HttpConnection, HttpExchange, HttpSettings, Stream};

/// Reads the fuzz input; yields zeros once exhausted.
struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Input<'_> {
    fn done(&self) -> bool {
        self.pos >= self.data.len()
    }

    fn byte(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    fn take(&mut self, n: usize) -> Vec<u8> {
        let start = self.pos.min(self.data.len());
        let end = start.saturating_add(n).min(self.data.len());
        self.pos = self.pos.saturating_add(n);
        self.data[start..end].to_vec()
    }
}

fn settings(a: u8, b: u8) -> HttpSettings {
    HttpSettings {
        body_max_size: [0, 7, 64, 4096][usize::from(a & 3)],
        max_header_bytes: [16, 200, 2048, 8192][usize::from((a >> 2) & 3)],
        max_pipelined: [1, 2, 3, 8][usize::from((a >> 4) & 3)],
        capture_request_headers: b & 1 == 0,
        capture_response_headers: b & 2 == 0,
        capture_request_body: b & 4 == 0,
        capture_response_body: b & 8 == 0,
        max_decompression_ratio: [2, 1000][usize::from((b >> 4) & 1)],
        max_decoder_memory: 128 << 10,
        ..HttpSettings::default()
    }
}

/// Memory the connection may hold at any time, whatever the input: a function of the
/// settings only.
fn bound(s: &HttpSettings) -> usize {
    let m = s.max_header_bytes;
    let b = s.body_max_size;
    let p = s.max_pipelined.max(1);
    // A parsed head: header fields cost their bytes plus a fixed overhead each (a field
    // takes at least 3 bytes on the wire).
    let head = 20 * m + 4096;
    let body = 2 * b + 4096;
    let decoder = 128 * 1024 + s.max_decoder_memory;
    let reader = 2 * m + 16 * 1024 + 4096;
    // Input held while waiting (pairing or an upgrade verdict), capped, plus one chunk.
    let queue = 2 * (m + b) + 4096;
    let side = reader + head + body + decoder + queue;
    let entries = (p + 2) * 2 * (head + body + 1024) + p * 16 * 1024;
    2 * side + entries
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let _ = e.write_all(data);
    e.finish().unwrap_or_default()
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    let _ = e.write_all(data);
    e.finish().unwrap_or_default()
}

fn raw_deflate(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
    let _ = e.write_all(data);
    e.finish().unwrap_or_default()
}

fn brotli_enc(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut w = brotli::CompressorWriter::new(&mut out, 4096, 1, 16);
        let _ = w.write_all(data);
    }
    out
}

/// Headers and framed body of one message, from the fuzz bytes.
fn message_body(inp: &mut Input, head: &mut String, out: &mut Vec<u8>, allow_close: bool) -> bool {
    let sel = inp.byte();
    let len = usize::from(inp.byte() % 96);
    let mut plain = inp.take(len);
    if sel & 0x80 != 0 {
        // Compressible: repeat it.
        let copy = plain.clone();
        for _ in 0..(sel & 7) {
            plain.extend_from_slice(&copy);
        }
    }
    let ctype = [
        "application/json",
        "text/plain",
        "application/json; charset=utf-8",
        "",
    ][usize::from(sel & 3)];
    if !ctype.is_empty() {
        head.push_str(&format!("Content-Type: {ctype}\r\n"));
    }
    let (coding, body) = match (sel >> 2) & 7 {
        1 => ("gzip", gzip(&plain)),
        2 => ("deflate", zlib(&plain)),
        3 => ("deflate", raw_deflate(&plain)),
        4 => ("br", brotli_enc(&plain)),
        5 => ("zstd", plain),
        _ => ("", plain),
    };
    if !coding.is_empty() {
        head.push_str(&format!("Content-Encoding: {coding}\r\n"));
    }
    let framing = inp.byte() % 4;
    let close = framing == 3 && allow_close;
    match framing {
        1 | 2 => {
            head.push_str("Transfer-Encoding: chunked\r\n\r\n");
            out.extend_from_slice(head.as_bytes());
            let mut rest = &body[..];
            while !rest.is_empty() {
                let n = (usize::from(inp.byte() % 40) + 1).min(rest.len());
                let ext = if framing == 2 { ";x=y" } else { "" };
                out.extend_from_slice(format!("{n:x}{ext}\r\n").as_bytes());
                out.extend_from_slice(&rest[..n]);
                out.extend_from_slice(b"\r\n");
                rest = &rest[n..];
            }
            out.extend_from_slice(b"0\r\n");
            if inp.byte() & 1 == 1 {
                out.extend_from_slice(b"X-Trailer: t\r\n");
            }
            out.extend_from_slice(b"\r\n");
        }
        3 if close => {
            head.push_str("\r\n");
            out.extend_from_slice(head.as_bytes());
            out.extend_from_slice(&body);
        }
        _ => {
            head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
            out.extend_from_slice(head.as_bytes());
            out.extend_from_slice(&body);
        }
    }
    close
}

/// Well-formed request and response streams.
fn generate(inp: &mut Input) -> (Vec<u8>, Vec<u8>) {
    let mut req = Vec::new();
    let mut resp = Vec::new();
    let n = 1 + inp.byte() % 4;
    for i in 0..n {
        let last = i + 1 == n;
        let m = inp.byte();
        let method = [
            "GET", "HEAD", "POST", "PUT", "CONNECT", "OPTIONS", "DELETE", "PATCH",
        ][usize::from(m & 7)];
        let version = if m & 0x40 != 0 { "1.0" } else { "1.1" };
        let mut head = format!("{method} /p/{i}?q={m} HTTP/{version}\r\nHost: h\r\n");
        if m & 0x08 != 0 {
            head.push_str("Upgrade: websocket\r\nConnection: Upgrade\r\n");
        }
        if m & 0x10 != 0 {
            head.push_str("Expect: 100-continue\r\n");
        }
        if m & 0x20 != 0 {
            message_body(inp, &mut head, &mut req, false);
        } else {
            head.push_str("\r\n");
            req.extend_from_slice(head.as_bytes());
        }
        let r = inp.byte();
        if r & 0x80 != 0 {
            resp.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        let status = [200, 201, 204, 304, 101, 404, 500, 103][usize::from(r & 7)];
        let mut head = format!("HTTP/{version} {status} Reason\r\nServer: s\r\n");
        if status == 101 || (100..200).contains(&status) || status == 204 || status == 304 {
            head.push_str("\r\n");
            resp.extend_from_slice(head.as_bytes());
            if status == 103 {
                resp.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
            }
        } else if message_body(inp, &mut head, &mut resp, last) {
            break;
        }
    }
    (req, resp)
}

fn check_exchange(x: &HttpExchange, s: &HttpSettings) {
    assert!(x.request.is_some(), "exchange without request");
    let bodies = x
        .request
        .iter()
        .map(|r| &r.body)
        .chain(x.response.iter().map(|r| &r.body));
    for body in bodies {
        assert!(body.bytes.len() <= s.body_max_size, "body over the limit");
        if !body.captured {
            assert!(body.bytes.is_empty(), "bytes of a body not captured");
        }
        if body.incomplete {
            assert!(x.incomplete, "incomplete body in a complete exchange");
        }
    }
}

/// Where one stream stands in the replay.
struct Feed {
    stream: Stream,
    /// Generated bytes (empty in raw mode).
    bytes: Vec<u8>,
    /// Next offset to send.
    off: u64,
}

impl Feed {
    fn rest(&self) -> &[u8] {
        let at = usize::try_from(self.off).unwrap_or(usize::MAX);
        self.bytes.get(at..).unwrap_or_default()
    }
}

/// One piece of a stream for the equivalence check.
#[derive(Clone)]
enum Piece {
    Data(Vec<u8>),
    Gap(u64),
}

/// Cuts `bytes` into data pieces and up to two gaps, as the fuzz bytes say.
fn pieces(inp: &mut Input, bytes: &[u8]) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut at = 0usize;
    for _ in 0..2 {
        let sel = inp.byte();
        if sel & 1 == 0 || at >= bytes.len() {
            continue;
        }
        let gap_at = (at + usize::from(inp.byte()) * 4).min(bytes.len());
        let len = (usize::from(inp.byte() % 32) + 1).min(bytes.len() - gap_at);
        if gap_at > at {
            out.push(Piece::Data(bytes[at..gap_at].to_vec()));
        }
        if len > 0 {
            out.push(Piece::Gap(len as u64));
        }
        at = gap_at + len;
    }
    if at < bytes.len() {
        out.push(Piece::Data(bytes[at..].to_vec()));
    }
    out
}

/// Events of one stream, data pieces cut into chunks of fuzz-chosen sizes.
fn chunked(
    inp: &mut Input,
    stream: Stream,
    pieces: &[Piece],
    split: bool,
) -> Vec<(Stream, u64, Piece)> {
    let mut out = Vec::new();
    let mut off = 0u64;
    for p in pieces {
        match p {
            Piece::Gap(len) => {
                out.push((stream, off, p.clone()));
                off += len;
            }
            Piece::Data(d) => {
                let mut rest = &d[..];
                while !rest.is_empty() {
                    let n = if split {
                        (usize::from(inp.byte() % 48) + 1).min(rest.len())
                    } else {
                        rest.len()
                    };
                    out.push((stream, off, Piece::Data(rest[..n].to_vec())));
                    off += n as u64;
                    rest = &rest[n..];
                }
            }
        }
    }
    out
}

/// Feeds events (requests at one time, responses at a later one) and closes.
fn replay(
    s: &HttpSettings,
    events: &[(Stream, u64, Piece)],
) -> (Vec<HttpExchange>, sensor::http::HttpStats) {
    let mut c = HttpConnection::new(Arc::new(s.clone()));
    let mut out = Vec::new();
    for (stream, off, piece) in events {
        let time = if *stream == Stream::Request {
            1_000
        } else {
            2_000
        };
        match piece {
            Piece::Data(d) => c.on_data(*stream, *off, d, time),
            Piece::Gap(len) => c.on_gap(*stream, *off, *len, time),
        }
        out.extend(c.take_exchanges());
    }
    c.on_close(3_000);
    out.extend(c.take_exchanges());
    let mut stats = c.stats().clone();
    if c.is_upgraded() {
        // What was ignored after a switch of protocols depends on when the switch became
        // known (requests read before it are dropped, bytes after it skipped): only the
        // exchanges must agree.
        stats = sensor::http::HttpStats::default();
    }
    (out, stats)
}

/// The result must not depend on how the streams are cut into chunks, nor on how request
/// and response chunks interleave: compares a chunked, interleaved replay with a replay of
/// whole pieces, requests first. Settings leave room for a whole stream to wait (pairing or
/// upgrade verdict) without hitting a cap, since a cap legitimately depends on the order.
fn equivalence(inp: &mut Input) {
    let a = inp.byte();
    let s = HttpSettings {
        max_header_bytes: 1 << 16,
        body_max_size: [0, 7, 64, 1 << 16][usize::from(a & 3)],
        max_pipelined: 64,
        max_decoder_memory: 128 << 10,
        ..HttpSettings::default()
    };
    let (req, resp) = if a & 4 != 0 {
        generate(inp)
    } else {
        let n = usize::from(inp.byte()) * 4;
        let req = inp.take(n);
        let n = usize::from(inp.byte()) * 4;
        (req, inp.take(n))
    };
    let req_pieces = pieces(inp, &req);
    let resp_pieces = pieces(inp, &resp);
    let mut whole = chunked(inp, Stream::Request, &req_pieces, false);
    whole.extend(chunked(inp, Stream::Response, &resp_pieces, false));
    let want = replay(&s, &whole);
    let r = chunked(inp, Stream::Request, &req_pieces, true);
    let q = chunked(inp, Stream::Response, &resp_pieces, true);
    let (mut i, mut j) = (0, 0);
    let mut mixed = Vec::with_capacity(r.len() + q.len());
    while i < r.len() || j < q.len() {
        let take_req = j == q.len() || (i < r.len() && inp.byte() & 1 == 0);
        if take_req {
            mixed.push(r[i].clone());
            i += 1;
        } else {
            mixed.push(q[j].clone());
            j += 1;
        }
    }
    let got = replay(&s, &mixed);
    assert_eq!(got, want, "result depends on chunking or interleaving");
}

fuzz_target!(|data: &[u8]| {
    let mut inp = Input { data, pos: 0 };
    let mode = inp.byte();
    if mode & 2 != 0 {
        equivalence(&mut inp);
        return;
    }
    let s = settings(inp.byte(), inp.byte());
    let max = bound(&s);
    let generated = mode & 1 == 1;
    let (req_bytes, resp_bytes) = if generated {
        generate(&mut inp)
    } else {
        (Vec::new(), Vec::new())
    };
    let base = u64::from(mode >> 4) * 1_000;
    let mut feeds = [
        Feed {
            stream: Stream::Request,
            bytes: req_bytes,
            off: base,
        },
        Feed {
            stream: Stream::Response,
            bytes: resp_bytes,
            off: 0,
        },
    ];
    // Generated streams are placed at offset 0; `base` only shifts raw ones.
    if generated {
        feeds[0].off = 0;
    }
    let settings = Arc::new(s.clone());
    let mut c = HttpConnection::new(settings);
    let mut time = 1_000u64;
    let mut closed = false;
    while !inp.done() {
        let op = inp.byte();
        time += 1 + u64::from(op >> 5);
        let f = usize::from(op & 1);
        match (op >> 1) & 7 {
            0 | 1 => {
                let n = usize::from(inp.byte() % 64) + 1;
                let chunk = if generated {
                    let rest = feeds[f].rest();
                    rest[..n.min(rest.len())].to_vec()
                } else {
                    inp.take(n)
                };
                let feed = &mut feeds[f];
                c.on_data(feed.stream, feed.off, &chunk, time);
                feed.off = feed.off.saturating_add(chunk.len() as u64);
            }
            2 => {
                let len = if op & 0x80 != 0 {
                    u64::from(u32::from_le_bytes([inp.byte(), inp.byte(), inp.byte(), 0]))
                } else {
                    u64::from(inp.byte() % 16) + 1
                };
                let feed = &mut feeds[f];
                c.on_gap(feed.stream, feed.off, len, time);
                feed.off = feed.off.saturating_add(len);
            }
            3 => {
                // Honour skip_until as a capture would.
                let feed = &mut feeds[f];
                if let Some(until) = c.skip_until(feed.stream) {
                    let len = if until == u64::MAX {
                        feed.rest().len().max(1) as u64
                    } else {
                        until.saturating_sub(feed.off)
                    };
                    if len > 0 {
                        c.on_gap(feed.stream, feed.off, len, time);
                        feed.off = feed.off.saturating_add(len);
                    }
                }
            }
            4 => {
                // Resend bytes already sent (retransmission / overlap).
                let back = u64::from(inp.byte() % 32);
                let feed = &feeds[f];
                let start = feed.off.saturating_sub(back);
                let chunk = if generated {
                    let from = usize::try_from(start).unwrap_or(usize::MAX);
                    let to = usize::try_from(feed.off.saturating_add(4)).unwrap_or(usize::MAX);
                    feed.bytes
                        .get(from..to.min(feed.bytes.len()))
                        .unwrap_or_default()
                        .to_vec()
                } else {
                    inp.take(usize::try_from(back).unwrap_or(0) + 4)
                };
                c.on_data(feed.stream, start, &chunk, time);
                let end = start.saturating_add(chunk.len() as u64);
                let feed = &mut feeds[f];
                feed.off = feed.off.max(end);
            }
            5 => {
                // Corrupt an upcoming byte of a generated stream.
                let at = usize::from(inp.byte());
                let x = inp.byte();
                let feed = &mut feeds[f];
                let pos = usize::try_from(feed.off)
                    .unwrap_or(usize::MAX)
                    .saturating_add(at);
                if let Some(b) = feed.bytes.get_mut(pos) {
                    *b ^= x | 1;
                }
            }
            6 => c.expire(time, u64::from(inp.byte()) * 4),
            _ => {
                if op & 0x80 != 0 {
                    c.on_close(time);
                    closed = true;
                } else {
                    // Time going backwards must not matter for safety.
                    time = time.saturating_sub(u64::from(inp.byte()));
                }
            }
        }
        for x in c.take_exchanges() {
            check_exchange(&x, &s);
        }
        let held = c.buffered_bytes();
        assert!(held <= max, "buffered {held} > bound {max}");
    }
    // Deliver the rest of generated streams, then close.
    if !closed {
        for feed in &mut feeds {
            let chunk = feed.rest().to_vec();
            if !chunk.is_empty() {
                time += 1;
                c.on_data(feed.stream, feed.off, &chunk, time);
                feed.off = feed.off.saturating_add(chunk.len() as u64);
            }
            for x in c.take_exchanges() {
                check_exchange(&x, &s);
            }
            let held = c.buffered_bytes();
            assert!(held <= max, "buffered {held} > bound {max}");
        }
        c.on_close(time + 1);
    }
    for x in c.take_exchanges() {
        check_exchange(&x, &s);
    }
    let _ = c.stats();
    let _ = c.is_upgraded();
});
