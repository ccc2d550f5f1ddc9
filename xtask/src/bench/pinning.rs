//! Where things run: the application under test on one core, everything else (the load
//! generator, the sensor, the OTLP receiver, this process) on another, so that what the app
//! gets is not shared with what measures it. Commands are pinned with `taskset` (util-linux).

use std::process::Command;

use anyhow::{Result, bail};

/// The core the application under test runs on.
pub const APP_CORE: usize = 0;
/// The core of the load generator, the sensor, the OTLP receiver and this process.
pub const LOAD_CORE: usize = 1;

/// Whether the machine has the two cores pinning needs.
pub fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        // Online CPUs, not this thread's affinity (which pinning narrows).
        // SAFETY: sysconf has no preconditions.
        let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
        cpus > LOAD_CORE as libc::c_long
            && Command::new("taskset")
                .arg("-V")
                .output()
                .is_ok_and(|o| o.status.success())
    })
}

/// `program` run on `core` (`taskset -c <core> <program>`), or unpinned when pinning is not
/// [`available`].
pub fn pinned(core: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
    if available() {
        let mut command = Command::new("taskset");
        command.arg("-c").arg(core.to_string()).arg(program);
        command
    } else {
        Command::new(program)
    }
}

/// Pins the calling thread, and so the threads and processes it starts afterwards, to `core`.
pub fn pin_this_thread(core: usize) -> Result<()> {
    if !available() {
        return Ok(());
    }
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it;
    // sched_setaffinity(0, …) applies to the calling thread only.
    let status = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if status != 0 {
        bail!(
            "sched_setaffinity to core {core}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// One line saying where things run.
pub fn describe() -> String {
    if available() {
        format!(
            "app pinned to core {APP_CORE}; hey, sensor, OTLP receiver and this process to core {LOAD_CORE} (taskset)"
        )
    } else {
        "not pinned: fewer than 2 cores or no taskset".to_owned()
    }
}

/// Time one core spent so far, from `/proc/stat`, in clock ticks.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CoreTicks {
    /// User and nice time: the application's own code.
    pub user: u64,
    /// System, irq and softirq time: system calls (with the BPF programs they run) and the
    /// network stack.
    pub system: u64,
    /// Time the hypervisor ran something else while this core wanted to run.
    pub steal: u64,
    /// Every state, idle included.
    pub total: u64,
}

impl CoreTicks {
    /// Reads `core`'s line of `/proc/stat`; none when the core is not listed.
    pub fn read(core: usize) -> Result<Option<CoreTicks>> {
        Ok(parse_core(&std::fs::read_to_string("/proc/stat")?, core))
    }

    /// What was spent from `earlier` to `self`.
    pub fn since(self, earlier: CoreTicks) -> CoreTicks {
        CoreTicks {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
            steal: self.steal.saturating_sub(earlier.steal),
            total: self.total.saturating_sub(earlier.total),
        }
    }
}

/// `cpuN user nice system idle iowait irq softirq steal …` (proc(5)).
fn parse_core(stat: &str, core: usize) -> Option<CoreTicks> {
    let label = format!("cpu{core}");
    let line = stat
        .lines()
        .find(|line| line.split_whitespace().next() == Some(label.as_str()))?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let at = |i: usize| values.get(i).copied().unwrap_or(0);
    Some(CoreTicks {
        user: at(0) + at(1),
        system: at(2) + at(5) + at(6),
        steal: at(7),
        total: values.iter().take(8).sum(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_one_cores_line() {
        let stat = "cpu  9 9 9 9 9 9 9 9 0 0\n\
                    cpu0 100 5 40 800 3 2 7 11 0 0\n\
                    cpu1 1 1 1 1 1 1 1 1 0 0\n\
                    intr 1 2 3\n";
        assert_eq!(
            parse_core(stat, 0),
            Some(CoreTicks {
                user: 105,
                system: 49,
                steal: 11,
                total: 968,
            })
        );
        assert_eq!(parse_core(stat, 1).map(|t| t.total), Some(8));
        assert_eq!(parse_core(stat, 2), None);
    }
}
