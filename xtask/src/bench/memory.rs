//! The sensor's memory: its resident set at rest (watching an idle app) and with 10,000 idle
//! keep-alive connections held open to the app (`tests/apps/idle_connections.py`, each after one
//! exchange, so the sensor has seen every connection).

use std::{
    io::{BufRead as _, BufReader},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use sensor_e2e::otlp::Receiver;

use super::{
    apps::{App, Bench, Config, Framework, Sensor},
    pinning,
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
    std::thread::sleep(Duration::from_secs(3));
    let with_connections = rss_kib(sensor.pid())?;
    let peak = status_kib(sensor.pid(), "VmHWM")?;
    drop(client.stdin.take());
    let _ = client.kill();
    let _ = client.wait();
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
            "with {ok} idle connections ({failed} failed to open, {:.0} s to open)",
            opening.as_secs_f64()
        ),
        mb(with_connections)
    );
    println!("{:<52} {:>9.1}", "peak (VmHWM)", mb(peak));
    println!("targets (shown, not asserted): <= 64 MB at rest, <= 256 MB with 10,000 connections");
    Ok(())
}
