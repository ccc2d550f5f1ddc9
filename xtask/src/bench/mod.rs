//! `cargo xtask bench [all|micro|capture|tls|apps]`: numbers measured side by side in one run.
//!
//! - `micro`: parser throughput on byte fixtures (the `parser_bench` example), redaction cost
//!   per exchange (the `redaction_bench` example) and the userspace pipeline's cost per exchange,
//!   stage by stage (the `pipeline_bench` example).
//! - `capture`: the capture path under a loopback load against an asyncio server, with and
//!   without the sensor ([`capture`]).
//! - `tls`: what the OpenSSL probes cost a process ([`tls`]).
//! - `apps`: gunicorn+Flask and uvicorn+FastAPI under `hey`, bare, with the sensor, with the
//!   in-process Hypertrace agent and with OpenTelemetry's instrumentation, plus the sensor's
//!   CPU, BPF time, memory and highest open-loop rate ([`apps`]), and what work on the other
//!   core alone costs the app ([`neighbour`]).
//!
//! `PYSENSOR_BENCH_SECONDS` (default 5) is the length of each measured load and
//! `PYSENSOR_BENCH_ROUNDS` (default 3) the number of interleaved rounds whose medians are
//! reported.

mod apps;
mod capture;
mod hey;
mod memory;
mod neighbour;
mod open_loop;
mod pinning;
mod tls;

use std::{
    io::Read as _,
    path::{Path, PathBuf},
    process::{Child, Command},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use clap::ValueEnum;

use crate::{run, setup::Env, workspace_root};

/// Which part of the benchmark to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Which {
    /// Every part below, in this order.
    All,
    /// Parser throughput, redaction cost and the userspace pipeline per exchange (no root needed).
    Micro,
    /// The capture path under a loopback load, with and without the sensor.
    Capture,
    /// The OpenSSL probes' cost to a process.
    Tls,
    /// The framework matrix: Flask and FastAPI, bare / sensor / agent / OpenTelemetry.
    Apps,
}

/// Length and repetition of the measured runs.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Seconds of each measured load (`PYSENSOR_BENCH_SECONDS`, default 5).
    pub seconds: u64,
    /// Interleaved rounds whose medians are reported (`PYSENSOR_BENCH_ROUNDS`, default 3).
    pub rounds: usize,
}

impl Settings {
    /// Reads the settings from the environment.
    pub fn from_env() -> Result<Settings> {
        let read = |name: &str, default: u64| -> Result<u64> {
            match std::env::var(name) {
                Ok(value) => value
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .with_context(|| format!("{name}={value:?} is not a positive integer")),
                Err(_) => Ok(default),
            }
        };
        Ok(Settings {
            seconds: read("PYSENSOR_BENCH_SECONDS", 5)?,
            rounds: read("PYSENSOR_BENCH_ROUNDS", 3)? as usize,
        })
    }
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`), the unit of `/proc` CPU times.
pub fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64
}

/// The median of `values` (the upper one of an even count); 0 when empty.
pub fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The `/metrics` page of a sensor started with `--metrics-addr addr`.
pub fn scrape(addr: &str) -> Result<String> {
    use std::io::Write as _;
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    Ok(text)
}

/// The value of counter `pysensor_<name>_total` on a metrics page (0 when absent).
pub fn metric(text: &str, name: &str) -> u64 {
    let prefix = format!("pysensor_{name}_total ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Sends `signal` to process `pid` (one we started).
pub fn signal(pid: u32, signal: i32) {
    // SAFETY: plain kill(2) of a process we started.
    unsafe {
        libc::kill(pid as i32, signal);
    }
}

/// Stops `child` with SIGTERM (so that it flushes what it holds), then SIGKILL once `grace` has
/// passed without it exiting.
pub fn terminate(child: &mut Child, grace: Duration) {
    if let Ok(None) = child.try_wait() {
        signal(child.id(), libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Waits up to 30 s for the sensor `child`, logging to `log`, to report that capture is
/// running; kills it and fails otherwise.
pub fn wait_until_running(child: &mut Child, log: &Path) -> Result<()> {
    let started = Instant::now();
    while !std::fs::read_to_string(log)
        .unwrap_or_default()
        .contains("sensor running")
    {
        if started.elapsed() > Duration::from_secs(30) || child.try_wait()?.is_some() {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the sensor did not start; see {}", log.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// A self-signed certificate for `localhost` / `127.0.0.1` and its key (PEM) in `dir`, made
/// with the `openssl` command (Debian package `openssl`, installed by set-up).
pub fn tls_files(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    sensor_e2e::make_self_signed(&cert, &key).map_err(|e| anyhow!(e))?;
    Ok((cert, key))
}

/// Runs one of the sensor's benchmark examples.
fn example(name: &str) -> Result<()> {
    run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(workspace_root())
            .args([
                "run",
                "--quiet",
                "--release",
                "-p",
                "sensor",
                "--example",
                name,
            ]),
    )
}

fn micro() -> Result<()> {
    println!("== HTTP parser (fixtures fed in 16 KiB chunks)");
    example("parser_bench")?;
    println!();
    println!(
        "== redaction per exchange (request and response JSON bodies of the size shown; CPU µs): no rule, default header rules, headers + JSONPaths + card/e-mail patterns; cost = full - baseline"
    );
    example("redaction_bench")?;
    println!();
    println!(
        "== userspace work per exchange (the bench's exchanges through reassembly, record, policy and OTLP/gRPC encoding; CPU µs, stage shares of wall time)"
    );
    example("pipeline_bench")
}

/// Runs the chosen parts of the benchmark with the sensor binary `binary` and the venvs of
/// `env`, printing their tables.
pub fn bench(which: Which, binary: &Path, env: &Env) -> Result<()> {
    let settings = Settings::from_env()?;
    let needs_root = which != Which::Micro;
    if needs_root && !crate::setup::is_root() {
        bail!("the benchmark loads eBPF programs: run `cargo xtask bench` as root");
    }
    if needs_root {
        std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1")
            .context("setting kernel.bpf_stats_enabled=1")?;
    }
    if matches!(which, Which::All | Which::Micro) {
        micro()?;
    }
    if matches!(which, Which::All | Which::Capture) {
        capture::bench(binary, &env.python, settings)?;
    }
    if matches!(which, Which::All | Which::Tls) {
        tls::bench(binary, &env.python, settings)?;
    }
    if matches!(which, Which::All | Which::Apps) {
        apps::bench(binary, env, settings)?;
    }
    Ok(())
}
