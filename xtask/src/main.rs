//! Project tasks. `cargo xtask setup | build | run | test | bench`.
//!
//! `setup` installs everything the build and the tests need and is idempotent: each step checks
//! first and acts only when something is missing, so a machine that has everything passes in a
//! few seconds. A failed step names itself and its fix.

mod bench;
mod setup;

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "Build, set-up and test tasks of the sensor")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the eBPF toolchain (nightly rust-src, bpf-linker), mount tracefs/bpffs, and create
    /// the Python venv the end-to-end tests use.
    Setup,
    /// Set up, then build the release binary (left at target/release/sensor).
    Build,
    /// Build, then run the sensor (as root). Arguments after `--` go to `sensor`; the default is
    /// `run` (watch every Python process, print exchanges to the console).
    Run {
        /// Arguments for the sensor binary.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, build, then run every check and test: fmt, clippy (with and without the
    /// `kubernetes` feature), unit tests, end-to-end tests (root) against the binary the
    /// container image ships (with `kubernetes`), and bounded fuzzing runs of the parsers.
    Test {
        /// Seconds of fuzzing (0 skips it).
        #[arg(long, default_value_t = 60)]
        fuzz_seconds: u64,
    },
    /// Set up, build, then measure (as root): parser throughput, redaction cost per exchange,
    /// the capture path and the OpenSSL probes with and without the sensor, and gunicorn+Flask
    /// and uvicorn+FastAPI under `hey` bare, with the sensor, with the in-process agent and
    /// with OpenTelemetry, side by side. PYSENSOR_BENCH_SECONDS (default 5) and
    /// PYSENSOR_BENCH_ROUNDS (default 3) set the length and repetition of each measurement.
    Bench {
        /// Which part to run.
        #[arg(value_enum, default_value_t = bench::Which::All)]
        which: bench::Which,
    },
}

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    // Cargo sets CARGO_MANIFEST_DIR when it runs the binary too; that one follows the checkout
    // that ran it, where the compiled-in one names the checkout that built it, which is stale
    // when two checkouts share one CARGO_TARGET_DIR (cargo does not rebuild a moved package).
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Cargo's target directory for this workspace (honours CARGO_TARGET_DIR).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => workspace_root().join("target"),
    }
}

/// Runs a command, failing with its description when it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// The sensor's `kubernetes` feature (pod metadata through kube-rs): off by default for its
/// build time, on in the container image and in `test`.
const KUBERNETES: &str = "sensor/kubernetes";

/// Builds the release binary (with `features`, e.g. [`KUBERNETES`]) and leaves a copy at
/// `<workspace>/target/release/sensor`.
fn build(features: &[&str]) -> Result<PathBuf> {
    let mut command = cargo();
    command.args(["build", "--release", "-p", "sensor"]);
    if !features.is_empty() {
        command.args(["--features", &features.join(",")]);
    }
    run(&mut command)?;
    let built = target_dir().join("release/sensor");
    let wanted = workspace_root().join("target/release/sensor");
    if built != wanted {
        std::fs::create_dir_all(wanted.parent().expect("has a parent"))?;
        std::fs::copy(&built, &wanted)
            .with_context(|| format!("copying {} to {}", built.display(), wanted.display()))?;
    }
    Ok(wanted)
}

fn test(fuzz_seconds: u64) -> Result<()> {
    let env = setup::setup()?;
    let binary = build(&[KUBERNETES])?;
    run(cargo().args(["fmt", "--all", "--check"]))
        .context("formatting differs: run `cargo fmt --all`")?;
    for features in [&[][..], &["--features", KUBERNETES]] {
        run(cargo()
            .args([
                "clippy",
                "--release",
                "--workspace",
                "--exclude",
                "sensor-ebpf",
                "--all-targets",
            ])
            .args(features)
            .args(["--", "-D", "warnings"]))?;
    }
    // The kernel programs are linted for their own target, as they are built.
    run(Command::new("cargo")
        .current_dir(workspace_root())
        .args([
            "+nightly",
            "clippy",
            "-p",
            "sensor-ebpf",
            "--bins",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ])
        .env("CARGO_TARGET_DIR", target_dir().join("ebpf-clippy")))?;
    if !setup::is_root() {
        bail!("the end-to-end tests load eBPF programs: run `cargo xtask test` as root");
    }
    run(cargo()
        .args([
            "test",
            "--release",
            "--workspace",
            "--exclude",
            "sensor-ebpf",
            "--features",
            KUBERNETES,
            "--",
            "--test-threads=1",
        ])
        .env("SENSOR_BIN", &binary)
        .env("SENSOR_TEST_PYTHON", &env.python))?;
    // The HTTP parser gets three quarters of the time; the request-metadata parsers (trace
    // context, content types, service names) are small and the rest suffices.
    let headers_seconds = fuzz_seconds / 4;
    for (target, seconds, what) in [
        (
            "http_parser",
            fuzz_seconds - headers_seconds,
            "the HTTP parser",
        ),
        ("headers", headers_seconds, "the request-metadata parsers"),
    ] {
        if seconds == 0 {
            continue;
        }
        run(Command::new("cargo")
            .current_dir(workspace_root().join("sensor/fuzz"))
            .args(["+nightly", "fuzz", "run", target, "--"])
            .arg(format!("-max_total_time={seconds}"))
            .arg("-rss_limit_mb=1024"))
        .with_context(|| format!("fuzzing {what} found a failure"))?;
    }
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Task::Setup => setup::setup().map(|_| ()),
        Task::Build => {
            setup::setup()?;
            let binary = build(&[])?;
            println!("built {}", binary.display());
            Ok(())
        }
        Task::Run { args } => {
            setup::setup()?;
            let binary = build(&[])?;
            let args = if args.is_empty() {
                vec!["run".to_owned()]
            } else {
                args
            };
            run(Command::new(binary).args(args))
        }
        Task::Test { fuzz_seconds } => test(fuzz_seconds),
        Task::Bench { which } => {
            let env = setup::setup()?;
            // A binary built elsewhere (an older commit, to compare) instead of this tree's.
            let binary = match std::env::var_os("PYSENSOR_BENCH_SENSOR") {
                Some(path) => PathBuf::from(path),
                None => build(&[])?,
            };
            bench::bench(which, &binary, &env)
        }
    }
}
