//! Prometheus metrics: every counter of every stage (kernel losses, connection tracking, HTTP
//! reassembly, export), served as text on `/metrics`.
//!
//! Stages keep their own counters as plain numbers. They are read when someone asks: each
//! `GET /metrics` sends a [`Refresh`] to the daemon's loop, which publishes the current values
//! here ([`Metrics::publish`]) and answers; the counters advance by the difference. A sensor
//! nobody scrapes reads no counters (each kernel counter read is a `bpf()` call).

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result};
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, gauge::Gauge},
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
    sync::{mpsc, oneshot},
};
use tracing::{debug, info, warn};

use crate::ratelimit::RateLimit;

/// How long a scrape waits for the daemon to publish current values.
pub const REFRESH_WAIT: Duration = Duration::from_secs(1);

/// How long a health check waits for the daemon's loop to answer before it reports it stuck.
pub const HEALTH_WAIT: Duration = Duration::from_secs(5);

/// How long a scraper may take to send its request before the connection is dropped, so idle
/// connections cannot pile up.
const REQUEST_WAIT: Duration = Duration::from_secs(5);

/// How long the server waits after a failed accept (out of descriptors) before the next.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);

/// How often a failing accept is warned about.
const ACCEPT_FAILURE_WARN_INTERVAL: Duration = Duration::from_secs(10);

/// A scrape's request for current values: the daemon publishes them, then drops or answers
/// the sender.
pub struct Refresh(pub oneshot::Sender<()>);

/// The channel scrapes ask for current values on. Bounded: when it is full, a scrape serves
/// the values last published.
pub fn refresh_channel() -> (mpsc::Sender<Refresh>, mpsc::Receiver<Refresh>) {
    mpsc::channel(4)
}

/// The metric registry and the last published value of each counter and gauge.
pub struct Metrics {
    registry: Mutex<Registry>,
    counters: Mutex<BTreeMap<String, Counter>>,
    gauges: Mutex<BTreeMap<String, Gauge>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            registry: Mutex::new(Registry::with_prefix("pysensor")),
            counters: Mutex::new(BTreeMap::new()),
            gauges: Mutex::new(BTreeMap::new()),
        }
    }
}

impl Metrics {
    /// Sets counter `name` (a `_total` suffix is added on exposition) to `value`, registering it
    /// the first time; values only ever grow, a smaller one is ignored.
    pub fn publish(&self, name: &str, help: &str, value: u64) {
        let mut counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        let counter = counters.entry(name.to_owned()).or_insert_with(|| {
            let counter = Counter::default();
            self.registry
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .register(name, help, counter.clone());
            counter
        });
        let current = counter.get();
        if value > current {
            counter.inc_by(value - current);
        }
    }

    /// Sets gauge `name` (exposed without a suffix) to `value`, registering it the first time.
    /// Gauges carry levels that go up and down: connections tracked, bytes buffered, the
    /// overload level.
    pub fn set_gauge(&self, name: &str, help: &str, value: i64) {
        let mut gauges = self.gauges.lock().unwrap_or_else(|e| e.into_inner());
        let gauge = gauges.entry(name.to_owned()).or_insert_with(|| {
            let gauge = Gauge::default();
            self.registry
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .register(name, help, gauge.clone());
            gauge
        });
        gauge.set(value);
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut text = String::new();
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        if encode(&mut text, &registry).is_err() {
            text.clear();
        }
        text
    }

    /// Serves `GET /metrics` on `addr` until the process ends. Each scrape first asks the daemon
    /// to publish current values through `refresh` and waits for its answer up to
    /// [`REFRESH_WAIT`]; past that (the loop busy), the last published values are served.
    pub async fn serve(
        self: Arc<Self>,
        addr: SocketAddr,
        refresh: mpsc::Sender<Refresh>,
    ) -> Result<()> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the metrics address {addr}"))?;
        info!(address = %listener.local_addr()?, "serving Prometheus metrics on /metrics (and /healthz)");
        tokio::spawn(async move {
            let mut accept_failures = RateLimit::new(ACCEPT_FAILURE_WARN_INTERVAL);
            loop {
                let (mut stream, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of descriptors, say: it persists, so wait rather than spin.
                        let now = crate::capture::Clock::monotonic_now();
                        if let Some(failures) = accept_failures.hit(now, 1) {
                            warn!(%error, failures, "metrics server cannot accept a connection");
                        }
                        tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
                        continue;
                    }
                };
                let metrics = self.clone();
                let refresh = refresh.clone();
                tokio::spawn(async move {
                    let mut request = [0u8; 1024];
                    let n =
                        match tokio::time::timeout(REQUEST_WAIT, stream.read(&mut request)).await {
                            Ok(Ok(n)) => n,
                            Ok(Err(_)) | Err(_) => return,
                        };
                    let head = String::from_utf8_lossy(&request[..n]);
                    let response = respond(&head, &metrics, &refresh).await;
                    if let Err(error) = stream.write_all(response.as_bytes()).await {
                        debug!(%peer, %error, "metrics response not delivered");
                    }
                });
            }
        });
        Ok(())
    }
}

/// The answer to one request: `GET /metrics` (the page, with values the daemon publishes for
/// it within [`REFRESH_WAIT`], else the last ones), `GET /healthz` (200 when the daemon's loop
/// answers within [`HEALTH_WAIT`], else 503: what a liveness probe should read), else 404.
async fn respond(head: &str, metrics: &Metrics, refresh: &mpsc::Sender<Refresh>) -> String {
    if head.starts_with("GET /metrics") {
        let (done, published) = oneshot::channel();
        if refresh.try_send(Refresh(done)).is_ok() {
            let _ = tokio::time::timeout(REFRESH_WAIT, published).await;
        }
        answer(
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            &metrics.render(),
        )
    } else if head.starts_with("GET /healthz") {
        let (done, published) = oneshot::channel();
        let answered = tokio::time::timeout(HEALTH_WAIT, async {
            refresh.send(Refresh(done)).await.ok()?;
            published.await.ok()
        })
        .await
        .ok()
        .flatten()
        .is_some();
        if answered {
            answer("200 OK", "text/plain", "ok\n")
        } else {
            warn!(wait = ?HEALTH_WAIT, "health check: the daemon's loop did not answer");
            let body = format!("the daemon's loop did not answer within {HEALTH_WAIT:?}\n");
            answer("503 Service Unavailable", "text/plain", &body)
        }
    } else {
        answer("404 Not Found", "text/plain", "")
    }
}

/// A whole HTTP/1.1 response that closes the connection.
fn answer(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_follow_published_values() {
        let metrics = Metrics::default();
        metrics.publish("kernel_ringbuf_full", "records lost", 3);
        metrics.publish("kernel_ringbuf_full", "records lost", 10);
        metrics.publish("kernel_ringbuf_full", "records lost", 7);
        let text = metrics.render();
        assert!(
            text.contains("pysensor_kernel_ringbuf_full_total 10"),
            "{text}"
        );
        assert!(
            text.contains("# HELP pysensor_kernel_ringbuf_full records lost"),
            "{text}"
        );
    }

    /// One scrape over TCP: the page's body.
    async fn scrape(addr: SocketAddr) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let mut page = String::new();
        stream.read_to_string(&mut page).await.unwrap();
        page
    }

    /// A free loopback address for a server.
    fn free_addr() -> SocketAddr {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    }

    #[tokio::test]
    async fn a_scrape_serves_the_values_published_for_it() {
        let metrics = Arc::new(Metrics::default());
        let (refresh, mut requests) = refresh_channel();
        let addr = free_addr();
        metrics.clone().serve(addr, refresh).await.unwrap();
        let daemon = metrics.clone();
        tokio::spawn(async move {
            let mut scrapes = 0;
            while let Some(Refresh(published)) = requests.recv().await {
                scrapes += 1;
                daemon.publish("exchanges", "exchange records built", scrapes * 10);
                let _ = published.send(());
            }
        });
        assert!(scrape(addr).await.contains("pysensor_exchanges_total 10\n"));
        assert!(scrape(addr).await.contains("pysensor_exchanges_total 20\n"));
    }

    #[tokio::test]
    async fn a_scrape_nobody_refreshes_serves_the_last_values_after_the_wait() {
        let metrics = Arc::new(Metrics::default());
        metrics.publish("exchanges", "exchange records built", 7);
        // The daemon's loop is busy: the request is queued, never answered.
        let (refresh, _requests) = refresh_channel();
        let addr = free_addr();
        metrics.serve(addr, refresh).await.unwrap();
        let started = std::time::Instant::now();
        let page = scrape(addr).await;
        assert!(page.contains("pysensor_exchanges_total 7\n"), "{page}");
        assert!(
            started.elapsed() >= REFRESH_WAIT,
            "the scrape waited for a refresh"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_sends_nothing_is_dropped_after_the_wait() {
        let metrics = Arc::new(Metrics::default());
        let (refresh, _requests) = refresh_channel();
        let addr = free_addr();
        metrics.serve(addr, refresh).await.unwrap();
        let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut rest = Vec::new();
        // The clock is paused: it jumps to the server's deadline once everything waits.
        let read = tokio::time::timeout(2 * REQUEST_WAIT, idle.read_to_end(&mut rest)).await;
        assert!(
            matches!(read, Ok(Ok(0))),
            "the idle connection was closed with nothing sent: {read:?}"
        );
    }

    /// One request over TCP: the whole answer.
    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    }

    #[tokio::test(start_paused = true)]
    async fn health_is_whether_the_daemon_loop_answers() {
        let metrics = Arc::new(Metrics::default());
        let (refresh, mut requests) = refresh_channel();
        let addr = free_addr();
        metrics.serve(addr, refresh).await.unwrap();
        let answering = tokio::spawn(async move {
            if let Some(Refresh(published)) = requests.recv().await {
                let _ = published.send(());
            }
            // Then the loop is stuck: requests are taken and never answered.
            let mut held = Vec::new();
            while let Some(request) = requests.recv().await {
                held.push(request);
            }
        });
        let healthy = get(addr, "/healthz").await;
        assert!(
            healthy.starts_with("HTTP/1.1 200 OK\r\n") && healthy.ends_with("ok\n"),
            "{healthy}"
        );
        let stuck = get(addr, "/healthz").await;
        assert!(stuck.starts_with("HTTP/1.1 503 "), "{stuck}");
        assert!(get(addr, "/other").await.starts_with("HTTP/1.1 404 "));
        answering.abort();
    }

    #[test]
    fn gauges_go_up_and_down() {
        let metrics = Metrics::default();
        metrics.set_gauge("connections_tracked", "open connections", 12);
        metrics.set_gauge("connections_tracked", "open connections", 4);
        let text = metrics.render();
        assert!(text.contains("pysensor_connections_tracked 4\n"), "{text}");
        assert!(!text.contains("connections_tracked_total"), "{text}");
    }
}
