//! The sensor daemon, one module per stage of the data flow:
//!
//! capture (kernel events) → conntrack (per-connection streams) → http (exchanges) →
//! enrich (process identity, service names) → redact → export (console, JSONL, OTLP).
//!
//! [`record`] is the exchange record every output is made from; [`config`] is the one
//! configuration schema (the Hypertrace agent's YAML, `HT_*` and `OTEL_*` variables).

pub mod allocator;
pub mod capture;
pub mod check;
pub mod cli;
pub mod config;
pub mod conntrack;
pub mod daemon;
pub mod enrich;
pub mod export;
pub mod http;
pub mod metrics;
pub mod overload;
pub mod ratelimit;
pub mod record;
pub mod redact;
pub mod trace;
