//! Parsing `sensor trace --payload` output back into per-connection byte streams.

use std::collections::BTreeMap;

/// One line of `sensor trace`.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceLine {
    /// Process.
    pub pid: u32,
    /// Descriptor.
    pub fd: i32,
    /// Connection id (hex as printed).
    pub conn: String,
    /// `server`, `client` or `unknown`.
    pub role: String,
    /// `in` or `out`.
    pub dir: String,
    /// `local->remote` or `unix:path`.
    pub ends: String,
    /// Bytes the syscall moved.
    pub len: u64,
    /// Bytes copied in this chunk.
    pub copied: u64,
    /// Stream offset of the chunk.
    pub offset: u64,
    /// Stream offset of the syscall's first byte (`len` bytes from there moved).
    pub syscall_offset: u64,
    /// Syscall family.
    pub via: String,
    /// The (unescaped) payload bytes printed.
    pub payload: Vec<u8>,
}

fn unescape(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 1 < bytes.len() {
            match bytes[i + 1] {
                b'r' => out.push(b'\r'),
                b'n' => out.push(b'\n'),
                b'\\' => out.push(b'\\'),
                b'"' => out.push(b'"'),
                b'x' if i + 3 < bytes.len() => {
                    let hex = std::str::from_utf8(&bytes[i + 2..i + 4]).expect("ascii");
                    out.push(u8::from_str_radix(hex, 16).expect("hex escape"));
                    i += 4;
                    continue;
                }
                other => panic!("unknown escape \\{}", other as char),
            }
            i += 2;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

/// Parses one trace line; `None` for lines that are not chunk lines.
pub fn parse_line(line: &str) -> Option<TraceLine> {
    let (head, payload) = match line.find(" payload=\"") {
        Some(i) => (&line[..i], Some(&line[i + 10..line.len() - 1])),
        None => (line, None),
    };
    let mut fields = BTreeMap::new();
    let mut positional = Vec::new();
    for token in head.split_whitespace().skip(1) {
        match token.split_once('=') {
            Some((k, v)) => {
                fields.insert(k, v);
            }
            None => positional.push(token),
        }
    }
    Some(TraceLine {
        pid: fields.get("pid")?.parse().ok()?,
        fd: fields.get("fd")?.parse().ok()?,
        conn: fields.get("conn")?.to_string(),
        role: fields.get("role")?.to_string(),
        dir: positional.first()?.to_string(),
        ends: positional.get(1)?.to_string(),
        len: fields.get("len")?.parse().ok()?,
        copied: fields.get("copied")?.parse().ok()?,
        offset: fields.get("off")?.parse().ok()?,
        syscall_offset: fields.get("sys_off")?.parse().ok()?,
        via: fields.get("via")?.to_string(),
        payload: payload.map(unescape).unwrap_or_default(),
    })
}

/// A connection's two streams reassembled from trace lines, asserting that every chunk was
/// copied whole and that offsets are contiguous.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Streams {
    /// Process.
    pub pid: u32,
    /// Role printed.
    pub role: String,
    /// Ends printed.
    pub ends: String,
    /// Received bytes.
    pub ingress: Vec<u8>,
    /// Sent bytes.
    pub egress: Vec<u8>,
}

/// Groups lines by connection and concatenates each direction's payload.
pub fn streams(lines: &[TraceLine]) -> BTreeMap<String, Streams> {
    let mut out: BTreeMap<String, Streams> = BTreeMap::new();
    for line in lines {
        let s = out.entry(line.conn.clone()).or_default();
        s.pid = line.pid;
        s.role = line.role.clone();
        s.ends = line.ends.clone();
        assert_eq!(
            line.payload.len() as u64,
            line.copied,
            "trace printed fewer bytes than copied (raise --payload-bytes): {line:?}"
        );
        let stream = if line.dir == "in" {
            &mut s.ingress
        } else {
            &mut s.egress
        };
        assert_eq!(
            line.offset,
            stream.len() as u64,
            "non-contiguous stream: {line:?}"
        );
        stream.extend_from_slice(&line.payload);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_chunk_line() {
        let line = r#"1700000000.000000001 pid=10 fd=4 conn=1f role=server in  127.0.0.1:80->127.0.0.1:5000 len=18 copied=18 off=0 sys_off=0 via=rw payload="GET / HTTP/1.1\r\n\x00\"""#;
        let parsed = parse_line(line).unwrap();
        assert_eq!(parsed.pid, 10);
        assert_eq!(parsed.dir, "in");
        assert_eq!(parsed.ends, "127.0.0.1:80->127.0.0.1:5000");
        assert_eq!(parsed.payload, b"GET / HTTP/1.1\r\n\x00\"");
        assert_eq!(parsed.conn, "1f");
    }
}
