//! Lifecycle of watched processes.
//!
//! - `sched_process_fork`: a process forked by a watched one is watched before it first runs,
//!   so a gunicorn worker's first request is captured (a thread, told apart by the flags of the
//!   clone call that created it, is not a new process).
//! - `sys_enter_execve[at]`: the command line and the `HT_*`/`OTEL_*` environment are sent
//!   while the caller's memory is still readable, so they are known even for a process that
//!   exits before userspace reads `/proc`.
//! - `sched_process_exec`: under discovery, every new program is watched provisionally until
//!   userspace decides whether it is Python.
//! - `sched_process_exit`: the whole process is gone; userspace finishes its connections.
//! - `sys_enter_mmap` with `PROT_EXEC` and a descriptor: a library loaded; userspace looks for
//!   an OpenSSL it has not probed (e.g. `import ssl` of one outside the standard directories)
//!   at once, instead of reading every watched process's mappings on a timer.

use aya_ebpf::{
    EbpfContext,
    bindings::BPF_RB_FORCE_WAKEUP,
    helpers::{
        bpf_probe_read_kernel_str_bytes, bpf_probe_read_user, bpf_probe_read_user_str_bytes,
    },
    macros::tracepoint,
    programs::TracePointContext,
};
use sensor_common::{
    event::{
        EXEC_ARG_ARGV, EXEC_ARG_ENV, EXEC_ARG_MAX, EXEC_ARGV_MAX, EXEC_ENV_SCANNED, EventKind,
        ExecArgEvent, ExecEvent, ProcessEvent,
    },
    maps::{Counter, WatchState},
};

use crate::state::{
    CLONE_FLAGS, EVENTS, EXEC_SCRATCH, PENDING_IO, WATCHED_PROCESSES, count, current_tgid, header,
    is_watched, pid_tgid, settings, syscall_arg,
};

const CLONE_THREAD: u64 = 0x0001_0000;
const PROT_EXEC: u64 = 0x4;

#[tracepoint]
pub fn sys_enter_mmap(ctx: TracePointContext) -> u32 {
    let tgid = current_tgid();
    if !is_watched(tgid) {
        return 0;
    }
    let prot = syscall_arg(&ctx, 2);
    let fd = syscall_arg(&ctx, 4) as i32;
    if prot & PROT_EXEC == 0 || fd < 0 {
        return 0;
    }
    // The library's first calls may follow at once: wake userspace to probe it now.
    send_process_event(EventKind::ExecMapping, fd, BPF_RB_FORCE_WAKEUP as u64);
    0
}

/// Sends a [`ProcessEvent`] of `kind` about the current process, counting a full ring buffer.
#[inline(always)]
fn send_process_event(kind: EventKind, value: i32, flags: u64) {
    let event = ProcessEvent {
        header: header(kind),
        value,
        _pad: 0,
    };
    if EVENTS.output(event, flags).is_err() {
        count(Counter::RingbufFull, 1);
    }
}

#[tracepoint]
pub fn sys_enter_clone(ctx: TracePointContext) -> u32 {
    if is_watched(current_tgid()) {
        let _ = CLONE_FLAGS.insert(pid_tgid(), syscall_arg(&ctx, 0), 0);
    }
    0
}

#[tracepoint]
pub fn sys_enter_clone3(ctx: TracePointContext) -> u32 {
    if is_watched(current_tgid()) {
        // struct clone_args starts with the 64-bit flags.
        let args = syscall_arg(&ctx, 0);
        let flags = unsafe { bpf_probe_read_user(args as *const u64) }.unwrap_or(0);
        let _ = CLONE_FLAGS.insert(pid_tgid(), flags, 0);
    }
    0
}

#[tracepoint]
pub fn sched_process_fork(ctx: TracePointContext) -> u32 {
    let parent = current_tgid();
    let Some(state) = WATCHED_PROCESSES.get_ptr(parent).map(|s| unsafe { *s }) else {
        return 0;
    };
    let id = pid_tgid();
    let flags = CLONE_FLAGS.get_ptr(id).map(|f| unsafe { *f }).unwrap_or(0);
    let _ = CLONE_FLAGS.remove(id);
    if flags & CLONE_THREAD != 0 {
        return 0;
    }
    let layout = settings().layout;
    let Ok(child) = (unsafe { ctx.read_at::<i32>(layout.fork_child_pid as usize) }) else {
        return 1;
    };
    if WATCHED_PROCESSES.insert(child as u32, state, 0).is_err() {
        count(Counter::WatchedFull, 1);
        return 1;
    }
    // Userspace probes the child's OpenSSL on this record: wake it now, whatever waits.
    send_process_event(EventKind::ProcessFork, child, BPF_RB_FORCE_WAKEUP as u64);
    0
}

#[tracepoint]
pub fn sys_enter_execve(ctx: TracePointContext) -> u32 {
    send_exec_args(syscall_arg(&ctx, 1), syscall_arg(&ctx, 2));
    0
}

#[tracepoint]
pub fn sys_enter_execveat(ctx: TracePointContext) -> u32 {
    send_exec_args(syscall_arg(&ctx, 2), syscall_arg(&ctx, 3));
    0
}

/// Sends argv and the `HT_*` / `OTEL_*` entries of envp, one record per string.
#[inline(always)]
fn send_exec_args(argv: u64, envp: u64) {
    let tgid = current_tgid();
    let settings = settings();
    if tgid == settings.sensor_tgid || (settings.discover == 0 && !is_watched(tgid)) {
        return;
    }
    for i in 0..EXEC_ARGV_MAX as u32 {
        let Ok(arg) = (unsafe { bpf_probe_read_user((argv + u64::from(i) * 8) as *const u64) })
        else {
            break;
        };
        if arg == 0 {
            break;
        }
        send_string(EXEC_ARG_ARGV, i, arg);
    }
    for i in 0..EXEC_ENV_SCANNED as u32 {
        let Ok(entry) = (unsafe { bpf_probe_read_user((envp + u64::from(i) * 8) as *const u64) })
        else {
            break;
        };
        if entry == 0 {
            break;
        }
        let Ok(prefix) = (unsafe { bpf_probe_read_user(entry as *const [u8; 5]) }) else {
            continue;
        };
        let wanted = (prefix[0] == b'H' && prefix[1] == b'T' && prefix[2] == b'_')
            || (prefix[0] == b'O'
                && prefix[1] == b'T'
                && prefix[2] == b'E'
                && prefix[3] == b'L'
                && prefix[4] == b'_');
        if wanted {
            send_string(EXEC_ARG_ENV, i, entry);
        }
    }
}

#[inline(always)]
fn send_string(which: u32, index: u32, ptr: u64) {
    let Some(event) = EXEC_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch record.
    let event = unsafe { &mut *event };
    event.header = header(EventKind::ExecArg);
    event.which = which;
    event.index = index;
    event._pad = 0;
    let len = match unsafe { bpf_probe_read_user_str_bytes(ptr as *const u8, &mut event.data) } {
        Ok(bytes) => bytes.len(),
        Err(_) => {
            count(Counter::ReadFailed, 1);
            return;
        }
    };
    event.len = (len & (EXEC_ARG_MAX - 1)) as u32;
    if EVENTS.output::<ExecArgEvent>(&*event, 0).is_err() {
        count(Counter::RingbufFull, 1);
    }
}

#[tracepoint]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    let tgid = current_tgid();
    let settings = settings();
    if tgid == settings.sensor_tgid {
        return 0;
    }
    let mut state = WATCHED_PROCESSES
        .get_ptr(tgid)
        .map(|s| unsafe { *s })
        .unwrap_or(0);
    if state == WatchState::NotWatched as u32 {
        if settings.discover == 0 {
            return 0;
        }
        state = WatchState::Pending as u32;
        if WATCHED_PROCESSES.insert(tgid, state, 0).is_err() {
            count(Counter::WatchedFull, 1);
            return 1;
        }
    }
    let Some(mut record) = EVENTS.reserve::<ExecEvent>(0) else {
        count(Counter::RingbufFull, 1);
        return 1;
    };
    let event = record.as_mut_ptr();
    let layout = settings.layout;
    // SAFETY: reserved slot of the right size, every field written before submit; tracepoint
    // fields read at offsets from the format file.
    unsafe {
        (*event).header = header(EventKind::ProcessExec);
        (*event).old_pid = ctx
            .read_at::<u32>(layout.exec_old_pid as usize)
            .unwrap_or(tgid);
        (*event).watch_state = state;
        (*event).filename[0] = 0;
        let loc = ctx
            .read_at::<u32>(layout.exec_filename as usize)
            .unwrap_or(0);
        let start = (loc & 0xffff) as usize;
        let src = (ctx.as_ptr() as *const u8).add(start);
        let _ = bpf_probe_read_kernel_str_bytes(src, &mut (*event).filename);
    }
    // Userspace decides on watching the new program (and probes it) on this record.
    record.submit(BPF_RB_FORCE_WAKEUP as u64);
    0
}

#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let id = pid_tgid();
    let _ = PENDING_IO.remove(id);
    let tgid = (id >> 32) as u32;
    let tid = id as u32;
    let layout = settings().layout;
    let group_dead = if layout.exit_group_dead != 0 {
        unsafe { ctx.read_at::<u8>(layout.exit_group_dead as usize) }.unwrap_or(0) != 0
    } else {
        tid == tgid
    };
    if !group_dead || WATCHED_PROCESSES.get_ptr(tgid).is_none() {
        return 0;
    }
    let _ = WATCHED_PROCESSES.remove(tgid);
    send_process_event(EventKind::ProcessExit, 0, crate::emit::wakeup_flags());
    0
}
