//! What the benchmark examples share: their JSON body fixture, the request/response pair they
//! feed, and the thread's CPU clock they measure with.

#![allow(dead_code)]

use std::time::Duration;

/// One exchange kind: the bytes of a request and its response.
pub struct Fixture {
    /// What the benchmark's table calls it.
    pub name: &'static str,
    /// The request's bytes, head and body.
    pub request: Vec<u8>,
    /// The response's bytes, head and body.
    pub response: Vec<u8>,
}

/// A JSON document of exactly `size` bytes: a list of small objects, padded with spaces.
pub fn json_body(size: usize) -> Vec<u8> {
    let mut body = b"{\"items\": [".to_vec();
    while body.len() + 60 < size {
        body.extend_from_slice(b"{\"id\": 12345, \"name\": \"widget-abc\", \"qty\": 3},");
    }
    body.extend_from_slice(b"{\"id\": 0}]}");
    body.resize(size - 1, b' ');
    body.push(b'\n');
    body
}

/// CPU time of this thread: unlike the wall clock, not inflated while other processes run.
pub fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}
