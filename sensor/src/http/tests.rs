//! Table-driven tests on byte fixtures. Every fixture is fed whole, split at every byte
//! boundary (sampled for large ones), byte by byte, and with request and response chunks
//! interleaved in several orders; all runs must give the same exchanges and counters.

use std::io::Write;
use std::sync::Arc;

use super::*;

/// One event of a stream: bytes, or a gap, at a time.
#[derive(Clone, Debug)]
enum Piece {
    Data(Vec<u8>, u64),
    Gap(u64, u64),
}

/// A connection to replay: both streams, where each starts, and maybe a close.
#[derive(Clone)]
struct Fx {
    req: Vec<Piece>,
    resp: Vec<Piece>,
    req_start: u64,
    resp_start: u64,
    close: Option<u64>,
    settings: HttpSettings,
}

fn fx() -> Fx {
    Fx {
        req: Vec::new(),
        resp: Vec::new(),
        req_start: 0,
        resp_start: 0,
        close: None,
        settings: HttpSettings::default(),
    }
}

impl Fx {
    fn req(mut self, data: &[u8], t: u64) -> Self {
        self.req.push(Piece::Data(data.to_vec(), t));
        self
    }
    fn resp(mut self, data: &[u8], t: u64) -> Self {
        self.resp.push(Piece::Data(data.to_vec(), t));
        self
    }
    fn req_gap(mut self, len: u64, t: u64) -> Self {
        self.req.push(Piece::Gap(len, t));
        self
    }
    fn resp_gap(mut self, len: u64, t: u64) -> Self {
        self.resp.push(Piece::Gap(len, t));
        self
    }
    fn close(mut self, t: u64) -> Self {
        self.close = Some(t);
        self
    }
    fn starts(mut self, req: u64, resp: u64) -> Self {
        self.req_start = req;
        self.resp_start = resp;
        self
    }
    fn settings(mut self, f: impl FnOnce(&mut HttpSettings)) -> Self {
        f(&mut self.settings);
        self
    }
}

/// An event placed on its stream.
#[derive(Clone, Debug)]
struct Ev {
    stream: Stream,
    offset: u64,
    piece: Piece,
}

fn time_of(p: &Piece) -> u64 {
    match p {
        Piece::Data(_, t) | Piece::Gap(_, t) => *t,
    }
}

/// Places pieces on a stream, splitting data pieces by `cut(piece index, len)`.
fn place(
    stream: Stream,
    start: u64,
    pieces: &[Piece],
    cut: &dyn Fn(usize, usize) -> Vec<usize>,
) -> Vec<Ev> {
    let mut out = Vec::new();
    let mut off = start;
    for (i, p) in pieces.iter().enumerate() {
        match p {
            Piece::Data(d, t) => {
                let mut prev = 0;
                let mut points = cut(i, d.len());
                points.push(d.len());
                for k in points {
                    if k <= prev || k > d.len() {
                        continue;
                    }
                    out.push(Ev {
                        stream,
                        offset: off + prev as u64,
                        piece: Piece::Data(d[prev..k].to_vec(), *t),
                    });
                    prev = k;
                }
                off += d.len() as u64;
            }
            Piece::Gap(len, t) => {
                out.push(Ev {
                    stream,
                    offset: off,
                    piece: Piece::Gap(*len, *t),
                });
                off += len;
            }
        }
    }
    out
}

#[derive(Clone, Copy, Debug)]
enum Order {
    /// By time, requests first on ties.
    Time,
    ReqFirst,
    RespFirst,
    Alternate,
    /// Pseudo-random merge with this seed.
    Shuffle(u64),
}

fn merge(a: Vec<Ev>, b: Vec<Ev>, order: Order) -> Vec<Ev> {
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::with_capacity(a.len() + b.len());
    let mut seed = match order {
        Order::Shuffle(s) => s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1),
        _ => 0,
    };
    let mut turn = false;
    while i < a.len() || j < b.len() {
        let take_a = if i == a.len() {
            false
        } else if j == b.len() {
            true
        } else {
            match order {
                Order::Time => time_of(&a[i].piece) <= time_of(&b[j].piece),
                Order::ReqFirst => true,
                Order::RespFirst => false,
                Order::Alternate => {
                    turn = !turn;
                    turn
                }
                Order::Shuffle(_) => {
                    seed = seed
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    (seed >> 33) & 1 == 0
                }
            }
        };
        if take_a {
            out.push(a[i].clone());
            i += 1;
        } else {
            out.push(b[j].clone());
            j += 1;
        }
    }
    out
}

type Outcome = (Vec<HttpExchange>, HttpStats, bool);

fn replay(f: &Fx, events: &[Ev]) -> Outcome {
    let mut c = HttpConnection::new(Arc::new(f.settings.clone()));
    let mut out = Vec::new();
    for ev in events {
        match &ev.piece {
            Piece::Data(d, t) => c.on_data(ev.stream, ev.offset, d, *t),
            Piece::Gap(len, t) => c.on_gap(ev.stream, ev.offset, *len, *t),
        }
        out.extend(c.take_exchanges());
    }
    if let Some(t) = f.close {
        c.on_close(t);
    }
    out.extend(c.take_exchanges());
    (out, c.stats().clone(), c.is_upgraded())
}

fn events(f: &Fx, cut: &dyn Fn(Stream, usize, usize) -> Vec<usize>, order: Order) -> Vec<Ev> {
    let a = place(Stream::Request, f.req_start, &f.req, &|i, n| {
        cut(Stream::Request, i, n)
    });
    let b = place(Stream::Response, f.resp_start, &f.resp, &|i, n| {
        cut(Stream::Response, i, n)
    });
    merge(a, b, order)
}

/// Every interleaving order tried.
const ALL_ORDERS: [Order; 7] = [
    Order::Time,
    Order::ReqFirst,
    Order::RespFirst,
    Order::Alternate,
    Order::Shuffle(1),
    Order::Shuffle(2),
    Order::Shuffle(3),
];

/// Runs the fixture every way and checks that all runs agree; returns the outcome.
fn check(f: &Fx) -> Outcome {
    check_orders(f, &ALL_ORDERS)
}

/// [`check`] with the given interleaving orders only.
fn check_orders(f: &Fx, orders: &[Order]) -> Outcome {
    let whole = |_: Stream, _: usize, _: usize| Vec::new();
    let base = replay(f, &events(f, &whole, Order::Time));
    for &order in orders {
        let got = replay(f, &events(f, &whole, order));
        assert_eq!(got, base, "whole pieces, order {order:?}");
    }
    // Every single split point of every data piece (strided for large pieces).
    for (stream, pieces) in [(Stream::Request, &f.req), (Stream::Response, &f.resp)] {
        for (pi, p) in pieces.iter().enumerate() {
            let Piece::Data(d, _) = p else { continue };
            let stride = (d.len() / 5000).max(1);
            for k in (1..d.len()).step_by(stride) {
                let cut = |s: Stream, i: usize, _: usize| {
                    if s == stream && i == pi {
                        vec![k]
                    } else {
                        Vec::new()
                    }
                };
                let got = replay(f, &events(f, &cut, Order::Time));
                assert_eq!(got, base, "{stream:?} piece {pi} split at {k}");
            }
        }
    }
    // Byte by byte (coarser for large fixtures), in every order.
    let total: usize = f
        .req
        .iter()
        .chain(&f.resp)
        .map(|p| match p {
            Piece::Data(d, _) => d.len(),
            Piece::Gap(..) => 0,
        })
        .sum();
    let step = (total / 20_000).max(1);
    let bytes = move |_: Stream, _: usize, n: usize| (step..n).step_by(step).collect();
    for &order in orders {
        let got = replay(f, &events(f, &bytes, order));
        assert_eq!(got, base, "split every {step} bytes, order {order:?}");
    }
    // Every three bytes with a different phase.
    let threes = |_: Stream, _: usize, n: usize| (2..n).step_by(3).collect();
    let last = orders.last().copied().unwrap_or(Order::Time);
    assert_eq!(replay(f, &events(f, &threes, last)), base);
    base
}

fn h(list: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    list.iter()
        .map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec()))
        .collect()
}

fn kept(bytes: &[u8], wire_len: u64) -> Body {
    Body {
        captured: true,
        bytes: bytes.to_vec(),
        truncated: false,
        wire_len,
        incomplete: false,
        decode_error: None,
        shed: false,
    }
}

fn not_kept(wire_len: u64) -> Body {
    Body {
        captured: false,
        wire_len,
        ..Body::default()
    }
}

fn request(
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Body,
    start_ns: u64,
    end_ns: u64,
) -> HttpRequest {
    HttpRequest {
        method: method.to_owned(),
        target: target.to_owned(),
        version: HttpVersion::Http11,
        headers: h(headers),
        body,
        start_ns,
        end_ns,
    }
}

fn response(
    status: u16,
    reason: &str,
    headers: &[(&str, &str)],
    body: Body,
    start_ns: u64,
    end_ns: u64,
) -> HttpResponse {
    HttpResponse {
        status,
        reason: reason.to_owned(),
        version: HttpVersion::Http11,
        headers: h(headers),
        body,
        start_ns,
        end_ns,
    }
}

fn exchange(req: HttpRequest, resp: Option<HttpResponse>, incomplete: bool) -> HttpExchange {
    HttpExchange {
        request: Some(req),
        response: resp,
        incomplete,
        gave_up_ns: None,
    }
}

/// A request every byte of which was seen and that got no response: the wait for one ended
/// at `gave_up_ns` (a close, or the response timeout).
fn unanswered(req: HttpRequest, gave_up_ns: u64) -> HttpExchange {
    HttpExchange {
        gave_up_ns: Some(gave_up_ns),
        ..exchange(req, None, false)
    }
}

/// A simple GET and its 200 with a JSON body, at times `t` and `t + 50`.
fn get_pair(path: &str, t: u64) -> (Vec<u8>, Vec<u8>, HttpExchange) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").into_bytes();
    let body = format!("{{\"p\":\"{path}\"}}");
    let resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes();
    let len = body.len().to_string();
    let x = exchange(
        request("GET", path, &[("Host", "a")], not_kept(0), t, t),
        Some(response(
            200,
            "OK",
            &[
                ("Content-Type", "application/json"),
                ("Content-Length", &len),
            ],
            kept(body.as_bytes(), body.len() as u64),
            t + 50,
            t + 50,
        )),
        false,
    );
    (req, resp, x)
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn raw_deflate(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn brotli_enc(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut w = brotli::CompressorWriter::new(&mut out, 4096, 9, 22);
        w.write_all(data).unwrap();
    }
    out
}

fn zstd_enc(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

fn json_doc(n: usize) -> Vec<u8> {
    let mut s = String::from("[");
    for i in 0..n {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!("{{\"id\":{i},\"name\":\"item-{i}\",\"ok\":true}}"));
    }
    s.push(']');
    s.into_bytes()
}

fn encoded_response(coding: &str, encoded: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: {coding}\r\nContent-Length: {}\r\n\r\n",
        encoded.len()
    )
    .into_bytes();
    r.extend_from_slice(encoded);
    r
}

#[test]
fn content_length_both_ways() {
    let f = fx()
        .req(
            b"POST /api/items HTTP/1.1\r\nHost: svc\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"name\":\"x\"}\n",
            100,
        )
        .resp(
            b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 8\r\n\r\n{\"id\":7}",
            200,
        );
    let (x, stats, up) = check(&f);
    assert_eq!(
        x,
        vec![exchange(
            request(
                "POST",
                "/api/items",
                &[
                    ("Host", "svc"),
                    ("Content-Type", "application/json"),
                    ("Content-Length", "13")
                ],
                kept(b"{\"name\":\"x\"}\n", 13),
                100,
                100
            ),
            Some(response(
                201,
                "Created",
                &[
                    ("Content-Type", "application/json"),
                    ("Content-Length", "8")
                ],
                kept(b"{\"id\":7}", 8),
                200,
                200
            )),
            false
        )]
    );
    assert!(!up);
    assert_eq!(
        stats,
        HttpStats {
            exchanges: 1,
            ..HttpStats::default()
        }
    );
}

#[test]
fn chunked_with_extensions_and_trailers() {
    let f = fx()
        .req(
            b"PUT /doc HTTP/1.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n3;a=b\r\n{\"k\r\n4 ; x=\"y\"\r\n\":1}\r\n0\r\n\r\n",
            100,
        )
        .resp(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/json\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nWiki\r\n5\r\npedia\r\nA\r\n in\r\n\r\nchu\r\n4\r\nnks.\r\n0;last\r\nX-Trailer: v\r\nX-Other: w\r\n\r\n",
            200,
        )
        .req(b"GET /next HTTP/1.1\r\n\r\n", 300)
        .resp(b"HTTP/1.1 204 No Content\r\n\r\n", 400);
    let (x, stats, _) = check(&f);
    assert_eq!(x.len(), 2);
    assert_eq!(
        x[0],
        exchange(
            request(
                "PUT",
                "/doc",
                &[
                    ("Content-Type", "application/json"),
                    ("Transfer-Encoding", "chunked")
                ],
                kept(b"{\"k\":1}", 7),
                100,
                100
            ),
            Some(response(
                200,
                "OK",
                &[
                    ("Content-Type", "text/json"),
                    ("Transfer-Encoding", "chunked")
                ],
                kept(b"Wikipedia in\r\n\r\nchunks.", 23),
                200,
                200
            )),
            false
        )
    );
    assert_eq!(
        x[1],
        exchange(
            request("GET", "/next", &[], not_kept(0), 300, 300),
            Some(response(204, "No Content", &[], not_kept(0), 400, 400)),
            false
        )
    );
    assert_eq!(stats.parse_errors, 0);
    assert_eq!(stats.junk_bytes, 0);
}

#[test]
fn close_delimited_response() {
    let f = fx()
        .req(b"GET /stream HTTP/1.1\r\nHost: a\r\n\r\n", 100)
        .resp(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"a\":",
            200,
        )
        .resp(b"1}", 250)
        .close(300);
    let (x, _, _) = check(&f);
    assert_eq!(
        x,
        vec![exchange(
            request("GET", "/stream", &[("Host", "a")], not_kept(0), 100, 100),
            Some(response(
                200,
                "OK",
                &[("Content-Type", "application/json")],
                kept(b"{\"a\":1}", 7),
                200,
                250
            )),
            false
        )]
    );
    // Without the close, nothing is emitted: the body may go on.
    let mut open = f.clone();
    open.close = None;
    assert_eq!(check(&open).0, vec![]);
}

#[test]
fn head_response_has_no_body() {
    let (r2, s2, x2) = get_pair("/after", 300);
    let f = fx()
        .req(b"HEAD /big HTTP/1.1\r\n\r\n", 100)
        .resp(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n",
            200,
        )
        .req(&r2, 300)
        .resp(&s2, 350);
    let (x, _, _) = check(&f);
    assert_eq!(
        x,
        vec![
            exchange(
                request("HEAD", "/big", &[], not_kept(0), 100, 100),
                Some(response(
                    200,
                    "OK",
                    &[
                        ("Content-Type", "application/json"),
                        ("Content-Length", "5000")
                    ],
                    kept(b"", 0),
                    200,
                    200
                )),
                false
            ),
            x2
        ]
    );
}

#[test]
fn no_body_statuses_204_304() {
    for (status, reason) in [(204u16, "No Content"), (304, "Not Modified")] {
        let (r2, s2, x2) = get_pair("/b", 300);
        // A Content-Length on these is about the representation, not a body.
        let resp = format!("HTTP/1.1 {status} {reason}\r\nContent-Length: 10\r\n\r\n");
        let f = fx()
            .req(b"GET /a HTTP/1.1\r\n\r\n", 100)
            .resp(resp.as_bytes(), 200)
            .req(&r2, 300)
            .resp(&s2, 350);
        let (x, _, _) = check(&f);
        assert_eq!(
            x,
            vec![
                exchange(
                    request("GET", "/a", &[], not_kept(0), 100, 100),
                    Some(response(
                        status,
                        reason,
                        &[("Content-Length", "10")],
                        not_kept(0),
                        200,
                        200
                    )),
                    false
                ),
                x2
            ],
            "status {status}"
        );
    }
}

#[test]
fn interim_1xx_responses_are_skipped() {
    let f = fx()
        .req(b"GET /page HTTP/1.1\r\n\r\n", 100)
        .resp(
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n",
            150,
        )
        .resp(b"HTTP/1.1 102 Processing\r\n\r\n", 160)
        .resp(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi", 200);
    let (x, stats, _) = check(&f);
    assert_eq!(
        x,
        vec![exchange(
            request("GET", "/page", &[], not_kept(0), 100, 100),
            Some(response(
                200,
                "OK",
                &[("Content-Length", "2")],
                not_kept(2),
                200,
                200
            )),
            false
        )]
    );
    assert_eq!(stats.orphan_responses, 0);
}

#[test]
fn expect_100_continue() {
    let f = fx()
        .req(
            b"POST /upload HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 9\r\nExpect: 100-continue\r\n\r\n",
            100,
        )
        .resp(b"HTTP/1.1 100 Continue\r\n\r\n", 150)
        .req(b"{\"big\":1}", 200)
        .resp(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}", 300);
    let (x, stats, _) = check(&f);
    assert_eq!(
        x,
        vec![exchange(
            request(
                "POST",
                "/upload",
                &[
                    ("Content-Type", "application/json"),
                    ("Content-Length", "9"),
                    ("Expect", "100-continue")
                ],
                kept(b"{\"big\":1}", 9),
                100,
                200
            ),
            Some(response(
                200,
                "OK",
                &[
                    ("Content-Type", "application/json"),
                    ("Content-Length", "2")
                ],
                kept(b"{}", 2),
                300,
                300
            )),
            false
        )]
    );
    assert_eq!(stats.exchanges, 1);
}

#[test]
fn switching_protocols_ends_http() {
    let f = fx()
        .req(
            b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            100,
        )
        .resp(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x05hello",
            200,
        )
        // Frames that happen to look like HTTP must not be parsed.
        .req(b"\x81\x85abcdGET /x HTTP/1.1\r\n\r\n", 300)
        .resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 400)
        .close(500);
    let (x, stats, upgraded) = check(&f);
    assert!(upgraded);
    assert_eq!(
        x,
        vec![exchange(
            request(
                "GET",
                "/ws",
                &[("Upgrade", "websocket"), ("Connection", "Upgrade")],
                not_kept(0),
                100,
                100
            ),
            Some(response(
                101,
                "Switching Protocols",
                &[("Upgrade", "websocket"), ("Connection", "Upgrade")],
                not_kept(0),
                200,
                200
            )),
            false
        )]
    );
    assert_eq!(stats.exchanges, 1);
    assert_eq!(stats.upgraded_bytes, 7 + 25 + 38);
    assert_eq!(stats.parse_errors, 0);
}

#[test]
fn upgrade_request_content_is_read_before_the_switch() {
    let f = fx()
        .req(
            b"POST /up HTTP/1.1\r\nUpgrade: h2c\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"a\":1}PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            100,
        )
        .resp(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n\x00\x00\x00\x04", 200)
        .close(300);
    let (x, stats, upgraded) = check(&f);
    assert!(upgraded);
    assert_eq!(x.len(), 1);
    assert_eq!(x[0].request.as_ref().unwrap().body, kept(b"{\"a\":1}", 7));
    assert_eq!(x[0].response.as_ref().unwrap().status, 101);
    assert!(!x[0].incomplete);
    assert_eq!(stats.upgraded_bytes, 24 + 4);
}

#[test]
fn connect_tunnel() {
    let f = fx()
        .req(b"CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\n", 100)
        .resp(b"HTTP/1.1 200 Connection established\r\n\r\n", 200)
        .req(b"GET /inside HTTP/1.1\r\n\r\n", 300)
        .resp(b"HTTP/1.1 200 OK\r\n\r\n", 400)
        .close(500);
    let (x, _, upgraded) = check(&f);
    assert!(upgraded);
    assert_eq!(x.len(), 1);
    assert_eq!(x[0].request.as_ref().unwrap().method, "CONNECT");
    assert_eq!(x[0].request.as_ref().unwrap().target, "db:5432");
    assert_eq!(x[0].response.as_ref().unwrap().status, 200);
    // A refused CONNECT leaves the connection HTTP.
    let f = fx()
        .req(b"CONNECT db:5432 HTTP/1.1\r\n\r\n", 100)
        .resp(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n", 200)
        .req(b"GET /ok HTTP/1.1\r\n\r\n", 300)
        .resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 400);
    let (x, _, upgraded) = check(&f);
    assert!(!upgraded);
    let statuses: Vec<_> = x
        .iter()
        .map(|e| e.response.as_ref().unwrap().status)
        .collect();
    assert_eq!(statuses, vec![403, 200]);
}

#[test]
fn http_1_0() {
    let f = fx()
        .req(b"GET /old HTTP/1.0\r\nUser-Agent: x\r\n\r\n", 100)
        .resp(
            b"HTTP/1.0 200 OK\r\nContent-Type: text/xml\r\n\r\n<a/>",
            200,
        )
        .close(300);
    let (x, _, _) = check(&f);
    let mut req = request("GET", "/old", &[("User-Agent", "x")], not_kept(0), 100, 100);
    req.version = HttpVersion::Http10;
    let mut resp = response(
        200,
        "OK",
        &[("Content-Type", "text/xml")],
        kept(b"<a/>", 4),
        200,
        200,
    );
    resp.version = HttpVersion::Http10;
    assert_eq!(x, vec![exchange(req, Some(resp), false)]);
}

#[test]
fn keep_alive_three_exchanges() {
    let mut f = fx();
    let mut want = Vec::new();
    for (i, path) in ["/one", "/two", "/three"].iter().enumerate() {
        let t = 100 + 100 * i as u64;
        let (r, s, x) = get_pair(path, t);
        f = f.req(&r, t).resp(&s, t + 50);
        want.push(x);
    }
    let (x, stats, _) = check(&f);
    assert_eq!(x, want);
    assert_eq!(stats.exchanges, 3);
}

#[test]
fn pipelining_three_then_three() {
    let mut reqs = Vec::new();
    let mut resps = Vec::new();
    let mut want = Vec::new();
    for (i, path) in ["/p1", "/p2", "/p3"].iter().enumerate() {
        let (r, s, mut x) = get_pair(path, 100);
        reqs.extend(r);
        resps.extend(s);
        if let Some(resp) = x.response.as_mut() {
            resp.start_ns = 200;
            resp.end_ns = 200;
        }
        let _ = i;
        want.push(x);
    }
    let f = fx().req(&reqs, 100).resp(&resps, 200);
    let (x, _, _) = check(&f);
    assert_eq!(x, want);
    // The same, each message its own chunk, pieces interleaved in every order by check().
    let mut f = fx();
    for (i, path) in ["/p1", "/p2", "/p3"].iter().enumerate() {
        let (r, _, _) = get_pair(path, 0);
        f = f.req(&r, 100 + i as u64);
    }
    for (i, path) in ["/p1", "/p2", "/p3"].iter().enumerate() {
        let (_, s, _) = get_pair(path, 0);
        f = f.resp(&s, 200 + i as u64);
    }
    let (x, _, _) = check(&f);
    let targets: Vec<_> = x
        .iter()
        .map(|e| {
            (
                e.request.as_ref().unwrap().target.clone(),
                String::from_utf8(e.response.as_ref().unwrap().body.bytes.clone()).unwrap(),
            )
        })
        .collect();
    assert_eq!(
        targets,
        vec![
            ("/p1".to_owned(), "{\"p\":\"/p1\"}".to_owned()),
            ("/p2".to_owned(), "{\"p\":\"/p2\"}".to_owned()),
            ("/p3".to_owned(), "{\"p\":\"/p3\"}".to_owned()),
        ]
    );
}

#[test]
fn pipeline_limit_keeps_pairing_aligned() {
    let mut f = fx().settings(|s| s.max_pipelined = 2);
    for (i, path) in ["/a", "/b", "/c", "/d"].iter().enumerate() {
        let (r, _, _) = get_pair(path, 0);
        f = f.req(&r, 100 + i as u64);
    }
    for (i, path) in ["/a", "/b", "/c", "/d"].iter().enumerate() {
        let (_, s, _) = get_pair(path, 0);
        f = f.resp(&s, 200 + i as u64);
    }
    // How many requests wait at once depends on how the streams interleave: requests first.
    let (x, stats, _) = check_orders(&f, &[Order::Time, Order::ReqFirst]);
    let pairs: Vec<_> = x
        .iter()
        .map(|e| {
            (
                e.request.as_ref().unwrap().target.clone(),
                String::from_utf8(e.response.as_ref().unwrap().body.bytes.clone()).unwrap(),
            )
        })
        .collect();
    assert_eq!(
        pairs,
        vec![
            ("/a".to_owned(), "{\"p\":\"/a\"}".to_owned()),
            ("/b".to_owned(), "{\"p\":\"/b\"}".to_owned()),
        ]
    );
    assert_eq!(stats.pipeline_overflows, 2);
}

#[test]
fn mid_stream_start_resyncs() {
    let (r2, s2, x2) = get_pair("/next", 300);
    // The capture starts inside a request body and inside a response body.
    let mut req = b"ET /earlier HTTP/1.1 tail of a body {\"x\": 1}\r\n".to_vec();
    req.extend_from_slice(&r2);
    let mut resp = b"TTP/1.1 200 OK\r\n\r\nrest of a body\r\n".to_vec();
    resp.extend_from_slice(&s2);
    let f = fx().starts(1000, 5000).req(&req, 300).resp(&resp, 350);
    let (x, stats, _) = check(&f);
    assert_eq!(x, vec![x2]);
    assert_eq!(stats.junk_bytes, 46 + 34);
    assert_eq!(stats.parse_errors, 0);
    assert_eq!(stats.orphan_responses, 0);
}

#[test]
fn orphan_response_is_dropped() {
    let (r2, s2, x2) = get_pair("/seen", 300);
    // The request of the first response came before the capture started.
    let f = fx()
        .resp(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nold", 50)
        .req(&r2, 300)
        .resp(&s2, 350);
    let (x, stats, _) = check(&f);
    assert_eq!(x, vec![x2]);
    assert_eq!(stats.orphan_responses, 1);
}

#[test]
fn gap_in_content_length_body() {
    let (r2, s2, x2) = get_pair("/second", 300);
    let f = fx()
        .req(b"GET /first HTTP/1.1\r\n\r\n", 100)
        .resp(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 21\r\n\r\n{\"a\":",
            200,
        )
        .resp_gap(10, 210)
        .resp(b"\"end\"}", 220)
        .req(&r2, 300)
        .resp(&s2, 350);
    let (x, stats, _) = check(&f);
    let mut body = kept(b"{\"a\":", 21);
    body.incomplete = true;
    assert_eq!(
        x,
        vec![
            exchange(
                request("GET", "/first", &[], not_kept(0), 100, 100),
                Some(response(
                    200,
                    "OK",
                    &[
                        ("Content-Type", "application/json"),
                        ("Content-Length", "21")
                    ],
                    body,
                    200,
                    220
                )),
                true
            ),
            x2
        ]
    );
    assert_eq!(stats.lost_bytes, 10);
    assert_eq!(stats.incomplete_exchanges, 1);
}

#[test]
fn gap_in_request_head_resyncs() {
    let (r0, s0, x0) = get_pair("/zero", 10);
    let (r2, s2, x2) = get_pair("/second", 300);
    let f = fx()
        .req(&r0, 10)
        .resp(&s0, 60)
        .req(b"POST /first HTTP/1.1\r\nHost: a\r\nContent-Le", 100)
        .req_gap(30, 110)
        .req(b"gth: 5\r\n\r\nhello", 120)
        .resp(
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
            200,
        )
        .req(&r2, 300)
        .resp(&s2, 350);
    let (x, stats, _) = check(&f);
    let body = Body {
        incomplete: true,
        ..Body::default()
    };
    assert_eq!(
        x,
        vec![
            x0,
            exchange(
                request("POST", "/first", &[("Host", "a")], body, 100, 110),
                Some(response(
                    400,
                    "Bad Request",
                    &[("Content-Length", "0")],
                    not_kept(0),
                    200,
                    200
                )),
                true
            ),
            x2
        ]
    );
    assert_eq!(stats.resyncs, 1);
    assert_eq!(stats.junk_bytes, 15);
}

#[test]
fn gap_in_response_head_and_chunk_line() {
    let (r3, s3, x3) = get_pair("/third", 500);
    let f = fx()
        .req(b"GET /first HTTP/1.1\r\n\r\n", 100)
        .resp(b"HTTP/1.1 503 Unavailable\r\nRetry-Aft", 200)
        .resp_gap(40, 210)
        .resp(b"\r\n\r\n", 220)
        .req(b"GET /second HTTP/1.1\r\n\r\n", 300)
        .resp(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n[1\r\n",
            400,
        )
        .resp_gap(3, 410)
        .resp(b"\r\n]\r\n0\r\n\r\n", 420)
        .req(&r3, 500)
        .resp(&s3, 550)
        .close(600);
    let (x, stats, _) = check(&f);
    let mut r1 = response(503, "Unavailable", &[], Body::default(), 200, 210);
    r1.body.incomplete = true;
    let mut body2 = kept(b"[1", 2);
    body2.incomplete = true;
    assert_eq!(
        x,
        vec![
            exchange(
                request("GET", "/first", &[], not_kept(0), 100, 100),
                Some(r1),
                true
            ),
            exchange(
                request("GET", "/second", &[], not_kept(0), 300, 300),
                Some(response(
                    200,
                    "OK",
                    &[
                        ("Content-Type", "application/json"),
                        ("Transfer-Encoding", "chunked")
                    ],
                    body2,
                    400,
                    410
                )),
                true
            ),
            x3
        ]
    );
    assert_eq!(stats.orphan_responses, 0);
    assert_eq!(stats.junk_bytes, 4 + 10);
}

#[test]
fn lost_response_does_not_shift_pairing() {
    // The whole second response falls in a gap: its request gets no response and the
    // third response still answers the third request.
    let (r1, s1, x1) = get_pair("/1", 100);
    let (r2, s2, _) = get_pair("/2", 300);
    let (r3, s3, x3) = get_pair("/3", 500);
    let f = fx()
        .req(&r1, 100)
        .resp(&s1, 150)
        .req(&r2, 300)
        .resp_gap(s2.len() as u64, 350)
        .req(&r3, 500)
        .resp(&s3, 550)
        .close(600);
    let (x, stats, _) = check(&f);
    let mut lost = x3.clone();
    lost.request = Some(request(
        "GET",
        "/2",
        &[("Host", "a")],
        not_kept(0),
        300,
        300,
    ));
    lost.response = None;
    lost.incomplete = true;
    assert_eq!(x, vec![x1, lost, x3]);
    assert_eq!(stats.unanswered_requests, 1);
}

#[test]
fn lost_request_does_not_shift_pairing() {
    // The whole second request falls in a gap: its response started before the third
    // request did, so it cannot answer it and is dropped.
    let (r1, s1, x1) = get_pair("/1", 100);
    let (r2, s2, _) = get_pair("/2", 300);
    let (r3, s3, x3) = get_pair("/3", 500);
    let f = fx()
        .req(&r1, 100)
        .resp(&s1, 150)
        .req_gap(r2.len() as u64, 300)
        .resp(&s2, 350)
        .req(&r3, 500)
        .resp(&s3, 550);
    let (x, stats, _) = check(&f);
    assert_eq!(x, vec![x1, x3]);
    assert_eq!(stats.orphan_responses, 1);
    assert_eq!(stats.lost_bytes, r2.len() as u64);
}

#[test]
fn stream_starting_with_gap_and_memory_released() {
    let (r1, s1, x1) = get_pair("/1", 100);
    let f = fx()
        .req_gap(7, 90)
        .req(&r1, 100)
        .resp_gap(9, 90)
        .resp(&s1, 150);
    let (x, _, _) = check(&f);
    assert_eq!(x, vec![x1]);
    let mut c = HttpConnection::new(Arc::new(HttpSettings::default()));
    c.on_data(Stream::Request, 0, &r1, 100);
    c.on_data(Stream::Response, 0, &s1, 150);
    assert!(c.buffered_bytes() > 0);
    assert_eq!(c.take_exchanges().len(), 1);
    assert_eq!(c.buffered_bytes(), 0);
}

#[test]
fn skip_until_range_is_not_a_loss() {
    let (r2, s2, x2) = get_pair("/after", 300);
    let head = b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 10000\r\n\r\n";
    let mut c = HttpConnection::new(Arc::new(HttpSettings::default()));
    c.on_data(Stream::Request, 0, b"GET /logo.png HTTP/1.1\r\n\r\n", 100);
    assert_eq!(c.skip_until(Stream::Request), None);
    c.on_data(Stream::Response, 0, head, 200);
    c.on_data(Stream::Response, head.len() as u64, b"\x89PNG", 200);
    let body_end = head.len() as u64 + 10_000;
    assert_eq!(c.skip_until(Stream::Response), Some(body_end));
    c.on_gap(Stream::Response, head.len() as u64 + 4, 10_000 - 4, 210);
    assert_eq!(c.skip_until(Stream::Response), None);
    c.on_data(Stream::Request, 26, &r2, 300);
    c.on_data(Stream::Response, body_end, &s2, 350);
    let x = c.take_exchanges();
    assert_eq!(
        x,
        vec![
            exchange(
                request("GET", "/logo.png", &[], not_kept(0), 100, 100),
                Some(response(
                    200,
                    "OK",
                    &[("Content-Type", "image/png"), ("Content-Length", "10000")],
                    not_kept(10_000),
                    200,
                    210
                )),
                false
            ),
            x2
        ]
    );
    assert_eq!(c.stats().lost_bytes, 0);
    assert_eq!(c.stats().skipped_bytes, 9996);

    // A kept body past the limit: the rest is skippable once the limit is reached.
    let mut c = HttpConnection::new(Arc::new(HttpSettings {
        body_max_size: 4,
        ..HttpSettings::default()
    }));
    let post = b"POST / HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n";
    let hl = post.len() as u64;
    c.on_data(Stream::Request, 0, post, 100);
    assert_eq!(c.skip_until(Stream::Request), None);
    c.on_data(Stream::Request, hl, b"[1,2", 100);
    assert_eq!(c.skip_until(Stream::Request), Some(hl + 100));
    c.on_gap(Stream::Request, hl + 4, 96, 110);
    c.on_data(
        Stream::Response,
        0,
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        200,
    );
    let x = c.take_exchanges();
    assert_eq!(x.len(), 1);
    let body = &x[0].request.as_ref().unwrap().body;
    assert_eq!(body.bytes, b"[1,2");
    assert!(body.truncated);
    assert!(!body.incomplete);
    assert_eq!(body.wire_len, 100);
    assert!(!x[0].incomplete);

    // The same bytes through the fixture machinery, as a gap.
    let f = fx()
        .req(b"GET /logo.png HTTP/1.1\r\n\r\n", 100)
        .resp(head, 200)
        .resp_gap(10_000, 210)
        .req(&r2, 300)
        .resp(&s2, 350);
    let (x, stats, _) = check(&f);
    assert!(!x[0].incomplete);
    assert_eq!(x[0].response.as_ref().unwrap().body, not_kept(10_000));
    assert_eq!(x[1], check(&fx().req(&r2, 300).resp(&s2, 350)).0[0]);
    assert_eq!(stats.skipped_bytes, 10_000);
    assert_eq!(stats.lost_bytes, 0);
}

#[test]
fn encoded_bodies_are_decoded() {
    let doc = json_doc(300);
    for (name, enc) in [
        ("gzip", gzip(&doc)),
        ("x-gzip", gzip(&doc)),
        ("deflate", zlib(&doc)),
        ("deflate", raw_deflate(&doc)),
        ("br", brotli_enc(&doc)),
        ("zstd", zstd_enc(&doc)),
        ("identity", doc.clone()),
    ] {
        let f = fx()
            .req(b"GET /items HTTP/1.1\r\n\r\n", 100)
            .resp(&encoded_response(name, &enc), 200);
        let (x, stats, _) = check(&f);
        let body = &x[0].response.as_ref().unwrap().body;
        assert_eq!(body.bytes, doc, "{name}");
        assert_eq!(body.wire_len, enc.len() as u64);
        assert_eq!(body.decode_error, None);
        assert!(!body.truncated);
        assert_eq!(stats.decode_errors, 0);
    }
    // Chunked and gzip together, the gzip stream cut across chunks.
    let enc = gzip(&doc);
    let mut r = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for part in enc.chunks(100) {
        r.extend(format!("{:x}\r\n", part.len()).into_bytes());
        r.extend_from_slice(part);
        r.extend_from_slice(b"\r\n");
    }
    r.extend_from_slice(b"0\r\n\r\n");
    let f = fx().req(b"GET / HTTP/1.1\r\n\r\n", 100).resp(&r, 200);
    assert_eq!(check(&f).0[0].response.as_ref().unwrap().body.bytes, doc);
}

#[test]
fn unknown_encoding_keeps_raw_bytes() {
    let f = fx()
        .req(b"GET / HTTP/1.1\r\n\r\n", 100)
        .resp(&encoded_response("compress", b"\x1f\x9d\x90"), 200);
    let (x, stats, _) = check(&f);
    let body = &x[0].response.as_ref().unwrap().body;
    assert_eq!(body.bytes, b"\x1f\x9d\x90");
    assert_eq!(
        body.decode_error.as_deref(),
        Some("unsupported content-encoding: compress")
    );
    assert_eq!(stats.decode_errors, 1);
}

#[test]
fn zstd_frames_in_sequence_cut_short_or_over_the_window_cap() {
    let doc = json_doc(300);
    let response = |settings: fn(&mut HttpSettings), encoded: &[u8]| {
        let f = fx()
            .settings(settings)
            .req(b"GET / HTTP/1.1\r\n\r\n", 100)
            .resp(&encoded_response("zstd", encoded), 200);
        let (x, stats, _) = check(&f);
        (x[0].response.as_ref().unwrap().body.clone(), stats)
    };
    let mut two_frames = zstd_enc(&doc[..1000]);
    two_frames.extend(zstd_enc(&doc[1000..]));
    let (body, stats) = response(|_| {}, &two_frames);
    assert_eq!(body.bytes, doc, "a second frame continues the body");
    assert_eq!((body.decode_error, stats.decode_errors), (None, 0));

    let whole = zstd_enc(&doc);
    let (body, _) = response(|_| {}, &whole[..whole.len() - 5]);
    assert_eq!(
        body.decode_error.as_deref(),
        Some("compressed stream ended early")
    );

    let (body, stats) = response(|s| s.max_decoder_memory = 1024, &whole);
    let error = body.decode_error.unwrap_or_default();
    assert!(
        error.starts_with("zstd: ") && body.bytes.is_empty(),
        "a frame whose window exceeds the decoder memory is refused before any output: {error:?}"
    );
    assert_eq!(stats.decode_errors, 1);
}

#[test]
fn truncation_at_decoded_limit() {
    let doc = json_doc(2000);
    for (name, enc) in [
        ("gzip", gzip(&doc)),
        ("br", brotli_enc(&doc)),
        ("zstd", zstd_enc(&doc)),
        ("identity", doc.clone()),
    ] {
        let f = fx()
            .settings(|s| s.body_max_size = 1000)
            .req(b"GET / HTTP/1.1\r\n\r\n", 100)
            .resp(&encoded_response(name, &enc), 200);
        // A response read further ahead of its request than max_header_bytes +
        // body_max_size is given up as an orphan: keep requests ahead here.
        let (x, stats, _) = check_orders(&f, &[Order::Time, Order::ReqFirst, Order::Alternate]);
        let body = &x[0].response.as_ref().unwrap().body;
        assert_eq!(body.bytes, &doc[..1000], "{name}");
        assert!(body.truncated);
        assert_eq!(body.wire_len, enc.len() as u64);
        assert!(!body.incomplete);
        assert!(!x[0].incomplete);
        assert_eq!(stats.truncated_bodies, 1);
    }
    // Exactly at the limit is not truncated.
    let f = fx()
        .settings(|s| s.body_max_size = 4)
        .req(b"GET / HTTP/1.1\r\n\r\n", 100)
        .resp(&encoded_response("gzip", &gzip(b"[12]")), 200);
    let body = check(&f).0[0].response.clone().unwrap().body;
    assert_eq!(body.bytes, b"[12]");
    assert!(!body.truncated);
}

#[test]
fn content_type_parameters_and_case() {
    for ct in [
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/json;charset=\"utf-8\"",
        "  text/xml ; q=1",
    ] {
        let resp =
            format!("HTTP/1.1 200 OK\r\nContent-Type: {ct}\r\nContent-Length: 2\r\n\r\n{{}}");
        let f = fx()
            .req(b"GET / HTTP/1.1\r\n\r\n", 100)
            .resp(resp.as_bytes(), 200);
        let body = check(&f).0[0].response.clone().unwrap().body;
        assert_eq!(body, kept(b"{}", 2), "{ct}");
    }
}

/// The allow-list holds substrings of the Content-Type, as the configuration documents.
#[test]
fn allowed_content_types_are_substrings_ignoring_case() {
    let response = |ct: &str| {
        format!("HTTP/1.1 200 OK\r\nContent-Type: {ct}\r\nContent-Length: 2\r\n\r\n{{}}")
    };
    let table: &[(&[&str], &str, bool)] = &[
        (&["json"], "application/vnd.api+json; charset=utf-8", true),
        (&["json"], "application/x-ndjson", true),
        (&["JSON"], "application/json", true),
        (&["json"], "text/plain", false),
        (&["text/plain", "xml"], "Text/Plain; charset=utf-8", true),
        (&["text/plain", "xml"], "application/soap+xml", true),
        (&["text/plain", "xml"], "application/octet-stream", false),
        (&[], "application/octet-stream", true),
        (&[], "image/png", true),
    ];
    for (allowed, ct, keeps) in table {
        let f = fx()
            .settings(|s| {
                s.allowed_content_types = allowed.iter().map(|a| (*a).to_owned()).collect()
            })
            .req(b"GET / HTTP/1.1\r\n\r\n", 100)
            .resp(response(ct).as_bytes(), 200);
        let body = check(&f).0[0].response.clone().unwrap().body;
        let want = if *keeps { kept(b"{}", 2) } else { not_kept(2) };
        assert_eq!(body, want, "{allowed:?} against {ct}");
    }
    // No Content-Type: kept only when every type is, and only a body that is there (the GET
    // has none: no empty body for it).
    for (allowed, want) in [
        (vec![], kept(b"{}", 2)),
        (vec!["json".to_owned()], not_kept(2)),
    ] {
        let f = fx()
            .settings(|s| s.allowed_content_types = allowed.clone())
            .req(b"GET / HTTP/1.1\r\n\r\n", 100)
            .resp(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", 200);
        let exchange = check(&f).0.remove(0);
        assert_eq!(exchange.response.unwrap().body, want, "{allowed:?}");
        assert_eq!(exchange.request.unwrap().body, not_kept(0), "{allowed:?}");
    }
}

#[test]
fn other_content_types_not_captured() {
    let (r2, s2, x2) = get_pair("/j", 300);
    let f = fx()
        .req(
            b"POST /img HTTP/1.1\r\nContent-Type: image/png\r\nContent-Length: 4\r\n\r\n\x89PNG",
            100,
        )
        .resp(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 6\r\n\r\n<html>",
            200,
        )
        .req(&r2, 300)
        .resp(&s2, 350);
    let (x, _, _) = check(&f);
    assert_eq!(x[0].request.as_ref().unwrap().body, not_kept(4));
    assert_eq!(x[0].response.as_ref().unwrap().body, not_kept(6));
    assert_eq!(x[1], x2);
    // Capture switched off: same framing, nothing kept.
    let f = fx()
        .settings(|s| {
            s.capture_response_body = false;
            s.capture_request_headers = false;
        })
        .req(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 100)
        .resp(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
            200,
        );
    let x = check(&f).0;
    assert!(x[0].request.as_ref().unwrap().headers.is_empty());
    assert_eq!(x[0].response.as_ref().unwrap().body, not_kept(2));
}

#[test]
fn megabyte_header_line() {
    let (r2, s2, x2) = get_pair("/ok", 300);
    let mut big = b"GET /big HTTP/1.1\r\nHost: a\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 1 << 20));
    big.extend_from_slice(b"\r\n\r\n");
    let settings = Arc::new(HttpSettings::default());
    let mut c = HttpConnection::new(settings.clone());
    let mut max_held = 0;
    for (i, part) in big.chunks(4096).enumerate() {
        c.on_data(Stream::Request, (i * 4096) as u64, part, 100);
        max_held = max_held.max(c.buffered_bytes());
    }
    let s431 = b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\n\r\n";
    c.on_data(Stream::Response, 0, s431, 200);
    c.on_data(Stream::Request, big.len() as u64, &r2, 300);
    c.on_data(Stream::Response, s431.len() as u64, &s2, 350);
    assert!(max_held < 3 * settings.max_header_bytes, "held {max_held}");
    let x = c.take_exchanges();
    let body = Body {
        incomplete: true,
        ..Body::default()
    };
    assert_eq!(
        x,
        vec![
            exchange(
                request("GET", "/big", &[("Host", "a")], body, 100, 100),
                Some(response(
                    431,
                    "Request Header Fields Too Large",
                    &[("Content-Length", "0")],
                    not_kept(0),
                    200,
                    200
                )),
                true
            ),
            x2
        ]
    );
    assert_eq!(c.stats().oversized_heads, 1);
    assert_eq!(c.stats().junk_bytes, big.len() as u64 - 65_537);
}

#[test]
fn garbage_gives_nothing() {
    let mut noise = Vec::new();
    let mut x = 0x1234_5678u32;
    for _ in 0..50_000 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        noise.push(x as u8);
    }
    let f = fx()
        .req(&noise[..25_000], 100)
        .resp(&noise[25_000..], 200)
        .close(300);
    let mut c = HttpConnection::new(Arc::new(f.settings.clone()));
    for (i, part) in noise[..25_000].chunks(7).enumerate() {
        c.on_data(Stream::Request, (i * 7) as u64, part, 100);
        c.on_data(Stream::Response, (i * 7) as u64, part, 200);
        assert!(c.buffered_bytes() < 200_000);
    }
    c.on_close(300);
    assert!(c.take_exchanges().is_empty());
    let (x, stats, _) = replay(&f, &events(&f, &|_, _, _| Vec::new(), Order::Time));
    assert!(x.is_empty());
    assert_eq!(stats.exchanges, 0);
    assert!(stats.junk_bytes > 40_000);
    let bin = fx()
        .req(
            b"\x00\x01\x02GET\xff / HTTP/1.1\r\n\r\n\x16\x03\x01\x02\x00",
            100,
        )
        .resp(b"\x16\x03\x03\x00\x5a\x02HTTP/9.9 200\r\n", 200)
        .close(300);
    assert!(check(&bin).0.is_empty());
}

#[test]
fn response_timeout_via_expire() {
    let settings = Arc::new(HttpSettings::default());
    let mut c = HttpConnection::new(settings);
    c.on_data(Stream::Request, 0, b"GET /slow HTTP/1.1\r\n\r\n", 1_000);
    c.expire(1_500, 1_000);
    assert!(c.take_exchanges().is_empty());
    c.expire(2_001, 1_000);
    assert_eq!(
        c.take_exchanges(),
        vec![unanswered(
            request("GET", "/slow", &[], not_kept(0), 1_000, 1_000),
            2_001
        )]
    );
    assert_eq!(c.stats().unanswered_requests, 1);
    // The late response answers nothing seen; the next request pairs correctly.
    c.on_data(
        Stream::Response,
        0,
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        3_000,
    );
    let (r2, s2, x2) = get_pair("/next", 4_000);
    c.on_data(Stream::Request, 22, &r2, 4_000);
    c.on_data(Stream::Response, 38, &s2, 4_050);
    assert_eq!(c.take_exchanges(), vec![x2]);
    assert_eq!(c.stats().orphan_responses, 1);
}

#[test]
fn response_waiting_for_request_expires() {
    let mut c = HttpConnection::new(Arc::new(HttpSettings::default()));
    c.on_data(
        Stream::Response,
        0,
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        1_000,
    );
    assert!(c.buffered_bytes() > 0);
    c.expire(5_000, 1_000);
    assert_eq!(c.stats().orphan_responses, 1);
    assert!(c.take_exchanges().is_empty());
}

#[test]
fn close_with_pending_requests() {
    let f = fx()
        .req(
            b"GET /a HTTP/1.1\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 10\r\n\r\n12345",
            100,
        )
        .close(500);
    let (x, stats, _) = check(&f);
    let mut cut = not_kept(5);
    cut.incomplete = true;
    assert_eq!(
        x,
        vec![
            unanswered(request("GET", "/a", &[], not_kept(0), 100, 100), 500),
            exchange(
                request("POST", "/b", &[("Content-Length", "10")], cut, 100, 100),
                None,
                true
            ),
        ]
    );
    assert_eq!(stats.unanswered_requests, 2);
}

#[test]
fn the_capture_ending_leaves_what_was_in_progress_incomplete() {
    let (r1, s1, x1) = get_pair("/done", 100);
    let req = [&r1[..], b"GET /waiting HTTP/1.1\r\n\r\n"].concat();
    let resp = [
        &s1[..],
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"a\"",
    ]
    .concat();
    let (mut ended, mut closed) = (Vec::new(), Vec::new());
    for (out, end) in [(&mut ended, true), (&mut closed, false)] {
        let mut c = HttpConnection::new(Arc::new(HttpSettings::default()));
        c.on_data(Stream::Request, 0, &req, 100);
        c.on_data(Stream::Response, 0, &resp, 150);
        if end {
            c.on_capture_end(900);
        } else {
            c.on_close(900);
        }
        *out = c.take_exchanges();
    }
    // On a close, the close-delimited body is whole; when the capture ends it may go on.
    assert_eq!(closed.len(), 2, "{closed:#?}");
    assert_eq!(ended[0], x1);
    assert_eq!(ended.len(), 2, "{ended:#?}");
    assert!(!closed[1].incomplete);
    assert!(ended[1].incomplete, "{:#?}", ended[1]);
    assert_eq!(ended[1].gave_up_ns, None);
    assert_eq!(ended[1].response, closed[1].response);

    // A request waiting for its response when the capture ends did not go unanswered.
    let mut c = HttpConnection::new(Arc::new(HttpSettings::default()));
    c.on_data(Stream::Request, 0, b"GET /slow HTTP/1.1\r\n\r\n", 100);
    c.on_capture_end(900);
    assert_eq!(
        c.take_exchanges(),
        vec![exchange(
            request("GET", "/slow", &[], not_kept(0), 100, 100),
            None,
            true
        )]
    );
}

#[test]
fn response_before_request_waits() {
    // Chunks of the two streams can arrive in any order: a response read before its
    // request waits for it instead of being dropped.
    let (r1, s1, x1) = get_pair("/x", 100);
    let mut c = HttpConnection::new(Arc::new(HttpSettings::default()));
    c.on_data(Stream::Response, 0, &s1, 150);
    assert!(c.take_exchanges().is_empty());
    c.on_data(Stream::Request, 0, &r1, 100);
    assert_eq!(c.take_exchanges(), vec![x1]);
    assert_eq!(c.stats().orphan_responses, 0);
}

#[test]
fn invalid_framing_headers() {
    let (r2, s2, x2) = get_pair("/ok", 300);
    let f = fx()
        .req(
            b"POST /x HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            100,
        )
        .resp(
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
            200,
        )
        .req(&r2, 300)
        .resp(&s2, 350);
    let (x, stats, _) = check(&f);
    assert_eq!(x.len(), 2);
    assert!(x[0].incomplete);
    assert_eq!(x[0].response.as_ref().unwrap().status, 400);
    assert_eq!(x[1], x2);
    assert_eq!(stats.parse_errors, 1);
}

#[test]
fn duplicate_and_overlapping_chunks() {
    let (r1, s1, x1) = get_pair("/d", 100);
    let mut c = HttpConnection::new(Arc::new(HttpSettings::default()));
    c.on_data(Stream::Request, 0, &r1[..10], 100);
    c.on_data(Stream::Request, 0, &r1[..15], 100);
    c.on_data(Stream::Request, 5, &r1[5..], 100);
    c.on_data(Stream::Response, 0, &s1, 150);
    assert_eq!(c.take_exchanges(), vec![x1]);
    assert_eq!(c.stats().duplicate_bytes, 10 + 10);
}

/// The oldest unfinished request's headers are known from its head on, while its body is
/// read, until its response ends; then the next request's.
#[test]
fn unfinished_request_headers_follow_the_oldest_request() {
    let names = |conn: &HttpConnection| -> Option<Vec<String>> {
        conn.unfinished_request_headers()
            .map(|h| h.iter().map(|(n, _)| n.clone()).collect())
    };
    let mut conn = HttpConnection::new(Arc::new(HttpSettings::default()));
    assert_eq!(names(&conn), None);
    let head = b"POST /a HTTP/1.1\r\nHost: h\r\nTraceparent: x\r\nContent-Length: 4\r\n\r\n";
    conn.on_data(Stream::Request, 0, &head[..10], 1);
    assert_eq!(names(&conn), None, "head not parsed yet");
    conn.on_data(Stream::Request, 10, &head[10..], 2);
    let expected = Some(vec![
        "Host".to_owned(),
        "Traceparent".to_owned(),
        "Content-Length".to_owned(),
    ]);
    assert_eq!(names(&conn), expected, "body still to come");
    conn.on_data(Stream::Request, head.len() as u64, b"body", 3);
    assert_eq!(names(&conn), expected, "request complete, unanswered");
    let second = b"GET /b HTTP/1.1\r\nX-Second: 1\r\n\r\n";
    conn.on_data(Stream::Request, head.len() as u64 + 4, second, 4);
    assert_eq!(names(&conn), expected, "pipelined: still the oldest");
    let response = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    conn.on_data(Stream::Response, 0, response, 5);
    assert_eq!(conn.take_exchanges().len(), 1);
    assert_eq!(names(&conn), Some(vec!["X-Second".to_owned()]));
    conn.on_data(Stream::Response, response.len() as u64, response, 6);
    assert_eq!(conn.take_exchanges().len(), 1);
    assert_eq!(names(&conn), None);

    let mut quiet = HttpConnection::new(Arc::new(HttpSettings {
        capture_request_headers: false,
        ..HttpSettings::default()
    }));
    quiet.on_data(Stream::Request, 0, head, 1);
    assert_eq!(names(&quiet), Some(Vec::new()), "headers not captured");
}

/// Overload: bodies shed from the start are not kept, flagged, and skippable by the kernel
/// (the skipped bytes are no loss); framing and pairing are kept.
#[test]
fn shed_bodies_are_flagged_and_skippable() {
    let mut c = HttpConnection::new(Arc::new(HttpSettings::default()));
    c.set_shed_bodies(true);
    let head = b"POST /a HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n";
    c.on_data(Stream::Request, 0, head, 10);
    assert_eq!(c.skip_until(Stream::Request), Some(head.len() as u64 + 10));
    // The kernel skipped the body: a gap, not a loss.
    c.on_gap(Stream::Request, head.len() as u64, 10, 11);
    let resp = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
    c.on_data(Stream::Response, 0, resp, 20);
    let x = c.take_exchanges();
    assert_eq!(x.len(), 1);
    assert!(!x[0].incomplete);
    let req = x[0].request.as_ref().unwrap();
    assert_eq!(
        req.body,
        Body {
            wire_len: 10,
            shed: true,
            ..Body::default()
        }
    );
    let resp = x[0].response.as_ref().unwrap();
    assert_eq!(
        resp.body,
        Body {
            wire_len: 2,
            shed: true,
            ..Body::default()
        }
    );
    assert_eq!(x[0].shed_body_count(), 2);
    assert_eq!(c.stats().lost_bytes, 0);
    assert_eq!(c.stats().skipped_bytes, 10);

    // Messages without a body, or with one that would not be kept, are not flagged.
    c.on_data(
        Stream::Request,
        head.len() as u64 + 10,
        b"GET /b HTTP/1.1\r\n\r\n",
        30,
    );
    let png = b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 3\r\n\r\nabc";
    c.on_data(Stream::Response, resp_len(), png, 40);
    let x = c.take_exchanges();
    assert_eq!(x.len(), 1);
    assert_eq!(x[0].shed_body_count(), 0);
    assert!(!x[0].request.as_ref().unwrap().body.shed);
    assert!(!x[0].response.as_ref().unwrap().body.shed);

    // Shedding off: bodies are kept again.
    c.set_shed_bodies(false);
    let post = b"POST /c HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n[]";
    c.on_data(Stream::Request, head.len() as u64 + 10 + 19, post, 50);
    let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    c.on_data(Stream::Response, resp_len() + png.len() as u64, ok, 60);
    let x = c.take_exchanges();
    assert_eq!(x.len(), 1);
    assert_eq!(x[0].request.as_ref().unwrap().body.bytes, b"[]");
    assert_eq!(x[0].shed_body_count(), 0);

    fn resp_len() -> u64 {
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}".len()
            as u64
    }
}

/// Overload: turning shedding on frees the body being read and the bodies of requests waiting
/// for their response; the rest of the body being read is not needed.
#[test]
fn shedding_mid_body_frees_kept_bytes() {
    let mut c = HttpConnection::new(Arc::new(HttpSettings::default()));
    let first =
        b"POST /a HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 4\r\n\r\n[1,2";
    let second_head =
        b"POST /b HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n";
    c.on_data(Stream::Request, 0, first, 10);
    c.on_data(Stream::Request, first.len() as u64, second_head, 20);
    c.on_data(
        Stream::Request,
        (first.len() + second_head.len()) as u64,
        &[b'x'; 600],
        21,
    );
    assert_eq!(c.skip_until(Stream::Request), None);
    let before = c.buffered_bytes();
    c.set_shed_bodies(true);
    assert!(
        c.buffered_bytes() + 600 <= before,
        "{} then {}",
        before,
        c.buffered_bytes()
    );
    let end = (first.len() + second_head.len() + 1000) as u64;
    assert_eq!(c.skip_until(Stream::Request), Some(end));
    c.on_gap(Stream::Request, end - 400, 400, 22);
    let resp = b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
    c.on_data(Stream::Response, 0, resp, 30);
    let x = c.take_exchanges();
    assert_eq!(x.len(), 2);
    for (exchange, wire_len) in x.iter().zip([4, 1000]) {
        let body = &exchange.request.as_ref().unwrap().body;
        assert!(
            body.shed && !body.captured && body.bytes.is_empty(),
            "{body:?}"
        );
        assert_eq!(body.wire_len, wire_len);
        assert!(!exchange.incomplete);
    }
    assert_eq!(c.stats().lost_bytes, 0);
}

/// Shedding a finished exchange's bodies (the daemon does it to exchanges finished before the
/// level rose) frees them and flags only bodies that were kept.
#[test]
fn exchange_bodies_shed_after_the_fact() {
    let mut x = exchange(
        request(
            "POST",
            "/a",
            &[("Content-Type", "application/json")],
            kept(b"{}", 2),
            1,
            2,
        ),
        Some(response(200, "OK", &[], not_kept(5), 3, 4)),
        false,
    );
    assert!(x.is_reportable());
    assert_eq!(x.shed_bodies(), 1);
    assert_eq!(x.shed_body_count(), 1);
    let body = &x.request.as_ref().unwrap().body;
    assert!(body.shed && body.bytes.is_empty() && !body.captured);
    assert!(!x.response.as_ref().unwrap().body.shed);
    assert_eq!(x.shed_bodies(), 0, "shedding twice sheds nothing more");
}

#[test]
fn stats_names_and_totals_cover_every_counter_in_order() {
    let mut one = HttpStats::default();
    for (i, field) in one.fields_mut().into_iter().enumerate() {
        *field = i as u64 + 1;
    }
    let values: Vec<u64> = one.named().iter().map(|(_, _, v)| *v).collect();
    assert_eq!(
        values,
        (1..=17).collect::<Vec<u64>>(),
        "same order in both lists"
    );
    let mut total = one.clone();
    total.add(&one);
    let doubled: Vec<u64> = total.named().iter().map(|(_, _, v)| *v).collect();
    assert_eq!(doubled, (1..=17).map(|v| 2 * v).collect::<Vec<u64>>());
    let names: std::collections::BTreeSet<&str> = one.named().iter().map(|(n, _, _)| *n).collect();
    assert_eq!(names.len(), 17, "distinct names");
}
