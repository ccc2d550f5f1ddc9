//! The sensor's userspace work per exchange, stage by stage: reassembly (connection tracking
//! and HTTP parsing of the records the capture delivers), record building, the policy stage
//! (default configuration) and OTLP/gRPC encoding, for the exchanges `cargo xtask bench apps`
//! loads (a small JSON GET and a 16 KB JSON POST echoed back). Prints CPU µs per exchange, the
//! stages' shares of wall time, and the total (the fastest of a few rounds). The kernel's part (ring buffer, the export
//! request's send) is not in it: this is the part a change to the userspace code moves, measured
//! without the VM's noise. Run by `cargo xtask bench`; takes a few seconds.

use std::{
    collections::BTreeMap,
    hint::black_box,
    sync::Arc,
    time::{Duration, Instant},
};

use sensor::{
    capture::events::{ConnOpen, DataChunk},
    config::{Config, Protocol},
    conntrack::{Completed, Tracker, TrackerSettings},
    enrich::{
        context::Propagation,
        process::ProcessInfo,
        record::{RecordContext, build_record},
    },
    export::otlp::PendingSpan,
    http::HttpSettings,
    redact::{Decision, Policy},
};
use sensor_common::event::{DATA_CHUNK_MAX, DataSource, Direction, Family, Role};

mod common;
use common::{Fixture, json_body, thread_cpu};

/// CPU time of one measuring round.
const ROUND: Duration = Duration::from_millis(150);
/// Rounds per exchange kind; the fastest is reported (other processes only ever slow a round).
const ROUNDS: usize = 7;

/// The watched process.
const PID: u32 = 4242;

/// A uvicorn response head and body.
fn response(body: &[u8]) -> Vec<u8> {
    let mut bytes = format!(
        "HTTP/1.1 200 OK\r\ndate: Sun, 06 Dec 2026 23:00:00 GMT\r\nserver: uvicorn\r\ncontent-length: {}\r\ncontent-type: application/json\r\n\r\n",
        body.len()
    )
    .into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

fn fixtures() -> Vec<Fixture> {
    let body = json_body(16 * 1024);
    let mut post = format!(
        "POST /echo HTTP/1.1\r\nHost: 127.0.0.1:38299\r\nUser-Agent: hey/0.0.1\r\nContent-Length: {}\r\nContent-Type: application/json\r\nAccept-Encoding: gzip\r\n\r\n",
        body.len()
    )
    .into_bytes();
    post.extend_from_slice(&body);
    vec![
        Fixture {
            name: "small JSON GET",
            request: b"GET /small HTTP/1.1\r\nHost: 127.0.0.1:38299\r\nUser-Agent: hey/0.0.1\r\nContent-Type: text/html\r\nAccept-Encoding: gzip\r\n\r\n".to_vec(),
            response: response(br#"{"id":42,"name":"widget","tags":["a","b"],"ok":true}"#),
        },
        Fixture {
            name: "16 KB JSON POST",
            request: post,
            response: response(&body),
        },
    ]
}

/// The stages' accumulated wall time.
#[derive(Default)]
struct Stages {
    reassembly: Duration,
    record: Duration,
    policy: Duration,
    encode: Duration,
}

/// The pipeline of one keep-alive server connection, as the daemon runs it.
struct Pipeline {
    tracker: Tracker,
    policy: Policy,
    process: ProcessInfo,
    propagation: Vec<Propagation>,
    /// Stream offsets of the two directions.
    offsets: [u64; 2],
    time_ns: u64,
    completed: Vec<Completed>,
}

const CONN_ID: u64 = 7 << 10;

impl Pipeline {
    fn new() -> Pipeline {
        let config = Config::default();
        let http = sensor::redact::parser_settings(&config, HttpSettings::default());
        let mut tracker = Tracker::new(Arc::new(http), TrackerSettings::default());
        let mut completed = Vec::new();
        tracker.open(
            &ConnOpen {
                pid: PID,
                time_ns: 1,
                conn_id: CONN_ID,
                fd: 9,
                role: Role::Server,
                family: Family::Inet,
                local: Some("127.0.0.1:38299".parse().expect("address")),
                remote: Some("127.0.0.1:51234".parse().expect("address")),
                unix_path: None,
                midstream: false,
            },
            &mut completed,
        );
        let env = BTreeMap::from([("OTEL_SERVICE_NAME".to_owned(), "orders".to_owned())]);
        Pipeline {
            tracker,
            policy: Policy::from_config(&config)
                .expect("default policy")
                .with_seed(1),
            propagation: config.propagation(),
            process: ProcessInfo::new(
                PID,
                "/usr/bin/python3.11".to_owned(),
                vec!["python".to_owned(), "serve_uvicorn.py".to_owned()],
                env,
            ),
            offsets: [0; 2],
            time_ns: 1_000,
            completed,
        }
    }

    /// One syscall's bytes, delivered as the capture does: records of at most
    /// [`DATA_CHUNK_MAX`] bytes.
    fn syscall(&mut self, direction: Direction, bytes: &[u8]) {
        let at = &mut self.offsets[direction as usize];
        let start = *at;
        self.time_ns += 20_000;
        for (i, piece) in bytes.chunks(DATA_CHUNK_MAX).enumerate() {
            let offset = start + (i * DATA_CHUNK_MAX) as u64;
            let chunk = DataChunk {
                pid: PID,
                tid: PID,
                time_ns: self.time_ns,
                conn_id: CONN_ID,
                fd: 9,
                direction,
                source: DataSource::ReadWrite,
                syscall_offset: start,
                syscall_len: bytes.len() as u64,
                offset,
                payload: piece,
                uncopied: false,
            };
            self.tracker.data(&chunk, &mut self.completed);
        }
        *at += bytes.len() as u64;
    }

    /// One exchange through every stage; returns the encoded span's size.
    fn exchange(&mut self, fixture: &Fixture, stages: &mut Stages) -> usize {
        let started = Instant::now();
        self.syscall(Direction::Ingress, &fixture.request);
        self.syscall(Direction::Egress, &fixture.response);
        let done = self.completed.pop().expect("an exchange per request");
        assert!(self.completed.is_empty(), "one exchange per request");
        let reassembled = Instant::now();
        let to_unix = |ns: u64| ns + 1_700_000_000_000_000_000;
        let ctx = RecordContext {
            host_name: "bench-host",
            scheme: "http",
            to_unix_nanos: &to_unix,
            seq: done.seq,
            client_watched: false,
            link: None,
            salt: 7,
            pod: None,
            configured_service_name: None,
            propagation: &self.propagation,
        };
        let mut record =
            build_record(done.exchange, &done.meta, &self.process, &ctx).expect("a record");
        let built = Instant::now();
        assert!(self.policy.process(&mut record) == Decision::Export);
        let processed = Instant::now();
        let span = PendingSpan::new(Protocol::Grpc, record);
        let size = span.size();
        black_box(span);
        let encoded = Instant::now();
        stages.reassembly += reassembled - started;
        stages.record += built - reassembled;
        stages.policy += processed - built;
        stages.encode += encoded - processed;
        size
    }
}

/// `pipeline_bench get|post N`: runs exactly N exchanges of one kind and prints nothing, for a
/// count of instructions per exchange (`valgrind --tool=cachegrind`, runs of two sizes
/// subtracted), which unlike time does not vary with what else runs on a VM.
fn counted(kind: &str, exchanges: usize) {
    let fixture = match kind {
        "get" => fixtures().swap_remove(0),
        "post" => fixtures().swap_remove(1),
        other => panic!("unknown exchange kind {other:?}: get or post"),
    };
    let mut pipeline = Pipeline::new();
    let mut stages = Stages::default();
    for _ in 0..exchanges {
        pipeline.exchange(&fixture, &mut stages);
    }
}

fn main() {
    sensor::allocator::configure();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [kind, exchanges] = args.as_slice() {
        counted(kind, exchanges.parse().expect("a number of exchanges"));
        return;
    }
    println!(
        "{:<18} {:>10} {:>12} {:>9} {:>9} {:>9} {:>13}",
        "exchange", "span bytes", "reassembly %", "record %", "policy %", "encode %", "CPU µs/exch"
    );
    for fixture in fixtures() {
        let mut pipeline = Pipeline::new();
        let mut stages = Stages::default();
        let mut size = 0;
        for _ in 0..100 {
            size = pipeline.exchange(&fixture, &mut stages);
        }
        let mut stages = Stages::default();
        let cpu = (0..ROUNDS)
            .map(|_| {
                let started = thread_cpu();
                let mut runs = 0u64;
                while thread_cpu() - started < ROUND {
                    for _ in 0..64 {
                        pipeline.exchange(&fixture, &mut stages);
                    }
                    runs += 64;
                }
                (thread_cpu() - started).as_secs_f64() * 1e6 / runs as f64
            })
            .fold(f64::INFINITY, f64::min);
        let wall =
            (stages.reassembly + stages.record + stages.policy + stages.encode).as_secs_f64();
        let share = |d: Duration| 100.0 * d.as_secs_f64() / wall;
        println!(
            "{:<18} {:>10} {:>12.0} {:>9.0} {:>9.0} {:>9.0} {:>13.2}",
            fixture.name,
            size,
            share(stages.reassembly),
            share(stages.record),
            share(stages.policy),
            share(stages.encode),
            cpu
        );
    }
}
