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
