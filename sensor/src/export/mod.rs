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

use tokio::{
    io::{AsyncWrite, AsyncWriteExt as _},
    sync::Notify,
    task::JoinHandle,
};
use tracing::{info, warn};

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
    output_closed: Arc<Notify>,
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
        let (tx, rx) = queue::queue(limits);
        let stats = Arc::new(ExportStats::default());
        let output_closed = Arc::new(Notify::new());
        let task = tokio::spawn(write_records(
            rx,
            format,
            tokio::io::stdout(),
            stats.clone(),
            output_closed.clone(),
        ));
        Exporter {
            tx: Sender::Records(tx),
            task,
            stats,
            output_closed,
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

    /// Signalled once when the output is gone for good (stdout's reader exited, as when the
    /// sensor's output is piped into `head`), so the daemon stops as other programs would. An
    /// OTLP exporter never signals it: a collector that is away may come back.
    pub fn output_closed(&self) -> Arc<Notify> {
        self.output_closed.clone()
    }

    /// Closes the queue and waits until everything queued was written.
    pub async fn shutdown(self) {
        drop(self.tx);
        let _ = self.task.await;
    }
}

/// How often a failing output (a full disk under a redirected stdout) is warned about.
const WRITE_FAILURE_WARN_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Writes the queued records to `output` in batches of about 32 KiB until the queue closes.
/// A batch counts as exported once written and flushed (a buffered writer such as tokio's
/// stdout reports a write's failure at the flush); a failed one counts as failed, warned at
/// most every 10 s. When the reader of the pipe is gone, every later record counts as failed
/// without a write and `output_closed` is signalled once.
async fn write_records<W: AsyncWrite + Unpin>(
    mut rx: queue::QueueReceiver,
    format: StdoutFormat,
    mut output: W,
    stats: Arc<ExportStats>,
    output_closed: Arc<Notify>,
) {
    let mut buffer = Vec::with_capacity(64 * 1024);
    let mut closed = false;
    let mut failures = crate::ratelimit::RateLimit::new(WRITE_FAILURE_WARN_INTERVAL);
    while let Some(record) = rx.recv().await {
        if closed {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        buffer.clear();
        write_record(&mut buffer, format, &record);
        while buffer.len() < 32 * 1024 {
            match rx.try_recv() {
                Some(record) => write_record(&mut buffer, format, &record),
                None => break,
            }
        }
        let lines = buffer.iter().filter(|b| **b == b'\n').count() as u64;
        let written = match output.write_all(&buffer).await {
            Ok(()) => output.flush().await,
            Err(error) => Err(error),
        };
        match written {
            Ok(()) => {
                stats.exported.fetch_add(lines, Ordering::Relaxed);
            }
            Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => {
                stats.failed.fetch_add(lines, Ordering::Relaxed);
                info!("the reader of stdout is gone; stopping");
                closed = true;
                output_closed.notify_one();
            }
            Err(error) => {
                stats.failed.fetch_add(lines, Ordering::Relaxed);
                let now = crate::capture::Clock::monotonic_now();
                if let Some(failed_writes) = failures.hit(now, 1) {
                    warn!(%error, failed_writes, "writing records to stdout failed; records dropped");
                }
            }
        }
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

#[cfg(test)]
mod tests {
    use std::{
        collections::VecDeque,
        io::ErrorKind,
        pin::Pin,
        task::{Context, Poll},
        time::Duration,
    };

    use super::*;
    use crate::record::{Attributes, SpanKind};

    /// A writer whose flushes (as tokio's stdout reports a write's failure) and writes fail
    /// as scripted, one entry per call; it keeps what it was given.
    #[derive(Default)]
    struct ScriptedWriter {
        written: Vec<u8>,
        writes: VecDeque<Option<ErrorKind>>,
        flushes: VecDeque<Option<ErrorKind>>,
    }

    impl AsyncWrite for ScriptedWriter {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let this = self.get_mut();
            match this.writes.pop_front().flatten() {
                Some(kind) => Poll::Ready(Err(kind.into())),
                None => {
                    this.written.extend_from_slice(buf);
                    Poll::Ready(Ok(buf.len()))
                }
            }
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            match self.get_mut().flushes.pop_front().flatten() {
                Some(kind) => Poll::Ready(Err(kind.into())),
                None => Poll::Ready(Ok(())),
            }
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn record(name: &str) -> ExchangeRecord {
        ExchangeRecord {
            resource: Attributes::new(),
            name: name.to_owned(),
            kind: SpanKind::Server,
            start_time_unix_nano: 1,
            end_time_unix_nano: 2,
            attributes: Attributes::new(),
        }
    }

    /// Sends each record once the writer took the previous one, so each is its own batch;
    /// returns the writer, the stats and whether the output was signalled closed.
    async fn write_one_by_one(
        writer: ScriptedWriter,
        names: &[&str],
    ) -> (ScriptedWriter, Arc<ExportStats>, bool) {
        let limits = QueueLimits {
            records: 16,
            bytes: 1 << 20,
        };
        let (tx, rx) = queue::queue(limits);
        let stats = Arc::new(ExportStats::default());
        let closed = Arc::new(Notify::new());
        let (writer_tx, writer_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn({
            let (stats, closed) = (stats.clone(), closed.clone());
            async move {
                let mut writer = writer;
                write_records(rx, StdoutFormat::Jsonl, &mut writer, stats, closed).await;
                let _ = writer_tx.send(writer);
            }
        });
        for (sent, name) in names.iter().enumerate() {
            tx.try_send(record(name)).expect("queued");
            while stats.exported.load(Ordering::Relaxed) + stats.failed.load(Ordering::Relaxed)
                < sent as u64 + 1
            {
                tokio::task::yield_now().await;
            }
        }
        drop(tx);
        task.await.expect("writer task");
        let signalled = tokio::time::timeout(Duration::from_millis(10), closed.notified())
            .await
            .is_ok();
        (writer_rx.await.expect("writer back"), stats, signalled)
    }

    #[tokio::test]
    async fn a_closed_pipe_stops_the_writes_and_signals_the_daemon() {
        let writer = ScriptedWriter {
            flushes: [None, Some(ErrorKind::BrokenPipe)].into(),
            ..Default::default()
        };
        let (writer, stats, signalled) = write_one_by_one(writer, &["A", "B", "C", "D"]).await;
        assert!(signalled, "the daemon was not told the output is gone");
        assert_eq!(stats.exported.load(Ordering::Relaxed), 1);
        assert_eq!(stats.failed.load(Ordering::Relaxed), 3);
        let written = String::from_utf8(writer.written).expect("UTF-8");
        assert_eq!(
            written.lines().count(),
            2,
            "A, and B whose flush failed: {written}"
        );
        assert!(
            !written.contains("\"C\""),
            "written after the pipe closed: {written}"
        );
    }

    #[tokio::test]
    async fn other_write_failures_are_counted_and_writing_goes_on() {
        let writer = ScriptedWriter {
            writes: [None, Some(ErrorKind::StorageFull), None].into(),
            ..Default::default()
        };
        let (writer, stats, signalled) = write_one_by_one(writer, &["A", "B", "C"]).await;
        assert!(!signalled, "a full disk is not a closed output");
        assert_eq!(stats.exported.load(Ordering::Relaxed), 2);
        assert_eq!(stats.failed.load(Ordering::Relaxed), 1);
        let written = String::from_utf8(writer.written).expect("UTF-8");
        assert!(
            written.contains("\"A\"") && !written.contains("\"B\"") && written.contains("\"C\""),
            "{written}"
        );
    }
}
