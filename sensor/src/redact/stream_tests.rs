//! Unit tests of raw-stream redaction: what `trace --payload` would show, chunk by chunk,
//! searched for every secret and every 6-byte substring of one, whatever the chunking.

use std::collections::VecDeque;

use super::*;
use crate::config::Config;

const IN: Direction = Direction::Ingress;
const OUT: Direction = Direction::Egress;

fn rules_of(yaml: &str) -> StreamRules {
    let (config, warnings) = Config::from_yaml_str(yaml).expect("valid configuration");
    assert!(warnings.is_empty(), "{warnings:?}");
    StreamRules::from_config(&config).expect("valid rules")
}

/// Shows chunks the way `trace` does: each one once every byte of it is decided, masked runs
/// as `[REDACTED]`.
#[derive(Default)]
struct Shown {
    scrub: ConnScrubber,
    pending: [VecDeque<(u64, Vec<u8>)>; 2],
    /// What was shown of each stream, chunk by chunk.
    chunks: [Vec<String>; 2],
}

impl Shown {
    fn feed(&mut self, rules: &StreamRules, direction: Direction, offset: u64, bytes: &[u8]) {
        assert!(self.scrub.feed(rules, direction, offset, bytes));
        self.pending[direction.index()].push_back((offset, bytes.to_vec()));
        self.drain(direction);
    }

    /// Feeds a stream from offset 0 cut at these positions.
    fn feed_cut(
        &mut self,
        rules: &StreamRules,
        direction: Direction,
        bytes: &[u8],
        cuts: &[usize],
    ) {
        let mut start = 0;
        for &cut in cuts.iter().chain([bytes.len()].iter()) {
            let cut = cut.clamp(start, bytes.len());
            if cut > start {
                self.feed(rules, direction, start as u64, &bytes[start..cut]);
            }
            start = cut;
        }
    }

    fn drain(&mut self, direction: Direction) {
        let d = direction.index();
        while let Some((offset, bytes)) = self.pending[d].front() {
            let end = offset + bytes.len() as u64;
            if end > self.scrub.settled(direction) {
                break;
            }
            let runs = self.scrub.masked_runs(direction, *offset, bytes.len());
            self.chunks[d].push(render(bytes, &runs));
            self.scrub.release(direction, end);
            self.pending[d].pop_front();
        }
    }

    fn close(&mut self, rules: &StreamRules) {
        self.scrub.close(rules);
        self.drain(IN);
        self.drain(OUT);
        assert!(self.pending.iter().all(VecDeque::is_empty));
    }

    fn text(&self, direction: Direction) -> String {
        self.chunks[direction.index()].concat()
    }
}

fn render(bytes: &[u8], runs: &[Range<usize>]) -> String {
    let mut out = String::new();
    let mut last = 0;
    for run in runs {
        out.push_str(&String::from_utf8_lossy(&bytes[last..run.start]));
        out.push_str("[REDACTED]");
        last = run.end;
    }
    out.push_str(&String::from_utf8_lossy(&bytes[last..]));
    out
}

#[track_caller]
fn assert_no_secret(text: &str, secrets: &[&str]) {
    for secret in secrets {
        for window in secret.as_bytes().windows(6) {
            assert!(
                !text.as_bytes().windows(6).any(|w| w == window),
                "part {:?} of secret {secret:?} shown:\n{text}",
                String::from_utf8_lossy(window)
            );
        }
    }
}

const RULES: &str = "\
data_capture:
  redact_headers: [authorization, cookie, set-cookie, x-secret-header]
  redact_request_body: ['$.user.password', '$.cards[*]']
  redact_response_body: ['$.token']
  redact_query_params: [token]
  redact_card_numbers: true
  redact_emails: true
";

const SECRETS: &[&str] = &[
    "az-Rt98Yu76",
    "qtok-Ab12Cd34",
    "pw-Hx83Kq1Lz",
    "4111 1111 1111 1111",
    "4111111111111111",
    "jm.Pv3Wq.K4@example.com",
    "ck-Zx81QwEr",
    "sid-Ty65Ui43",
    "tk-Lp09Mn33Vb",
    "hdr-Mn45Op67",
    "cv-Qa11Ws22",
];

fn request_stream() -> Vec<u8> {
    let body = r#"{"user": {"name": "bob", "password": "pw-Hx83Kq1Lz"}, "cards": ["cv-Qa11Ws22"], "note": "card 4111 1111 1111 1111", "mail": "jm.Pv3Wq.K4@example.com"}"#;
    let mut out = format!(
        "POST /login?token=qtok-Ab12Cd34&x=1 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer az-Rt98Yu76\r\nX-Secret-Header: hdr-Mn45Op67\r\n  continued-hdr-Mn45Op67\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(b"GET /next HTTP/1.1\r\nCookie: sid-Ty65Ui43\r\n\r\n");
    out
}

fn response_stream() -> Vec<u8> {
    let body = br#"{"ok": true, "token": "tk-Lp09Mn33Vb", "n": 4111111111111111}"#;
    let mut out = b"HTTP/1.1 200 OK\r\nSet-Cookie: s=ck-Zx81QwEr\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    // HTTP chunks of 7 bytes: the token is split by chunk framing.
    for piece in body.chunks(7) {
        out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\nX-Trailer: t\r\n\r\n");
    out.extend_from_slice(b"HTTP/1.1 204 No Content\r\nSet-Cookie: s=ck-Zx81QwEr\r\n\r\n");
    out
}

#[test]
fn whole_streams_are_redacted_and_the_rest_is_kept() {
    let rules = rules_of(RULES);
    let mut shown = Shown::default();
    shown.feed_cut(&rules, IN, &request_stream(), &[]);
    shown.feed_cut(&rules, OUT, &response_stream(), &[]);
    shown.close(&rules);
    let request = shown.text(IN);
    let body = r#"{"user": {"name": "bob", "password": [REDACTED]}, "cards": [[REDACTED]], "note": "card [REDACTED]", "mail": "[REDACTED]"}"#;
    assert_eq!(
        request,
        format!(
            "POST /login?token=[REDACTED]&x=1 HTTP/1.1\r\nHost: a\r\nAuthorization:[REDACTED]\r\nX-Secret-Header:[REDACTED]\r\n[REDACTED]\r\nContent-Type: application/json\r\nContent-Length: 150\r\n\r\n{body}GET /next HTTP/1.1\r\nCookie:[REDACTED]\r\n\r\n"
        )
    );
    let response = shown.text(OUT);
    assert!(response.starts_with("HTTP/1.1 200 OK\r\nSet-Cookie:[REDACTED]\r\n"));
    assert!(response.contains("0\r\nX-Trailer: t\r\n\r\nHTTP/1.1 204 No Content\r\n"));
    assert_no_secret(&request, SECRETS);
    assert_no_secret(&response, SECRETS);
}

#[test]
fn secrets_split_across_any_two_chunks_are_never_shown() {
    let rules = rules_of(RULES);
    let (request, response) = (request_stream(), response_stream());
    for cut in 0..=request.len().max(response.len()) {
        let mut shown = Shown::default();
        shown.feed_cut(&rules, IN, &request, &[cut]);
        shown.feed_cut(&rules, OUT, &response, &[cut]);
        shown.close(&rules);
        let (req, resp) = (shown.text(IN), shown.text(OUT));
        assert_no_secret(&req, SECRETS);
        assert_no_secret(&resp, SECRETS);
        assert!(req.contains("\"name\": \"bob\""), "cut {cut}: {req}");
        assert!(req.contains("GET /next HTTP/1.1\r\n"), "cut {cut}: {req}");
        assert!(
            resp.contains("{\"ok\": \r\n7\r\ntrue, \""),
            "cut {cut}: {resp}"
        );
    }
}

#[test]
fn byte_by_byte_chunks_show_the_same_text() {
    let rules = rules_of(RULES);
    let request = request_stream();
    let mut whole = Shown::default();
    whole.feed_cut(&rules, IN, &request, &[]);
    whole.close(&rules);
    let mut bytes = Shown::default();
    let cuts: Vec<usize> = (1..request.len()).collect();
    bytes.feed_cut(&rules, IN, &request, &cuts);
    bytes.close(&rules);
    let joined = bytes.text(IN).replace("[REDACTED]", "#");
    // Byte-sized chunks show one marker per masked byte: the same text with runs collapsed.
    let mut collapsed = String::new();
    for c in joined.chars() {
        if c != '#' || !collapsed.ends_with('#') {
            collapsed.push(c);
        }
    }
    assert_eq!(collapsed, whole.text(IN).replace("[REDACTED]", "#"));
}

#[test]
fn bodies_no_rule_looks_into_are_shown_as_they_come() {
    let rules = rules_of("data_capture: {}");
    let mut shown = Shown::default();
    let head = b"POST /up HTTP/1.1\r\nAuthorization: Basic c2VjcmV0\r\nContent-Length: 10\r\n\r\n";
    shown.feed(&rules, IN, 0, &head[..20]);
    assert!(
        shown.chunks[0].is_empty(),
        "an incomplete head is not shown"
    );
    shown.feed(&rules, IN, 20, &head[20..]);
    assert_eq!(
        shown.text(IN),
        "POST /up HTTP/1.1\r\nAuthorization:[REDACTED]\r\nContent-Length: 10\r\n\r\n"
    );
    shown.feed(&rules, IN, head.len() as u64, b"01234");
    assert_eq!(
        shown.chunks[0].last().unwrap(),
        "01234",
        "body shown at once"
    );
}

#[test]
fn buffered_bodies_wait_for_their_end_or_are_masked_when_flushed() {
    let rules = rules_of(RULES);
    let mut shown = Shown::default();
    let head = b"POST /u HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n";
    shown.feed(&rules, IN, 0, head);
    shown.feed(
        &rules,
        IN,
        head.len() as u64,
        br#"{"user": {"password": "pw-Hx"#,
    );
    assert_eq!(shown.chunks[0].len(), 1, "the body waits for its end");
    shown.scrub.flush(&rules, IN);
    shown.drain(IN);
    assert_eq!(shown.chunks[0][1], "[REDACTED]");
    let at = head.len() as u64 + 28;
    shown.feed(&rules, IN, at, br#"83Kq1Lz"}} "#);
    assert_eq!(
        shown.chunks[0][2], "[REDACTED]",
        "the rest of that body too"
    );
    shown.feed(&rules, IN, at + 12, b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(shown.chunks[0][3], "GET / HTTP/1.1\r\n\r\n");
}

#[test]
fn bodies_that_cannot_be_redacted_are_masked_whole() {
    let rules = rules_of(RULES);
    for (head, body) in [
        // Not JSON where JSONPaths apply.
        (
            "POST /a HTTP/1.1\r\nContent-Type: text/plain\r\n",
            "password=pw-Hx83Kq1Lz",
        ),
        // Content-coded: its text is not visible.
        (
            "POST /a HTTP/1.1\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n",
            "{\"password\": \"pw-Hx83Kq1Lz\"}",
        ),
    ] {
        let stream = format!("{head}Content-Length: {}\r\n\r\n{body}", body.len());
        let mut shown = Shown::default();
        shown.feed_cut(&rules, IN, stream.as_bytes(), &[]);
        shown.close(&rules);
        assert!(
            shown.text(IN).ends_with("\r\n\r\n[REDACTED]"),
            "{}",
            shown.text(IN)
        );
    }
    let small = rules_of(
        "data_capture:\n  body_max_size_bytes: 16\n  body_max_processing_size_bytes: 16\n  redact_request_body: ['$.a']\n",
    );
    let stream = b"POST /a HTTP/1.1\r\nContent-Length: 30\r\n\r\n{\"b\": \"pw-Hx83Kq1Lz-0123456\"}";
    let mut shown = Shown::default();
    shown.feed_cut(&small, IN, stream, &[45]);
    shown.close(&small);
    assert!(
        shown.text(IN).ends_with("\r\n\r\n[REDACTED][REDACTED]"),
        "{}",
        shown.text(IN)
    );
}

#[test]
fn form_bodies_and_query_strings_by_name_even_encoded() {
    let rules = rules_of(
        "data_capture:\n  redact_form_fields: [password]\n  redact_query_params: [token]\n",
    );
    let body = "user=bob&pass%77ord=pw-Hx83Kq1Lz";
    let stream = format!(
        "POST /login?Token=qtok-Ab12Cd34#frag HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut shown = Shown::default();
    shown.feed_cut(&rules, IN, stream.as_bytes(), &[60]);
    shown.close(&rules);
    let text = shown.text(IN);
    assert!(
        text.starts_with("POST /login?Token=[REDACTED]#frag HTTP/1.1\r\n"),
        "{text}"
    );
    assert!(text.ends_with("user=bob&pass%77ord=[REDACTED]"), "{text}");
}

#[test]
fn bytes_outside_known_messages_are_masked_until_a_message_starts() {
    let rules = rules_of("data_capture: {}");
    // The capture started in the middle of a head.
    let mut shown = Shown::default();
    shown.feed(
        &rules,
        IN,
        500,
        b"Bearer az-Rt98Yu76\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
    );
    shown.close(&rules);
    assert_eq!(shown.text(IN), "[REDACTED]GET /b HTTP/1.1\r\n\r\n");
    let mut shown = Shown::default();
    shown.feed(
        &rules,
        IN,
        0,
        b"Bearer az-Rt98Yu76\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
    );
    shown.close(&rules);
    assert_eq!(shown.text(IN), "[REDACTED]GET /b HTTP/1.1\r\n\r\n");

    // Bytes lost inside a head: the rest of it is masked.
    let mut shown = Shown::default();
    shown.feed(&rules, IN, 0, b"GET /a HTTP/1.1\r\nAuthori");
    shown.feed(
        &rules,
        IN,
        30,
        b"Bearer az-Rt98Yu76\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
    );
    shown.close(&rules);
    assert_eq!(
        shown.text(IN),
        "[REDACTED][REDACTED]GET /b HTTP/1.1\r\n\r\n"
    );

    // Bytes lost inside a Content-Length body keep the framing.
    let mut shown = Shown::default();
    shown.feed(
        &rules,
        IN,
        0,
        b"POST /a HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123",
    );
    shown.feed(&rules, IN, 48, b"89GET /b HTTP/1.1\r\nCookie: c\r\n\r\n");
    shown.close(&rules);
    assert!(
        shown
            .text(IN)
            .ends_with("012389GET /b HTTP/1.1\r\nCookie:[REDACTED]\r\n\r\n"),
        "{}",
        shown.text(IN)
    );

    // Bytes fed twice are refused (trace then shows them masked).
    assert!(!shown.scrub.feed(&rules, IN, 0, b"GET"));
}

#[test]
fn responses_are_framed_by_their_requests() {
    let rules = rules_of("data_capture: {}");
    // A response to HEAD has no body, whatever its Content-Length says.
    let mut shown = Shown::default();
    shown.feed(
        &rules,
        OUT,
        0,
        b"HEAD /a HTTP/1.1\r\n\r\nGET /a HTTP/1.1\r\n\r\n",
    );
    shown.feed(
        &rules,
        IN,
        0,
        b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nHTTP/1.1 200 OK\r\nSet-Cookie: ck-Zx81QwEr\r\nContent-Length: 2\r\n\r\nok",
    );
    shown.close(&rules);
    assert!(
        shown
            .text(IN)
            .ends_with("Set-Cookie:[REDACTED]\r\nContent-Length: 2\r\n\r\nok")
    );

    // A response whose request was not seen: its length is a guess, its body is masked.
    let mut shown = Shown::default();
    shown.feed(
        &rules,
        IN,
        0,
        b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nHTTP/1.1 200 OK\r\nSet-Cookie: ck-Zx81QwEr\r\n\r\n",
    );
    shown.close(&rules);
    assert_no_secret(&shown.text(IN), &["ck-Zx81QwEr"]);
    assert!(
        shown
            .text(IN)
            .starts_with("HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n")
    );
}

#[test]
fn rules_are_the_union_of_every_service() {
    let rules = rules_of(
        "data_capture:\n  redact_headers: [a]\n  service_overrides:\n    orders: {redact_headers: [b], redact_emails: true}\n",
    );
    let mut shown = Shown::default();
    shown.feed(
        &rules,
        IN,
        0,
        b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: x@example.com\r\n\r\n",
    );
    shown.close(&rules);
    assert_eq!(
        shown.text(IN),
        "GET / HTTP/1.1\r\nA:[REDACTED]\r\nB:[REDACTED]\r\nC: [REDACTED]\r\n\r\n"
    );
    assert!(rules_of("data_capture: {redact_headers: []}").is_empty());
}

#[test]
fn escaped_json_strings_are_searched_decoded() {
    let rules = rules_of("data_capture:\n  redact_card_numbers: true\n");
    let body = r#"{"n": "\u0034111111111111111", "k": "ok"}"#;
    let stream = format!(
        "POST /a HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut shown = Shown::default();
    shown.feed_cut(&rules, IN, stream.as_bytes(), &[]);
    shown.close(&rules);
    assert!(
        shown.text(IN).ends_with(r#"{"n": [REDACTED], "k": "ok"}"#),
        "{}",
        shown.text(IN)
    );
}

#[test]
fn switched_protocols_are_masked() {
    let rules = rules_of("data_capture: {}");
    let mut shown = Shown::default();
    shown.feed(
        &rules,
        OUT,
        0,
        b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n\x81\x05hello",
    );
    shown.feed(
        &rules,
        IN,
        0,
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 101 Switching Protocols\r\n\r\n\x81\x05hello",
    );
    shown.close(&rules);
    assert!(
        shown.text(OUT).ends_with("\r\n\r\n[REDACTED]"),
        "{}",
        shown.text(OUT)
    );
    assert!(
        shown.text(IN).ends_with("Protocols\r\n\r\n[REDACTED]"),
        "{}",
        shown.text(IN)
    );
}
