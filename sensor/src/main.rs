//! The `sensor` command: see `sensor --help`.

use anyhow::Result;
use clap::Parser as _;
use sensor::{
    check,
    cli::{Cli, Command, RunArgs},
    config::{self, ExportTarget, OutputKind, Overrides},
    conntrack::TrackerSettings,
    daemon::{self, DaemonOptions},
    export::StdoutFormat,
    http::HttpSettings,
    trace,
};
use tracing_subscriber::EnvFilter;

fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match cli.command {
        Command::Run(args) => runtime.block_on(run(args)),
        Command::Attach(args) => runtime.block_on(run(args.into())),
        Command::Trace(args) => runtime.block_on(trace::run(
            &args.pids,
            args.payload.then_some(args.payload_bytes),
        )),
        Command::Check(_) => {
            let items = runtime.block_on(async { check::run_checks() });
            let mut failed = false;
            for item in &items {
                println!(
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

async fn run(args: RunArgs) -> Result<()> {
    let loaded = config::load_from_process_env(&Overrides::from(&args))?;
    let config = loaded.config;
    if !config.enabled {
        tracing::warn!(
            "the sensor is disabled by configuration (enabled: false / HT_ENABLED=false)"
        );
        return Ok(());
    }
    let format = match config.export_target() {
        ExportTarget::Local(OutputKind::Jsonl) => StdoutFormat::Jsonl,
        ExportTarget::Local(OutputKind::Console) | ExportTarget::Nothing => StdoutFormat::Console,
        ExportTarget::Otlp { url, protocol } => {
            tracing::warn!(%url, %protocol, "OTLP export is not available in this build; printing to the console");
            StdoutFormat::Console
        }
    };
    let capture = &config.data_capture;
    let http = HttpSettings {
        body_max_size: usize::try_from(capture.body_max_size_bytes).unwrap_or(usize::MAX),
        allowed_content_types: capture.allowed_content_types.clone(),
        capture_request_headers: capture.http_headers.request,
        capture_response_headers: capture.http_headers.response,
        capture_request_body: capture.http_body.request,
        capture_response_body: capture.http_body.response,
        ..HttpSettings::default()
    };
    let sensor = &config.sensor;
    daemon::run(DaemonOptions {
        pids: args.pids,
        format,
        http,
        tracker: TrackerSettings {
            max_connections: sensor.max_connections,
            idle_timeout_ns: u64::try_from(sensor.idle_timeout().as_nanos()).unwrap_or(u64::MAX),
            response_timeout_ns: u64::try_from(sensor.response_timeout().as_nanos())
                .unwrap_or(u64::MAX),
        },
        redact_headers: capture.redact_headers.clone(),
        export_queue: sensor.export_queue_size.max(1024),
        metrics_addr: sensor.metrics_addr,
    })
    .await
}
