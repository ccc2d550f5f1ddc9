//! The load generator: `hey` (Debian package `hey`), run for a fixed time, closed loop
//! (`-c` connections sending back to back) or open loop (`-q` requests/s per connection), its
//! summary parsed into requests/s, latency percentiles and errors.

use std::{path::PathBuf, process::Stdio};

use anyhow::{Context as _, Result, bail};

use super::pinning;

/// One `hey` run.
#[derive(Clone, Debug)]
pub struct Load {
    /// The URL loaded (`https://` is loaded without verifying the certificate).
    pub url: String,
    /// Seconds of load (`-z`).
    pub seconds: u64,
    /// Concurrent connections (`-c`).
    pub connections: usize,
    /// Requests/s per connection (`-q`); none for a closed loop.
    pub rate_per_connection: Option<f64>,
    /// A file whose content is POSTed as `application/json` (`-D`); none for GET.
    pub post_body: Option<PathBuf>,
}

/// What a run measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    /// Responses received, any status.
    pub responses: u64,
    /// Responses with a 2xx status.
    pub ok: u64,
    /// Requests that failed (connection or timeout errors) plus non-2xx responses.
    pub errors: u64,
    /// 2xx responses per second of the run.
    pub rps: f64,
    /// Median latency, seconds.
    pub p50: f64,
    /// 99th-percentile latency, seconds.
    pub p99: f64,
}

impl Outcome {
    /// Requests the server was sent and answered (what an exporter should have exported).
    pub fn sent(&self) -> u64 {
        self.responses
    }
}

impl Load {
    /// Runs `hey` pinned to the load core and parses its summary.
    pub fn run(&self) -> Result<Outcome> {
        let mut command = pinning::pinned(pinning::LOAD_CORE, "hey");
        command
            .arg("-z")
            .arg(format!("{}s", self.seconds))
            .arg("-c")
            .arg(self.connections.to_string())
            .args(["-cpus", "1", "-t", "10"]);
        if let Some(rate) = self.rate_per_connection {
            command.arg("-q").arg(format!("{rate:.2}"));
        }
        if let Some(body) = &self.post_body {
            command
                .args(["-m", "POST", "-T", "application/json", "-D"])
                .arg(body);
        }
        command.arg(&self.url);
        let output = command
            .stdin(Stdio::null())
            .output()
            .context("running hey (Debian package hey: apt-get install hey)")?;
        let text = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            bail!(
                "hey failed with {}: {}{}",
                output.status,
                text,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        parse(&text).with_context(|| format!("reading hey's summary:\n{text}"))
    }
}

impl Load {
    /// Sends one request (`hey -n 1 -c 1`, the URL only); whether it was answered with 2xx.
    pub fn single(&self) -> Result<bool> {
        let output = pinning::pinned(pinning::LOAD_CORE, "hey")
            .args(["-n", "1", "-c", "1", "-t", "5"])
            .arg(&self.url)
            .stdin(Stdio::null())
            .output()
            .context("running hey (Debian package hey: apt-get install hey)")?;
        Ok(parse(&String::from_utf8_lossy(&output.stdout)).is_ok_and(|o| o.ok == 1))
    }
}

fn seconds_after(line: &str, prefix: &str) -> Option<f64> {
    line.trim()
        .strip_prefix(prefix)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Parses hey's text summary.
pub fn parse(text: &str) -> Result<Outcome> {
    let mut outcome = Outcome::default();
    let mut total_secs = None;
    let mut section = "";
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.ends_with(':') && !line.starts_with(' ') && !line.starts_with('\t') {
            section = trimmed;
            continue;
        }
        if let Some(secs) = trimmed
            .strip_prefix("Total:")
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
        {
            total_secs.get_or_insert(secs);
        }
        if let Some(p50) = seconds_after(trimmed, "50% in") {
            outcome.p50 = p50;
        }
        if let Some(p99) = seconds_after(trimmed, "99% in") {
            outcome.p99 = p99;
        }
        // `[200]	4975 responses` under "Status code distribution:", `[12]	Get …: error`
        // under "Error distribution:".
        let Some((count_or_status, rest)) =
            trimmed.strip_prefix('[').and_then(|r| r.split_once(']'))
        else {
            continue;
        };
        let Ok(number) = count_or_status.parse::<u64>() else {
            continue;
        };
        match section {
            "Status code distribution:" => {
                let count: u64 = rest
                    .split_whitespace()
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                outcome.responses += count;
                if (200..300).contains(&number) {
                    outcome.ok += count;
                } else {
                    outcome.errors += count;
                }
            }
            "Error distribution:" => outcome.errors += number,
            _ => {}
        }
    }
    let Some(total_secs) = total_secs.filter(|s| *s > 0.0) else {
        bail!("no `Total:` line");
    };
    outcome.rps = outcome.ok as f64 / total_secs;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUMMARY: &str = "
Summary:
  Total:\t2.0112 secs
  Slowest:\t0.0410 secs
  Fastest:\t0.0004 secs
  Average:\t0.0081 secs
  Requests/sec:\t2471.1929

  Total data:\t357840 bytes
  Size/request:\t72 bytes

Response time histogram:
  0.000 [1]\t|
  0.004 [1010]\t|■■■■■■■■

Latency distribution:
  10% in 0.0042 secs
  50% in 0.0071 secs
  99% in 0.0263 secs

Details (average, fastest, slowest):
  DNS+dialup:\t0.0000 secs, 0.0004 secs, 0.0410 secs

Status code distribution:
  [200]\t4960 responses
  [500]\t10 responses

Error distribution:
  [3]\tPost \"http://127.0.0.1:1/echo\": dial tcp: connection refused
";

    #[test]
    fn reads_the_summary() {
        let outcome = parse(SUMMARY).unwrap();
        assert_eq!(outcome.responses, 4970);
        assert_eq!(outcome.ok, 4960);
        assert_eq!(outcome.errors, 13);
        assert!((outcome.rps - 4960.0 / 2.0112).abs() < 1e-6);
        assert_eq!(outcome.p50, 0.0071);
        assert_eq!(outcome.p99, 0.0263);
    }

    #[test]
    fn a_summary_without_total_is_an_error() {
        assert!(parse("Latency distribution:\n  50% in 0.1 secs\n").is_err());
    }
}
