//! `sensor check`: can this host and these privileges support capture? Each failed item names
//! its fix; the exit status is non-zero when capture cannot work.

use std::path::Path;

use crate::capture::{Capture, CaptureOptions, layout};

/// One preflight item.
#[derive(Debug)]
pub struct Item {
    /// What was checked.
    pub name: &'static str,
    /// Whether it is fine.
    pub ok: bool,
    /// What was found, or how to fix it.
    pub detail: String,
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// Runs every check.
pub fn run_checks() -> Vec<Item> {
    let mut items = vec![Item {
        name: "kernel",
        ok: true,
        detail: kernel_release(),
    }];
    let btf = Path::new("/sys/kernel/btf/vmlinux").exists();
    items.push(Item {
        name: "btf",
        ok: btf,
        detail: if btf {
            "/sys/kernel/btf/vmlinux present".into()
        } else {
            "missing: a kernel built with CONFIG_DEBUG_INFO_BTF=y is needed".into()
        },
    });
    let tracefs = layout::tracefs_root();
    items.push(Item {
        name: "tracefs",
        ok: tracefs.is_some(),
        detail: match &tracefs {
            Some(root) => format!("mounted at {}", root.display()),
            None => "not mounted; fix: mount -t tracefs tracefs /sys/kernel/tracing".into(),
        },
    });
    let syscalls = tracefs
        .as_ref()
        .is_some_and(|r| r.join("events/syscalls/sys_enter_read").is_dir());
    items.push(Item {
        name: "syscall tracepoints",
        ok: syscalls,
        detail: if syscalls {
            "syscalls:sys_enter_* available".into()
        } else {
            "missing: a kernel with CONFIG_FTRACE_SYSCALLS=y is needed".into()
        },
    });
    let uprobes = tracefs
        .as_ref()
        .is_some_and(|r| r.join("uprobe_events").exists())
        || Path::new("/sys/bus/event_source/devices/uprobe").exists();
    items.push(Item {
        name: "uprobes",
        ok: uprobes,
        detail: if uprobes {
            "available (TLS plaintext capture)".into()
        } else {
            "missing: a kernel with CONFIG_UPROBE_EVENTS=y is needed for HTTPS".into()
        },
    });
    match Capture::load(&CaptureOptions::default()) {
        Ok(_) => items.push(Item {
            name: "load and attach",
            ok: true,
            detail: "all programs verified and attached (ring buffer, maps, tracepoints)".into(),
        }),
        Err(error) => items.push(Item {
            name: "load and attach",
            ok: false,
            detail: format!(
                "{error:#}; fix: run as root, or with CAP_BPF, CAP_PERFMON, CAP_SYS_RESOURCE, \
                 CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH"
            ),
        }),
    }
    items
}
