//! Incremental check of a start line (request line or status line), byte by byte.
//!
//! The head reader feeds the first line of a head through [`LineCheck`] as bytes arrive, so
//! garbage is rejected after a few bytes instead of after a whole head, and so that resync
//! scanning can tell a plausible message start (`METHOD SP target SP HTTP/1.x` or
//! `HTTP/1.x SP ddd`) from the middle of a body.

/// Methods accepted when looking for a message start after lost sync (strict mode).
///
/// In sync (right after a complete message) any token is accepted as a method, as the
/// specification allows; while resynchronising, only these, so that the tail of a cut-off
/// method (`ET /x HTTP/1.1`) is never taken for a request.
const KNOWN_METHODS: &[&[u8]] = &[
    b"GET",
    b"HEAD",
    b"POST",
    b"PUT",
    b"DELETE",
    b"CONNECT",
    b"OPTIONS",
    b"TRACE",
    b"PATCH",
    b"QUERY",
    b"PROPFIND",
    b"PROPPATCH",
    b"MKCOL",
    b"COPY",
    b"MOVE",
    b"LOCK",
    b"UNLOCK",
    b"SEARCH",
    b"REPORT",
    b"PURGE",
];

/// Longest method token accepted in sync mode.
const MAX_METHOD_LEN: usize = 32;

/// The version prefix shared by both start lines.
const VERSION_PREFIX: &[u8] = b"HTTP/1.";

/// Where the check stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum LineState {
    /// Consistent so far; more bytes needed.
    Partial,
    /// A complete, well-formed line (its `\n` included).
    Done,
    /// Not a start line.
    Invalid,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Method,
    Target,
    Version(usize),
    Code(usize),
    Reason,
    Cr,
    Done,
    Invalid,
}

/// Which kind of line is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum LineKind {
    /// A request line; `strict` restricts methods to [`KNOWN_METHODS`].
    Request {
        /// Whether only well-known methods are accepted.
        strict: bool,
    },
    /// A status line.
    Response,
}

/// Incremental start-line checker. Feed it the growing line buffer; it resumes where it
/// stopped.
#[derive(Clone, Debug)]
pub(super) struct LineCheck {
    kind: LineKind,
    phase: Phase,
    /// Bytes of the line already examined.
    pos: usize,
    /// Length of the current field (method, target) so far.
    field: usize,
}

/// `tchar` of RFC 9110.
pub(super) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Bytes allowed in a request target (the same set as httparse).
fn is_target_byte(b: u8) -> bool {
    (b'!'..=0x7e).contains(&b) || b >= 0x80
}

/// Whether `b` may be the first byte of a message start of this kind.
pub(super) fn can_start(kind: LineKind, b: u8) -> bool {
    match kind {
        LineKind::Request { strict: true } => KNOWN_METHODS.iter().any(|m| m[0] == b),
        LineKind::Request { strict: false } => is_tchar(b),
        LineKind::Response => b == b'H',
    }
}

impl LineCheck {
    /// A fresh check for a line of `kind`.
    pub(super) fn new(kind: LineKind) -> Self {
        let phase = match kind {
            LineKind::Request { .. } => Phase::Method,
            LineKind::Response => Phase::Version(0),
        };
        LineCheck {
            kind,
            phase,
            pos: 0,
            field: 0,
        }
    }

    /// Where the check stands, without feeding anything.
    pub(super) fn state(&self) -> LineState {
        match self.phase {
            Phase::Done => LineState::Done,
            Phase::Invalid => LineState::Invalid,
            _ => LineState::Partial,
        }
    }

    /// Examines the bytes of `line` not yet seen. `line` must start with the bytes given
    /// before. Stops at the end of the line (after `\n`) or at the first invalid byte.
    pub(super) fn feed(&mut self, line: &[u8]) -> LineState {
        while self.pos < line.len() {
            let Some(&b) = line.get(self.pos) else { break };
            self.phase = self.step(line, b);
            self.pos += 1;
            if matches!(self.phase, Phase::Done | Phase::Invalid) {
                break;
            }
        }
        self.state()
    }

    fn step(&mut self, line: &[u8], b: u8) -> Phase {
        match self.phase {
            Phase::Method => self.step_method(line, b),
            Phase::Target => {
                if b == b' ' {
                    if self.field == 0 {
                        return Phase::Invalid;
                    }
                    Phase::Version(0)
                } else if is_target_byte(b) {
                    self.field += 1;
                    Phase::Target
                } else {
                    Phase::Invalid
                }
            }
            Phase::Version(i) => self.step_version(i, b),
            Phase::Code(n) => {
                if n < 3 {
                    let ok = if n == 0 {
                        (b'1'..=b'5').contains(&b)
                    } else {
                        b.is_ascii_digit()
                    };
                    if ok {
                        Phase::Code(n + 1)
                    } else {
                        Phase::Invalid
                    }
                } else {
                    match b {
                        b' ' => Phase::Reason,
                        b'\r' => Phase::Cr,
                        b'\n' => Phase::Done,
                        _ => Phase::Invalid,
                    }
                }
            }
            Phase::Reason => match b {
                b'\r' => Phase::Cr,
                b'\n' => Phase::Done,
                b'\t' => Phase::Reason,
                _ if b < 0x20 || b == 0x7f => Phase::Invalid,
                _ => Phase::Reason,
            },
            Phase::Cr => {
                if b == b'\n' {
                    Phase::Done
                } else {
                    Phase::Invalid
                }
            }
            Phase::Done | Phase::Invalid => self.phase,
        }
    }

    fn step_method(&mut self, line: &[u8], b: u8) -> Phase {
        let strict = matches!(self.kind, LineKind::Request { strict: true });
        let so_far = line.get(..self.pos).unwrap_or_default();
        if b == b' ' {
            if self.field == 0 {
                return Phase::Invalid;
            }
            if strict && !KNOWN_METHODS.contains(&so_far) {
                return Phase::Invalid;
            }
            self.field = 0;
            return Phase::Target;
        }
        if !is_tchar(b) || self.field >= MAX_METHOD_LEN {
            return Phase::Invalid;
        }
        if strict {
            let n = self.pos + 1;
            let prefix_ok = KNOWN_METHODS
                .iter()
                .any(|m| m.len() >= n && m.get(..self.pos) == Some(so_far) && m[self.pos] == b);
            if !prefix_ok {
                return Phase::Invalid;
            }
        }
        self.field += 1;
        Phase::Method
    }

    fn step_version(&mut self, i: usize, b: u8) -> Phase {
        if i < VERSION_PREFIX.len() {
            return if VERSION_PREFIX[i] == b {
                Phase::Version(i + 1)
            } else {
                Phase::Invalid
            };
        }
        if i == VERSION_PREFIX.len() {
            return if b == b'0' || b == b'1' {
                Phase::Version(i + 1)
            } else {
                Phase::Invalid
            };
        }
        match (self.kind, b) {
            (LineKind::Request { .. }, b'\r') => Phase::Cr,
            (LineKind::Request { .. }, b'\n') => Phase::Done,
            (LineKind::Response, b' ') => {
                self.field = 0;
                Phase::Code(0)
            }
            _ => Phase::Invalid,
        }
    }
}

/// The fields of a start line that are known from a possibly incomplete line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct LineFields {
    /// Method, when the space after it was seen.
    pub method: Option<String>,
    /// Target, when the space after it was seen.
    pub target: Option<String>,
    /// Minor version digit, when seen.
    pub minor: Option<u8>,
    /// Status code, when all three digits were seen.
    pub status: Option<u16>,
    /// Reason phrase, when the line is complete.
    pub reason: Option<String>,
}

/// Extracts what a (possibly cut) start line tells. Only meaningful for a line that
/// [`LineCheck`] did not reject.
pub(super) fn line_fields(kind: LineKind, line: &[u8]) -> LineFields {
    let complete = line.last() == Some(&b'\n');
    let body = line
        .strip_suffix(b"\n")
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .unwrap_or(line);
    let mut out = LineFields::default();
    match kind {
        LineKind::Request { .. } => {
            let mut parts = body.splitn(3, |&b| b == b' ');
            let method = parts.next();
            let target = parts.next();
            let version = parts.next();
            if let (Some(m), Some(_)) = (method, target) {
                out.method = Some(String::from_utf8_lossy(m).into_owned());
            }
            if let (Some(t), Some(_)) = (target, version) {
                out.target = Some(String::from_utf8_lossy(t).into_owned());
            }
            if let Some(v) = version {
                out.minor = version_minor(v);
            }
        }
        LineKind::Response => {
            if let Some(v) = body.get(..VERSION_PREFIX.len() + 1) {
                out.minor = version_minor(v);
            }
            let start = VERSION_PREFIX.len() + 2;
            if let Some(code) = body.get(start..start + 3)
                && code.iter().all(u8::is_ascii_digit)
            {
                out.status = Some(
                    code.iter()
                        .fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0')),
                );
            }
            if complete {
                let reason = body.get(start + 4..).unwrap_or_default();
                out.reason = Some(String::from_utf8_lossy(reason).into_owned());
            }
        }
    }
    out
}

fn version_minor(v: &[u8]) -> Option<u8> {
    match v {
        b"HTTP/1.0" => Some(0),
        b"HTTP/1.1" => Some(1),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(kind: LineKind, line: &[u8]) -> LineState {
        LineCheck::new(kind).feed(line)
    }

    #[test]
    fn request_lines() {
        let strict = LineKind::Request { strict: true };
        let lenient = LineKind::Request { strict: false };
        assert_eq!(check(strict, b"GET / HTTP/1.1\r\n"), LineState::Done);
        assert_eq!(check(strict, b"GET / HTTP/1.0\n"), LineState::Done);
        assert_eq!(check(strict, b"GET / HTTP/1.1"), LineState::Partial);
        assert_eq!(check(strict, b"ET / HTTP/1.1\r\n"), LineState::Invalid);
        assert_eq!(check(lenient, b"ET / HTTP/1.1\r\n"), LineState::Done);
        assert_eq!(check(strict, b"GET  / HTTP/1.1\r\n"), LineState::Invalid);
        assert_eq!(check(strict, b"GET / HTTP/2.0\r\n"), LineState::Invalid);
        assert_eq!(check(strict, b"GET / HTTP/1.1\rx"), LineState::Invalid);
        assert_eq!(check(lenient, b"\x00GET"), LineState::Invalid);
    }

    #[test]
    fn status_lines() {
        let r = LineKind::Response;
        assert_eq!(check(r, b"HTTP/1.1 200 OK\r\n"), LineState::Done);
        assert_eq!(check(r, b"HTTP/1.1 200\r\n"), LineState::Done);
        assert_eq!(check(r, b"HTTP/1.0 404 Not Found\n"), LineState::Done);
        assert_eq!(check(r, b"HTTP/1.1 600 X\r\n"), LineState::Invalid);
        assert_eq!(check(r, b"HTTP/1.1 20"), LineState::Partial);
        assert_eq!(check(r, b"HTTP/1.1 2000"), LineState::Invalid);
    }

    #[test]
    fn incremental_feed_matches_whole() {
        let line = b"POST /a?b=c HTTP/1.1\r\n";
        let mut c = LineCheck::new(LineKind::Request { strict: true });
        for i in 1..=line.len() {
            let s = c.feed(&line[..i]);
            let expect = if i == line.len() {
                LineState::Done
            } else {
                LineState::Partial
            };
            assert_eq!(s, expect);
        }
    }

    #[test]
    fn fields_of_cut_lines() {
        let k = LineKind::Request { strict: false };
        let f = line_fields(k, b"GET /x HT");
        assert_eq!(f.method.as_deref(), Some("GET"));
        assert_eq!(f.target.as_deref(), Some("/x"));
        assert_eq!(f.minor, None);
        let f = line_fields(k, b"GE");
        assert_eq!(f, LineFields::default());
        let f = line_fields(LineKind::Response, b"HTTP/1.1 503 Busy\r\n");
        assert_eq!(f.status, Some(503));
        assert_eq!(f.reason.as_deref(), Some("Busy"));
        assert_eq!(f.minor, Some(1));
    }
}
