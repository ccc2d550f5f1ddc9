//! Capture: loads the kernel programs, attaches them, and turns ring-buffer records into
//! [`CaptureEvent`]s. Also the control path back into the kernel: which processes are watched,
//! which sockets are adopted, and what each connection should (not) copy.

pub mod events;
pub mod layout;
pub mod seed;
pub mod tls;

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        Program, TracePoint, UProbe,
        uprobe::{UProbeAttachLocation, UProbeLink, UProbeScope},
    },
};
use sensor_common::{
    maps::{self as names, ConnControl, ConnState, Counter, FdEntry, SocketKey, WatchState},
    settings::Settings,
};
use std::{
    collections::HashMap as StdHashMap,
    sync::{Mutex, PoisonError},
};
use tokio::io::unix::AsyncFd;
use tracing::{debug, info, warn};

pub use events::{CaptureEvent, DecodeError};

/// The compiled kernel programs, built by build.rs from `sensor-ebpf`.
static PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sensor"));

/// The longest a payload record written without a wakeup waits before it is read, under traffic.
const RING_POLL: std::time::Duration =
    std::time::Duration::from_millis(sensor_common::maps::RING_POLL_MS);

/// The longest it waits after a quiet spell (the poll interval backs off to this).
const RING_POLL_IDLE: std::time::Duration =
    std::time::Duration::from_millis(sensor_common::maps::RING_POLL_IDLE_MS);

/// Most records one [`Capture::read_available`] hands over, so that timers get their turn under
/// a flood.
const RING_BATCH: usize = 4096;

/// The poll interval after a drain that read `read` records: back to [`RING_POLL`] when there
/// were some, else twice the last, up to [`RING_POLL_IDLE`].
fn next_poll(last: std::time::Duration, read: usize) -> std::time::Duration {
    if read > 0 {
        RING_POLL
    } else {
        (last * 2).min(RING_POLL_IDLE)
    }
}

/// Every program with the tracepoint it attaches to, besides the payload syscalls'.
const TRACEPOINTS: &[(&str, &str, &str)] = &[
    ("sys_enter_socket", "syscalls", "sys_enter_socket"),
    ("sys_exit_socket", "syscalls", "sys_exit_socket"),
    ("sys_enter_connect", "syscalls", "sys_enter_connect"),
    ("sys_exit_connect", "syscalls", "sys_exit_connect"),
    ("sys_enter_accept", "syscalls", "sys_enter_accept"),
    ("sys_exit_accept", "syscalls", "sys_exit_accept"),
    ("sys_enter_accept4", "syscalls", "sys_enter_accept4"),
    ("sys_exit_accept4", "syscalls", "sys_exit_accept4"),
    ("sys_enter_getsockname", "syscalls", "sys_enter_getsockname"),
    ("sys_exit_getsockname", "syscalls", "sys_exit_getsockname"),
    ("sys_enter_getpeername", "syscalls", "sys_enter_getpeername"),
    ("sys_exit_getpeername", "syscalls", "sys_exit_getpeername"),
    ("sys_enter_close", "syscalls", "sys_enter_close"),
    ("sys_enter_close_range", "syscalls", "sys_enter_close_range"),
    ("sys_enter_dup", "syscalls", "sys_enter_dup"),
    ("sys_exit_dup", "syscalls", "sys_exit_dup"),
    ("sys_enter_dup2", "syscalls", "sys_enter_dup2"),
    ("sys_exit_dup2", "syscalls", "sys_exit_dup2"),
    ("sys_enter_dup3", "syscalls", "sys_enter_dup3"),
    ("sys_exit_dup3", "syscalls", "sys_exit_dup3"),
    ("sys_enter_fcntl", "syscalls", "sys_enter_fcntl"),
    ("sys_exit_fcntl", "syscalls", "sys_exit_fcntl"),
    ("sys_enter_clone", "syscalls", "sys_enter_clone"),
    ("sys_enter_clone3", "syscalls", "sys_enter_clone3"),
    ("sys_enter_execve", "syscalls", "sys_enter_execve"),
    ("sys_enter_execveat", "syscalls", "sys_enter_execveat"),
    ("sys_enter_mmap", "syscalls", "sys_enter_mmap"),
    ("sched_process_fork", "sched", "sched_process_fork"),
    ("sched_process_exec", "sched", "sched_process_exec"),
    ("sched_process_exit", "sched", "sched_process_exit"),
    ("inet_sock_set_state", "sock", "inet_sock_set_state"),
];

/// The payload-carrying syscalls. Each has a `sys_exit_<name>_regs` program that reads the
/// call's arguments at exit from the thread's saved registers, and a `sys_enter_<name>` /
/// `sys_exit_<name>` pair that remembers them at entry, for kernels that refuse the former.
const PAYLOAD_SYSCALLS: &[&str] = &[
    "read",
    "write",
    "recvfrom",
    "sendto",
    "readv",
    "writev",
    "recvmsg",
    "sendmsg",
    "recvmmsg",
    "sendmmsg",
    "sendfile64",
];

/// What to capture.
#[derive(Clone, Debug, Default)]
pub struct CaptureOptions {
    /// Watch every new program provisionally (discovery); userspace confirms or drops each.
    pub discover: bool,
    /// Ring buffer size in bytes (power of two); 0 keeps the compiled-in default.
    pub ring_bytes: u32,
    /// Remember the payload syscalls' arguments at entry (two programs per call) even where
    /// the kernel lets them be read at exit (`sensor.syscall_arguments_at_entry`).
    pub syscall_args_at_entry: bool,
}

/// Kernel-side loss and activity counters, summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelCounters {
    /// Values indexed like [`Counter::ALL`].
    pub values: Vec<u64>,
}

impl KernelCounters {
    /// One counter's value.
    pub fn get(&self, counter: Counter) -> u64 {
        self.values.get(counter as usize).copied().unwrap_or(0)
    }

    /// `(name, value)` pairs for logs and metrics.
    pub fn named(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        Counter::ALL.iter().map(|c| (c.name(), self.get(*c)))
    }
}

/// The loaded and attached programs, and handles on the maps userspace drives.
pub struct Capture {
    _ebpf: Ebpf,
    /// The kernel's records. `None` only while [`Self::read_available`] has lent it out.
    ring: Option<AsyncFd<RingBuf<MapData>>>,
    watched: HashMap<MapData, u32, u32>,
    fds: HashMap<MapData, SocketKey, FdEntry>,
    conns: HashMap<MapData, u64, ConnState>,
    control: HashMap<MapData, u64, ConnControl>,
    counters: PerCpuArray<MapData, u64>,
    /// Size of the ring buffer in bytes.
    ring_bytes: u32,
    /// The interval between drains without a wakeup: [`RING_POLL`] under traffic, backing off
    /// to [`RING_POLL_IDLE`] while drains find nothing.
    poll: std::time::Duration,
    /// When the ring is drained next if no wakeup comes first: a deadline, not a timeout, so
    /// that the daemon's other events (timers, metric scrapes), which cancel and restart
    /// [`Self::next_batch`], cannot keep putting the drain off.
    drain_at: tokio::time::Instant,
    /// Whether the OpenSSL probes loaded (uprobes work here).
    tls_loaded: bool,
    /// Whether the payload syscalls' arguments are read at exit (one program per call) rather
    /// than remembered at entry.
    args_at_exit: bool,
    /// OpenSSL probes attached, by process.
    tls_probes: StdHashMap<u32, ProcessProbes>,
    /// Detaches probes off the event loop: closing a uprobe waits for an RCU grace period
    /// (tens of milliseconds each), which would stall capture for seconds per exiting process.
    detacher: std::sync::mpsc::Sender<Vec<UProbeLink>>,
    /// Records that could not be decoded.
    pub decode_errors: u64,
    /// OpenSSL probe attachments that failed.
    pub tls_attach_errors: u64,
}

/// The OpenSSL probes attached for one process.
#[derive(Default)]
struct ProcessProbes {
    /// Files probed, by identity.
    libraries: Vec<(u64, u64)>,
    /// Links, detached when dropped.
    links: Vec<UProbeLink>,
    /// Where the application's `BIO_write` feeds are probed: `BIO_write` itself or its call
    /// sites, never both (a feed would trap twice, and its second hit match nothing).
    feeds: Option<tls::TlsFunction>,
}

/// A thread that drops detached probe links (see `Capture::detacher`).
fn spawn_detacher() -> std::sync::mpsc::Sender<Vec<UProbeLink>> {
    let (sender, receiver) = std::sync::mpsc::channel::<Vec<UProbeLink>>();
    let spawned = std::thread::Builder::new()
        .name("uprobe-detach".into())
        .spawn(move || {
            for links in receiver {
                drop(links);
            }
        });
    if let Err(error) = spawned {
        warn!(%error, "no detach thread: probes are detached inline");
    }
    sender
}

impl Capture {
    /// Loads and attaches every program. Requires root (or CAP_BPF + CAP_PERFMON + ...).
    pub fn load(options: &CaptureOptions) -> Result<Self> {
        let root = layout::tracefs_root().ok_or_else(|| {
            anyhow!("tracefs is not mounted; fix: mount -t tracefs tracefs /sys/kernel/tracing")
        })?;
        if let Err(error) = std::fs::read_dir(root.join("events")) {
            bail!(
                "tracefs at {} cannot be read ({error}); fix: run the sensor as uid 0 with the \
                 capabilities of deploy/capabilities.txt (`sensor check` says what is missing)",
                root.display()
            );
        }
        let layout = layout::read_layout(&root)?;
        let mut loader = EbpfLoader::new();
        let ring_bytes = if options.ring_bytes != 0 {
            loader.map_max_entries(names::EVENTS, options.ring_bytes);
            options.ring_bytes
        } else {
            names::EVENTS_BYTES
        };
        let wakeup_bytes = names::ring_wakeup_bytes(ring_bytes);
        loader.override_global(names::RING_WAKEUP_GLOBAL, &wakeup_bytes, true);
        let mut ebpf = loader
            .load(PROGRAMS)
            .context("loading the eBPF programs (are you root?)")?;
        let settings = Settings {
            discover: u32::from(options.discover),
            sensor_tgid: std::process::id(),
            layout,
        };
        let mut settings_map: Array<_, Settings> = Array::try_from(
            ebpf.map_mut(names::SETTINGS)
                .ok_or_else(|| anyhow!("no SETTINGS map"))?,
        )?;
        settings_map.set(0, settings, 0)?;
        let args_at_exit_wanted = !options.syscall_args_at_entry && cfg!(target_arch = "x86_64");
        let payload_at_exit: Vec<String> = if args_at_exit_wanted {
            PAYLOAD_SYSCALLS
                .iter()
                .map(|syscall| format!("sys_exit_{syscall}_regs"))
                .collect()
        } else {
            Vec::new()
        };
        let tracepoints: Vec<String> = TRACEPOINTS.iter().map(|(p, _, _)| p.to_string()).collect();
        let tls_programs: Vec<String> = tls::TLS_PROGRAMS
            .iter()
            .map(|(name, _)| name.to_string())
            .collect();
        let mut loaded = load_programs(
            &mut ebpf,
            payload_at_exit
                .iter()
                .chain(&tracepoints)
                .chain(&tls_programs)
                .cloned()
                .collect(),
        );
        for (program, category, name) in TRACEPOINTS {
            outcome(&mut loaded, program)?;
            attach_tracepoint(&mut ebpf, program, category, name)?;
        }
        let payload_loaded = args_at_exit_wanted.then(|| all_loaded(&mut loaded, &payload_at_exit));
        let args_at_exit = attach_payload_programs(&mut ebpf, payload_loaded)?;
        let tls_loaded = match all_loaded(&mut loaded, &tls_programs) {
            Ok(()) => true,
            Err(error) => {
                warn!(
                    error = format!("{error:#}"),
                    "OpenSSL probes unavailable: HTTPS plaintext will not be captured"
                );
                false
            }
        };
        let ring = RingBuf::try_from(take(&mut ebpf, names::EVENTS)?)?;
        let watched = HashMap::try_from(take(&mut ebpf, names::WATCHED_PROCESSES)?)?;
        let fds = HashMap::try_from(take(&mut ebpf, names::FDS)?)?;
        let conns = HashMap::try_from(take(&mut ebpf, names::CONNS)?)?;
        let control = HashMap::try_from(take(&mut ebpf, names::CONN_CONTROL)?)?;
        let counters = PerCpuArray::try_from(take(&mut ebpf, names::COUNTERS)?)?;
        info!(
            programs =
                TRACEPOINTS.len() + PAYLOAD_SYSCALLS.len() * if args_at_exit { 1 } else { 2 },
            payload_arguments = if args_at_exit {
                "read at exit"
            } else {
                "remembered at entry"
            },
            openssl_probes = tls_loaded,
            discover = options.discover,
            ring_buffer_bytes = ring_bytes,
            "capture attached"
        );
        Ok(Capture {
            _ebpf: ebpf,
            // SAFETY: the ring buffer map owns its descriptor for as long as the AsyncFd lives.
            ring: Some(
                unsafe { AsyncFd::register(ring) }
                    .map_err(|e| anyhow!("registering the ring buffer with tokio: {e}"))?,
            ),
            watched,
            fds,
            conns,
            control,
            counters,
            ring_bytes,
            tls_loaded,
            args_at_exit,
            tls_probes: StdHashMap::new(),
            detacher: spawn_detacher(),
            decode_errors: 0,
            poll: RING_POLL,
            drain_at: tokio::time::Instant::now() + RING_POLL,
            tls_attach_errors: 0,
        })
    }

    /// Waits until records are available (a wakeup), or until the next drain is due (records
    /// are written without a wakeup while few bytes wait), then hands each decoded record to
    /// `handle`. Returns after draining what was there, so the caller can interleave timers;
    /// cancelled while waiting, it keeps its deadline.
    pub async fn next_batch(
        &mut self,
        handle: impl FnMut(&mut Self, CaptureEvent<'_>),
    ) -> Result<()> {
        if let Some(ring) = self.ring.as_mut()
            && let Ok(guard) = tokio::time::timeout_at(self.drain_at, ring.readable_mut()).await
        {
            guard?.clear_ready();
        }
        let read = self.read_available(handle);
        self.poll = next_poll(self.poll, read);
        self.drain_at = tokio::time::Instant::now() + self.poll;
        Ok(())
    }

    /// Hands every record in the ring buffer now (at most [`RING_BATCH`]) to `handle`, without
    /// waiting; returns how many there were.
    ///
    /// Each record is decoded and handled in place, its payload borrowed from the ring buffer,
    /// and released before the next is read: no copy, no allocation per record. The ring buffer
    /// is lent out of `self` meanwhile, so that `handle` can still use the rest of the capture.
    pub fn read_available(&mut self, mut handle: impl FnMut(&mut Self, CaptureEvent<'_>)) -> usize {
        let Some(mut ring) = self.ring.take() else {
            return 0;
        };
        let mut read = 0;
        while read < RING_BATCH {
            let Some(item) = ring.get_mut().next() else {
                break;
            };
            read += 1;
            match events::decode(&item) {
                Ok(event) => handle(self, event),
                Err(error) => {
                    self.decode_errors += 1;
                    debug!(?error, "undecodable ring-buffer record");
                }
            }
        }
        self.ring = Some(ring);
        read
    }

    /// Starts (or keeps) capturing a process.
    pub fn watch(&mut self, pid: u32) -> Result<()> {
        self.watched
            .insert(pid, WatchState::Watched as u32, 0)
            .with_context(|| format!("watching pid {pid}"))
    }

    /// Stops capturing a process. Its descriptor entries stay until it exits (see [`Self::sweep`]);
    /// the kernel ignores them meanwhile because the process is not watched.
    pub fn unwatch(&mut self, pid: u32) {
        let _ = self.watched.remove(&pid);
    }

    /// Whether the kernel watches `pid` (in any state).
    pub fn is_watched(&self, pid: u32) -> bool {
        self.watched.get(&pid, 0).is_ok()
    }

    /// Removes one descriptor from the kernel's tables (and its connection, if it was the last).
    pub fn forget_fd(&mut self, key: SocketKey) {
        if let Ok(entry) = self.fds.get(&key, 0) {
            let _ = self.fds.remove(&key);
            if entry.conn_id != 0
                && let Ok(mut state) = self.conns.get(&entry.conn_id, 0)
            {
                if state.refs > 1 {
                    state.refs -= 1;
                    let _ = self.conns.insert(entry.conn_id, state, 0);
                } else {
                    let _ = self.conns.remove(&entry.conn_id);
                    let _ = self.control.remove(&entry.conn_id);
                }
            }
        }
    }

    /// Registers an existing socket (found in `/proc`) so its next bytes are captured.
    pub fn adopt(&mut self, key: SocketKey, entry: FdEntry, state: ConnState) -> Result<()> {
        self.conns.insert(state.conn_id, state, 0)?;
        self.fds.insert(key, entry, 0)?;
        Ok(())
    }

    /// Probes the OpenSSL functions of `libraries` for process `pid` (each file once; the probes
    /// fire for that process only). Returns how many files were newly probed.
    pub fn attach_tls(&mut self, pid: u32, libraries: &[tls::TlsLibrary]) -> usize {
        let Some(scope) = std::num::NonZeroU32::new(pid).map(UProbeScope::OneProcess) else {
            return 0;
        };
        if !self.tls_loaded {
            return 0;
        }
        let mut attached = 0;
        for library in libraries {
            let probes = self.tls_probes.entry(pid).or_default();
            if probes.libraries.contains(&library.id) {
                continue;
            }
            probes.libraries.push(library.id);
            attached += 1;
            for (function, offset) in library.functions.iter() {
                if matches!(
                    function,
                    tls::TlsFunction::BioWrite | tls::TlsFunction::BioWriteCall
                ) {
                    if probes.feeds.is_some_and(|feeds| feeds != *function) {
                        continue;
                    }
                    probes.feeds = Some(*function);
                }
                let programs =
                    std::iter::once(function.entry_program()).chain(function.return_program());
                for program in programs {
                    match attach_uprobe(&mut self._ebpf, program, *offset, &library.path, scope) {
                        Ok(link) => probes.links.push(link),
                        Err(error) => {
                            self.tls_attach_errors += 1;
                            warn!(pid, library = %library.path.display(), function = function.symbol(), %error, "cannot probe OpenSSL function");
                        }
                    }
                }
            }
            debug!(pid, library = %library.path.display(), mapped = library.mapped, functions = library.functions.len(), "probing OpenSSL");
        }
        attached
    }

    /// Removes the OpenSSL probes of a process (it exited, or replaced its program).
    pub fn detach_tls(&mut self, pid: u32) {
        let Some(probes) = self.tls_probes.remove(&pid) else {
            return;
        };
        // If the thread is gone the links come back in the error and are dropped here.
        let _ = self.detacher.send(probes.links);
    }

    /// The files probed for a process, by identity.
    pub fn tls_libraries(&self, pid: u32) -> &[(u64, u64)] {
        self.tls_probes
            .get(&pid)
            .map_or(&[], |p| p.libraries.as_slice())
    }

    /// Processes with OpenSSL probes attached.
    pub fn tls_pids(&self) -> Vec<u32> {
        self.tls_probes.keys().copied().collect()
    }

    /// Tells the kernel what to copy of a connection (or TLS stream) from now on.
    pub fn set_control(&mut self, conn_id: u64, control: ConnControl) {
        let tls_stream = conn_id & sensor_common::event::TLS_STREAM_ID_BIT != 0;
        if !tls_stream && self.conns.get(&conn_id, 0).is_err() {
            return;
        }
        if let Err(error) = self.control.insert(conn_id, control, 0) {
            warn!(conn_id, %error, "could not update connection control");
        }
    }

    /// Forgets every descriptor of processes that no longer exist (exit records can be lost
    /// when the ring buffer is full; this bounds what is left behind).
    pub fn sweep(&mut self, alive: impl Fn(u32) -> bool) {
        let dead: Vec<SocketKey> = self
            .fds
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !alive(k.tgid))
            .collect();
        for key in dead {
            self.forget_fd(key);
        }
        let gone: Vec<u32> = self
            .watched
            .keys()
            .filter_map(|k| k.ok())
            .filter(|pid| !alive(*pid))
            .collect();
        for pid in gone {
            let _ = self.watched.remove(&pid);
        }
    }

    /// Size of the ring buffer in bytes.
    pub fn ring_bytes(&self) -> u32 {
        self.ring_bytes
    }

    /// Whether the payload syscalls' arguments are read at exit (one program per call), rather
    /// than remembered at entry.
    pub fn syscall_args_at_exit(&self) -> bool {
        self.args_at_exit
    }

    /// Reads one kernel counter (one `bpf()` call).
    pub fn counter(&self, counter: Counter) -> Result<u64> {
        Ok(self.counters.get(&(counter as u32), 0)?.iter().sum())
    }

    /// Reads the kernel counters (one `bpf()` call each).
    pub fn counters(&self) -> Result<KernelCounters> {
        let values = Counter::ALL
            .iter()
            .map(|counter| self.counter(*counter))
            .collect::<Result<_>>()?;
        Ok(KernelCounters { values })
    }

    /// Total run time and run count of the sensor's programs, as the kernel accounts them when
    /// `kernel.bpf_stats_enabled` is 1 (both 0 otherwise).
    pub fn bpf_stats(&self) -> (u64, u64) {
        self._ebpf
            .programs()
            .filter_map(|(_, program)| program.info().ok())
            .fold((0, 0), |(time, count), info| {
                (
                    time + u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX),
                    count + info.run_count(),
                )
            })
    }
}

/// Verifies and loads `names` side by side, one thread per core, biggest first (the order
/// given): the verifier spends most of a second on each vectored-I/O program, so one at a time
/// the sensor took about 4 s to start on a 2-core machine, capturing nothing meanwhile.
/// Returns each program's outcome by name.
fn load_programs(ebpf: &mut Ebpf, names: Vec<String>) -> StdHashMap<String, Result<()>> {
    let mut outcomes = StdHashMap::new();
    let mut by_name: StdHashMap<&str, &mut Program> = ebpf.programs_mut().collect();
    let mut queue = std::collections::VecDeque::new();
    for name in names {
        match by_name.remove(name.as_str()) {
            Some(program) => queue.push_back((name, program)),
            None => {
                let error = anyhow!("program {name} missing from the object");
                outcomes.insert(name, Err(error));
            }
        }
    }
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(queue.len())
        .max(1);
    let queue = Mutex::new(queue);
    let outcomes = Mutex::new(outcomes);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let next = queue
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .pop_front();
                    let Some((name, program)) = next else {
                        break;
                    };
                    let loaded =
                        load_program(program).with_context(|| format!("verifier rejected {name}"));
                    outcomes
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(name, loaded);
                }
            });
        }
    });
    outcomes
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner)
}

/// Whether every one of `programs` loaded: the first failure [`load_programs`] reported.
fn all_loaded(loaded: &mut StdHashMap<String, Result<()>>, programs: &[String]) -> Result<()> {
    programs
        .iter()
        .try_for_each(|program| outcome(loaded, program))
}

/// Loads one program into the kernel (the verifier's pass).
fn load_program(program: &mut Program) -> Result<()> {
    match program {
        Program::TracePoint(tracepoint) => tracepoint.load()?,
        Program::UProbe(uprobe) => uprobe.load()?,
        other => bail!("unexpected program type {:?}", other.prog_type()),
    }
    Ok(())
}

/// The outcome [`load_programs`] reported for `program` (an error if it was not asked for).
fn outcome(loaded: &mut StdHashMap<String, Result<()>>, program: &str) -> Result<()> {
    loaded
        .remove(program)
        .unwrap_or_else(|| Err(anyhow!("program {program} was not loaded")))
}

fn attach_tracepoint(ebpf: &mut Ebpf, program: &str, category: &str, name: &str) -> Result<()> {
    let tracepoint: &mut TracePoint = ebpf
        .program_mut(program)
        .ok_or_else(|| anyhow!("program {program} missing from the object"))?
        .try_into()?;
    tracepoint
        .attach(category, name)
        .with_context(|| format!("attaching {program} to {category}:{name}"))?;
    Ok(())
}

/// Attaches the payload syscalls' programs: one exit program per call reading the arguments
/// from the saved registers when `at_exit` says they loaded (`None`: not wanted, because the
/// configuration asks for entry programs or this is not x86-64, whose saved registers are the
/// only ones read), else, or when the kernel refused any of them (no BTF task helpers: before
/// Linux 5.15, or no vmlinux BTF), the entry/exit pairs. Every exit program is loaded before any
/// is attached, so the two kinds never both capture. Returns whether the arguments are read at
/// exit.
fn attach_payload_programs(ebpf: &mut Ebpf, at_exit: Option<Result<()>>) -> Result<bool> {
    match at_exit {
        Some(Ok(())) => {
            for syscall in PAYLOAD_SYSCALLS {
                let tracepoint = format!("sys_exit_{syscall}");
                attach_tracepoint(ebpf, &format!("{tracepoint}_regs"), "syscalls", &tracepoint)?;
            }
            return Ok(true);
        }
        Some(Err(error)) => warn!(
            error = format!("{error:#}"),
            "payload syscalls' arguments cannot be read at exit here (needs Linux 5.15 with BTF); remembering them at entry instead, which costs each call a second program and misses a read already blocked when capture starts"
        ),
        None => {}
    }
    let pairs: Vec<String> = PAYLOAD_SYSCALLS
        .iter()
        .flat_map(|syscall| ["enter", "exit"].map(|side| format!("sys_{side}_{syscall}")))
        .collect();
    let mut loaded = load_programs(ebpf, pairs.clone());
    for program in &pairs {
        outcome(&mut loaded, program)?;
        attach_tracepoint(ebpf, program, "syscalls", program)?;
    }
    Ok(false)
}

fn attach_uprobe(
    ebpf: &mut Ebpf,
    program: &str,
    offset: u64,
    path: &std::path::Path,
    scope: UProbeScope,
) -> Result<UProbeLink> {
    let uprobe: &mut UProbe = ebpf
        .program_mut(program)
        .ok_or_else(|| anyhow!("program {program} missing"))?
        .try_into()?;
    let link = uprobe.attach(UProbeAttachLocation::AbsoluteOffset(offset), path, scope)?;
    Ok(uprobe.take_link(link)?)
}

fn take(ebpf: &mut Ebpf, name: &str) -> Result<aya::maps::Map> {
    ebpf.take_map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the object"))
}

/// Wall-clock conversion for the kernel's monotonic timestamps.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    offset_ns: i128,
}

impl Clock {
    /// Measures the current offset between CLOCK_REALTIME and CLOCK_MONOTONIC.
    pub fn now() -> Result<Self> {
        let realtime = clock_ns(libc::CLOCK_REALTIME)?;
        let monotonic = clock_ns(libc::CLOCK_MONOTONIC)?;
        Ok(Clock {
            offset_ns: realtime as i128 - monotonic as i128,
        })
    }

    /// Nanoseconds since the epoch for a `bpf_ktime_get_ns()` value.
    pub fn to_unix_nanos(&self, monotonic_ns: u64) -> u64 {
        (monotonic_ns as i128 + self.offset_ns).max(0) as u64
    }

    /// The current monotonic time, comparable to event timestamps.
    pub fn monotonic_now() -> u64 {
        clock_ns(libc::CLOCK_MONOTONIC).unwrap_or(0)
    }
}

fn clock_ns(clock: libc::clockid_t) -> Result<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        bail!("clock_gettime failed");
    }
    Ok(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_poll_backs_off_while_idle_and_snaps_back_under_traffic() {
        let mut poll = RING_POLL;
        let mut seen = Vec::new();
        for _ in 0..6 {
            poll = next_poll(poll, 0);
            seen.push(poll.as_millis());
        }
        assert_eq!(seen, [200, 400, 800, 1000, 1000, 1000]);
        assert_eq!(next_poll(poll, 3), RING_POLL);
    }
}
