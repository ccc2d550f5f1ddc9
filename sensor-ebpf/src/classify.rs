//! Decides what protocol a connection speaks from the first bytes of a syscall, so that only
//! HTTP/1 payload ever leaves the kernel.

use sensor_common::maps::Protocol;

/// Bytes looked at to classify.
pub const PEEK_LEN: usize = 16;

/// Classifies the first `len` bytes of a stream (or of a syscall, for a connection adopted
/// mid-stream). `Unclassified` means "too short to tell yet".
#[inline(always)]
pub fn classify(bytes: &[u8; PEEK_LEN], len: usize) -> Protocol {
    if len == 0 {
        return Protocol::Unclassified;
    }
    // TLS record header: handshake (0x16) or, mid-stream, application data (0x17), version 3.x.
    if len >= 3 && (bytes[0] == 0x16 || bytes[0] == 0x17) && bytes[1] == 0x03 && bytes[2] <= 0x04 {
        return Protocol::Tls;
    }
    if len >= 4 && bytes[0] == b'P' && bytes[1] == b'R' && bytes[2] == b'I' && bytes[3] == b' ' {
        return Protocol::Http2;
    }
    if len >= 5
        && bytes[0] == b'H'
        && bytes[1] == b'T'
        && bytes[2] == b'T'
        && bytes[3] == b'P'
        && bytes[4] == b'/'
    {
        return Protocol::Http1;
    }
    // A request line: an upper-case method token of 3..=12 characters, then a space.
    let mut token = 0usize;
    let mut i = 0usize;
    while i < PEEK_LEN {
        if i >= len {
            // All letters so far and the read ended: a short read, not yet decidable.
            return Protocol::Unclassified;
        }
        let b = bytes[i];
        if b == b' ' {
            break;
        }
        if !(b.is_ascii_uppercase() || b == b'-' || b == b'_') {
            return Protocol::Other;
        }
        token += 1;
        i += 1;
    }
    if (3..=12).contains(&token) && i < len {
        Protocol::Http1
    } else {
        Protocol::Other
    }
}
