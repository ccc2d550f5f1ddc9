//! Prometheus metrics: every counter of every stage (kernel losses, connection tracking, HTTP
//! reassembly, export), served as text on `/metrics`.
//!
//! Stages keep their own counters as plain numbers; the daemon publishes their current values
//! here periodically ([`Metrics::publish`]), and the counters advance by the difference.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
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
};
use tracing::{debug, info};

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

    /// Serves `GET /metrics` on `addr` until the process ends.
    pub async fn serve(self: Arc<Self>, addr: SocketAddr) -> Result<()> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the metrics address {addr}"))?;
        info!(address = %listener.local_addr()?, "serving Prometheus metrics on /metrics");
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, peer)) = listener.accept().await else {
                    continue;
                };
                let metrics = self.clone();
                tokio::spawn(async move {
                    let mut request = [0u8; 1024];
                    let n = match stream.read(&mut request).await {
                        Ok(n) => n,
                        Err(_) => return,
                    };
                    let head = String::from_utf8_lossy(&request[..n]);
                    let response = if head.starts_with("GET /metrics") {
                        let body = metrics.render();
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        )
                    } else {
                        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            .to_owned()
                    };
                    if let Err(error) = stream.write_all(response.as_bytes()).await {
                        debug!(%peer, %error, "metrics response not delivered");
                    }
                });
            }
        });
        Ok(())
    }
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
