//! `sensor check`: can this host and these privileges support capture? Each failed item names
//! its fix; the exit status is non-zero when capture cannot work.
//!
//! The capabilities needed are those of `deploy/capabilities.txt`, the same list the Kubernetes
//! manifests, the systemd unit and the end-to-end test that proves the set are checked against.

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

impl Item {
    fn new(name: &'static str, ok: bool, detail: impl Into<String>) -> Self {
        Item {
            name,
            ok,
            detail: detail.into(),
        }
    }
}

/// The documented capability set (`deploy/capabilities.txt`), embedded at build time.
pub const CAPABILITIES_FILE: &str = include_str!("../../deploy/capabilities.txt");

/// A capability the sensor needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Needed {
    /// Its name, `CAP_BPF`.
    pub name: String,
    /// What the sensor uses it for.
    pub reason: String,
}

/// The capabilities the sensor needs, from `deploy/capabilities.txt` (`NAME  # reason` lines).
pub fn needed_capabilities() -> Vec<Needed> {
    parse_capabilities(CAPABILITIES_FILE)
}

/// Parses the `deploy/capabilities.txt` format: one `CAP_NAME  # reason` a line, `#` comments.
pub fn parse_capabilities(text: &str) -> Vec<Needed> {
    text.lines()
        .filter_map(|line| {
            let (name, reason) = line.split_once('#').unwrap_or((line, ""));
            let name = name.trim();
            (!name.is_empty()).then(|| Needed {
                name: name.to_owned(),
                reason: reason.trim().to_owned(),
            })
        })
        .collect()
}

/// Capability numbers of `linux/capability.h` the check knows by name.
const CAPABILITY_NUMBERS: &[(&str, u32)] = &[
    ("CAP_CHOWN", 0),
    ("CAP_DAC_OVERRIDE", 1),
    ("CAP_DAC_READ_SEARCH", 2),
    ("CAP_FOWNER", 3),
    ("CAP_KILL", 5),
    ("CAP_SETGID", 6),
    ("CAP_SETUID", 7),
    ("CAP_NET_BIND_SERVICE", 10),
    ("CAP_NET_ADMIN", 12),
    ("CAP_NET_RAW", 13),
    ("CAP_IPC_LOCK", 14),
    ("CAP_SYS_MODULE", 16),
    ("CAP_SYS_PTRACE", 19),
    ("CAP_SYS_ADMIN", 21),
    ("CAP_SYS_RESOURCE", 24),
    ("CAP_SYSLOG", 34),
    ("CAP_PERFMON", 38),
    ("CAP_BPF", 39),
    ("CAP_CHECKPOINT_RESTORE", 40),
];

/// The number of a capability name (`CAP_BPF` → 39).
pub fn capability_number(name: &str) -> Option<u32> {
    CAPABILITY_NUMBERS
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, number)| *number)
}

/// Broader capabilities the kernel also accepts in place of one: CAP_SYS_ADMIN for CAP_BPF and
/// CAP_PERFMON (their pre-5.8 form), CAP_DAC_OVERRIDE for CAP_DAC_READ_SEARCH.
fn alternatives(name: &str) -> &'static [&'static str] {
    match name {
        "CAP_BPF" | "CAP_PERFMON" => &["CAP_SYS_ADMIN"],
        "CAP_DAC_READ_SEARCH" => &["CAP_DAC_OVERRIDE"],
        _ => &[],
    }
}

/// The effective capability mask in a `/proc/PID/status` text (`CapEff:`).
pub fn effective_capabilities(status: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let hex = line.strip_prefix("CapEff:")?.trim();
        u64::from_str_radix(hex, 16).ok()
    })
}

/// Whether a capability (or something the kernel accepts instead) is in `mask`.
pub fn holds(mask: u64, name: &str) -> bool {
    std::iter::once(name)
        .chain(alternatives(name).iter().copied())
        .filter_map(capability_number)
        .any(|bit| mask & (1u64 << bit) != 0)
}

/// The needed capabilities missing from `mask`.
pub fn missing_capabilities(mask: u64, needed: &[Needed]) -> Vec<Needed> {
    needed
        .iter()
        .filter(|n| !holds(mask, &n.name))
        .cloned()
        .collect()
}

/// The `capabilities` item: held (`CapEff`) against needed.
pub fn capabilities_item(status: &str, needed: &[Needed]) -> Item {
    let Some(mask) = effective_capabilities(status) else {
        return Item::new(
            "capabilities",
            false,
            "cannot read CapEff from /proc/self/status",
        );
    };
    let names: Vec<&str> = needed.iter().map(|n| n.name.as_str()).collect();
    let missing = missing_capabilities(mask, needed);
    if missing.is_empty() {
        return Item::new(
            "capabilities",
            true,
            format!(
                "CapEff {mask:016x} holds every needed one: {}",
                names.join(" ")
            ),
        );
    }
    let what: Vec<String> = missing
        .iter()
        .map(|m| format!("{} ({})", m.name, m.reason))
        .collect();
    Item::new(
        "capabilities",
        false,
        format!(
            "missing {}; CapEff {mask:016x}, needed: {}; fix: grant them (Kubernetes: \
             securityContext.capabilities.add; systemd: AmbientCapabilities=; or run as root)",
            what.join(", "),
            names.join(" ")
        ),
    )
}

/// `major.minor` of a kernel release string (`6.1.0-18-amd64` → (6, 1)).
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

fn kernel_item() -> Item {
    let release = kernel_release();
    match kernel_version(&release) {
        Some(version) if version >= (5, 8) => Item::new(
            "kernel",
            true,
            format!("{release} (5.8+ needed for the BPF ring buffer and CAP_BPF; 5.15+ tested)"),
        ),
        Some(_) => Item::new(
            "kernel",
            false,
            format!(
                "{release} is too old: the BPF ring buffer and CAP_BPF need 5.8+; fix: a 5.15+ \
                 kernel with BTF"
            ),
        ),
        None => Item::new(
            "kernel",
            false,
            format!("cannot read the kernel version ({release})"),
        ),
    }
}

fn btf_item() -> Item {
    // The programs use no CO-RE relocations (tracepoint layouts come from tracefs), so BTF is
    // reported, not required.
    if Path::new("/sys/kernel/btf/vmlinux").exists() {
        Item::new("btf", true, "/sys/kernel/btf/vmlinux present")
    } else {
        Item::new(
            "btf",
            true,
            "/sys/kernel/btf/vmlinux absent (not required: tracepoint layouts are read from \
             tracefs)",
        )
    }
}

fn tracefs_item(root: Option<&Path>) -> Item {
    let Some(root) = root else {
        return Item::new(
            "tracefs",
            false,
            "not mounted; fix: mount -t tracefs tracefs /sys/kernel/tracing (in a container, \
             mount the host's /sys/kernel/tracing)",
        );
    };
    let probe = root.join("events/sched/sched_process_exec/format");
    match std::fs::read_to_string(&probe) {
        Ok(_) => Item::new("tracefs", true, format!("mounted at {}", root.display())),
        Err(error) => Item::new(
            "tracefs",
            false,
            format!(
                "mounted at {} but {} is unreadable ({error}); fix: run as uid 0 (tracefs is \
                 root's, mode 0700)",
                root.display(),
                probe.display()
            ),
        ),
    }
}

fn bpffs_item() -> Item {
    let mounted = std::fs::read_to_string("/proc/self/mounts").is_ok_and(|mounts| {
        mounts
            .lines()
            .any(|l| l.split_whitespace().nth(2) == Some("bpf"))
    });
    Item::new(
        "bpffs",
        true,
        if mounted {
            "mounted (not required: the sensor pins nothing)"
        } else {
            "not mounted (not required: the sensor pins nothing)"
        },
    )
}

fn tracepoints_item(root: Option<&Path>) -> Item {
    let Some(root) = root else {
        return Item::new("tracepoints", false, "tracefs is not mounted (see tracefs)");
    };
    if std::fs::read_dir(root.join("events")).is_err() {
        return Item::new("tracepoints", false, "tracefs is unreadable (see tracefs)");
    }
    if !root.join("events/syscalls/sys_enter_read").is_dir() {
        return Item::new(
            "tracepoints",
            false,
            "syscall tracepoints missing: a kernel with CONFIG_FTRACE_SYSCALLS=y is needed",
        );
    }
    match layout::read_layout(root) {
        Ok(_) => Item::new(
            "tracepoints",
            true,
            "syscalls:sys_enter_*/sys_exit_*, sched:sched_process_{fork,exec,exit}, \
             sock:inet_sock_set_state",
        ),
        Err(error) => Item::new(
            "tracepoints",
            false,
            format!("{error:#}; fix: a kernel with CONFIG_SCHED_TRACER and sock tracepoints"),
        ),
    }
}

fn uprobes_item(root: Option<&Path>) -> Item {
    let uprobes = root.is_some_and(|r| r.join("uprobe_events").exists())
        || Path::new("/sys/bus/event_source/devices/uprobe").exists();
    if uprobes {
        Item::new("uprobes", true, "available (TLS plaintext capture)")
    } else {
        Item::new(
            "uprobes",
            false,
            "missing: a kernel with CONFIG_UPROBE_EVENTS=y is needed for HTTPS",
        )
    }
}

/// Creates (and closes) a small BPF ring buffer map: the kernel supports it and we may.
fn ring_buffer_item() -> Item {
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_TYPE_RINGBUF: u32 = 27;
    // union bpf_attr, map-create form: map_type, key_size, value_size, max_entries, ...
    let mut attr = [0u32; 32];
    attr[0] = BPF_MAP_TYPE_RINGBUF;
    attr[3] = 64 * 1024;
    // SAFETY: bpf(2) with a zeroed, correctly sized attribute buffer.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if fd >= 0 {
        // SAFETY: a descriptor bpf(2) just returned to us.
        unsafe { libc::close(fd as i32) };
        return Item::new("ring buffer", true, "BPF ring buffer map created");
    }
    let error = std::io::Error::last_os_error();
    let fix = match error.raw_os_error() {
        Some(libc::EPERM) => "fix: grant CAP_BPF (and check seccomp allows bpf(2))",
        Some(libc::EINVAL) => "fix: a 5.8+ kernel (BPF_MAP_TYPE_RINGBUF)",
        _ => "fix: see the error",
    };
    Item::new(
        "ring buffer",
        false,
        format!("cannot create a BPF ring buffer ({error}); {fix}"),
    )
}

/// Tries to read what the sensor reads of every Python process (recognised by its command
/// line, which anyone may read); counts the refusals.
fn process_access_item() -> Item {
    let me = std::process::id();
    let mut checked = 0;
    let mut refused: Vec<(u32, &'static str)> = Vec::new();
    for pid in crate::daemon::all_pids(Path::new("/proc")) {
        if pid == me {
            continue;
        }
        let dir = Path::new("/proc").join(pid.to_string());
        let Ok(cmdline) = std::fs::read(dir.join("cmdline")) else {
            continue;
        };
        let argv0 = cmdline.split(|&b| b == 0).next().unwrap_or_default();
        let name = String::from_utf8_lossy(argv0);
        let name = name.rsplit('/').next().unwrap_or_default();
        if !crate::enrich::process::is_python_name(name) {
            continue;
        }
        checked += 1;
        let attempts = [
            ("exe", std::fs::read_link(dir.join("exe")).err()),
            ("environ", std::fs::read(dir.join("environ")).err()),
            ("fd", std::fs::read_dir(dir.join("fd")).err()),
        ];
        if let Some((what, _)) = attempts.into_iter().find(|(_, error)| {
            error
                .as_ref()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::PermissionDenied)
        }) {
            refused.push((pid, what));
        }
    }
    if refused.is_empty() {
        return Item::new(
            "process access",
            true,
            format!("/proc/PID/{{exe,environ,fd}} readable for all {checked} Python processes"),
        );
    }
    let (pid, what) = refused[0];
    Item::new(
        "process access",
        false,
        format!(
            "{} of {checked} Python processes refuse inspection (e.g. /proc/{pid}/{what}); fix: \
             grant CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH (and no AppArmor/LSM profile denying \
             ptrace read)",
            refused.len()
        ),
    )
}

fn load_item(options: &CaptureOptions) -> Item {
    match Capture::load(options) {
        Ok(capture) => Item::new(
            "load and attach",
            true,
            format!(
                "all programs verified and attached (a {} KiB ring buffer, maps, tracepoints; payload syscalls' arguments {})",
                capture.ring_bytes() / 1024,
                if capture.syscall_args_at_exit() {
                    "read at exit"
                } else {
                    "remembered at entry"
                }
            ),
        ),
        Err(error) => {
            let names: Vec<String> = needed_capabilities().into_iter().map(|n| n.name).collect();
            Item::new(
                "load and attach",
                false,
                format!(
                    "{error:#}; fix: run as root, or with {} (see the capabilities item)",
                    names.join(", ")
                ),
            )
        }
    }
}

/// For each process: whether an OpenSSL the probes can use was found (mapped now, or where the
/// process would load it), and which functions it has.
pub fn openssl_items(proc_root: &Path, pids: &[u32]) -> Vec<Item> {
    let mut symbols = crate::capture::tls::SymbolCache::default();
    pids.iter()
        .map(|&pid| {
            if !proc_root.join(pid.to_string()).exists() {
                return Item::new("openssl", false, format!("pid {pid}: no such process"));
            }
            let libraries = crate::capture::tls::libraries(proc_root, pid, &mut symbols);
            let described: Vec<String> = libraries
                .iter()
                .map(|library| {
                    let functions: Vec<&str> =
                        library.functions.iter().map(|(f, _)| f.symbol()).collect();
                    format!(
                        "{} ({}: {})",
                        library.path.display(),
                        if library.mapped { "mapped" } else { "probed in advance" },
                        functions.join(" ")
                    )
                })
                .collect();
            if libraries.iter().any(|l| l.has_plaintext()) {
                Item::new("openssl", true, format!("pid {pid}: {}", described.join("; ")))
            } else {
                Item::new(
                    "openssl",
                    false,
                    format!(
                        "pid {pid}: no OpenSSL with SSL_read/SSL_read_ex found in its mapped files or \
                         its root's library directories: its HTTPS cannot be captured (fix: use a \
                         shared libssl, or an OpenSSL build that keeps its symbols){}",
                        if described.is_empty() {
                            String::new()
                        } else {
                            format!("; found only {}", described.join("; "))
                        }
                    ),
                )
            }
        })
        .collect()
}

/// For each live process: the service name it gives itself and where from, and whether it
/// opts out of discovery — what `run` names its records before pod metadata and the configured
/// name are consulted. Troubleshoots a "wrong service name" without capturing anything.
pub fn identity_items(proc_root: &Path, pids: &[u32]) -> Vec<Item> {
    use crate::enrich::process::{NameSource, read_proc};
    pids.iter()
        .filter_map(|&pid| read_proc(proc_root, pid).map(|info| (pid, info)))
        .map(|(pid, info)| {
            let source = match info.name_source {
                NameSource::Environment => {
                    "its environment (HT_SERVICE_NAME, OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES)"
                        .to_owned()
                }
                NameSource::AgentFile => format!(
                    "its agent file {} (pod metadata, when present, comes first)",
                    info.env.get("HT_CONFIG_FILE").map_or("", String::as_str)
                ),
                NameSource::CommandLine => {
                    "its command line (pod metadata, when present, comes first)".to_owned()
                }
            };
            let opted_out = if info.opted_out() {
                "; it opts out (HT_ENABLED or its agent file's enabled: false): discovery leaves it unwatched"
            } else {
                ""
            };
            Item::new(
                "identity",
                true,
                format!("pid {pid}: service {:?} from {source}{opted_out}", info.service_name),
            )
        })
        .collect()
}

/// Runs every check; the capture is loaded with `capture`, as `run` would.
pub fn run_checks(capture: &CaptureOptions) -> Vec<Item> {
    let tracefs = layout::tracefs_root();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    vec![
        kernel_item(),
        btf_item(),
        tracefs_item(tracefs.as_deref()),
        bpffs_item(),
        tracepoints_item(tracefs.as_deref()),
        uprobes_item(tracefs.as_deref()),
        capabilities_item(&status, &needed_capabilities()),
        ring_buffer_item(),
        process_access_item(),
        load_item(capture),
    ]
}

/// Pod metadata: whether the Kubernetes API server answers for this node, when pod metadata
/// is configured (a node name, or running in a cluster). Capture works without it, but
/// records then lack pod attributes and namespace or pod-label selectors match nothing.
pub async fn kubernetes_item() -> Item {
    match crate::enrich::kubernetes::probe().await {
        None => Item::new(
            "kubernetes api",
            true,
            "not configured (no K8S_NODE_NAME, not in a cluster): no pod metadata",
        ),
        Some(Ok(detail)) => Item::new("kubernetes api", true, detail),
        Some(Err(detail)) => Item::new("kubernetes api", false, detail),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_set_parses_and_is_known() {
        let needed = needed_capabilities();
        let names: Vec<&str> = needed.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "CAP_BPF",
                "CAP_PERFMON",
                "CAP_SYS_PTRACE",
                "CAP_DAC_READ_SEARCH"
            ]
        );
        for n in &needed {
            assert!(capability_number(&n.name).is_some(), "{}", n.name);
            assert!(!n.reason.is_empty(), "{} has a reason", n.name);
        }
    }

    #[test]
    fn cap_eff_is_read_and_compared() {
        let status = "Name:\tsensor\nCapInh:\t0000000000000000\nCapEff:\t000000c000080004\n";
        let mask = effective_capabilities(status).unwrap();
        assert_eq!(mask, (1 << 39) | (1 << 38) | (1 << 19) | (1 << 2));
        assert!(capabilities_item(status, &needed_capabilities()).ok);

        let without_dac = "CapEff:\t000000c000080000\n";
        let item = capabilities_item(without_dac, &needed_capabilities());
        assert!(!item.ok);
        assert!(
            item.detail.starts_with("missing CAP_DAC_READ_SEARCH ("),
            "{}",
            item.detail
        );
        assert!(!item.detail.contains("missing CAP_BPF"));
    }

    #[test]
    fn broader_capabilities_count() {
        let sys_admin = 1u64 << 21;
        assert!(holds(sys_admin, "CAP_BPF"));
        assert!(holds(sys_admin, "CAP_PERFMON"));
        assert!(!holds(sys_admin, "CAP_SYS_PTRACE"));
        assert!(holds(1 << 1, "CAP_DAC_READ_SEARCH"));
        let root = "CapEff:\t000001ffffffffff\n";
        assert!(capabilities_item(root, &needed_capabilities()).ok);
    }

    #[test]
    fn the_shipped_configuration_parses_cleanly() {
        let text = include_str!("../../deploy/config.yaml");
        let (config, warnings) = crate::config::Config::from_yaml_str(text).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(config.service_name.as_deref(), Some("appsentinels-watcher"));
        assert_eq!(config.data_capture.body_max_size_bytes, 131_072);
    }

    #[test]
    fn openssl_of_a_process_is_reported() {
        let items = openssl_items(Path::new("/proc"), &[std::process::id(), u32::MAX - 1]);
        assert!(items[0].ok, "{}", items[0].detail);
        assert!(items[0].detail.contains("libssl"), "{}", items[0].detail);
        assert!(
            items[0].detail.contains("SSL_read_ex"),
            "{}",
            items[0].detail
        );
        assert!(!items[1].ok);
        assert!(items[1].detail.contains("no such process"));
    }

    #[test]
    fn identity_of_a_process_names_its_source() {
        let root =
            std::env::temp_dir().join(format!("sensor-check-identity-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let fake = |pid: u32, environ: &str| {
            let dir = root.join(pid.to_string());
            std::fs::create_dir_all(dir.join("root/etc")).unwrap();
            std::fs::write(dir.join("cmdline"), "/venv/bin/gunicorn\0orders:app\0").unwrap();
            std::fs::write(dir.join("environ"), environ).unwrap();
            std::fs::write(
                dir.join("root/etc/agent.yaml"),
                "serviceName: orders-api\nenabled: false\n",
            )
            .unwrap();
        };
        fake(1, "PATH=/bin\0");
        fake(2, "HT_CONFIG_FILE=/etc/agent.yaml\0");
        fake(
            3,
            "HT_CONFIG_FILE=/etc/agent.yaml\0HT_SERVICE_NAME=billing\0HT_ENABLED=true\0",
        );
        let items = identity_items(&root, &[1, 2, 3, 4]);
        let details: Vec<&str> = items.iter().map(|i| i.detail.as_str()).collect();
        assert_eq!(
            details.len(),
            3,
            "no item for a missing process: {details:?}"
        );
        assert!(details[0].starts_with("pid 1: service \"orders\" from its command line"));
        assert!(
            details[1]
                .starts_with("pid 2: service \"orders-api\" from its agent file /etc/agent.yaml")
                && details[1].contains("opts out"),
            "{}",
            details[1]
        );
        assert!(
            details[2].starts_with("pid 3: service \"billing\" from its environment")
                && !details[2].contains("opts out"),
            "{}",
            details[2]
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn kernel_versions() {
        assert_eq!(kernel_version("6.1.0-18-amd64"), Some((6, 1)));
        assert_eq!(kernel_version("5.15.0"), Some((5, 15)));
        assert_eq!(kernel_version("6.18.44-fc-v595"), Some((6, 18)));
        assert_eq!(kernel_version("junk"), None);
        assert!((5, 4) < (5, 8));
    }
}
