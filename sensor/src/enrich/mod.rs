//! Enrichment: who served or made each exchange (process identity, service name) and the
//! exchange record built from it.

pub mod process;
pub mod record;

pub use process::{ProcessInfo, ProcessTable};
pub use record::{RecordContext, build_record};

/// The host's name, for the `host.name` resource attribute.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}
