//! Enrichment: who served or made each exchange (process identity, container and pod, service
//! name) and the exchange record built from it.

pub mod container;
pub mod context;
pub mod kubernetes;
pub mod process;
pub mod record;
pub mod selectors;

pub use process::{ProcessInfo, ProcessTable};
pub use record::{RecordContext, build_record};

/// The host's name, for the `host.name` resource attribute: the node's name in a Kubernetes
/// DaemonSet (`K8S_NODE_NAME`, set from `spec.nodeName`; the pod's own hostname is the pod's
/// name), else the kernel's hostname.
pub fn host_name() -> String {
    if let Some(node) = std::env::var("K8S_NODE_NAME")
        .ok()
        .filter(|n| !n.trim().is_empty())
    {
        return node.trim().to_owned();
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}
