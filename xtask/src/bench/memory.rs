//! The sensor's memory: its resident set at rest (watching an idle app), with 10,000 idle
//! keep-alive connections held open to the app (`tests/apps/idle_connections.py`, each after one
//! exchange, so the sensor has seen every connection), right after a small-GET load and once
//! quiet again; how much of it is the ring buffer (kernel memory mapped into the sensor); and the
//! sensor's CPU while the connections are held idle.

use std::{
    io::{BufRead as _, BufReader},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use sensor_e2e::otlp::Receiver;

use super::{
    apps::{App, Bench, Config, Framework, Sensor, ThreadTimes, settled_server_spans},
    hey, pinning,
};
use crate::workspace_root;

/// Idle connections held open.
const IDLE_CONNECTIONS: usize = 10_000;

/// A `/proc/<pid>/status` field in KiB (`VmRSS`, `VmHWM`).
fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow!("/proc/{pid}/status has no {field}"))
}

/// The resident set of process `pid`, KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    status_kib(pid, "VmRSS")
}

/// Raises this process's RLIMIT_NOFILE soft limit to its hard limit (inherited by the apps and
/// clients it starts), so that 10,000 connections fit.
pub fn raise_nofile_limit() -> Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit.
    let status = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            -1
        } else {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit)
        }
    };
    if status != 0 {
        bail!("raising RLIMIT_NOFILE: {}", std::io::Error::last_os_error());
    }
    if (limit.rlim_max as usize) < IDLE_CONNECTIONS + 1000 {
        eprintln!(
            "bench: RLIMIT_NOFILE hard limit {} is below {} connections; raise it (ulimit -Hn) for the memory figure",
            limit.rlim_max, IDLE_CONNECTIONS
        );
    }
    Ok(())
}

/// How long the sensor is left quiet after the load: it hands memory back at its first quiet
/// overload interval (2 s by default).
const QUIET: Duration = Duration::from_secs(6);

/// Resident KiB of the sensor's BPF map mappings (`/proc/PID/smaps`: the ring buffer).
fn ring_buffer_kib(pid: u32) -> Option<u64> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let mut in_map = false;
    let mut total = 0;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            in_map = line.ends_with("anon_inode:bpf-map");
        } else if in_map && let Some(rss) = line.strip_prefix("Rss:") {
            total += rss
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()?;
        }
    }
    Some(total)
}

fn mb(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Measures and prints the sensor's memory at rest and with the idle connections.
pub fn bench(bench: &Bench) -> Result<()> {
    let receiver = Receiver::start_counting();
    let app = App::start(
        bench,
        Framework::FastApi,
        false,
        Config::Bare,
        None,
        &[("UVICORN_TIMEOUT_KEEP_ALIVE", "3600")],
    )?;
    let sensor = Sensor::start(bench.binary, app.pid(), &receiver)?;
    app.probe(false)?;
    std::thread::sleep(Duration::from_secs(2));
    let at_rest = rss_kib(sensor.pid())?;
    let mut client = pinning::pinned(pinning::LOAD_CORE, &bench.env.python)
        .arg(workspace_root().join("tests/apps/idle_connections.py"))
        .arg(app.port.to_string())
        .arg(IDLE_CONNECTIONS.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting idle_connections.py")?;
    let stdout = client.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let started = Instant::now();
    let mut held = String::new();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        if let Some(rest) = line.strip_prefix("HELD") {
            held = rest.trim().to_owned();
            break;
        }
    }
    if held.is_empty() {
        let _ = client.kill();
        let _ = client.wait();
        bail!("idle_connections.py ended without holding its connections");
    }
    let opening = started.elapsed();
    settled_server_spans(&receiver);
    let connections_busy = rss_kib(sensor.pid())?;
    let cpu_before = ThreadTimes::read(sensor.pid())?;
    std::thread::sleep(QUIET);
    let held_idle_cores =
        ThreadTimes::read(sensor.pid())?.seconds_since(&cpu_before) / QUIET.as_secs_f64();
    let with_connections = rss_kib(sensor.pid())?;
    drop(client.stdin.take());
    let _ = client.kill();
    let _ = client.wait();
    let load = hey::Load {
        url: app.url(false, "/small"),
        seconds: bench.settings.seconds,
        connections: 8,
        rate_per_connection: None,
        post_body: None,
    };
    let outcome = load.run()?;
    settled_server_spans(&receiver);
    let after_load = rss_kib(sensor.pid())?;
    std::thread::sleep(QUIET);
    let quiet = rss_kib(sensor.pid())?;
    let peak = status_kib(sensor.pid(), "VmHWM")?;
    let ring = ring_buffer_kib(sensor.pid());
    app.stop();
    sensor.stop();
    let mut counts = held.split_whitespace();
    let (ok, failed) = (counts.next().unwrap_or("0"), counts.next().unwrap_or("0"));
    println!();
    println!(
        "== the sensor's memory (VmRSS), watching uvicorn+FastAPI; {}",
        pinning::describe()
    );
    println!("{:<52} {:>9}", "state", "RSS MB");
    println!(
        "{:<52} {:>9.1}",
        "at rest (watching the idle app)",
        mb(at_rest)
    );
    println!(
        "{:<52} {:>9.1}",
        format!(
            "{ok} connections opened, one exchange each ({failed} failed, {:.0} s)",
            opening.as_secs_f64()
        ),
        mb(connections_busy)
    );
    println!(
        "{:<52} {:>9.1}",
        format!("the same, held idle, {} s later", QUIET.as_secs()),
        mb(with_connections)
    );
    println!(
        "{:<52} {:>9.1}",
        format!(
            "right after {} s of small GETs ({} exchanges)",
            bench.settings.seconds, outcome.responses
        ),
        mb(after_load)
    );
    println!(
        "{:<52} {:>9.1}",
        format!("{} s later, quiet", QUIET.as_secs()),
        mb(quiet)
    );
    println!("{:<52} {:>9.1}", "peak (VmHWM)", mb(peak));
    println!(
        "the sensor's CPU while the connections were held idle: {held_idle_cores:.4} cores (user+system, /proc/PID/task/TID/schedstat)"
    );
    if let Some(ring) = ring {
        println!(
            "{:<52} {:>9.1}",
            "of which the ring buffer (kernel pages, mapped twice)",
            mb(ring)
        );
    }
    println!("targets (shown, not asserted): <= 64 MB at rest, <= 256 MB with 10,000 connections");
    Ok(())
}
