//! Export: where exchange records go. Console and JSONL write to stdout; the OTLP exporter
//! sends spans to a backend. Every exporter sits behind a queue bounded in records and in
//! bytes: the pipeline never waits for an output, and what a full queue refuses is counted.

pub mod console;
pub mod otlp;
pub mod queue;

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use tokio::{io::AsyncWriteExt as _, task::JoinHandle};
use tracing::warn;

use self::queue::{QueueLimits, QueueSender, Refused};
use crate::record::ExchangeRecord;

/// Local addresses of the connections the exporters opened: a watched process receiving one of
/// them is the sensor's own export traffic, which is never captured.
static OWN_CONNECTIONS: std::sync::LazyLock<
    std::sync::Mutex<std::collections::HashSet<std::net::SocketAddr>>,
> = std::sync::LazyLock::new(Default::default);

/// Remembers the local address of a connection an exporter opened.
pub fn register_own_connection(local: std::net::SocketAddr) {
    let mut own = OWN_CONNECTIONS.lock().unwrap_or_else(|e| e.into_inner());
    if own.len() >= 4096 {
        own.clear();
    }
    own.insert(local);
}

/// Whether `addr` is the local end of a connection an exporter opened.
pub fn is_own_connection(addr: std::net::SocketAddr) -> bool {
    OWN_CONNECTIONS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains(&addr)
}

/// How records are written to stdout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StdoutFormat {
    /// One readable line per exchange.
    Console,
    /// One JSON record per line.
    Jsonl,
}

/// Counters of an exporter.
#[derive(Debug, Default)]
pub struct ExportStats {
    /// Records accepted into the queue.
    pub queued: AtomicU64,
    /// Records refused because the queue was full (in records or in bytes).
    pub dropped_queue_full: AtomicU64,
    /// Of those, the records refused because the queue held its most bytes.
    pub dropped_queue_bytes: AtomicU64,
    /// Records written or delivered.
    pub exported: AtomicU64,
    /// Records that failed to be written or delivered.
    pub failed: AtomicU64,
}

/// A running exporter: a queue and the task that drains it.
pub struct Exporter {
    tx: Sender,
    task: JoinHandle<()>,
    stats: Arc<ExportStats>,
}

/// The pipeline's end of an exporter's queue.
enum Sender {
    /// Records, written as they are (stdout).
    Records(QueueSender),
    /// OTLP spans, encoded on the pipeline's side in this protocol before they are queued.
    Spans(QueueSender<otlp::PendingSpan>, crate::config::Protocol),
}

impl Exporter {
    /// Starts a stdout exporter behind a queue bounded by `limits`.
    pub fn stdout(format: StdoutFormat, limits: QueueLimits) -> Self {
        let (tx, mut rx) = queue::queue(limits);
        let stats = Arc::new(ExportStats::default());
        let task_stats = stats.clone();
        let task = tokio::spawn(async move {
            let mut stdout = tokio::io::stdout();
            let mut buffer = Vec::with_capacity(64 * 1024);
            while let Some(record) = rx.recv().await {
                buffer.clear();
                write_record(&mut buffer, format, &record);
                while buffer.len() < 32 * 1024 {
                    match rx.try_recv() {
                        Some(record) => write_record(&mut buffer, format, &record),
                        None => break,
                    }
                }
                let lines = buffer.iter().filter(|b| **b == b'\n').count() as u64;
                match stdout.write_all(&buffer).await {
                    Ok(()) => {
                        let _ = stdout.flush().await;
                        task_stats.exported.fetch_add(lines, Ordering::Relaxed);
                    }
                    Err(error) => {
                        task_stats.failed.fetch_add(lines, Ordering::Relaxed);
                        warn!(%error, "writing records to stdout failed");
                    }
                }
            }
        });
        Exporter {
            tx: Sender::Records(tx),
            task,
            stats,
        }
    }

    /// Queues a record without waiting; a full queue drops it (counted).
    pub fn send(&self, record: ExchangeRecord) {
        let sent = match &self.tx {
            Sender::Records(tx) => tx.try_send(record),
            Sender::Spans(tx, protocol) => {
                tx.try_send_with(record, |record| otlp::PendingSpan::new(*protocol, record))
            }
        };
        match sent {
            Ok(()) => {
                self.stats.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(refused) => {
                self.stats
                    .dropped_queue_full
                    .fetch_add(1, Ordering::Relaxed);
                if refused == Refused::Bytes {
                    self.stats
                        .dropped_queue_bytes
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Bytes of records waiting in the queue.
    pub fn queued_bytes(&self) -> usize {
        match &self.tx {
            Sender::Records(tx) => tx.held_bytes(),
            Sender::Spans(tx, _) => tx.held_bytes(),
        }
    }

    /// The exporter's counters.
    pub fn stats(&self) -> Arc<ExportStats> {
        self.stats.clone()
    }

    /// Closes the queue and waits until everything queued was written.
    pub async fn shutdown(self) {
        drop(self.tx);
        let _ = self.task.await;
    }
}

fn write_record(buffer: &mut Vec<u8>, format: StdoutFormat, record: &ExchangeRecord) {
    match format {
        StdoutFormat::Jsonl => {
            if serde_json::to_writer(&mut *buffer, record).is_ok() {
                buffer.push(b'\n');
            }
        }
        StdoutFormat::Console => {
            buffer.extend_from_slice(console::line(record).as_bytes());
            buffer.push(b'\n');
        }
    }
}
