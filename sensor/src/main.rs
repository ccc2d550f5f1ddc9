//! The `sensor` command: see `sensor --help`.

use anyhow::Result;
use clap::Parser as _;
use sensor::{
    check,
    cli::{Cli, Command, OutputFormat, RunArgs},
    conntrack::TrackerSettings,
    daemon::{self, DaemonOptions},
    export::StdoutFormat,
    http::HttpSettings,
    redact::DEFAULT_REDACTED_HEADERS,
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
    let format = match args.output {
        Some(OutputFormat::Jsonl) => StdoutFormat::Jsonl,
        _ => StdoutFormat::Console,
    };
    daemon::run(DaemonOptions {
        pids: args.pids,
        format,
        http: HttpSettings::default(),
        tracker: TrackerSettings::default(),
        redact_headers: DEFAULT_REDACTED_HEADERS
            .iter()
            .map(|s| s.to_string())
            .collect(),
        export_queue: 8192,
    })
    .await
}
