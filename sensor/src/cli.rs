//! The command-line contract. Later work fills commands in; it never renames or removes them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// What `sensor --version` prints: the version, and the optional features built in.
pub const VERSION: &str = if cfg!(feature = "kubernetes") {
    concat!(env!("CARGO_PKG_VERSION"), " (features: kubernetes)")
} else {
    env!("CARGO_PKG_VERSION")
};

/// eBPF API-traffic sensor for Python services: captures the HTTP calls Python processes serve
/// and make, with no change to the application.
#[derive(Parser, Debug)]
#[command(name = "sensor", version = VERSION, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The sensor's commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the sensor daemon: capture, reassemble and export API calls.
    ///
    /// Without --pid it watches every Python process on the host, present and future; with
    /// --pid only those processes and their children.
    Run(RunArgs),
    /// Watch the given processes (and their children) from a shell; same as `run --pid`, and
    /// ends once they have all exited.
    Attach(AttachArgs),
    /// Debug view of raw capture: one line per captured chunk of a process's sockets.
    Trace(TraceArgs),
    /// Preflight: can this host and these privileges support capture?
    Check(CheckArgs),
}

/// Where exchange records go when no OTLP backend is configured.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// One readable line per exchange.
    Console,
    /// One JSON exchange record per line.
    Jsonl,
}

/// Options of `sensor run`.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Configuration file (the Hypertrace agent's YAML); also HT_CONFIG_FILE.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Watch only this process and its children (repeatable).
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// Output for exchange records when no OTLP endpoint is configured.
    #[arg(long, value_enum)]
    pub output: Option<OutputFormat>,
    /// Serve Prometheus metrics (/metrics) and a health check (/healthz) on this address
    /// (e.g. 127.0.0.1:9464).
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Stop once every watched process has exited (`attach`); `run` keeps serving its metrics.
    #[arg(skip)]
    pub until_watched_exit: bool,
}

/// Options of `sensor attach`.
#[derive(Args, Debug, Clone)]
pub struct AttachArgs {
    /// The processes to watch (with their children).
    #[arg(long = "pid", value_name = "PID", required = true, num_args = 1..)]
    pub pids: Vec<u32>,
    /// Configuration file (the Hypertrace agent's YAML); also HT_CONFIG_FILE.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Output for exchange records when no OTLP endpoint is configured.
    #[arg(long, value_enum)]
    pub output: Option<OutputFormat>,
}

impl From<AttachArgs> for RunArgs {
    fn from(args: AttachArgs) -> Self {
        RunArgs {
            config: args.config,
            pids: args.pids,
            output: args.output,
            metrics_addr: None,
            until_watched_exit: true,
        }
    }
}

/// Options of `sensor trace`.
#[derive(Args, Debug, Clone)]
pub struct TraceArgs {
    /// The process whose socket traffic to show (and its children).
    #[arg(long = "pid", value_name = "PID", required = true, num_args = 1..)]
    pub pids: Vec<u32>,
    /// Also print the first bytes of each chunk, redacted as the configuration says.
    #[arg(long)]
    pub payload: bool,
    /// How many bytes of each chunk `--payload` prints (escaped).
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub payload_bytes: usize,
    /// Configuration file whose redaction rules apply to `--payload` (and whose
    /// `sensor.ring_buffer_bytes` sizes the capture); also HT_CONFIG_FILE and the HT_*
    /// variables, as for `run`.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// Options of `sensor check`.
#[derive(Args, Debug, Clone)]
pub struct CheckArgs {
    /// Also check these processes: the service name each gives itself, and whether its
    /// OpenSSL was found.
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// Configuration file (also HT_CONFIG_FILE and the HT_* variables, as for `run`): the
    /// capture is loaded with its `sensor.ring_buffer_bytes`.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}
