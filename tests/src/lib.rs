//! Harness of the end-to-end tests: the real sensor binary (real eBPF programs) watching real
//! Python servers and clients on loopback. Every expectation comes from what the Python side
//! sent and received, never from earlier sensor output.
//!
//! Prerequisites are set up by `cargo xtask setup` (the test command runs it); a missing one is
//! a test failure with a message saying what to run, never a silent skip.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use serde_json::Value;

pub mod otlp;
pub mod proxy;
pub mod trace;

/// Panics unless the tests run as root (eBPF needs it).
pub fn require_root() {
    // SAFETY: no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "end-to-end tests load eBPF programs and must run as root: use `cargo xtask test` as root"
    );
}

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    // The run-time value (cargo test sets it) follows the checkout under test; the compiled-in
    // one is stale when another checkout sharing CARGO_TARGET_DIR built this binary.
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

/// The sensor binary under test (`SENSOR_BIN`, else `target/release/sensor`).
pub fn sensor_bin() -> PathBuf {
    let path = std::env::var_os("SENSOR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/release/sensor"));
    assert!(
        path.exists(),
        "sensor binary {} not found: run `cargo xtask build` (or `cargo xtask test`)",
        path.display()
    );
    path
}

/// The test venv's Python (`SENSOR_TEST_PYTHON`, else the venv `cargo xtask setup` makes).
pub fn python() -> PathBuf {
    let path = std::env::var_os("SENSOR_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default();
            home.join(".cache/pysensor/venv/bin/python")
        });
    assert!(
        path.exists(),
        "test Python {} not found: run `cargo xtask setup`",
        path.display()
    );
    path
}

/// The Python of the in-process agent's venv (`SENSOR_TEST_AGENT_PYTHON`, else the venv
/// `cargo xtask setup` makes from `tests/requirements-agent.txt`).
pub fn agent_python() -> PathBuf {
    let path = std::env::var_os("SENSOR_TEST_AGENT_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default();
            home.join(".cache/pysensor/venv-agent/bin/python")
        });
    assert!(
        path.exists(),
        "agent venv Python {} not found: run `cargo xtask setup`",
        path.display()
    );
    path
}

/// Directory of the Python apps the tests run.
pub fn apps_dir() -> PathBuf {
    workspace_root().join("tests/apps")
}

/// A scratch directory unique to this test process and name.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sensor-e2e-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// A self-signed certificate for `127.0.0.1` / `localhost` and its key, made once per test
/// process with the `openssl` command.
pub struct TlsFiles {
    /// PEM certificate (also the CA clients trust: `SSL_CERT_FILE`).
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

impl TlsFiles {
    /// Environment for Python clients to trust the certificate (ssl, requests, httpx, aiohttp).
    pub fn client_env(&self) -> [(&'static str, &str); 2] {
        let cert = self.cert.to_str().expect("scratch paths are UTF-8");
        [("SSL_CERT_FILE", cert), ("REQUESTS_CA_BUNDLE", cert)]
    }

    /// Paths as `&str`, for process arguments and environments.
    pub fn paths(&self) -> (&str, &str) {
        (
            self.cert.to_str().expect("scratch paths are UTF-8"),
            self.key.to_str().expect("scratch paths are UTF-8"),
        )
    }
}

/// The test process's certificate (see [`TlsFiles`]).
pub fn tls_files() -> &'static TlsFiles {
    static FILES: std::sync::OnceLock<TlsFiles> = std::sync::OnceLock::new();
    FILES.get_or_init(|| {
        let dir = scratch_dir("tls");
        let files = TlsFiles {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        };
        make_self_signed(&files.cert, &files.key)
            .unwrap_or_else(|e| panic!("making a test certificate: {e}"));
        files
    })
}

/// Writes a self-signed certificate for `localhost` / `127.0.0.1` (`cert`) and its key (`key`),
/// PEM, with the `openssl` command (Debian package `openssl`, installed by set-up).
pub fn make_self_signed(cert: &Path, key: &Path) -> Result<(), String> {
    let status = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .arg("-keyout")
        .arg(key)
        .arg("-out")
        .arg(cert)
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("running openssl (apt-get install openssl): {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("openssl req failed with {status}"))
    }
}

/// The log without its ANSI colour sequences.
pub fn without_colours(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut rest = log;
    while let Some(at) = rest.find('\x1b') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        rest = rest.find('m').map_or("", |end| &rest[end + 1..]);
    }
    out.push_str(rest);
    out
}

/// Polls `cond` until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cond()
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: plain kill(2).
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

/// A running sensor whose stdout and stderr go to files.
pub struct Sensor {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

/// What a stopped sensor printed.
pub struct SensorOutput {
    /// Standard output (records).
    pub stdout: String,
    /// Standard error (logs).
    pub stderr: String,
}

impl SensorOutput {
    /// The JSONL records on stdout.
    pub fn records(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {l}"))
            })
            .collect()
    }
}

impl Sensor {
    /// Starts `sensor <args>` and waits until it reports that capture is running.
    pub fn start(name: &str, args: &[&str]) -> Sensor {
        Self::start_with_env(name, args, &[])
    }

    /// The sensor watching these processes and printing records as JSON lines (`run --pid P…
    /// --output jsonl`): how most tests that read records start it.
    pub fn watching(name: &str, pids: &[u32]) -> Sensor {
        let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
        let mut args = vec!["run"];
        for pid in &pids {
            args.extend(["--pid", pid.as_str()]);
        }
        args.extend(["--output", "jsonl"]);
        Self::start(name, &args)
    }

    /// As [`Sensor::start`], with extra environment variables (a `RUST_LOG` among them wins
    /// over the default, `SENSOR_TEST_LOG` or `info`).
    pub fn start_with_env(name: &str, args: &[&str], env: &[(&str, &str)]) -> Sensor {
        require_root();
        let dir = scratch_dir(&format!("sensor-{name}"));
        let stdout = dir.join("stdout");
        let stderr = dir.join("stderr");
        let child = Command::new(sensor_bin())
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("SENSOR_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).expect("stdout file"))
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("start the sensor");
        let mut sensor = Sensor {
            child,
            stdout,
            stderr,
        };
        let ready = wait_until(Duration::from_secs(30), || {
            let log = std::fs::read_to_string(&sensor.stderr).unwrap_or_default();
            log.contains("sensor running") || log.contains("tracing ")
        });
        if !ready {
            let _ = sensor.child.kill();
            panic!(
                "the sensor did not start within 30 s; its log:\n{}",
                std::fs::read_to_string(&sensor.stderr).unwrap_or_default()
            );
        }
        if let Ok(Some(status)) = sensor.child.try_wait() {
            panic!("the sensor exited at start with {status}");
        }
        sensor
    }

    /// The sensor's stdout so far.
    pub fn stdout_so_far(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// The sensor's log (stderr) so far.
    pub fn stderr_so_far(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The sensor's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the sensor with SIGKILL (nothing is flushed, nothing cleaned up by the sensor) and
    /// returns its output so far.
    pub fn kill(mut self) -> SensorOutput {
        let _ = self.child.kill();
        let _ = self.child.wait();
        SensorOutput {
            stdout: std::fs::read_to_string(&self.stdout).unwrap_or_default(),
            stderr: std::fs::read_to_string(&self.stderr).unwrap_or_default(),
        }
    }

    /// Sends SIGTERM, and once the sensor says it is stopping, SIGTERM again; returns how it
    /// exited (within 20 s) and its output.
    pub fn terminate_twice(mut self) -> (std::process::ExitStatus, SensorOutput) {
        signal(self.child.id(), libc::SIGTERM);
        let stopping = wait_until(Duration::from_secs(20), || {
            std::fs::read_to_string(&self.stderr).is_ok_and(|log| log.contains("stopping:"))
        });
        assert!(stopping, "the sensor did not start stopping at SIGTERM");
        signal(self.child.id(), libc::SIGTERM);
        let exited = wait_until(Duration::from_secs(20), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        });
        if !exited {
            let _ = self.child.kill();
        }
        let status = self.child.wait().expect("sensor status");
        let output = SensorOutput {
            stdout: std::fs::read_to_string(&self.stdout).unwrap_or_default(),
            stderr: std::fs::read_to_string(&self.stderr).unwrap_or_default(),
        };
        assert!(
            exited,
            "the sensor ran on 20 s after a second SIGTERM; its log:\n{}",
            output.stderr
        );
        (status, output)
    }

    /// Stops the sensor with SIGTERM (it flushes what it buffered) and returns its output.
    pub fn stop(mut self) -> SensorOutput {
        signal(self.child.id(), libc::SIGTERM);
        let exited = wait_until(Duration::from_secs(20), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        });
        if !exited {
            let _ = self.child.kill();
            let _ = self.child.wait();
            panic!(
                "the sensor did not stop within 20 s of SIGTERM; its log:\n{}",
                std::fs::read_to_string(&self.stderr).unwrap_or_default()
            );
        }
        let status = self.child.wait().expect("sensor status");
        let output = SensorOutput {
            stdout: std::fs::read_to_string(&self.stdout).unwrap_or_default(),
            stderr: std::fs::read_to_string(&self.stderr).unwrap_or_default(),
        };
        assert!(
            status.success(),
            "the sensor failed with {status}; its log:\n{}",
            output.stderr
        );
        output
    }
}

impl Drop for Sensor {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A Python process speaking a line protocol on stdin/stdout.
pub struct Py {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    name: String,
}

impl Py {
    /// Starts the test venv's Python with `args` (the first is usually a script in
    /// [`apps_dir`]), with extra environment variables.
    pub fn spawn(name: &str, args: &[&str], env: &[(&str, &str)]) -> Py {
        Self::spawn_with(&python(), name, args, env)
    }

    /// As [`Py::spawn`], with another interpreter (e.g. [`agent_python`]).
    pub fn spawn_with(interpreter: &Path, name: &str, args: &[&str], env: &[(&str, &str)]) -> Py {
        let mut command = Command::new(interpreter);
        command.args(args);
        Self::spawn_command(name, command, env)
    }

    /// As [`Py::spawn`], for any command (e.g. the test venv's Python under `unshare`); it runs
    /// in [`apps_dir`] unless the command names its own directory, with stdin and stdout piped.
    pub fn spawn_command(name: &str, mut command: Command, env: &[(&str, &str)]) -> Py {
        if command.get_current_dir().is_none() {
            command.current_dir(apps_dir());
        }
        let mut child = command
            .envs(env.iter().copied())
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let stdout: ChildStdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Py {
            stdin: child.stdin.take(),
            child,
            lines,
            name: name.to_owned(),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the next output line that starts with `prefix`; returns the rest of it.
    pub fn expect_line(&self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return rest.trim().to_owned();
                    }
                }
                Err(_) => panic!(
                    "{}: no line starting with {prefix:?} within {timeout:?}",
                    self.name
                ),
            }
        }
    }

    /// Sends one line on the process's stdin.
    pub fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("write to python stdin");
        stdin.flush().expect("flush python stdin");
    }

    /// Waits for the process to exit by itself.
    pub fn wait(mut self, timeout: Duration) -> std::process::ExitStatus {
        self.stdin.take();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("{} did not exit within {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Py {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            signal(self.child.id(), libc::SIGTERM);
            if !wait_until(Duration::from_secs(3), || {
                matches!(self.child.try_wait(), Ok(Some(_)))
            }) {
                let _ = self.child.kill();
            }
            let _ = self.child.wait();
        }
    }
}

/// Records of one kind (`"server"` or `"client"`) for one process.
pub fn records_of<'a>(records: &'a [Value], kind: &str, pid: u32) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| r["kind"] == kind && r["resource"]["process.pid"] == pid)
        .collect()
}

/// An attribute of a record.
pub fn attr<'a>(record: &'a Value, key: &str) -> &'a Value {
    &record["attributes"][key]
}

/// Child processes of `pid` (from `/proc/*/stat`).
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

/// A loopback port free at the time of the call (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a loopback port")
        .port()
}

/// The `/metrics` page served at `addr` (`--metrics-addr`); `None` when it cannot be read.
pub fn metrics_page(addr: &str) -> Option<String> {
    page(addr, "/metrics")
}

/// The sensor's health answer (`GET /healthz` on its metrics address), status line included.
pub fn health_page(addr: &str) -> Option<String> {
    page(addr, "/healthz")
}

/// One `GET path` to the sensor's metrics server: the whole answer.
fn page(addr: &str, path: &str) -> Option<String> {
    use std::io::Read as _;
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    // One write: the server answers after its first read and closes.
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut page = String::new();
    stream.read_to_string(&mut page).ok()?;
    Some(page)
}

/// The value of the sample named exactly `sample` on the metrics page at `addr`.
fn sample(addr: &str, sample: &str) -> Option<f64> {
    let wanted = format!("{sample} ");
    metrics_page(addr)?
        .lines()
        .find_map(|line| line.strip_prefix(&wanted))
        .and_then(|value| value.trim().parse::<f64>().ok())
}

/// The value of counter `pysensor_<name>_total` on the `/metrics` page served at `addr`
/// (`--metrics-addr`); `None` when the page or the counter is not there.
pub fn metric(addr: &str, name: &str) -> Option<u64> {
    sample(addr, &format!("pysensor_{name}_total")).map(|value| value as u64)
}

/// The value of gauge `pysensor_<name>` on the `/metrics` page served at `addr`; `None` when
/// the page or the gauge is not there.
pub fn gauge(addr: &str, name: &str) -> Option<i64> {
    sample(addr, &format!("pysensor_{name}")).map(|value| value as i64)
}
