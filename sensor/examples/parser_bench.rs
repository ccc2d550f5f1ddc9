//! Parser throughput: feeds HTTP/1.1 byte fixtures through the reassembly engine, the way the
//! capture delivers them (16 KiB chunks, requests and responses interleaved), and prints MB/s
//! and exchanges/s per fixture. Run by `cargo xtask bench`.

use std::{sync::Arc, time::Instant};

use sensor::http::{HttpConnection, HttpSettings, Stream};

mod common;
use common::{Fixture, json_body};

fn fixtures() -> Vec<Fixture> {
    let small = br#"{"hello": "world"}"#.to_vec();
    let mut get_response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nServer: bench\r\n\r\n",
        small.len()
    )
    .into_bytes();
    get_response.extend_from_slice(&small);
    let body = json_body(16 * 1024);
    let mut post = format!(
        "POST /api/orders HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\nUser-Agent: bench\r\n\r\n",
        body.len()
    )
    .into_bytes();
    post.extend_from_slice(&body);
    let mut chunked =
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    for piece in body.chunks(1000) {
        chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    vec![
        Fixture {
            name: "small JSON GET",
            request: b"GET /api/items/42?full=1 HTTP/1.1\r\nHost: bench\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n".to_vec(),
            response: get_response.clone(),
        },
        Fixture {
            name: "16 KB JSON POST",
            request: post,
            response: get_response,
        },
        Fixture {
            name: "16 KB chunked response",
            request: b"GET /stream HTTP/1.1\r\nHost: bench\r\n\r\n".to_vec(),
            response: chunked,
        },
    ]
}

fn feed(conn: &mut HttpConnection, stream: Stream, offset: &mut u64, bytes: &[u8], now: u64) {
    for chunk in bytes.chunks(16 * 1024) {
        conn.on_data(stream, *offset, chunk, now);
        *offset += chunk.len() as u64;
    }
}

fn main() {
    let settings = Arc::new(HttpSettings::default());
    println!("{:<26} {:>10} {:>14}", "fixture", "MB/s", "exchanges/s");
    for fixture in fixtures() {
        let exchanges = 20_000u64;
        let mut conn = HttpConnection::new(settings.clone());
        let (mut req_off, mut resp_off) = (0u64, 0u64);
        let mut produced = 0u64;
        let started = Instant::now();
        for i in 0..exchanges {
            feed(
                &mut conn,
                Stream::Request,
                &mut req_off,
                &fixture.request,
                i * 2,
            );
            feed(
                &mut conn,
                Stream::Response,
                &mut resp_off,
                &fixture.response,
                i * 2 + 1,
            );
            produced += conn.take_exchanges().len() as u64;
        }
        let elapsed = started.elapsed().as_secs_f64();
        assert_eq!(
            produced, exchanges,
            "{}: every exchange reassembled",
            fixture.name
        );
        let bytes = (fixture.request.len() + fixture.response.len()) as f64 * exchanges as f64;
        println!(
            "{:<26} {:>10.1} {:>14.0}",
            fixture.name,
            bytes / elapsed / 1e6,
            exchanges as f64 / elapsed
        );
    }
}
