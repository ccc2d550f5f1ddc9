//! The queue between the pipeline and an exporter, bounded both in records and in bytes: a
//! record count alone is no memory bound when records carry bodies (2,048 records with two
//! 128 KiB bodies each hold 512 MiB). A record that does not fit is refused at once; the
//! pipeline never waits.
//!
//! The queue carries records, or what an exporter makes of them on the pipeline's side (the
//! OTLP exporter's encoded spans: a record is encoded and freed on the thread that built it,
//! whose allocator then hands the same memory, still in the cache, to the next record).

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use tokio::sync::mpsc;

use crate::record::{AttributeValue, Attributes, ExchangeRecord};

/// Default of `sensor.export_queue_bytes`.
pub const DEFAULT_QUEUE_BYTES: usize = 64 * 1024 * 1024;

/// How much a queue may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueLimits {
    /// Most records waiting.
    pub records: usize,
    /// Most bytes waiting, as [`record_bytes`] counts them. A record larger than this alone
    /// is still taken when the queue is empty, so no size of record is refused forever.
    pub bytes: usize,
}

/// Why a record was not queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The queue holds its most records (or its exporter stopped).
    Records,
    /// The record's bytes would take the queue past its byte limit.
    Bytes,
}

/// A record (or what it became) in the queue with the bytes it was counted for.
struct Queued<T> {
    item: T,
    bytes: usize,
}

/// The pipeline's end of the queue.
pub struct QueueSender<T = ExchangeRecord> {
    tx: mpsc::Sender<Queued<T>>,
    held: Arc<AtomicUsize>,
    max_bytes: usize,
}

/// The exporter's end of the queue; taking an item frees its bytes.
pub struct QueueReceiver<T = ExchangeRecord> {
    rx: mpsc::Receiver<Queued<T>>,
    held: Arc<AtomicUsize>,
}

/// A queue bounded by `limits`.
pub fn queue<T>(limits: QueueLimits) -> (QueueSender<T>, QueueReceiver<T>) {
    let (tx, rx) = mpsc::channel(limits.records.max(1));
    let held = Arc::new(AtomicUsize::new(0));
    (
        QueueSender {
            tx,
            held: held.clone(),
            max_bytes: limits.bytes,
        },
        QueueReceiver { rx, held },
    )
}

impl QueueSender<ExchangeRecord> {
    /// Queues a record without waiting.
    pub fn try_send(&self, record: ExchangeRecord) -> Result<(), Refused> {
        self.try_send_with(record, |record| record)
    }
}

impl<T> QueueSender<T> {
    /// Queues what `make` turns a record into, without waiting; `make` runs only once the
    /// record has its place (counted by [`record_bytes`]), so a refused record costs nothing.
    pub fn try_send_with(
        &self,
        record: ExchangeRecord,
        make: impl FnOnce(ExchangeRecord) -> T,
    ) -> Result<(), Refused> {
        let bytes = record_bytes(&record);
        let reserved = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held == 0 || held.saturating_add(bytes) <= self.max_bytes)
                    .then(|| held.saturating_add(bytes))
            });
        if reserved.is_err() {
            return Err(Refused::Bytes);
        }
        match self.tx.try_reserve() {
            Ok(permit) => {
                permit.send(Queued {
                    item: make(record),
                    bytes,
                });
                Ok(())
            }
            Err(_) => {
                self.held.fetch_sub(bytes, Ordering::AcqRel);
                Err(Refused::Records)
            }
        }
    }

    /// Bytes the queue holds now.
    pub fn held_bytes(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }
}

impl<T> QueueReceiver<T> {
    /// The next item; `None` once the queue is closed and empty.
    pub async fn recv(&mut self) -> Option<T> {
        let queued = self.rx.recv().await?;
        Some(self.release(queued))
    }

    /// The next item if one is waiting.
    pub fn try_recv(&mut self) -> Option<T> {
        let queued = self.rx.try_recv().ok()?;
        Some(self.release(queued))
    }

    /// Refuses further records; those already queued can still be taken.
    pub fn close(&mut self) {
        self.rx.close();
    }

    /// Whether the queue is closed (the pipeline's end was dropped or [`Self::close`] called).
    pub fn is_closed(&self) -> bool {
        self.rx.is_closed()
    }

    fn release(&self, queued: Queued<T>) -> T {
        self.held.fetch_sub(queued.bytes, Ordering::AcqRel);
        queued.item
    }
}

/// The bytes a record holds, roughly: its strings (keys, values, name) plus a fixed cost per
/// attribute. Bodies dominate wherever this bound matters.
pub fn record_bytes(record: &ExchangeRecord) -> usize {
    /// Per attribute: the map node's share and the value's enum.
    const PER_ATTRIBUTE: usize = 48;
    fn attributes(attrs: &Attributes) -> usize {
        attrs
            .iter()
            .map(|(key, value)| {
                PER_ATTRIBUTE
                    + key.len()
                    + match value {
                        AttributeValue::String(text) => text.len(),
                        AttributeValue::Bool(_) | AttributeValue::Int(_) => 0,
                    }
            })
            .sum()
    }
    std::mem::size_of::<ExchangeRecord>()
        + record.name.len()
        + attributes(&record.resource)
        + attributes(&record.attributes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::SpanKind;

    fn record_with_body(body_len: usize) -> ExchangeRecord {
        let mut attributes = Attributes::new();
        attributes.insert(
            "http.request.body".into(),
            AttributeValue::String("x".repeat(body_len)),
        );
        attributes.insert("http.response.status_code".into(), AttributeValue::Int(200));
        ExchangeRecord {
            resource: Attributes::new(),
            name: "POST /echo".to_owned(),
            kind: SpanKind::Server,
            start_time_unix_nano: 1,
            end_time_unix_nano: 2,
            attributes,
        }
    }

    #[test]
    fn record_bytes_counts_strings_and_attributes() {
        let small = record_bytes(&record_with_body(0));
        assert_eq!(record_bytes(&record_with_body(1000)), small + 1000);
        assert!(small >= "POST /echo".len() + "http.request.body".len() + 2 * 48);
    }

    #[tokio::test]
    async fn a_record_past_the_byte_limit_is_refused_until_bytes_are_taken() {
        let one = record_bytes(&record_with_body(10_000));
        let (tx, mut rx) = queue(QueueLimits {
            records: 100,
            bytes: 2 * one + one / 2,
        });
        assert_eq!(tx.try_send(record_with_body(10_000)), Ok(()));
        assert_eq!(tx.try_send(record_with_body(10_000)), Ok(()));
        assert_eq!(tx.held_bytes(), 2 * one);
        assert_eq!(tx.try_send(record_with_body(10_000)), Err(Refused::Bytes));
        // A small record still fits beside them.
        assert_eq!(tx.try_send(record_with_body(0)), Ok(()));
        assert!(rx.recv().await.is_some());
        assert_eq!(tx.try_send(record_with_body(10_000)), Ok(()));
        while rx.try_recv().is_some() {}
        assert_eq!(tx.held_bytes(), 0);
    }

    #[test]
    fn an_empty_queue_takes_a_record_larger_than_its_byte_limit() {
        let (tx, _rx) = queue(QueueLimits {
            records: 10,
            bytes: 100,
        });
        assert_eq!(tx.try_send(record_with_body(5000)), Ok(()));
        assert_eq!(tx.try_send(record_with_body(0)), Err(Refused::Bytes));
    }

    #[test]
    fn the_record_limit_refuses_and_gives_the_bytes_back() {
        let (tx, _rx) = queue(QueueLimits {
            records: 1,
            bytes: usize::MAX,
        });
        assert_eq!(tx.try_send(record_with_body(10)), Ok(()));
        let held = tx.held_bytes();
        assert_eq!(tx.try_send(record_with_body(10)), Err(Refused::Records));
        assert_eq!(tx.held_bytes(), held);
    }

    #[tokio::test]
    async fn a_closed_queue_refuses_and_still_yields_what_it_holds() {
        let (tx, mut rx) = queue(QueueLimits {
            records: 4,
            bytes: usize::MAX,
        });
        assert_eq!(tx.try_send(record_with_body(1)), Ok(()));
        rx.close();
        assert!(rx.is_closed());
        assert_eq!(tx.try_send(record_with_body(1)), Err(Refused::Records));
        assert!(rx.recv().await.is_some());
        drop(tx);
        assert!(rx.recv().await.is_none());
    }
}
