//! Run-time settings userspace writes into the [`crate::maps::SETTINGS`] map before attaching.
//!
//! Tracepoint field offsets change between kernel versions (e.g. `sched_process_fork` moved its
//! pid fields when comm became a `__data_loc` string), and Rust eBPF has no CO-RE, so userspace
//! reads them from tracefs `format` files and hands them to the programs here.

/// Field offsets of the non-syscall tracepoints the programs read, from tracefs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TracepointLayout {
    /// `sched:sched_process_fork`: offset of `parent_pid`.
    pub fork_parent_pid: u32,
    /// `sched:sched_process_fork`: offset of `child_pid`.
    pub fork_child_pid: u32,
    /// `sched:sched_process_exec`: offset of the `filename` `__data_loc` word.
    pub exec_filename: u32,
    /// `sched:sched_process_exec`: offset of `pid`.
    pub exec_pid: u32,
    /// `sched:sched_process_exec`: offset of `old_pid`.
    pub exec_old_pid: u32,
    /// `sched:sched_process_exit`: offset of `pid`.
    pub exit_pid: u32,
    /// `sched:sched_process_exit`: offset of `group_dead`, or 0 where the kernel lacks it.
    pub exit_group_dead: u32,
    /// `sock:inet_sock_set_state`: offset of `oldstate`.
    pub sk_oldstate: u32,
    /// `sock:inet_sock_set_state`: offset of `newstate`.
    pub sk_newstate: u32,
    /// `sock:inet_sock_set_state`: offset of `sport`.
    pub sk_sport: u32,
    /// `sock:inet_sock_set_state`: offset of `dport`.
    pub sk_dport: u32,
    /// `sock:inet_sock_set_state`: offset of `family`.
    pub sk_family: u32,
    /// `sock:inet_sock_set_state`: offset of `protocol`.
    pub sk_protocol: u32,
    /// `sock:inet_sock_set_state`: offset of `saddr`.
    pub sk_saddr: u32,
    /// `sock:inet_sock_set_state`: offset of `daddr`.
    pub sk_daddr: u32,
    /// `sock:inet_sock_set_state`: offset of `saddr_v6`.
    pub sk_saddr_v6: u32,
    /// `sock:inet_sock_set_state`: offset of `daddr_v6`.
    pub sk_daddr_v6: u32,
    /// Explicit padding (zero).
    pub _pad: u32,
}

/// The single entry of [`crate::maps::SETTINGS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// Non-zero: every process that calls `execve` is watched provisionally
    /// ([`crate::maps::WatchState::Pending`]) until userspace decides.
    pub discover: u32,
    /// The sensor's own pid: never watched, whatever the maps say.
    pub sensor_tgid: u32,
    /// Where the programs find tracepoint fields.
    pub layout: TracepointLayout,
}
