//! What the OpenSSL probes cost a process, measured side by side: an in-memory TLS loop
//! (`tests/apps/tls_loop.py`, 4 `SSL_*` calls per round) with no sensor, with the sensor
//! watching *another* process that uses the same libssl (probes are per process, so this one
//! should not pay), and with the sensor watching this process (every call traps).

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail};

use super::{Settings, median, terminate, tls_files, wait_until_running};
use crate::workspace_root;

/// The loop process, started and ready; runs when told.
struct TlsLoop {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
}

impl TlsLoop {
    fn start(python: &Path, cert: &Path, key: &Path, seconds: u64) -> Result<TlsLoop> {
        let mut child = Command::new(python)
            .arg(workspace_root().join("tests/apps/tls_loop.py"))
            .args([cert.as_os_str(), key.as_os_str()])
            .arg(seconds.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting tls_loop.py")?;
        let out = BufReader::new(child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?);
        let mut this = TlsLoop { child, out };
        this.expect("READY")?;
        Ok(this)
    }

    fn expect(&mut self, prefix: &str) -> Result<String> {
        let mut line = String::new();
        loop {
            line.clear();
            if self.out.read_line(&mut line)? == 0 {
                bail!("tls_loop.py ended before printing {prefix}");
            }
            if let Some(rest) = line.trim().strip_prefix(prefix) {
                return Ok(rest.trim().to_owned());
            }
        }
    }

    /// Runs the loop; rounds per second.
    fn run(mut self) -> Result<f64> {
        let stdin = self
            .child
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow!("no stdin"))?;
        stdin.write_all(b"go\n")?;
        stdin.flush()?;
        let ops: f64 = self.expect("OPS")?.parse()?;
        let _ = self.child.wait();
        Ok(ops)
    }
}

/// A sensor watching `pid`, stopped when dropped.
struct Watching(Child);

impl Watching {
    fn start(binary: &Path, pid: u32) -> Result<Watching> {
        let log = std::env::temp_dir().join("pysensor-bench-tls.log");
        let mut child = Command::new(binary)
            .args(["run", "--pid", &pid.to_string(), "--output", "jsonl"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting the sensor")?;
        wait_until_running(&mut child, &log)?;
        Ok(Watching(child))
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        terminate(&mut self.0, Duration::from_secs(20));
    }
}

/// Runs the three configurations, interleaved, and prints rounds/s and ratios.
pub fn bench(binary: &Path, python: &Path, settings: Settings) -> Result<()> {
    let Settings { seconds, rounds } = settings;
    let dir = std::env::temp_dir().join("pysensor-bench-tls");
    std::fs::create_dir_all(&dir)?;
    let (cert, key) = tls_files(&dir)?;
    println!();
    println!(
        "== OpenSSL probe cost: in-memory TLS loop (4 SSL calls per round, 1 KB each way), {seconds} s per run, {rounds} interleaved rounds, medians"
    );
    let (mut bare, mut other, mut watched) = (vec![], vec![], vec![]);
    for _ in 0..rounds {
        bare.push(TlsLoop::start(python, &cert, &key, seconds)?.run()?);
        let bystander = TlsLoop::start(python, &cert, &key, seconds)?;
        let measured = TlsLoop::start(python, &cert, &key, seconds)?;
        {
            let _sensor = Watching::start(binary, bystander.child.id())?;
            other.push(measured.run()?);
        }
        drop(bystander);
        let measured = TlsLoop::start(python, &cert, &key, seconds)?;
        let _sensor = Watching::start(binary, measured.child.id())?;
        watched.push(measured.run()?);
    }
    let (bare, other, watched) = (median(bare), median(other), median(watched));
    println!("{:<44} {:>12} {:>7}", "configuration", "rounds/s", "ratio");
    println!("{:<44} {:>12.0} {:>7.3}", "no sensor", bare, 1.0);
    println!(
        "{:<44} {:>12.0} {:>7.3}",
        "sensor watching another libssl user",
        other,
        other / bare
    );
    println!(
        "{:<44} {:>12.0} {:>7.3}",
        "sensor watching this process",
        watched,
        watched / bare
    );
    println!(
        "added per round when watched (4 SSL calls with returns, 4 BIO_write calls): {:.2} us",
        1e6 / watched - 1e6 / bare
    );
    Ok(())
}

impl Drop for TlsLoop {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
