//! The `sensor` command: see `sensor --help`.

use std::io::{IsTerminal as _, Write as _};

use anyhow::Result;
use clap::Parser as _;
use sensor::{
    capture::CaptureOptions,
    check,
    cli::{Cli, Command, RunArgs},
    config::{self, ExportTarget, OutputKind, Overrides},
    conntrack::TrackerSettings,
    daemon::{self, DaemonOptions, Output},
    export::{StdoutFormat, otlp::OtlpSettings},
    http::HttpSettings,
    redact::StreamRules,
    trace,
};
use tracing_subscriber::EnvFilter;

/// The variable that picks the log format: `text` (the default) or `json`.
const LOG_FORMAT_VARIABLE: &str = "PYSENSOR_LOG_FORMAT";

/// Logs to stderr, filtered by `RUST_LOG` (default `info`): one JSON object per line when
/// `PYSENSOR_LOG_FORMAT=json` (for log pipelines), else text, coloured only on a terminal
/// (journald and `kubectl logs` would show the escape sequences) and not under `NO_COLOR`.
fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    let format = std::env::var(LOG_FORMAT_VARIABLE).unwrap_or_default();
    match format.as_str() {
        "json" => builder.json().init(),
        other => {
            let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            builder.with_ansi(colour).init();
            if !other.is_empty() && other != "text" {
                tracing::warn!(
                    variable = LOG_FORMAT_VARIABLE,
                    value = other,
                    "unknown log format (text or json); text used"
                );
            }
        }
    }
}

fn main() -> Result<()> {
    sensor::allocator::configure();
    let cli = Cli::parse();
    init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match cli.command {
        Command::Run(args) => runtime.block_on(on_worker(run(args))),
        Command::Attach(args) => runtime.block_on(on_worker(run(args.into()))),
        Command::Trace(args) => {
            let config = load_config(args.config.clone())?;
            // Payloads are shown redacted by the same configuration `run` would use.
            let rules = if args.payload {
                Some(StreamRules::from_config(&config).map_err(anyhow::Error::msg)?)
            } else {
                None
            };
            runtime.block_on(trace::run(
                &args.pids,
                args.payload.then_some(args.payload_bytes),
                rules,
                &capture_options(&config),
            ))
        }
        Command::Check(args) => {
            let capture = capture_options(&load_config(args.config.clone())?);
            let mut items = runtime.block_on(async {
                let mut items = check::run_checks(&capture);
                items.push(check::kubernetes_item().await);
                items
            });
            let proc_root = std::path::Path::new("/proc");
            items.extend(check::identity_items(proc_root, &args.pids));
            items.extend(check::openssl_items(proc_root, &args.pids));
            let mut failed = false;
            // Not println!, which panics when the reader left (`sensor check | head -3`).
            let mut stdout = std::io::stdout().lock();
            for item in &items {
                let _ = writeln!(
                    stdout,
                    "{:<22} {:<4} {}",
                    item.name,
                    if item.ok { "ok" } else { "FAIL" },
                    item.detail
                );
                failed |= !item.ok;
            }
            if failed {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

/// Runs the daemon as a task on the runtime's workers rather than on the main thread: the
/// worker that sees the ring buffer become readable then runs the reader itself, where
/// `block_on` would cost a second thread's wakeup for each drain.
async fn on_worker(
    daemon: impl std::future::Future<Output = Result<()>> + Send + 'static,
) -> Result<()> {
    tokio::spawn(daemon).await?
}

async fn run(args: RunArgs) -> Result<()> {
    let overrides = Overrides::from(&args);
    let loaded = config::load_from_process_env(&overrides)?;
    let config = loaded.config;
    if !config.enabled {
        tracing::warn!(
            "the sensor is disabled by configuration (enabled: false / HT_ENABLED=false)"
        );
        return Ok(());
    }
    let output = match config.export_target() {
        ExportTarget::Local(OutputKind::Jsonl) => Output::Stdout(StdoutFormat::Jsonl),
        ExportTarget::Local(OutputKind::Console) => Output::Stdout(StdoutFormat::Console),
        ExportTarget::Nothing => {
            tracing::warn!("trace reporter type NONE: captured exchanges are not exported");
            Output::Stdout(StdoutFormat::Console)
        }
        ExportTarget::Otlp { url, protocol } => {
            let mut settings = OtlpSettings::from_config(&config, url, protocol);
            if let Some(name) = &config.service_name {
                settings
                    .extra_resource
                    .insert("sensor.instance".into(), name.clone());
            }
            if let Some(token) = &config.reporting.token {
                settings
                    .headers
                    .entry("authorization".into())
                    .or_insert(format!("Bearer {token}"));
            }
            Output::Otlp(Box::new(settings))
        }
    };
    // Bodies are kept up to the processing limit and headers always: the policy stage redacts
    // whole bodies, truncates them and applies the capture switches per service.
    let http = sensor::redact::parser_settings(&config, HttpSettings::default());
    let sensor = &config.sensor;
    daemon::run(DaemonOptions {
        pids: args.pids,
        until_watched_exit: args.until_watched_exit,
        output,
        http,
        tracker: TrackerSettings {
            max_connections: sensor.max_connections,
            idle_timeout_ns: u64::try_from(sensor.idle_timeout().as_nanos()).unwrap_or(u64::MAX),
            response_timeout_ns: u64::try_from(sensor.response_timeout().as_nanos())
                .unwrap_or(u64::MAX),
        },
        policy: config.clone(),
        config_overrides: overrides,
        export_queue: sensor::export::queue::QueueLimits {
            records: sensor.export_queue_size.max(1024),
            bytes: sensor.export_queue_bytes,
        },
        metrics_addr: sensor.metrics_addr,
        capture: capture_options(&config),
    })
    .await
}

/// The configuration `run` would use (file, HT_CONFIG_FILE, HT_* and OTEL_* variables).
fn load_config(config_file: Option<std::path::PathBuf>) -> Result<config::Config> {
    let overrides = Overrides {
        config_file,
        ..Overrides::default()
    };
    Ok(config::load_from_process_env(&overrides)?.config)
}

/// How the configuration says to load the capture (`discover` is the daemon's to set).
fn capture_options(config: &config::Config) -> CaptureOptions {
    CaptureOptions {
        discover: false,
        ring_bytes: u32::try_from(config.sensor.ring_buffer_bytes).unwrap_or(u32::MAX),
        syscall_args_at_entry: config.sensor.syscall_arguments_at_entry,
    }
}
