//! Tracepoint field offsets, read from tracefs `format` files.
//!
//! Field layouts of `sched:*` and `sock:*` tracepoints change between kernel versions; the
//! kernel programs read fields at the offsets found here (see `sensor_common::settings`).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow};
use sensor_common::settings::TracepointLayout;

/// Where tracefs is usually mounted.
pub const TRACEFS_ROOTS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// The mounted tracefs root, if any: one whose `events` directory is there, else one this
/// user may not look into (tracefs is root's, mode 0700), which is mounted but unreadable.
pub fn tracefs_root() -> Option<PathBuf> {
    let roots = || TRACEFS_ROOTS.iter().map(PathBuf::from);
    roots()
        .find(|root| root.join("events").is_dir())
        .or_else(|| {
            roots().find(|root| {
                std::fs::metadata(root.join("events"))
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::PermissionDenied)
            })
        })
}

/// Offset of `field` in a tracepoint `format` file's text.
pub fn field_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let line = line.trim();
        let decl = line.strip_prefix("field:")?;
        let (decl, rest) = decl.split_once(';')?;
        let name = decl
            .trim()
            .rsplit(|c: char| c.is_whitespace() || c == '*')
            .next()?;
        let name = name.split('[').next()?;
        if name != field {
            return None;
        }
        let offset = rest.trim().strip_prefix("offset:")?;
        offset.split(';').next()?.trim().parse().ok()
    })
}

fn read_format(root: &Path, event: &str) -> Result<String> {
    let path = root.join("events").join(event).join("format");
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

fn required(format: &str, event: &str, field: &str) -> Result<u32> {
    field_offset(format, field).ok_or_else(|| anyhow!("tracepoint {event} has no field {field}"))
}

/// Reads every offset the kernel programs need.
pub fn read_layout(root: &Path) -> Result<TracepointLayout> {
    let fork = read_format(root, "sched/sched_process_fork")?;
    let exec = read_format(root, "sched/sched_process_exec")?;
    let exit = read_format(root, "sched/sched_process_exit")?;
    let sk = read_format(root, "sock/inet_sock_set_state")?;
    let ev_fork = "sched_process_fork";
    let ev_exec = "sched_process_exec";
    let ev_sk = "inet_sock_set_state";
    Ok(TracepointLayout {
        fork_parent_pid: required(&fork, ev_fork, "parent_pid")?,
        fork_child_pid: required(&fork, ev_fork, "child_pid")?,
        exec_filename: required(&exec, ev_exec, "filename")?,
        exec_pid: required(&exec, ev_exec, "pid")?,
        exec_old_pid: required(&exec, ev_exec, "old_pid")?,
        exit_pid: required(&exit, "sched_process_exit", "pid")?,
        exit_group_dead: field_offset(&exit, "group_dead").unwrap_or(0),
        sk_oldstate: required(&sk, ev_sk, "oldstate")?,
        sk_newstate: required(&sk, ev_sk, "newstate")?,
        sk_sport: required(&sk, ev_sk, "sport")?,
        sk_dport: required(&sk, ev_sk, "dport")?,
        sk_family: required(&sk, ev_sk, "family")?,
        sk_protocol: required(&sk, ev_sk, "protocol")?,
        sk_saddr: required(&sk, ev_sk, "saddr")?,
        sk_daddr: required(&sk, ev_sk, "daddr")?,
        sk_saddr_v6: required(&sk, ev_sk, "saddr_v6")?,
        sk_daddr_v6: required(&sk, ev_sk, "daddr_v6")?,
        _pad: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORK_6_18: &str = "name: sched_process_fork
ID: 318
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:__data_loc char[] parent_comm;\toffset:8;\tsize:4;\tsigned:0;
\tfield:pid_t parent_pid;\toffset:12;\tsize:4;\tsigned:1;
\tfield:__data_loc char[] child_comm;\toffset:16;\tsize:4;\tsigned:0;
\tfield:pid_t child_pid;\toffset:20;\tsize:4;\tsigned:1;
";

    const FORK_5_15: &str = "
\tfield:char parent_comm[16];\toffset:8;\tsize:16;\tsigned:0;
\tfield:pid_t parent_pid;\toffset:24;\tsize:4;\tsigned:1;
\tfield:char child_comm[16];\toffset:28;\tsize:16;\tsigned:0;
\tfield:pid_t child_pid;\toffset:44;\tsize:4;\tsigned:1;
";

    #[test]
    fn offsets_follow_the_kernel_version() {
        assert_eq!(field_offset(FORK_6_18, "parent_pid"), Some(12));
        assert_eq!(field_offset(FORK_6_18, "child_pid"), Some(20));
        assert_eq!(field_offset(FORK_5_15, "parent_pid"), Some(24));
        assert_eq!(field_offset(FORK_5_15, "child_pid"), Some(44));
        assert_eq!(field_offset(FORK_5_15, "child_comm"), Some(28));
        assert_eq!(field_offset(FORK_6_18, "missing"), None);
    }

    #[test]
    fn pointer_and_array_fields() {
        let sk = "\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;";
        assert_eq!(field_offset(sk, "skaddr"), Some(8));
        assert_eq!(field_offset(sk, "saddr_v6"), Some(40));
    }

    #[test]
    fn this_kernel_if_tracefs_is_mounted() {
        if let Some(root) = tracefs_root() {
            let layout = read_layout(&root).expect("layout of the running kernel");
            assert!(layout.fork_child_pid > layout.fork_parent_pid);
            assert!(layout.sk_daddr_v6 > layout.sk_saddr_v6);
        }
    }
}
