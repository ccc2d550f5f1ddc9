//! The capture path under a loopback load: the same closed-loop load against an asyncio server,
//! without the sensor and with it, interleaved and repeated (medians reported): requests/s of
//! each, their ratio, exchanges exported vs requests sent and where the rest went (ring buffer full,
//! shed by the overload policy, export queue full), ring-buffer events/s and MB/s, and the
//! BPF run time per program run (kernel.bpf_stats_enabled).

use std::{
    io::{BufRead as _, BufReader, Read as _},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};

use super::{Settings, median, metric, scrape, signal};
use crate::workspace_root;

const CONNECTIONS: usize = 4;

struct Load {
    requests: u64,
    errors: u64,
}

fn spawn_python(
    python: &Path,
    args: &[&str],
) -> Result<(Child, BufReader<std::process::ChildStdout>)> {
    let mut child = Command::new(python)
        .args(args)
        .current_dir(workspace_root().join("tests/apps"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {args:?}"))?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    Ok((child, BufReader::new(stdout)))
}

fn line_with(reader: &mut BufReader<std::process::ChildStdout>, prefix: &str) -> Result<String> {
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            bail!("process ended before printing {prefix}");
        }
        if let Some(rest) = line.trim().strip_prefix(prefix) {
            return Ok(rest.trim().to_owned());
        }
    }
}

fn load(python: &Path, port: &str, body_bytes: usize, seconds: u64) -> Result<(Load, u32)> {
    let secs = seconds.to_string();
    let conns = CONNECTIONS.to_string();
    let body = body_bytes.to_string();
    let mut args = vec!["load_client.py", port, &secs, &conns];
    if body_bytes > 0 {
        args.push(&body);
    }
    let (mut child, mut out) = spawn_python(python, &args)?;
    let pid = child.id();
    let done = line_with(&mut out, "DONE")?;
    let _ = child.wait();
    let mut parts = done.split_whitespace();
    let requests = parts.next().and_then(|n| n.parse().ok()).unwrap_or(0);
    let errors = parts.next().and_then(|n| n.parse().ok()).unwrap_or(0);
    Ok((Load { requests, errors }, pid))
}

struct WithSensor {
    rps: f64,
    exported: u64,
    sent: u64,
    ring_full: u64,
    /// Exchanges the overload policy dropped (the sensor over its CPU or memory budget).
    shed: u64,
    /// Exchanges dropped because the export queue was full (the output could not keep up).
    queue_full: u64,
    events_per_sec: f64,
    mb_per_sec: f64,
    ns_per_run: f64,
}

fn with_sensor(
    binary: &Path,
    python: &Path,
    server_pid: u32,
    port: &str,
    body: usize,
    seconds: u64,
) -> Result<WithSensor> {
    let metrics_addr = "127.0.0.1:19464";
    let mut sensor = Command::new(binary)
        .args([
            "run",
            "--pid",
            &server_pid.to_string(),
            "--output",
            "jsonl",
            "--metrics-addr",
            metrics_addr,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the sensor")?;
    let mut stdout = sensor.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let counter = std::thread::spawn(move || {
        let mut lines = 0u64;
        let mut buf = [0u8; 1 << 16];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            lines += buf[..n].iter().filter(|b| **b == b'\n').count() as u64;
        }
        lines
    });
    let ready = Instant::now();
    while scrape(metrics_addr).is_err() {
        if ready.elapsed() > Duration::from_secs(30) {
            bail!("the sensor did not start");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let before = scrape(metrics_addr)?;
    let started = Instant::now();
    let (result, _) = load(python, port, body, seconds)?;
    let elapsed = started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(1500));
    let after = scrape(metrics_addr)?;
    signal(sensor.id(), libc::SIGTERM);
    let _ = sensor.wait();
    let exported = counter.join().unwrap_or(0);
    let delta = |name: &str| metric(&after, name).saturating_sub(metric(&before, name));
    let runs = delta("kernel_bpf_run_count");
    Ok(WithSensor {
        rps: result.requests as f64 / elapsed,
        exported,
        sent: result.requests,
        ring_full: delta("kernel_ringbuf_full"),
        shed: delta("overload_exchanges_shed"),
        queue_full: delta("export_dropped_queue_full"),
        events_per_sec: delta("kernel_data_events") as f64 / elapsed,
        mb_per_sec: delta("kernel_copied_bytes") as f64 / elapsed / 1e6,
        ns_per_run: if runs > 0 {
            delta("kernel_bpf_run_time_ns") as f64 / runs as f64
        } else {
            0.0
        },
    })
}

/// Runs the capture-path benchmark and prints its table.
pub fn bench(binary: &Path, python: &Path, settings: Settings) -> Result<()> {
    let Settings { seconds, rounds } = settings;
    println!();
    println!(
        "== capture path: asyncio keep-alive server, {CONNECTIONS} client connections, {seconds} s per run, {rounds} interleaved rounds, medians"
    );
    println!(
        "{:<16} {:>10} {:>10} {:>7} {:>9} {:>9} {:>10} {:>9} {:>10} {:>11} {:>8} {:>11}",
        "workload",
        "bare rps",
        "sensor rps",
        "ratio",
        "sent",
        "exported",
        "ring full",
        "shed",
        "queue full",
        "events/s",
        "MB/s",
        "ns/bpf run"
    );
    for (name, body) in [("small GET", 0usize), ("16 KB POST", 16 * 1024)] {
        let (mut server, mut server_out) = spawn_python(python, &["asyncio_server.py"])?;
        let port = line_with(&mut server_out, "READY")?;
        let (mut bare, mut sensed, mut events, mut mbs, mut ns) =
            (vec![], vec![], vec![], vec![], vec![]);
        let (mut sent, mut exported, mut ring_full, mut shed, mut queue_full) =
            (0u64, 0u64, 0u64, 0u64, 0u64);
        for _ in 0..rounds {
            let (plain, _) = load(python, &port, body, seconds)?;
            if plain.errors > 0 {
                bail!(
                    "{name}: the load generator saw {} errors without the sensor",
                    plain.errors
                );
            }
            bare.push(plain.requests as f64 / seconds as f64);
            let measured = with_sensor(binary, python, server.id(), &port, body, seconds)?;
            sensed.push(measured.rps);
            events.push(measured.events_per_sec);
            mbs.push(measured.mb_per_sec);
            ns.push(measured.ns_per_run);
            sent += measured.sent;
            exported += measured.exported;
            ring_full += measured.ring_full;
            shed += measured.shed;
            queue_full += measured.queue_full;
        }
        let _ = server.kill();
        let _ = server.wait();
        let (bare, sensed) = (median(bare), median(sensed));
        println!(
            "{:<16} {:>10.0} {:>10.0} {:>7.3} {:>9} {:>9} {:>10} {:>9} {:>10} {:>11.0} {:>8.1} {:>11.0}",
            name,
            bare,
            sensed,
            sensed / bare,
            sent,
            exported,
            ring_full,
            shed,
            queue_full,
            median(events),
            median(mbs),
            median(ns)
        );
        if exported == 0 {
            bail!("{name}: the sensor exported nothing");
        }
    }
    Ok(())
}
