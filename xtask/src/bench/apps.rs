//! The framework matrix: gunicorn+Flask and uvicorn+FastAPI, a small JSON GET and a 16 KB JSON
//! POST, over HTTP and HTTPS, each loaded by `hey` in four configurations interleaved round by
//! round — (a) no instrumentation, (b) the sensor, (c) the in-process Hypertrace agent with body
//! capture, (d) OpenTelemetry Python's instrumentation — with requests/s, latency, errors and
//! exchanges exported vs requests sent; then the sensor's CPU and BPF time per request, its
//! memory ([`super::memory`]) and the highest open-loop rate it exports completely
//! ([`super::open_loop`]).
//!
//! Every instrumented configuration exports OTLP to a counting receiver in this process (the
//! end-to-end tests' `Receiver`), a fresh one per run, so each run's exports are its own. Each
//! run starts its own app: the configurations differ in how the app is started.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use sensor_e2e::otlp::Receiver;

use super::{
    Settings, clock_ticks_per_second, hey, median, memory, metric, neighbour, open_loop, pinning,
    scrape, terminate, tls_files, wait_until_running,
};
use crate::{setup::Env, workspace_root};

/// Concurrent connections of the closed-loop load.
const CONNECTIONS: usize = 8;
/// Size of the POSTed JSON document.
const POST_BYTES: usize = 16 * 1024;

/// The application server and framework.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framework {
    /// gunicorn (2 gthread workers of 4 threads) serving `tests/apps/bench_flask.py`.
    Flask,
    /// uvicorn serving `tests/apps/bench_fastapi.py`.
    FastApi,
}

impl Framework {
    fn label(self) -> &'static str {
        match self {
            Framework::Flask => "gunicorn+Flask",
            Framework::FastApi => "uvicorn+FastAPI",
        }
    }

    fn word(self) -> &'static str {
        match self {
            Framework::Flask => "flask",
            Framework::FastApi => "fastapi",
        }
    }
}

/// The request loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `GET /small`: a small JSON answer.
    SmallGet,
    /// `POST /echo` with a 16 KB JSON document, echoed back.
    JsonPost,
}

impl Endpoint {
    fn label(self) -> &'static str {
        match self {
            Endpoint::SmallGet => "small JSON GET",
            Endpoint::JsonPost => "16 KB JSON POST",
        }
    }

    fn word(self) -> &'static str {
        match self {
            Endpoint::SmallGet => "get",
            Endpoint::JsonPost => "post",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Endpoint::SmallGet => "/small",
            Endpoint::JsonPost => "/echo",
        }
    }
}

/// One (framework, endpoint, scheme) of the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Case {
    /// Server and framework.
    pub framework: Framework,
    /// Request.
    pub endpoint: Endpoint,
    /// HTTPS (the app's self-signed certificate) rather than HTTP.
    pub https: bool,
}

impl Case {
    fn scheme(self) -> &'static str {
        if self.https { "https" } else { "http" }
    }

    /// `gunicorn+Flask, small JSON GET, http`.
    pub fn label(self) -> String {
        format!(
            "{}, {}, {}",
            self.framework.label(),
            self.endpoint.label(),
            self.scheme()
        )
    }

    /// Whether the case passes the `PYSENSOR_BENCH_ONLY` filter: every word of it (`flask`,
    /// `fastapi`, `get`, `post`, `http`, `https`) names the case.
    pub fn selected(self) -> bool {
        let Ok(only) = std::env::var("PYSENSOR_BENCH_ONLY") else {
            return true;
        };
        let names = [self.framework.word(), self.endpoint.word(), self.scheme()];
        words(&only).all(|w| names.contains(&w.as_str()))
    }
}

/// The words of a selection variable's value (separated by commas or spaces), lower-cased.
fn words(value: &str) -> impl Iterator<Item = String> + '_ {
    value
        .split([',', ' '])
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_lowercase)
}

/// How the app is instrumented.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Config {
    /// (a) No instrumentation.
    Bare,
    /// (b) The sensor watching the app's pid, exporting OTLP/gRPC.
    Sensor,
    /// (b2) Another build of the sensor (`PYSENSOR_BENCH_COMPARE`), run like (b) right after
    /// it in every round, so that two builds are compared run by run.
    Compared,
    /// (c) The Hypertrace agent in the app, body capture on, exporting OTLP/gRPC.
    Agent,
    /// (d) `opentelemetry-instrument`, exporting OTLP/HTTP.
    Otel,
}

impl Config {
    /// Every configuration, in the order they run within a round.
    const ALL: [Config; 5] = [
        Config::Bare,
        Config::Sensor,
        Config::Compared,
        Config::Agent,
        Config::Otel,
    ];

    fn label(self) -> &'static str {
        match self {
            Config::Bare => "(a) bare",
            Config::Sensor => "(b) sensor",
            Config::Compared => "(b2) compared build",
            Config::Agent => "(c) hypertrace agent",
            Config::Otel => "(d) opentelemetry",
        }
    }

    fn word(self) -> &'static str {
        match self {
            Config::Bare => "bare",
            Config::Sensor => "sensor",
            Config::Compared => "compared",
            Config::Agent => "agent",
            Config::Otel => "otel",
        }
    }

    /// Whether a sensor runs beside the app.
    fn has_sensor(self) -> bool {
        matches!(self, Config::Sensor | Config::Compared)
    }

    /// The configurations to run: those `PYSENSOR_BENCH_CONFIGS` names (`bare`, `sensor`,
    /// `agent`, `otel`; all by default) plus bare, which the ratios need, and (b2) when
    /// `compared` (a second sensor binary) is given.
    fn selected(compared: bool) -> Result<Vec<Config>> {
        Config::selected_from(
            std::env::var("PYSENSOR_BENCH_CONFIGS").ok().as_deref(),
            compared,
        )
    }

    /// [`Config::selected`], given the variable's value.
    fn selected_from(named: Option<&str>, compared: bool) -> Result<Vec<Config>> {
        let words: Vec<String> = named.map(words).into_iter().flatten().collect();
        if let Some(unknown) = words.iter().find(|w| {
            !Config::ALL
                .iter()
                .any(|c| c.word() == w.as_str() && *c != Config::Compared)
        }) {
            bail!(
                "PYSENSOR_BENCH_CONFIGS: unknown configuration {unknown:?} (bare, sensor, agent, otel)"
            );
        }
        Ok(Config::ALL
            .into_iter()
            .filter(|c| match c {
                Config::Bare => true,
                Config::Compared => compared,
                _ => words.is_empty() || words.iter().any(|w| w == c.word()),
            })
            .collect())
    }
}

/// What the benchmark needs to start apps and sensors.
pub struct Bench<'a> {
    /// The sensor binary.
    pub binary: &'a Path,
    /// A second sensor binary to compare with `binary` (`PYSENSOR_BENCH_COMPARE`).
    pub compared: Option<PathBuf>,
    /// Python environments.
    pub env: &'a Env,
    /// Run length and rounds.
    pub settings: Settings,
    /// The app's certificate and key (PEM), for HTTPS.
    pub cert: PathBuf,
    /// See `cert`.
    pub key: PathBuf,
    /// The 16 KB JSON document POSTed.
    pub post_body: PathBuf,
}

impl Bench<'_> {
    /// The closed-loop load of `case` (its URL filled in by [`run_once`]).
    pub fn closed_loop(&self, case: Case) -> hey::Load {
        hey::Load {
            url: String::new(),
            seconds: self.settings.seconds,
            connections: CONNECTIONS,
            rate_per_connection: None,
            post_body: (case.endpoint == Endpoint::JsonPost).then(|| self.post_body.clone()),
        }
    }
}

/// A running application, stopped (SIGTERM, so in-process exporters flush) when dropped.
pub struct App {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Its listening port.
    pub port: u16,
}

impl App {
    /// Starts the app of `framework` in configuration `config` on the app core, exporting to
    /// `receiver` when instrumented in process; returns once it answers a request (one
    /// `GET /ready`, which instrumented configurations export too).
    pub fn start(
        bench: &Bench,
        framework: Framework,
        https: bool,
        config: Config,
        receiver: Option<&Receiver>,
        extra_env: &[(&str, &str)],
    ) -> Result<App> {
        let venv = match config {
            Config::Otel => &bench.env.otel_venv,
            _ => &bench.env.agent_venv,
        };
        let bin = venv.join("bin");
        let mut command = match config {
            Config::Otel => {
                let mut command =
                    pinning::pinned(pinning::APP_CORE, bin.join("opentelemetry-instrument"));
                command.arg(match framework {
                    Framework::Flask => bin.join("gunicorn"),
                    Framework::FastApi => bin.join("python"),
                });
                command
            }
            _ => pinning::pinned(
                pinning::APP_CORE,
                match framework {
                    Framework::Flask => bin.join("gunicorn"),
                    Framework::FastApi => bin.join("python"),
                },
            ),
        };
        let (cert, key) = (bench.cert.as_os_str(), bench.key.as_os_str());
        match framework {
            Framework::Flask => {
                command
                    .args(["-c", "gunicorn_conf.py", "bench_flask:app"])
                    .env("GUNICORN_WORKERS", "2")
                    .env("GUNICORN_WORKER_CLASS", "gthread")
                    .env("GUNICORN_THREADS", "4");
                if https {
                    command
                        .env("GUNICORN_CERTFILE", cert)
                        .env("GUNICORN_KEYFILE", key);
                }
            }
            Framework::FastApi => {
                command.args(["serve_uvicorn.py", "bench_fastapi:app"]);
                if https {
                    command
                        .env("UVICORN_SSL_CERTFILE", cert)
                        .env("UVICORN_SSL_KEYFILE", key);
                }
            }
        }
        match (config, receiver) {
            (Config::Agent, Some(receiver)) => {
                command
                    .env("BENCH_AGENT", "hypertrace")
                    .env("HT_REPORTING_ENDPOINT", receiver.grpc_endpoint())
                    .env("HT_REPORTING_TRACE_REPORTER_TYPE", "OTLP")
                    .env("HT_SERVICE_NAME", "bench")
                    .env("HT_DATA_CAPTURE_HTTP_BODY_REQUEST", "true")
                    .env("HT_DATA_CAPTURE_HTTP_BODY_RESPONSE", "true");
            }
            (Config::Otel, Some(receiver)) => {
                command
                    .env("OTEL_SERVICE_NAME", "bench")
                    .env("OTEL_TRACES_EXPORTER", "otlp_proto_http")
                    .env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf")
                    .env(
                        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                        receiver.http_traces_url(),
                    )
                    .env("OTEL_METRICS_EXPORTER", "none")
                    .env("OTEL_LOGS_EXPORTER", "none");
            }
            (Config::Agent | Config::Otel, None) => bail!("{config:?} needs a receiver"),
            _ => {}
        }
        let mut child = command
            .envs(extra_env.iter().copied())
            .env("PYTHONUNBUFFERED", "1")
            .current_dir(workspace_root().join("tests/apps"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {command:?}"))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut app = App {
            child,
            lines,
            port: 0,
        };
        // gunicorn's workers may print before its master's READY.
        let workers = if framework == Framework::Flask { 2 } else { 0 };
        let (mut port, mut ready_workers) = (None, 0);
        let deadline = Instant::now() + Duration::from_secs(60);
        while port.is_none() || ready_workers < workers {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = app.lines.recv_timeout(left).map_err(|_| {
                anyhow!("the app printed no READY line or too few WORKER lines within 60 s")
            })?;
            if let Some(rest) = line.strip_prefix("READY") {
                port = Some(
                    rest.trim()
                        .parse()
                        .context("the app's READY line has no port")?,
                );
            }
            ready_workers += line.matches("WORKER ").count();
        }
        app.port = port.unwrap_or_default();
        Ok(app)
    }

    /// The app's pid (gunicorn's master: the sensor follows its workers).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `http(s)://127.0.0.1:<port><path>`.
    pub fn url(&self, https: bool, path: &str) -> String {
        let scheme = if https { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}{path}", self.port)
    }

    /// Sends `GET /ready` until one is answered (at most 60 s); it is the one request every
    /// instrumented configuration exports besides the load.
    pub fn probe(&self, https: bool) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let load = hey::Load {
            url: self.url(https, "/ready"),
            seconds: 0,
            connections: 1,
            rate_per_connection: None,
            post_body: None,
        };
        loop {
            if load.single().is_ok_and(|ok| ok) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the app did not answer GET /ready within 60 s");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops the app with SIGTERM (in-process exporters flush on exit), SIGKILL after 30 s.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        terminate(&mut self.child, Duration::from_secs(30));
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A running sensor watching one pid and exporting to a receiver, stopped (SIGTERM: it flushes)
/// when dropped.
pub struct Sensor {
    child: Child,
    /// Its `--metrics-addr`.
    pub metrics_addr: String,
}

impl Sensor {
    /// Starts the sensor on the load core watching `pid`, exporting to `receiver`; returns once
    /// capture is running.
    pub fn start(binary: &Path, pid: u32, receiver: &Receiver) -> Result<Sensor> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let metrics_addr = format!("127.0.0.1:{port}");
        let log = std::env::temp_dir().join(format!("pysensor-bench-sensor-{pid}.log"));
        let mut child = pinning::pinned(pinning::LOAD_CORE, binary)
            .args(["run", "--pid", &pid.to_string(), "--metrics-addr"])
            .arg(&metrics_addr)
            .env("HT_REPORTING_ENDPOINT", receiver.grpc_endpoint())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting the sensor")?;
        wait_until_running(&mut child, &log)?;
        Ok(Sensor {
            child,
            metrics_addr,
        })
    }

    /// The sensor's pid (the `taskset` wrapper execs it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the sensor with SIGTERM (it exports what it holds), SIGKILL after 20 s.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        terminate(&mut self.child, Duration::from_secs(20));
    }
}

impl Drop for Sensor {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The CPU time (user + system) of each thread of a process so far, in nanoseconds: the
/// scheduler's exact count (`/proc/PID/task/TID/schedstat`). `/proc/PID/stat` counts clock
/// ticks instead: a 5 s window of a sensor using 0.025 core is about 12 of them, so one tick
/// more or less moves the result by 8 %.
pub struct ThreadTimes(BTreeMap<u32, u64>);

impl ThreadTimes {
    /// The threads of `pid` now.
    pub fn read(pid: u32) -> Result<ThreadTimes> {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
            .with_context(|| format!("listing the threads of process {pid}"))?;
        let mut times = BTreeMap::new();
        for task in tasks {
            let task = task?;
            let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
                continue;
            };
            // A thread may end between the listing and this read.
            let Ok(schedstat) = std::fs::read_to_string(task.path().join("schedstat")) else {
                continue;
            };
            let ns = schedstat
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| anyhow!("unreadable /proc/{pid}/task/{tid}/schedstat"))?;
            times.insert(tid, ns);
        }
        Ok(ThreadTimes(times))
    }

    /// CPU seconds used since `earlier`: what each thread added, all of a thread started
    /// since; a thread that ended in between is not counted.
    pub fn seconds_since(&self, earlier: &ThreadTimes) -> f64 {
        let ns: u64 = self
            .0
            .iter()
            .map(|(tid, now)| now.saturating_sub(earlier.0.get(tid).copied().unwrap_or(0)))
            .sum();
        ns as f64 / 1e9
    }
}

/// What the sensor used during one load window.
#[derive(Clone, Copy, Debug, Default)]
pub struct SensorUsage {
    /// CPU seconds (user + system) of the sensor process.
    pub cpu_seconds: f64,
    /// Length of the window, seconds.
    pub window: f64,
    /// Run time of the sensor's BPF programs in the window, ns (kernel.bpf_stats_enabled).
    pub bpf_ns: u64,
    /// The sensor's resident set after the load, KiB.
    pub rss_kib: u64,
    /// Ring-buffer records lost because the buffer was full.
    pub ring_full: u64,
}

/// One measured run of one configuration.
#[derive(Clone, Debug)]
pub struct Run {
    /// What `hey` saw.
    pub load: hey::Outcome,
    /// Spans exported for the load (the readiness probe's excluded); none when bare.
    pub exported: Option<u64>,
    /// The sensor's usage, with the sensor.
    pub sensor: Option<SensorUsage>,
    /// What the app's core spent during the load (none when not pinned): where a
    /// configuration's cost to the app lands, in its own code or in the kernel.
    pub app_core: Option<pinning::CoreTicks>,
}

/// The app core's time per request of one run.
#[derive(Clone, Copy, Debug)]
pub struct AppCorePerRequest {
    /// User time per request sent, µs.
    pub user_us: f64,
    /// System (with irq) time per request sent, µs.
    pub system_us: f64,
    /// Share of the core's time the hypervisor took.
    pub steal: f64,
}

impl Run {
    /// The app core's time per request sent; none when not measured or nothing was sent.
    pub fn app_core_per_request(&self) -> Option<AppCorePerRequest> {
        let ticks = self.app_core?;
        let sent = self.load.sent();
        if sent == 0 || ticks.total == 0 {
            return None;
        }
        let us = |t: u64| t as f64 / clock_ticks_per_second() / sent as f64 * 1e6;
        Some(AppCorePerRequest {
            user_us: us(ticks.user),
            system_us: us(ticks.system),
            steal: ticks.steal as f64 / ticks.total as f64,
        })
    }
}

/// The median over `runs` of one part of the app core's time per request; none when no run
/// measured it.
pub fn median_app_core(runs: &[Run], pick: fn(&AppCorePerRequest) -> f64) -> Option<f64> {
    let values: Vec<f64> = runs
        .iter()
        .filter_map(Run::app_core_per_request)
        .map(|c| pick(&c))
        .collect();
    (!values.is_empty()).then(|| median(values))
}

/// Waits until the receiver's span count has not moved for a second (at most 20 s); returns the
/// number of server spans (one per exchange; in-process instrumentations may add internal
/// spans, e.g. ASGI's per-message ones).
pub fn settled_server_spans(receiver: &Receiver) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = receiver.span_total();
    let mut still_since = Instant::now();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        let now = receiver.span_total();
        if now != last {
            last = now;
            still_since = Instant::now();
        } else if still_since.elapsed() >= Duration::from_secs(1) {
            break;
        }
    }
    receiver.server_span_total()
}

/// Runs one configuration of one case under `load` (its URL filled in here): starts the app
/// (and the sensor), probes it, loads it, stops everything, counts what was exported.
pub fn run_once(bench: &Bench, case: Case, config: Config, load: &hey::Load) -> Result<Run> {
    let receiver = (config != Config::Bare).then(Receiver::start_counting);
    let app = App::start(
        bench,
        case.framework,
        case.https,
        config,
        receiver.as_ref(),
        &[],
    )?;
    let binary = match config {
        Config::Compared => bench.compared.as_deref(),
        Config::Sensor => Some(bench.binary),
        _ => None,
    };
    let sensor = match (binary, &receiver) {
        (Some(binary), Some(receiver)) => Some(Sensor::start(binary, app.pid(), receiver)?),
        _ => None,
    };
    app.probe(case.https)?;
    let load = hey::Load {
        url: app.url(case.https, case.endpoint.path()),
        ..load.clone()
    };
    let before = match &sensor {
        Some(sensor) => Some((
            ThreadTimes::read(sensor.pid())?,
            scrape(&sensor.metrics_addr)?,
            Instant::now(),
        )),
        None => None,
    };
    let core_before = if pinning::available() {
        pinning::CoreTicks::read(pinning::APP_CORE)?
    } else {
        None
    };
    let outcome = load.run()?;
    let app_core = match core_before {
        Some(before) => {
            pinning::CoreTicks::read(pinning::APP_CORE)?.map(|after| after.since(before))
        }
        None => None,
    };
    let usage = match (&sensor, before) {
        (Some(sensor), Some((cpu, page, started))) => {
            let window = started.elapsed().as_secs_f64();
            let cpu_after = ThreadTimes::read(sensor.pid())?;
            let page_after = scrape(&sensor.metrics_addr)?;
            let delta = |name: &str| metric(&page_after, name).saturating_sub(metric(&page, name));
            Some(SensorUsage {
                cpu_seconds: cpu_after.seconds_since(&cpu),
                window,
                bpf_ns: delta("kernel_bpf_run_time_ns"),
                rss_kib: memory::rss_kib(sensor.pid()).unwrap_or(0),
                ring_full: delta("kernel_ringbuf_full"),
            })
        }
        _ => None,
    };
    app.stop();
    if let Some(sensor) = sensor {
        sensor.stop();
    }
    let exported = receiver
        .as_ref()
        .map(|receiver| settled_server_spans(receiver).saturating_sub(1));
    Ok(Run {
        load: outcome,
        exported,
        sensor: usage,
        app_core,
    })
}

/// The sensor's cost over the runs of one configuration of one case (medians over rounds).
struct SensorCost {
    /// CPU, cores.
    cores: f64,
    /// CPU, cores per 1,000 exchanges/s.
    per_k: f64,
    /// Its BPF programs' run time per request, µs.
    bpf_us: f64,
    /// Resident set after the load, MB.
    rss_mb: f64,
    /// Ring-buffer records lost, summed.
    ring_full: u64,
}

impl SensorCost {
    fn of(runs: &[Run]) -> SensorCost {
        let these: Vec<(&Run, SensorUsage)> = runs
            .iter()
            .filter_map(|r| r.sensor.map(|u| (r, u)))
            .collect();
        let over = |f: &dyn Fn(&Run, &SensorUsage) -> f64| {
            median(these.iter().map(|(r, u)| f(r, u)).collect())
        };
        SensorCost {
            cores: over(&|_, u| u.cpu_seconds / u.window),
            per_k: over(&|r, u| {
                let rate = r.load.sent() as f64 / u.window;
                if rate > 0.0 {
                    u.cpu_seconds / u.window / (rate / 1000.0)
                } else {
                    0.0
                }
            }),
            bpf_us: over(&|r, u| u.bpf_ns as f64 / r.load.sent().max(1) as f64 / 1e3),
            rss_mb: over(&|_, u| u.rss_kib as f64 / 1024.0),
            ring_full: these.iter().map(|(_, u)| u.ring_full).sum(),
        }
    }
}

/// Which parts run after the matrix (`PYSENSOR_BENCH_PARTS`: words `control`, `memory`,
/// `open-loop`; all by default, `none` for the matrix alone).
struct Parts {
    control: bool,
    memory: bool,
    open_loop: bool,
}

impl Parts {
    fn from_env() -> Result<Parts> {
        Parts::parse(std::env::var("PYSENSOR_BENCH_PARTS").ok().as_deref())
    }

    /// [`Parts::from_env`], given the variable's value.
    fn parse(value: Option<&str>) -> Result<Parts> {
        let Some(value) = value else {
            return Ok(Parts {
                control: true,
                memory: true,
                open_loop: true,
            });
        };
        let mut parts = Parts {
            control: false,
            memory: false,
            open_loop: false,
        };
        for word in words(value) {
            match word.as_str() {
                "control" => parts.control = true,
                "memory" => parts.memory = true,
                "open-loop" => parts.open_loop = true,
                "none" => {}
                other => bail!(
                    "PYSENSOR_BENCH_PARTS: unknown part {other:?} (control, memory, open-loop, none)"
                ),
            }
        }
        Ok(parts)
    }
}

fn ms(seconds: f64) -> String {
    format!("{:.2}", seconds * 1e3)
}

/// The 16 KB JSON document POSTed: `{"items": [{"id": …, "name": …, "tags": …}, …], …}`
/// padded to exactly [`POST_BYTES`].
fn json_document(bytes: usize) -> String {
    let mut items = Vec::new();
    let mut i = 0;
    loop {
        let item = format!(
            "{{\"id\":{i},\"name\":\"item-{i}\",\"price\":{}.{:02},\"tags\":[\"a\",\"b\"]}}",
            i * 3,
            i % 100
        );
        let so_far: usize = items.iter().map(|s: &String| s.len() + 1).sum();
        if so_far + item.len() + 40 > bytes {
            break;
        }
        items.push(item);
        i += 1;
    }
    let head = format!("{{\"items\":[{}],\"pad\":\"", items.join(","));
    let tail = "\"}";
    let pad = bytes.saturating_sub(head.len() + tail.len());
    format!("{head}{}{tail}", "x".repeat(pad))
}

/// Runs the matrix, the sensor's cost, the neighbour control, memory and the open-loop search;
/// prints the tables.
/// Fails when an instrumented configuration that ran exported nothing.
pub fn bench(binary: &Path, env: &Env, settings: Settings) -> Result<()> {
    pinning::pin_this_thread(pinning::LOAD_CORE)?;
    memory::raise_nofile_limit()?;
    let dir = std::env::temp_dir().join("pysensor-bench-apps");
    std::fs::create_dir_all(&dir)?;
    let (cert, key) = tls_files(&dir)?;
    let post_body = dir.join("post.json");
    std::fs::write(&post_body, json_document(POST_BYTES))?;
    let bench = Bench {
        binary,
        compared: std::env::var_os("PYSENSOR_BENCH_COMPARE").map(PathBuf::from),
        env,
        settings,
        cert,
        key,
        post_body,
    };
    let mut cases = Vec::new();
    for framework in [Framework::Flask, Framework::FastApi] {
        for endpoint in [Endpoint::SmallGet, Endpoint::JsonPost] {
            for https in [false, true] {
                let case = Case {
                    framework,
                    endpoint,
                    https,
                };
                if case.selected() {
                    cases.push(case);
                }
            }
        }
    }
    let Settings { seconds, rounds } = settings;
    println!();
    println!(
        "== frameworks under hey: {CONNECTIONS} connections, closed loop, {seconds} s per run, {rounds} interleaved rounds (medians; errors and exported/sent summed); {}",
        pinning::describe()
    );
    println!(
        "   app user/sys us: the app core's user and system (with irq) time per request during the load (/proc/stat); steal: its share taken by the hypervisor"
    );
    // Both selections are read before the first run: a mistyped word fails at once, not after
    // the matrix.
    let configs = Config::selected(bench.compared.is_some())?;
    let parts = Parts::from_env()?;
    let mut runs: Vec<Vec<Vec<Run>>> = vec![vec![Vec::new(); configs.len()]; cases.len()];
    for round in 0..rounds {
        for (c, case) in cases.iter().enumerate() {
            for (k, config) in configs.iter().enumerate() {
                let load = bench.closed_loop(*case);
                let run = run_once(&bench, *case, *config, &load).with_context(|| {
                    format!("round {}: {}, {}", round + 1, case.label(), config.label())
                })?;
                eprintln!(
                    "bench: round {} {} {}: {:.0} req/s, {} errors, exported {}/{}",
                    round + 1,
                    case.label(),
                    config.label(),
                    run.load.rps,
                    run.load.errors,
                    run.exported.map_or("n/a".into(), |e| e.to_string()),
                    run.load.sent()
                );
                runs[c][k].push(run);
            }
        }
    }
    let mut empty = Vec::new();
    for (c, case) in cases.iter().enumerate() {
        println!();
        println!("-- {}", case.label());
        println!(
            "{:<22} {:>9} {:>7} {:>9} {:>9} {:>7} {:>17} {:>12} {:>12} {:>8}",
            "config",
            "req/s",
            "ratio",
            "p50 ms",
            "p99 ms",
            "errors",
            "exported/sent",
            "app user us",
            "app sys us",
            "steal"
        );
        let bare = median(runs[c][0].iter().map(|r| r.load.rps).collect());
        for (k, config) in configs.iter().enumerate() {
            let these = &runs[c][k];
            let rps = median(these.iter().map(|r| r.load.rps).collect());
            let sent: u64 = these.iter().map(|r| r.load.sent()).sum();
            let exported = these
                .iter()
                .map(|r| r.exported)
                .sum::<Option<u64>>()
                .map_or("n/a".to_owned(), |e| format!("{e}/{sent}"));
            if these.iter().any(|r| r.exported.is_some())
                && these.iter().all(|r| r.exported == Some(0))
            {
                empty.push(format!("{}: {}", case.label(), config.label()));
            }
            let core_column = |pick: fn(&AppCorePerRequest) -> f64, scale: f64, unit: &str| {
                median_app_core(these, pick)
                    .map_or("n/a".to_owned(), |v| format!("{:.1}{unit}", v * scale))
            };
            println!(
                "{:<22} {:>9.0} {:>7.3} {:>9} {:>9} {:>7} {:>17} {:>12} {:>12} {:>8}",
                config.label(),
                rps,
                if bare > 0.0 { rps / bare } else { 0.0 },
                ms(median(these.iter().map(|r| r.load.p50).collect())),
                ms(median(these.iter().map(|r| r.load.p99).collect())),
                these.iter().map(|r| r.load.errors).sum::<u64>(),
                exported,
                core_column(|c| c.user_us, 1.0, ""),
                core_column(|c| c.system_us, 1.0, ""),
                core_column(|c| c.steal, 100.0, "%")
            );
        }
    }
    let mut sensor_cores = Vec::new();
    if configs.iter().any(|c| c.has_sensor()) {
        println!();
        println!(
            "== the sensor's own cost during the load windows above (medians over rounds): CPU (user+system, each thread's /proc/PID/task/TID/schedstat) in cores and per 1,000 exchanges/s; BPF run time of all its programs (kernel.bpf_stats_enabled) per request; RSS after the load"
        );
        println!(
            "{:<44} {:>8} {:>14} {:>12} {:>9} {:>10}",
            "case", "cores", "cores/1k rps", "BPF us/req", "RSS MB", "ring full"
        );
        for (c, case) in cases.iter().enumerate() {
            for (k, config) in configs.iter().enumerate() {
                if !config.has_sensor() {
                    continue;
                }
                let usage = SensorCost::of(&runs[c][k]);
                if *config == Config::Sensor {
                    sensor_cores.push(usage.cores);
                }
                let label = match config {
                    Config::Compared => format!("{} {}", case.label(), config.label()),
                    _ => case.label(),
                };
                println!(
                    "{:<44} {:>8.3} {:>14.3} {:>12.1} {:>9.1} {:>10}",
                    label, usage.cores, usage.per_k, usage.bpf_us, usage.rss_mb, usage.ring_full
                );
            }
        }
        println!(
            "targets (shown, not asserted): throughput with the sensor >= 98% of bare; sensor CPU <= 0.05 core per 1,000 exchanges/s"
        );
    }
    if parts.control {
        if sensor_cores.len() == cases.len() {
            neighbour::bench(&bench, &cases, &sensor_cores)?;
        } else {
            println!();
            println!(
                "== control skipped: its busy loop uses the CPU measured for (b), which PYSENSOR_BENCH_CONFIGS left out"
            );
        }
    }
    if parts.memory {
        memory::bench(&bench)?;
    }
    if parts.open_loop {
        open_loop::bench(&bench, &cases)?;
    }
    if !empty.is_empty() {
        bail!("configurations exported nothing: {}", empty.join("; "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configurations_named_plus_bare_and_the_compared_build() {
        use Config::*;
        let all = Config::selected_from(None, false).unwrap();
        assert_eq!(all, vec![Bare, Sensor, Agent, Otel]);
        let some = Config::selected_from(Some("Sensor, otel"), true).unwrap();
        assert_eq!(some, vec![Bare, Sensor, Compared, Otel]);
        assert!(Config::selected_from(Some("sensor,compared"), true).is_err());
        assert!(Config::selected_from(Some("tracer"), false).is_err());
    }

    #[test]
    fn parts_named_or_all() {
        let all = Parts::parse(None).unwrap();
        assert!(all.control && all.memory && all.open_loop);
        let none = Parts::parse(Some("none")).unwrap();
        assert!(!none.control && !none.memory && !none.open_loop);
        let some = Parts::parse(Some("memory open-loop")).unwrap();
        assert!(!some.control && some.memory && some.open_loop);
        assert!(Parts::parse(Some("memory,cpu")).is_err());
    }

    #[test]
    fn thread_times_count_growth_and_new_threads_but_not_ended_ones() {
        let earlier = ThreadTimes(BTreeMap::from([(1, 1_000_000_000), (2, 500_000_000)]));
        let later = ThreadTimes(BTreeMap::from([(1, 1_250_000_000), (3, 50_000_000)]));
        let used = later.seconds_since(&earlier);
        assert!((used - 0.3).abs() < 1e-9, "{used}");
    }

    #[test]
    fn thread_times_of_this_process_grow_with_work() {
        let earlier = ThreadTimes::read(std::process::id()).expect("own threads");
        let started = Instant::now();
        let mut x = 0u64;
        while started.elapsed() < Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let used = ThreadTimes::read(std::process::id())
            .expect("own threads")
            .seconds_since(&earlier);
        assert!(
            (0.03..1.0).contains(&used),
            "50 ms of spinning counted as {used} s"
        );
    }
}
