//! OTLP span export: exchange records become OTLP spans, sent to a collector over gRPC,
//! HTTP/protobuf or HTTP/JSON by our own client behind our own queue.
//!
//! * One ResourceSpans per process (the record's resource, the configured extra attributes and
//!   `telemetry.sdk.*`), one ScopeSpans (`pysensor`) in each.
//! * Span ids are random unless the record carries `sensor.trace_id`, `sensor.span_id` and
//!   `sensor.parent_span_id` (hex); those are used and not exported as attributes.
//! * Status ERROR for server spans answered with 5xx and client spans answered with 4xx or 5xx,
//!   with `error.type` set to the status code.
//! * Delivery: a bounded queue (full → the new record is dropped and counted), batches bounded
//!   by encoded size and by time, retries with exponential backoff while the collector is
//!   unavailable, and on shutdown a flush of everything queued until a deadline.

mod batch;
mod convert;
mod json;
mod proto;
mod transport;

#[cfg(test)]
mod tests;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use tokio::time::{Instant, sleep_until};
use tracing::{debug, info, warn};

pub use convert::{
    PARENT_SPAN_ID_ATTRIBUTE, SCOPE_NAME, SDK_LANGUAGE, SDK_NAME, SDK_VERSION, SPAN_ID_ATTRIBUTE,
    TRACE_ID_ATTRIBUTE,
};

pub use self::batch::PendingSpan;
use self::{
    batch::{Added, Batch, Sizer},
    transport::{Outcome, Payload, Transport},
};
use super::{
    ExportStats, Exporter,
    queue::{QueueLimits, QueueReceiver},
};
use crate::config::{Config, Protocol};

/// First wait before a failed request is sent again.
const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between two attempts (unless the collector asks for more with Retry-After).
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Default of [`OtlpSettings::request_timeout`].
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a retrying exporter looks whether it is being shut down.
const CLOSE_POLL: Duration = Duration::from_millis(50);
/// Default of [`OtlpSettings::shutdown_timeout`].
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything the OTLP exporter needs to know.
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpSettings {
    /// The final URL: for HTTP the full traces URL (with `/v1/traces`), for gRPC the
    /// collector's address; `https://` means TLS.
    pub url: String,
    /// The wire protocol.
    pub protocol: Protocol,
    /// Headers (gRPC metadata) sent with every request.
    pub headers: BTreeMap<String, String>,
    /// PEM file of the CA certificates that verify the collector (instead of the system's).
    pub ca_file: Option<PathBuf>,
    /// Most spans waiting in the queue; beyond it new records are dropped.
    pub queue_size: usize,
    /// Most bytes of records waiting in the queue; beyond it new records are dropped.
    pub queue_bytes: usize,
    /// Largest encoded request; a span that alone exceeds it is dropped.
    pub batch_max_bytes: usize,
    /// Longest time a span waits for its batch to fill.
    pub batch_timeout: Duration,
    /// How long [`Exporter::shutdown`] keeps trying to deliver what is queued.
    pub shutdown_timeout: Duration,
    /// Longest time one request may take; a request that takes longer is abandoned and
    /// sent again (a collector that accepts connections but stops answering).
    pub request_timeout: Duration,
    /// Resource attributes added to every process's resource (the record's own win).
    pub extra_resource: BTreeMap<String, String>,
}

impl OtlpSettings {
    /// Settings for sending to `url` with `protocol` (as given by
    /// [`Config::export_target`]): headers, CA file, queue and batch limits from the
    /// configuration, its `resource_attributes` as extra resource, the default shutdown
    /// timeout. Callers add further resource attributes (e.g. `sensor.instance`) themselves.
    pub fn from_config(config: &Config, url: String, protocol: Protocol) -> OtlpSettings {
        OtlpSettings {
            url,
            protocol,
            headers: config.reporting.headers.clone(),
            ca_file: config.reporting.cert_file.clone(),
            queue_size: config.sensor.export_queue_size,
            queue_bytes: config.sensor.export_queue_bytes,
            batch_max_bytes: config.sensor.batch_max_bytes,
            batch_timeout: config.sensor.batch_timeout(),
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            extra_resource: config.resource_attributes.clone(),
        }
    }
}

/// Counters only the OTLP exporter has (the common ones are in [`ExportStats`]).
#[derive(Debug, Default)]
pub struct OtlpStats {
    /// Requests sent (every attempt).
    pub requests: AtomicU64,
    /// Attempts that failed in a retryable way and were retried.
    pub retries: AtomicU64,
    /// Spans dropped because alone they exceed the batch size limit (also in `failed`).
    pub dropped_too_large: AtomicU64,
    /// Spans the collector accepted the request of but said it rejected (also in `failed`).
    pub rejected: AtomicU64,
}

impl Exporter {
    /// Starts an OTLP exporter; fails on a malformed URL, header or CA file, or when called
    /// outside a tokio runtime. Connects lazily: an unreachable collector is not an error here.
    pub fn otlp(settings: OtlpSettings) -> anyhow::Result<Exporter> {
        Ok(Self::otlp_with_stats(settings)?.0)
    }

    /// As [`Exporter::otlp`], also returning the OTLP-only counters.
    pub fn otlp_with_stats(settings: OtlpSettings) -> anyhow::Result<(Exporter, Arc<OtlpStats>)> {
        tokio::runtime::Handle::try_current()
            .context("the OTLP exporter must be started inside a tokio runtime")?;
        let transport = Transport::new(&settings)?;
        let protocol = settings.protocol;
        let (tx, rx) = super::queue::queue(QueueLimits {
            records: settings.queue_size,
            bytes: settings.queue_bytes,
        });
        let stats = Arc::new(ExportStats::default());
        let otlp_stats = Arc::new(OtlpStats::default());
        info!(
            url = %settings.url,
            protocol = %settings.protocol,
            queue_size = settings.queue_size,
            queue_bytes = settings.queue_bytes,
            batch_max_bytes = settings.batch_max_bytes,
            "OTLP exporter started"
        );
        let worker = Worker {
            transport,
            sizer: Sizer::new(settings.protocol, settings.extra_resource),
            max_bytes: settings.batch_max_bytes,
            batch_timeout: settings.batch_timeout,
            shutdown_timeout: settings.shutdown_timeout,
            request_timeout: settings.request_timeout,
            deadline: None,
            failing: false,
            last_refusal: None,
            stats: stats.clone(),
            otlp: otlp_stats.clone(),
        };
        let task = tokio::spawn(worker.run(rx));
        Ok((
            Exporter {
                tx: super::Sender::Spans(tx, protocol),
                task,
                stats,
                output_closed: Arc::new(tokio::sync::Notify::new()),
            },
            otlp_stats,
        ))
    }
}

/// The task behind the queue: batches spans and delivers them one request at a time.
///
/// While a request is retried no new record is taken from the queue, so what waits is at
/// most the queue (bounded in records and bytes) plus the batch in flight.
struct Worker {
    transport: Transport,
    sizer: Sizer,
    max_bytes: usize,
    batch_timeout: Duration,
    shutdown_timeout: Duration,
    request_timeout: Duration,
    /// Set once the queue is closed: when to give up delivering.
    deadline: Option<Instant>,
    /// Whether the last attempt failed (to log the change, not every retry).
    failing: bool,
    /// Why the collector last refused a batch (to log each new reason once at warn level).
    last_refusal: Option<String>,
    stats: Arc<ExportStats>,
    otlp: Arc<OtlpStats>,
}

impl Worker {
    async fn run(mut self, mut rx: QueueReceiver<PendingSpan>) {
        let mut carry: Option<(PendingSpan, Instant)> = None;
        loop {
            let (first, since) = match carry.take() {
                Some(carried) => carried,
                None => match rx.recv().await {
                    Some(pending) => (pending, Instant::now()),
                    None => break,
                },
            };
            let mut batch = Batch::new(&self.sizer, self.max_bytes);
            self.add(&mut batch, first, &mut carry);
            let flush_at = since + self.batch_timeout;
            while carry.is_none() {
                let next = tokio::select! {
                    biased;
                    record = rx.recv() => record,
                    () = sleep_until(flush_at) => break,
                };
                let Some(pending) = next else {
                    self.closing();
                    break;
                };
                self.add(&mut batch, pending, &mut carry);
            }
            if !batch.is_empty() {
                self.deliver(batch, &rx).await;
            }
            if self.deadline_passed() {
                self.abandon(carry.take(), &mut rx);
                break;
            }
        }
        info!(
            exported = self.stats.exported.load(Ordering::Relaxed),
            failed = self.stats.failed.load(Ordering::Relaxed),
            dropped_queue_full = self.stats.dropped_queue_full.load(Ordering::Relaxed),
            retries = self.otlp.retries.load(Ordering::Relaxed),
            "OTLP exporter stopped"
        );
    }

    fn add(
        &mut self,
        batch: &mut Batch,
        pending: PendingSpan,
        carry: &mut Option<(PendingSpan, Instant)>,
    ) {
        match batch.add(&mut self.sizer, pending) {
            Added::Yes => {}
            Added::Full(pending) => *carry = Some((*pending, Instant::now())),
            Added::TooLarge => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                self.otlp.dropped_too_large.fetch_add(1, Ordering::Relaxed);
                warn!(
                    batch_max_bytes = self.max_bytes,
                    "span larger than the export size limit dropped"
                );
            }
        }
    }

    /// The queue was closed: start the shutdown deadline.
    fn closing(&mut self) {
        if self.deadline.is_none() {
            debug!(timeout = ?self.shutdown_timeout, "OTLP exporter flushing before shutdown");
            self.deadline = Some(Instant::now() + self.shutdown_timeout);
        }
    }

    fn deadline_passed(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Counts everything still waiting as failed (shutdown deadline passed).
    fn abandon(
        &mut self,
        carry: Option<(PendingSpan, Instant)>,
        rx: &mut QueueReceiver<PendingSpan>,
    ) {
        let mut left = u64::from(carry.is_some());
        rx.close();
        while rx.try_recv().is_some() {
            left += 1;
        }
        if left > 0 {
            self.stats.failed.fetch_add(left, Ordering::Relaxed);
            warn!(
                spans = left,
                "OTLP shutdown deadline passed; queued spans dropped"
            );
        }
    }

    /// Sends a batch until it is accepted, refused, or the shutdown deadline passes.
    async fn deliver(&mut self, batch: Batch, rx: &QueueReceiver<PendingSpan>) {
        let spans = batch.len() as u64;
        let estimate = batch.size();
        let payload = self.transport.payload(batch.into_parts(&self.sizer));
        if payload.len() > self.max_bytes {
            warn!(
                bytes = payload.len(),
                estimate,
                limit = self.max_bytes,
                "OTLP request larger than the batch size limit"
            );
        }
        let mut backoff = INITIAL_BACKOFF;
        loop {
            if self.deadline_passed() {
                self.stats.failed.fetch_add(spans, Ordering::Relaxed);
                warn!(spans, "OTLP shutdown deadline passed; batch dropped");
                return;
            }
            self.otlp.requests.fetch_add(1, Ordering::Relaxed);
            match self.attempt(&payload, rx).await {
                Outcome::Accepted { rejected, message } => {
                    let rejected = rejected.min(spans);
                    self.stats
                        .exported
                        .fetch_add(spans - rejected, Ordering::Relaxed);
                    if rejected > 0 {
                        self.stats.failed.fetch_add(rejected, Ordering::Relaxed);
                        self.otlp.rejected.fetch_add(rejected, Ordering::Relaxed);
                        warn!(rejected, %message, "the collector rejected some spans");
                    } else if !message.is_empty() {
                        debug!(%message, "the collector accepted the spans with a warning");
                    }
                    if self.failing {
                        self.failing = false;
                        info!("OTLP export works again");
                    }
                    debug!(spans, bytes = payload.len(), "OTLP batch delivered");
                    return;
                }
                Outcome::Fail { reason } => {
                    self.stats.failed.fetch_add(spans, Ordering::Relaxed);
                    if self.last_refusal.as_deref() == Some(reason.as_str()) {
                        debug!(spans, %reason, "the collector refused a batch; spans dropped");
                    } else {
                        warn!(spans, %reason, "the collector refused a batch; spans dropped");
                        self.last_refusal = Some(reason);
                    }
                    return;
                }
                Outcome::Retry { reason, after } => {
                    if self.deadline_passed() {
                        continue;
                    }
                    self.otlp.retries.fetch_add(1, Ordering::Relaxed);
                    let delay = after.unwrap_or(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    if self.failing {
                        debug!(%reason, ?delay, "OTLP export still failing; retrying");
                    } else {
                        self.failing = true;
                        warn!(%reason, ?delay, "OTLP export failed; retrying");
                    }
                    self.pause(delay, rx).await;
                }
            }
        }
    }

    /// One request, bounded by the request timeout and the shutdown deadline.
    async fn attempt(&mut self, payload: &Payload, rx: &QueueReceiver<PendingSpan>) -> Outcome {
        let started = Instant::now();
        let send = self.transport.send(payload);
        tokio::pin!(send);
        loop {
            let mut limit = started + self.request_timeout;
            if let Some(deadline) = self.deadline {
                limit = limit.min(deadline);
            }
            tokio::select! {
                outcome = &mut send => return outcome,
                () = sleep_until(limit) => {
                    return Outcome::Retry {
                        reason: "request timed out".to_owned(),
                        after: None,
                    };
                }
                () = wait_closed(rx), if self.deadline.is_none() => {
                    debug!(timeout = ?self.shutdown_timeout, "OTLP exporter flushing before shutdown");
                    self.deadline = Some(Instant::now() + self.shutdown_timeout);
                }
            }
        }
    }

    /// Waits before the next attempt; returns early when shutdown begins.
    async fn pause(&mut self, delay: Duration, rx: &QueueReceiver<PendingSpan>) {
        let mut wake = Instant::now() + delay;
        if let Some(deadline) = self.deadline {
            wake = wake.min(deadline);
        }
        tokio::select! {
            () = sleep_until(wake) => {}
            () = wait_closed(rx), if self.deadline.is_none() => self.closing(),
        }
    }
}

/// Resolves once every sender of the queue is gone.
async fn wait_closed(rx: &QueueReceiver<PendingSpan>) {
    while !rx.is_closed() {
        tokio::time::sleep(CLOSE_POLL).await;
    }
}
