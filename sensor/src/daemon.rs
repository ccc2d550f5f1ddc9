//! The daemon: wires capture → conntrack → http → enrich → redact → export and decides which
//! processes are watched (discovery, `--pid`).

use std::{
    collections::{HashMap, HashSet, VecDeque},
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use sensor_common::maps::{SocketKey, WatchState};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{debug, info, warn};

use crate::{
    capture::{Capture, CaptureEvent, CaptureOptions, Clock, KernelCounters, seed, tls},
    conntrack::{Completed, Tracker, TrackerSettings},
    enrich::{
        self, ProcessInfo, ProcessTable, RecordContext, build_record,
        context::{self, ExchangeKey, Threads},
        kubernetes::{PodContainer, PodDirectory},
        process,
    },
    export::{Exporter, StdoutFormat, otlp::OtlpSettings},
    http::HttpSettings,
    metrics::{Metrics, Refresh},
    overload::{Budgets, Overload},
    ratelimit::RateLimit,
    redact::{Decision, Policy, parser_needs_restart, parser_settings},
};

/// Shortest time between two warnings about a full ring buffer.
const RINGBUF_FULL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// How often every watched process's mappings are read for OpenSSL files. A process that maps
/// a file executable is looked at right away (a kernel record says so); this only covers such
/// a record lost to a full ring buffer. Reading `/proc/PID/maps` of a Python app every 2 s was
/// a third of an idle sensor's CPU.
const TLS_RESCAN_ALL_INTERVAL: Duration = Duration::from_secs(60);

/// What the daemon watches and how it reports.
#[derive(Clone, Debug)]
pub struct DaemonOptions {
    /// Processes to watch (with their children); empty means discovery of every Python process.
    pub pids: Vec<u32>,
    /// With `pids`: stop, as on SIGTERM, once every watched process has exited (`attach`).
    pub until_watched_exit: bool,
    /// Where records go.
    pub output: Output,
    /// HTTP reassembly settings.
    pub http: HttpSettings,
    /// Connection tracking limits.
    pub tracker: TrackerSettings,
    /// The configuration whose `data_capture` settings (and per-service overrides) make the
    /// capture and redaction policy.
    pub policy: crate::config::Config,
    /// Where the configuration came from; re-read on SIGHUP.
    pub config_overrides: crate::config::Overrides,
    /// How much the export queue holds.
    pub export_queue: crate::export::queue::QueueLimits,
    /// Where to serve Prometheus metrics, if anywhere.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// How the capture is loaded (`sensor.ring_buffer_bytes`, …); `discover` is set from
    /// `pids`.
    pub capture: CaptureOptions,
}

/// Where the daemon sends records.
#[derive(Clone, Debug)]
pub enum Output {
    /// Printed on stdout.
    Stdout(StdoutFormat),
    /// Sent to an OTLP collector.
    Otlp(Box<OtlpSettings>),
}

/// Counters of the daemon's own decisions.
#[derive(Debug, Default)]
pub struct DaemonStats {
    /// Records built and handed to the exporter.
    pub records: u64,
    /// Data records for processes userspace does not watch (in flight when unwatched).
    pub unwatched_data: u64,
    /// Processes watched.
    pub watched: u64,
    /// Processes rejected by discovery (not Python, opted out, or not selected).
    pub rejected: u64,
    /// Discovery decisions that waited for the process's pod to be known (pod selectors).
    pub deferred: u64,
    /// Deferred decisions taken without the pod, which stayed unknown.
    pub deferred_timed_out: u64,
    /// Processes found to be Python only when looked at again after their exec (embedded
    /// interpreters: uWSGI, Apache's mod_wsgi).
    pub discovered_late: u64,
    /// Connections ignored because their peer is the sensor itself.
    pub own_traffic: u64,
    /// Connections whose TCP addresses neither the accept nor the process's getsockname/
    /// getpeername showed, looked up in /proc on first use.
    pub addresses_from_proc: u64,
}

/// The sensor's own socket addresses (its export connections), so that a watched process
/// receiving them is not captured.
#[derive(Default)]
struct OwnSockets {
    addrs: HashSet<std::net::SocketAddr>,
    refreshed: Option<std::time::Instant>,
}

impl OwnSockets {
    /// Whether `addr` is one of the sensor's own sockets, re-reading them when the answer may
    /// be stale (a new export connection is seen by its receiver right after it is made).
    fn contains(&mut self, addr: std::net::SocketAddr) -> bool {
        if self.addrs.contains(&addr) || crate::export::is_own_connection(addr) {
            return true;
        }
        let stale = self
            .refreshed
            .is_none_or(|at| at.elapsed() > Duration::from_millis(20));
        if stale && is_local(addr.ip()) {
            self.addrs = own_socket_addrs();
            self.refreshed = Some(std::time::Instant::now());
            return self.addrs.contains(&addr);
        }
        false
    }
}

fn is_local(ip: std::net::IpAddr) -> bool {
    ip.is_loopback() || std::net::UdpSocket::bind((ip, 0)).is_ok()
}

/// Local addresses of this process's TCP sockets.
fn own_socket_addrs() -> HashSet<std::net::SocketAddr> {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return HashSet::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| {
            std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
        })
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(socket_local_addr)
        .collect()
}

fn socket_local_addr(fd: i32) -> Option<std::net::SocketAddr> {
    // SAFETY: an all-zero sockaddr_storage is valid.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: valid out-pointers sized for any address family.
    let rc = unsafe { libc::getsockname(fd, (&raw mut storage).cast(), &mut len) };
    if rc != 0 {
        return None;
    }
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says this is a sockaddr_in.
            let sin: libc::sockaddr_in = unsafe { std::ptr::read((&raw const storage).cast()) };
            let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(std::net::SocketAddr::new(
                ip.into(),
                u16::from_be(sin.sin_port),
            ))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this is a sockaddr_in6.
            let sin6: libc::sockaddr_in6 = unsafe { std::ptr::read((&raw const storage).cast()) };
            let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            let ip = ip
                .to_ipv4_mapped()
                .map_or(std::net::IpAddr::V6(ip), std::net::IpAddr::V4);
            Some(std::net::SocketAddr::new(ip, u16::from_be(sin6.sin6_port)))
        }
        _ => None,
    }
}

/// How much longer than the response timeout a client call's link to its server request is
/// kept: both ends' records are built within the response timeout of the call.
const LINK_RETENTION_MARGIN_NS: u64 = 60_000_000_000;

/// Everything the event handler needs besides the capture itself.
pub struct Pipeline {
    procs: ProcessTable,
    tracker: Tracker,
    exporter: Exporter,
    policy: Policy,
    clock: Clock,
    host_name: String,
    watched: HashSet<u32>,
    discover: bool,
    /// Discovery's include/exclude rules (`sensor.include`, `sensor.exclude`).
    selector: enrich::selectors::Selector,
    /// Pods of this node (inactive outside a cluster).
    pods: PodDirectory,
    /// Processes whose discovery decision waits for their pod (namespace or label selectors):
    /// the exec'd file name and since when.
    deferred: HashMap<u32, (String, Instant)>,
    /// Processes discovery found not to be Python (yet), looked at again: see [`Recheck`].
    rechecks: Rechecks,
    /// The configured `service_name`, the service name of last resort.
    configured_service_name: Option<String>,
    /// The trace-context formats requests are read for (`propagation_formats`).
    propagation: Vec<context::Propagation>,
    completed: Vec<Completed>,
    salt: u64,
    /// Which server request each thread serves, and the client calls made for them.
    threads: Threads,
    own: OwnSockets,
    /// Connections deliberately not tracked (the sensor's own export traffic): records already
    /// in flight for them are dropped instead of starting an unknown connection.
    ignored_conns: HashSet<u64>,
    /// Connections opened without their TCP addresses, settled on first use (see
    /// `settle_addresses`).
    unresolved: HashSet<u64>,
    /// OpenSSL symbol tables already read.
    tls_symbols: tls::SymbolCache,
    /// Per watched process, its mapped files that may hold OpenSSL when it was last probed:
    /// a rescan probes again only when they change.
    tls_mapped: HashMap<u32, Vec<String>>,
    /// Watched processes that mapped a file executable since the last batch of records: their
    /// mappings are looked at once the batch is handled.
    tls_rescan_due: HashSet<u32>,
    /// The CPU and memory budget, and what is shed beyond it.
    overload: Overload,
    /// The kernel's ring-buffer-full count when last looked at, and its rate-limited warning.
    ringbuf_full: (u64, RateLimit),
    /// Counters.
    pub stats: DaemonStats,
}

impl Pipeline {
    fn watch(&mut self, capture: &mut Capture, pid: u32) {
        self.deferred.remove(&pid);
        if let Err(error) = capture.watch(pid) {
            warn!(pid, %error, "cannot watch process");
            return;
        }
        if self.watched.insert(pid) {
            self.stats.watched += 1;
            let info = self.procs.get(pid);
            let pod = info.as_deref().and_then(|i| self.pod_of(i));
            let service = info.as_deref().map_or_else(
                || "?".to_owned(),
                |i| {
                    process::resolve_service_name(
                        i,
                        pod.as_ref(),
                        self.configured_service_name.as_deref(),
                    )
                },
            );
            info!(
                pid,
                service,
                pod = pod.as_ref().map(|p| p.pod.name.as_str()),
                namespace = pod.as_ref().map(|p| p.pod.namespace.as_str()),
                "watching process"
            );
        }
        self.probe_tls(capture, pid);
        let now = Clock::monotonic_now();
        for adoption in seed::adoptions(self.procs.proc_root(), pid, now) {
            if let Err(error) = capture.adopt(adoption.key, adoption.entry, adoption.state) {
                warn!(pid, fd = adoption.key.fd, %error, "cannot adopt existing socket");
                continue;
            }
            debug!(pid, fd = adoption.key.fd, remote = ?adoption.open.remote, "adopted existing connection");
            self.tracker.open(&adoption.open, &mut self.completed);
        }
    }

    fn unwatch(&mut self, capture: &mut Capture, pid: u32) {
        self.deferred.remove(&pid);
        capture.unwatch(pid);
        self.forget_tls(capture, pid);
        self.watched.remove(&pid);
    }

    /// Detaches a process's OpenSSL probes and forgets what was known of its mappings.
    fn forget_tls(&mut self, capture: &mut Capture, pid: u32) {
        capture.detach_tls(pid);
        self.tls_mapped.remove(&pid);
        self.tls_rescan_due.remove(&pid);
    }

    /// Probes the OpenSSL a watched process has mapped or would load (new files only).
    fn probe_tls(&mut self, capture: &mut Capture, pid: u32) {
        let mapped = tls::mapped_candidates(self.procs.proc_root(), pid);
        self.probe_tls_mapped(capture, pid, mapped);
    }

    /// [`Self::probe_tls`], given the process's mapped candidates already read.
    fn probe_tls_mapped(&mut self, capture: &mut Capture, pid: u32, mapped: Vec<String>) {
        let libraries =
            tls::libraries_from(self.procs.proc_root(), pid, &mapped, &mut self.tls_symbols);
        self.tls_mapped.insert(pid, mapped);
        let known = capture.tls_libraries(pid);
        if libraries.iter().all(|l| known.contains(&l.id)) {
            return;
        }
        let attached = capture.attach_tls(pid, &libraries);
        if attached > 0 {
            debug!(pid, files = attached, "OpenSSL probed");
        }
    }

    /// Libraries watched processes mapped from places not probed in advance: those that
    /// mapped a file executable since the last batch, or (`all`, on the slow timer that covers
    /// a lost record) every watched process. Only a process whose mapped candidates changed
    /// since its last probe is probed again.
    fn rescan_tls(&mut self, capture: &mut Capture, all: bool) {
        let pids: Vec<u32> = if all {
            self.tls_mapped.retain(|pid, _| self.watched.contains(pid));
            self.tls_rescan_due.clear();
            self.watched.iter().copied().collect()
        } else {
            self.tls_rescan_due
                .drain()
                .filter(|pid| self.watched.contains(pid))
                .collect()
        };
        for pid in pids {
            let mapped = tls::mapped_candidates(self.procs.proc_root(), pid);
            if self.tls_mapped.get(&pid) != Some(&mapped) {
                self.probe_tls_mapped(capture, pid, mapped);
            }
        }
    }

    /// The pod container a process runs in, when pod metadata knows it.
    fn pod_of(&self, info: &ProcessInfo) -> Option<PodContainer> {
        self.pods.container(info.container_id.as_deref()?)
    }

    /// Applies a discovery decision.
    fn apply(&mut self, capture: &mut Capture, pid: u32, filename: &str, decision: Discovery) {
        match decision {
            Discovery::Watch => self.watch(capture, pid),
            Discovery::Reject => {
                self.stats.rejected += 1;
                self.unwatch(capture, pid);
            }
            Discovery::NotPythonYet => {
                self.stats.rejected += 1;
                self.unwatch(capture, pid);
                self.schedule_recheck(pid, filename, 0);
            }
            Discovery::Defer => {
                if !self.deferred.contains_key(&pid) {
                    self.stats.deferred += 1;
                    debug!(pid, "discovery waits for the process's pod");
                }
                self.deferred
                    .insert(pid, (filename.to_owned(), Instant::now()));
            }
        }
    }

    /// Queues look number `attempt` at a process not Python so far (if it still runs).
    fn schedule_recheck(&mut self, pid: u32, filename: &str, attempt: usize) {
        if self.procs.proc_root().join(pid.to_string()).exists() {
            self.rechecks
                .schedule(pid, filename, attempt, Instant::now());
        }
    }

    /// Looks again at processes that were not Python at their exec: one that now is (it
    /// mapped libpython) is decided on as at its exec, and so are the children it forked
    /// meanwhile (unwatched, they were forked unwatched).
    fn recheck_discovery(&mut self, capture: &mut Capture) {
        for recheck in self.rechecks.take_due(Instant::now()) {
            // Watched since (it exec'd Python, e.g. `sh -c "exec python app.py"`): decided.
            if self.watched.contains(&recheck.pid) {
                continue;
            }
            // Most are gone, or stay what they were: only their executable and maps are read.
            if !process::is_python(self.procs.proc_root(), recheck.pid, &recheck.filename) {
                self.schedule_recheck(recheck.pid, &recheck.filename, recheck.attempt + 1);
                continue;
            }
            let Some(info) = process::read_proc(self.procs.proc_root(), recheck.pid) else {
                continue;
            };
            match self.decide(&info, &recheck.filename, false) {
                Discovery::NotPythonYet | Discovery::Reject => {}
                decision => {
                    self.stats.discovered_late += 1;
                    info!(
                        pid = recheck.pid,
                        exe = info.executable_path,
                        "a program embedding Python (it mapped libpython after its exec)"
                    );
                    let family = with_descendants(self.procs.proc_root(), &[recheck.pid]);
                    for pid in family {
                        if self.watched.contains(&pid) {
                            continue;
                        }
                        let Some(info) = self.procs.get(pid) else {
                            continue;
                        };
                        let decision = if pid == recheck.pid {
                            decision
                        } else {
                            self.decide(&info, "", false)
                        };
                        if matches!(decision, Discovery::Watch | Discovery::Defer) {
                            self.apply(capture, pid, &recheck.filename, decision);
                        }
                    }
                }
            }
        }
    }

    /// Decides again for processes waiting for their pod: now known, gone, or waited out.
    fn decide_deferred(&mut self, capture: &mut Capture) {
        if self.deferred.is_empty() {
            return;
        }
        let waiting: Vec<(u32, String, Instant)> = self
            .deferred
            .iter()
            .map(|(pid, (filename, since))| (*pid, filename.clone(), *since))
            .collect();
        for (pid, filename, since) in waiting {
            let Some(info) = self.procs.get(pid) else {
                self.deferred.remove(&pid);
                continue;
            };
            let waited_out = since.elapsed() >= POD_WAIT;
            let decision = self.decide(&info, &filename, waited_out);
            if waited_out {
                self.stats.deferred_timed_out += 1;
                info!(
                    pid,
                    container_id = info.container_id.as_deref().unwrap_or(""),
                    ?decision,
                    "the process's pod is still unknown: decided without it"
                );
            }
            if decision != Discovery::Defer {
                self.apply(capture, pid, &filename, decision);
            }
        }
    }

    fn handle(&mut self, capture: &mut Capture, event: CaptureEvent) {
        match event {
            CaptureEvent::Data(chunk) => {
                if !self.unresolved.is_empty() && self.unresolved.remove(&chunk.conn_id) {
                    self.settle_addresses(capture, chunk.conn_id, chunk.time_ns);
                }
                if self.ignored_conns.contains(&chunk.conn_id) {
                    return;
                }
                if !self.watched.contains(&chunk.pid) {
                    self.stats.unwatched_data += 1;
                    return;
                }
                if let Some((conn_id, control)) = self.tracker.data(&chunk, &mut self.completed) {
                    capture.set_control(conn_id, control);
                }
                self.follow_thread(&chunk);
            }
            CaptureEvent::Open(mut open) => {
                if self.watched.contains(&open.pid) {
                    if open.remote.is_some_and(|remote| self.own.contains(remote)) {
                        // The peer is this sensor (its OTLP export reaching a watched
                        // receiver): never capture our own traffic.
                        self.stats.own_traffic += 1;
                        self.ignore_conn(capture, open.conn_id);
                        return;
                    }
                    let lacking =
                        open.unix_path.is_none() && (open.local.is_none() || open.remote.is_none());
                    if lacking && open.family == sensor_common::event::Family::Unix {
                        // A unix accept: the listener's path is in the process's socket table.
                        if let Some(row) = seed::resolve(self.procs.proc_root(), open.pid, open.fd)
                        {
                            open.unix_path = row.path;
                        }
                    } else if lacking {
                        // TCP addresses the accept did not show usually follow in `Address`
                        // records (the process's getsockname/getpeername); whatever is still
                        // missing when the connection is first used is read from /proc.
                        if self.unresolved.len() >= 65_536 {
                            self.unresolved.clear();
                        }
                        self.unresolved.insert(open.conn_id);
                    }
                    self.tracker.open(&open, &mut self.completed);
                }
            }
            CaptureEvent::Close(close) => {
                self.unresolved.remove(&close.conn_id);
                self.ignored_conns.remove(&close.conn_id);
                self.tracker.close(&close, &mut self.completed);
            }
            CaptureEvent::TlsBind(bind) => {
                if !self.unresolved.is_empty() && self.unresolved.remove(&bind.socket_conn_id) {
                    self.settle_addresses(capture, bind.socket_conn_id, bind.time_ns);
                }
                if self.ignored_conns.contains(&bind.socket_conn_id) {
                    // TLS inside the sensor's own export connection: not captured either.
                    self.ignore_conn(capture, bind.stream_id);
                    self.tracker
                        .forget(bind.stream_id, bind.time_ns, &mut Vec::new());
                    return;
                }
                self.tracker.bind_tls(&bind, &mut self.completed);
            }
            CaptureEvent::Address {
                conn_id,
                local,
                remote,
            } => {
                self.tracker.address(conn_id, local, remote);
            }
            CaptureEvent::Fork { pid, child, .. } => {
                if self.watched.contains(&pid) {
                    // Always the parent's identity: a pid still marked watched (its process's
                    // exit record lost) must not keep the identity of the process it was.
                    self.procs.fork(pid, child);
                    if self.watched.insert(child) {
                        debug!(parent = pid, child, "watching forked child");
                    }
                    self.probe_tls(capture, child);
                } else if let Some(waiting) = self.deferred.get(&pid).cloned() {
                    // A child forked while its parent's decision waits for the pod (gunicorn's
                    // workers) waits with it.
                    self.procs.fork(pid, child);
                    self.deferred.insert(child, waiting);
                }
            }
            CaptureEvent::ExecArg(arg) => self.procs.exec_arg(arg),
            CaptureEvent::Exec(exec) => {
                // Sockets are close-on-exec in Python: the old program's connections are over,
                // and their exchanges are reported under the old program's identity before the
                // new one replaces it.
                self.forget_process_sockets(capture, exec.pid, exec.time_ns);
                self.flush_completed();
                let info = self.procs.exec(&exec);
                // The new program maps its own libraries.
                self.forget_tls(capture, exec.pid);
                if self.watched.contains(&exec.pid) {
                    self.probe_tls(capture, exec.pid);
                }
                if exec.watch_state == WatchState::Pending as u32 {
                    let decision = self.decide(&info, &exec.filename, false);
                    self.apply(capture, exec.pid, &exec.filename, decision);
                }
            }
            CaptureEvent::CloseRange {
                pid,
                first,
                last,
                time_ns,
            } => {
                for (conn_id, fd) in self.tracker.conns_of(pid) {
                    let in_range = u32::try_from(fd).is_ok_and(|fd| fd >= first && fd <= last);
                    if in_range {
                        capture.forget_fd(SocketKey { tgid: pid, fd });
                        self.tracker.forget(conn_id, time_ns, &mut self.completed);
                    }
                }
            }
            CaptureEvent::ExecMapping { pid } => {
                if self.watched.contains(&pid) {
                    self.tls_rescan_due.insert(pid);
                }
            }
            CaptureEvent::Exit { pid, time_ns } => {
                self.tracker.process_exit(pid, time_ns, &mut self.completed);
                self.flush_completed();
                self.forget_process_sockets(capture, pid, time_ns);
                self.forget_tls(capture, pid);
                self.watched.remove(&pid);
                self.deferred.remove(&pid);
                self.procs.remove(pid);
            }
        }
        self.flush_completed();
    }

    /// Follows which server request each thread serves (a read on a server connection) and
    /// links the client requests it writes meanwhile to that request ([`Threads`]).
    fn follow_thread(&mut self, chunk: &crate::capture::events::DataChunk) {
        use sensor_common::event::{Direction, Role};
        if chunk.syscall_len == 0 {
            return;
        }
        let tracker = &self.tracker;
        let finished = |conn_id: u64| tracker.progress(conn_id).map(|(_, n)| n);
        let Some((meta, seq)) = tracker.progress(chunk.conn_id) else {
            return;
        };
        let thread = (chunk.pid, chunk.tid);
        match (meta.role, chunk.direction) {
            // Only bytes that made a request head count (not junk, nor a protocol that is not
            // HTTP): the thread then serves the connection's oldest unanswered request.
            (Role::Server, Direction::Ingress)
                if tracker.unfinished_request_headers(chunk.conn_id).is_some() =>
            {
                self.threads
                    .request_read(thread, chunk.conn_id, seq, chunk.time_ns, finished);
            }
            (Role::Client, Direction::Egress) => {
                let Some(key) = ExchangeKey::of(meta.role, meta.local, meta.remote, meta.tls, seq)
                else {
                    return;
                };
                if self.threads.client_writes(&key, chunk.conn_id) {
                    return;
                }
                let Some((server_conn, server_seq)) =
                    self.threads.serving(thread, chunk.time_ns, finished)
                else {
                    return;
                };
                let Some((server, _)) = tracker.progress(server_conn) else {
                    return;
                };
                let Some(server_key) = ExchangeKey::of(
                    server.role,
                    server.local,
                    server.remote,
                    server.tls,
                    server_seq,
                ) else {
                    return;
                };
                let incoming =
                    tracker
                        .unfinished_request_headers(server_conn)
                        .and_then(|headers| {
                            context::incoming_context(&self.propagation, |name| {
                                headers
                                    .iter()
                                    .find(|(n, _)| n.eq_ignore_ascii_case(name))
                                    .and_then(|(_, v)| std::str::from_utf8(v).ok())
                            })
                        });
                let client_watched =
                    tracker.is_watched_client(server_key.client, server_key.server);
                let upstream = self.threads.link_of(&server_key);
                if let Some(ids) = context::server_ids(
                    self.salt,
                    Some(&server_key),
                    incoming,
                    client_watched,
                    upstream.as_ref(),
                ) {
                    let link = context::Link {
                        trace_id: ids.trace_id,
                        parent_span_id: ids.span_id,
                    };
                    self.threads
                        .add_link(key, chunk.conn_id, link, chunk.time_ns);
                }
            }
            _ => {}
        }
    }

    /// Whether discovery watches a process: a Python process that does not opt out and that
    /// the selectors want. With namespace or label selectors, a process in a container whose
    /// pod is not known yet waits for it (the kubelet reports a container's id shortly after
    /// the container starts), unless `waited_out`.
    fn decide(&self, info: &ProcessInfo, filename: &str, waited_out: bool) -> Discovery {
        if !self.discover || info.opted_out() {
            return Discovery::Reject;
        }
        if !process::is_python(self.procs.proc_root(), info.pid, filename) {
            return Discovery::NotPythonYet;
        }
        let pod = self.pod_of(info);
        if pod.is_none()
            && !waited_out
            && info.container_id.is_some()
            && self.selector.uses_pods()
            && self.pods.is_active()
        {
            return Discovery::Defer;
        }
        if self.selector.wants(info, pod.as_ref()) {
            Discovery::Watch
        } else {
            Discovery::Reject
        }
    }

    fn forget_process_sockets(&mut self, capture: &mut Capture, pid: u32, time_ns: u64) {
        for (_, fd) in self.tracker.conns_of(pid) {
            capture.forget_fd(SocketKey { tgid: pid, fd });
        }
        self.tracker.process_exit(pid, time_ns, &mut self.completed);
        self.threads.forget_process(pid);
    }

    /// Periodic: measures the sensor against its budgets and applies the overload level (body
    /// shedding in every connection's parser, and so in the kernel's copy instructions).
    /// Nothing here waits on the kernel or the application.
    fn overload_tick(&mut self, capture: &mut Capture) {
        let tick = self.overload.tick();
        if let Some(change) = tick.change {
            // Bodies being read are skipped from now on, not from their connection's next data.
            for (conn_id, control) in self.tracker.set_shed_bodies(change.to.sheds_bodies()) {
                capture.set_control(conn_id, control);
            }
        }
        if tick.trim {
            crate::allocator::trim();
        }
    }

    /// SIGHUP: re-reads the configuration and swaps the capture and redaction policy; the
    /// connections and their state are kept. What the HTTP parser was started with (body
    /// sizes, body capture, content types) can only widen at a restart.
    fn reload(&mut self, options: &DaemonOptions) {
        let loaded = match crate::config::load_from_process_env(&options.config_overrides) {
            Ok(loaded) => loaded,
            Err(error) => {
                warn!(%error, "SIGHUP: configuration not reloaded; the previous policy stays");
                return;
            }
        };
        let budgets = Budgets::from_settings(&loaded.config.sensor);
        match Policy::from_config(&loaded.config) {
            Ok(policy) => {
                self.policy.replace_rules(policy);
                self.overload.set_budgets(budgets);
                if loaded.config.sensor.overload_interval_ms
                    != options.policy.sensor.overload_interval_ms
                {
                    warn!("SIGHUP: a new overload interval takes effect at restart");
                }
                let need = parser_settings(&loaded.config, options.http.clone());
                if parser_needs_restart(&need, &options.http) {
                    warn!(
                        "SIGHUP: larger body limits, body capture turned on or new content types take effect at restart"
                    );
                }
                info!(
                    cpu_budget_cores = budgets.cpu_cores,
                    memory_budget_bytes = budgets.memory_bytes,
                    "SIGHUP: capture and redaction policy reloaded"
                );
            }
            Err(error) => {
                warn!(%error, "SIGHUP: configuration not reloaded; the previous policy stays")
            }
        }
    }

    /// First use of a connection whose accept did not show its addresses: what the process's
    /// own getsockname/getpeername did not report is read from its socket tables, and a
    /// connection that turns out to come from this sensor's export is dropped.
    fn settle_addresses(&mut self, capture: &mut Capture, conn_id: u64, time_ns: u64) {
        let Some((pid, fd)) = self
            .tracker
            .progress(conn_id)
            .map(|(meta, _)| (meta.pid, meta.fd))
        else {
            return;
        };
        if self.tracker.lacks_address(conn_id) {
            self.stats.addresses_from_proc += 1;
            if let Some(row) = seed::resolve(self.procs.proc_root(), pid, fd) {
                self.tracker.address(conn_id, row.local, row.remote);
            }
        }
        let own = self
            .tracker
            .progress(conn_id)
            .is_some_and(|(meta, _)| meta.remote.is_some_and(|remote| self.own.contains(remote)));
        if own {
            self.stats.own_traffic += 1;
            self.ignore_conn(capture, conn_id);
            self.tracker.forget(conn_id, time_ns, &mut Vec::new());
        }
    }

    /// Stops capture of a connection (or TLS stream) in the kernel and drops its records
    /// already in flight; the set of ignored ids stays bounded.
    fn ignore_conn(&mut self, capture: &mut Capture, conn_id: u64) {
        capture.set_control(
            conn_id,
            sensor_common::maps::ConnControl {
                stop: 1,
                ..Default::default()
            },
        );
        if self.ignored_conns.len() >= 65_536 {
            self.ignored_conns.clear();
        }
        self.ignored_conns.insert(conn_id);
    }

    fn flush_completed(&mut self) {
        let completed = std::mem::take(&mut self.completed);
        let level = self.overload.level();
        for mut done in completed {
            if done.meta.role == sensor_common::event::Role::Server
                && done
                    .meta
                    .remote
                    .is_some_and(crate::export::is_own_connection)
            {
                // Registered before the export request was written, so this catches what the
                // open-time check could not (a connection accepted before it was registered).
                self.stats.own_traffic += 1;
                continue;
            }
            // Overload: bodies finished before the level rose are shed here; whole exchanges
            // are dropped before any enrichment work. Each is counted.
            if level.sheds_bodies() {
                done.exchange.shed_bodies();
            }
            self.overload.stats.bodies_shed += done.exchange.shed_body_count();
            if level.sheds_exchanges() && done.exchange.is_reportable() {
                self.overload.stats.exchanges_shed += 1;
                continue;
            }
            let process = match self.procs.get(done.meta.pid) {
                Some(p) => p,
                None => Arc::new(ProcessInfo::new(
                    done.meta.pid,
                    String::new(),
                    Vec::new(),
                    Default::default(),
                )),
            };
            let clock = self.clock;
            let to_unix = move |ns: u64| clock.to_unix_nanos(ns);
            let client_watched = match (done.meta.role, done.meta.local, done.meta.remote) {
                (sensor_common::event::Role::Server, Some(local), Some(remote)) => {
                    self.tracker.is_watched_client(remote, local)
                }
                _ => false,
            };
            let key = ExchangeKey::of(
                done.meta.role,
                done.meta.local,
                done.meta.remote,
                done.meta.tls,
                done.seq,
            );
            let link = key.and_then(|key| match done.meta.role {
                sensor_common::event::Role::Client => self.threads.link(&key, done.meta.conn_id),
                _ => self.threads.link_of(&key),
            });
            let pod = self.pod_of(&process);
            let ctx = RecordContext {
                host_name: &self.host_name,
                scheme: if done.meta.tls { "https" } else { "http" },
                to_unix_nanos: &to_unix,
                seq: done.seq,
                client_watched,
                link,
                salt: self.salt,
                pod: pod.as_ref(),
                configured_service_name: self.configured_service_name.as_deref(),
                propagation: &self.propagation,
            };
            if let Some(mut record) = build_record(done.exchange, &done.meta, &process, &ctx)
                && self.policy.process(&mut record) == Decision::Export
            {
                self.stats.records += 1;
                self.exporter.send(record);
            }
        }
    }
}

/// How long a discovery decision waits for a process's pod to be known.
const POD_WAIT: Duration = Duration::from_secs(30);

/// What discovery does with a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Discovery {
    /// Watch it.
    Watch,
    /// Leave it unwatched.
    Reject,
    /// Decide once its pod is known (pod selectors).
    Defer,
    /// Leave it unwatched, but look again: not Python now, it may load libpython later.
    NotPythonYet,
}

/// A process discovery found not to be Python at its exec, to look at again: a program
/// embedding the interpreter (uWSGI, Apache with mod_wsgi) maps libpython only once it runs,
/// after the exec the sensor decided on, and forks its workers soon after.
#[derive(Clone, Debug, PartialEq)]
struct Recheck {
    pid: u32,
    filename: String,
    due: Instant,
    /// Index into [`RECHECK_AFTER`] of the look this is.
    attempt: usize,
}

/// When a process not Python at its exec is looked at again, after the exec.
const RECHECK_AFTER: [Duration; 2] = [Duration::from_secs(1), Duration::from_secs(5)];

/// Most processes waiting to be looked at again; beyond, the oldest are given up (counted).
const RECHECKS_MAX: usize = 4096;

/// The processes waiting for another look, bounded.
#[derive(Default)]
struct Rechecks {
    queue: VecDeque<Recheck>,
    /// Looks given up because [`RECHECKS_MAX`] were waiting.
    dropped: u64,
}

impl Rechecks {
    /// Queues look number `attempt` (from `now`); none after the last of [`RECHECK_AFTER`].
    fn schedule(&mut self, pid: u32, filename: &str, attempt: usize, now: Instant) {
        let Some(after) = RECHECK_AFTER.get(attempt) else {
            return;
        };
        if self.queue.len() >= RECHECKS_MAX {
            self.queue.pop_front();
            self.dropped += 1;
        }
        self.queue.push_back(Recheck {
            pid,
            filename: filename.to_owned(),
            due: now + *after,
            attempt,
        });
    }

    /// Takes the looks due at `now`, leaving the others in order.
    fn take_due(&mut self, now: Instant) -> Vec<Recheck> {
        if self.queue.iter().all(|r| r.due > now) {
            return Vec::new();
        }
        let (due, waiting): (Vec<Recheck>, Vec<Recheck>) =
            self.queue.drain(..).partition(|r| r.due <= now);
        self.queue = waiting.into();
        due
    }
}

/// Every process id under `/proc`.
pub fn all_pids(proc_root: &Path) -> Vec<u32> {
    std::fs::read_dir(proc_root)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// `pids` and all their descendants, from `/proc/*/stat` parent links.
pub fn with_descendants(proc_root: &Path, pids: &[u32]) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = all_pids(proc_root)
        .into_iter()
        .filter_map(|pid| Some((pid, enrich::process::parent_pid(proc_root, pid)?)))
        .collect();
    let mut result: Vec<u32> = pids.to_vec();
    let mut i = 0;
    while i < result.len() {
        let parent = result[i];
        for (pid, ppid) in &parents {
            if *ppid == parent && !result.contains(pid) {
                result.push(*pid);
            }
        }
        i += 1;
    }
    result
}

/// Checks the processes given with `--pid`: a pid no running process has is warned about, and
/// when none runs there is nothing to watch, which is an error.
pub fn require_running(proc_root: &Path, pids: &[u32]) -> Result<()> {
    let missing: Vec<u32> = (pids.iter().copied())
        .filter(|pid| !process::is_running(proc_root, *pid))
        .collect();
    if missing.len() == pids.len() {
        bail!("no running process has the pid given ({missing:?}): nothing to watch");
    }
    for pid in missing {
        warn!(pid, "no running process has this pid; watching the others");
    }
    Ok(())
}

/// Runs the daemon until SIGINT/SIGTERM, then flushes everything buffered.
pub async fn run(options: DaemonOptions) -> Result<()> {
    let discover = options.pids.is_empty();
    let proc_root = Path::new("/proc");
    if !discover {
        require_running(proc_root, &options.pids)?;
    }
    let mut capture = Capture::load(&CaptureOptions {
        discover,
        ..options.capture.clone()
    })?;
    let exporter = match &options.output {
        Output::Stdout(format) => Exporter::stdout(*format, options.export_queue),
        Output::Otlp(settings) => {
            info!(url = %settings.url, protocol = %settings.protocol, "exporting spans over OTLP");
            Exporter::otlp((**settings).clone())?
        }
    };
    let pods = enrich::kubernetes::start().await;
    if pods.is_active() && !pods.wait_synced(Duration::from_secs(10)).await {
        warn!("the pods of this node are not listed yet: records get pod metadata once they are");
    }
    let selector = enrich::selectors::Selector::new(&options.policy.sensor.selectors)?;
    if selector.uses_pods() && !pods.is_active() {
        warn!(
            "namespace or pod label selectors are configured but there is no pod metadata: they match no process"
        );
    }
    let mut pipeline = Pipeline {
        procs: ProcessTable::new("/proc"),
        tracker: Tracker::new(Arc::new(options.http.clone()), options.tracker.clone()),
        exporter,
        policy: Policy::from_config(&options.policy).map_err(anyhow::Error::msg)?,
        clock: Clock::now()?,
        host_name: enrich::host_name(),
        watched: HashSet::new(),
        discover,
        selector,
        pods,
        deferred: HashMap::new(),
        rechecks: Rechecks::default(),
        configured_service_name: options.policy.service_name.clone(),
        propagation: options.policy.propagation(),
        completed: Vec::new(),
        salt: rand::random(),
        threads: Threads::new(
            options
                .tracker
                .response_timeout_ns
                .saturating_add(LINK_RETENTION_MARGIN_NS),
        ),
        own: OwnSockets::default(),
        ignored_conns: HashSet::new(),
        unresolved: HashSet::new(),
        tls_symbols: tls::SymbolCache::default(),
        tls_mapped: HashMap::new(),
        tls_rescan_due: HashSet::new(),
        overload: Overload::new(Budgets::from_settings(&options.policy.sensor)),
        ringbuf_full: (0, RateLimit::new(RINGBUF_FULL_LOG_INTERVAL)),
        stats: DaemonStats::default(),
    };
    if discover {
        for pid in all_pids(proc_root) {
            if pid == std::process::id() {
                continue;
            }
            let Some(info) = process::read_proc(proc_root, pid) else {
                continue;
            };
            match pipeline.decide(&info, "", false) {
                Discovery::Watch => pipeline.watch(&mut capture, pid),
                Discovery::Defer => {
                    pipeline.apply(&mut capture, pid, "", Discovery::Defer);
                }
                // Nothing to undo: the kernel does not watch it. Running programs that embed
                // Python have mapped libpython by now.
                Discovery::Reject | Discovery::NotPythonYet => {}
            }
        }
    } else {
        for pid in with_descendants(proc_root, &options.pids) {
            pipeline.watch(&mut capture, pid);
        }
    }
    info!(watched = pipeline.watched.len(), discover, "sensor running");
    // Loading the programs and reading the processes' libraries needed memory that is free
    // now: hand it back before the sensor settles at rest.
    crate::allocator::trim();

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let metrics = Arc::new(Metrics::default());
    // Kept here so that, with no metrics server, the refresh branch below simply never fires.
    let (refresh_sender, mut refresh_requests) = crate::metrics::refresh_channel();
    if let Some(addr) = options.metrics_addr {
        metrics.clone().serve(addr, refresh_sender.clone()).await?;
    }
    let mut ring_check = tokio::time::interval(Duration::from_secs(1));
    let mut report = tokio::time::interval(Duration::from_secs(30));
    let mut rescan = tokio::time::interval(TLS_RESCAN_ALL_INTERVAL);
    let mut overload_tick = tokio::time::interval(options.policy.sensor.overload_interval());
    overload_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let output_closed = pipeline.exporter.output_closed();
    loop {
        tokio::select! {
            result = capture.next_batch(|cap, event| pipeline.handle(cap, event)) => {
                result?;
                pipeline.rescan_tls(&mut capture, false);
            }
            _ = tick.tick() => {
                let now = Clock::monotonic_now();
                pipeline.tracker.tick(now, &mut pipeline.completed);
                pipeline.flush_completed();
                pipeline.threads.expire(now);
                pipeline.decide_deferred(&mut capture);
                pipeline.recheck_discovery(&mut capture);
                if options.until_watched_exit
                    && !discover
                    && !pipeline.watched.iter().any(|pid| process::is_running(proc_root, *pid))
                {
                    info!("every watched process has exited; stopping");
                    break;
                }
            }
            _ = ring_check.tick() => {
                if let Ok(full) = capture.counter(sensor_common::maps::Counter::RingbufFull) {
                    warn_ring_buffer_full(full, capture.ring_bytes(), &mut pipeline);
                }
            }
            Some(Refresh(published)) = refresh_requests.recv() => {
                publish_metrics(&metrics, &capture, capture.counters().ok().as_ref(), &pipeline);
                let _ = published.send(());
            }
            _ = rescan.tick() => pipeline.rescan_tls(&mut capture, true),
            _ = overload_tick.tick() => pipeline.overload_tick(&mut capture),
            _ = report.tick() => {
                capture.sweep(|pid| proc_root.join(pid.to_string()).exists());
                log_counters(&capture, &pipeline);
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = output_closed.notified() => break,
            _ = sighup.recv() => pipeline.reload(&options),
        }
    }
    info!("stopping: draining capture and flushing buffered exchanges");
    // Stopping may take a while (a collector that is away, the kernel's detach): a second
    // Ctrl-C or SIGTERM means now. The kernel unloads everything with the process.
    tokio::spawn(async move {
        tokio::select! {
            _ = sigterm.recv() => {}
            _ = sigint.recv() => {}
        }
        warn!("second signal while stopping: exiting now, what was not flushed is lost");
        std::process::exit(130);
    });
    // Everything already in the ring buffer still counts: read until it is empty (bounded, so
    // a process still flooding it cannot hold the stop up).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline
        && capture.read_available(|cap, event| pipeline.handle(cap, event)) > 0
    {}
    pipeline
        .tracker
        .finish_all(Clock::monotonic_now(), &mut pipeline.completed);
    pipeline.flush_completed();
    log_counters(&capture, &pipeline);
    pipeline.exporter.shutdown().await;
    // Everything is out; what is left is the kernel's work, which is silent and slow: each
    // tracepoint program's detach waits for a grace period under the lock that serialises
    // tracing events (4–6 s in all on our VM).
    info!("detaching the kernel programs (the kernel takes a few seconds)");
    drop(capture);
    info!("sensor stopped");
    Ok(())
}

/// Warns (at most every [`RINGBUF_FULL_LOG_INTERVAL`]) when the kernel dropped records because
/// the ring buffer was full since the last look: the loss is in `kernel_ringbuf_full`, the
/// application never waits for the sensor.
fn warn_ring_buffer_full(total: u64, ring_buffer_bytes: u32, pipeline: &mut Pipeline) {
    let (seen, log) = &mut pipeline.ringbuf_full;
    let new = total.saturating_sub(*seen);
    *seen = total;
    if let Some(lost) = log.hit(Clock::monotonic_now(), new) {
        warn!(
            lost,
            total,
            ring_buffer_bytes,
            "ring buffer full: capture records dropped by the kernel (counted in kernel_ringbuf_full; the application was not slowed); the affected exchanges are reported incomplete or not at all — raise sensor.ring_buffer_bytes if this recurs"
        );
    }
}

fn publish_metrics(
    metrics: &Metrics,
    capture: &Capture,
    kernel: Option<&KernelCounters>,
    pipeline: &Pipeline,
) {
    let policy = &pipeline.policy.stats;
    for (name, help, value) in [
        (
            "policy_excluded",
            "exchanges dropped by a path exclusion",
            policy.excluded,
        ),
        (
            "policy_sampled_out",
            "exchanges dropped by sampling",
            policy.sampled_out,
        ),
        (
            "policy_sampled_in",
            "exchanges kept by sampling",
            policy.sampled_in,
        ),
        (
            "policy_errors_kept",
            "error exchanges kept whatever the sampling",
            policy.errors_kept,
        ),
        (
            "redacted_values",
            "values replaced by [REDACTED]",
            policy.redacted_values,
        ),
        (
            "bodies_redaction_failed",
            "bodies dropped because they could not be redacted",
            policy.bodies_redaction_failed,
        ),
        (
            "bodies_truncated",
            "bodies truncated to body_max_size_bytes after redaction",
            policy.bodies_truncated,
        ),
        (
            "bodies_not_captured",
            "bodies removed by per-service capture settings",
            policy.bodies_not_captured,
        ),
    ] {
        metrics.publish(name, help, value);
    }
    if let Some(kernel) = kernel {
        for (name, value) in kernel.named() {
            metrics.publish(
                &format!("kernel_{name}"),
                "kernel-side capture counter",
                value,
            );
        }
    }
    let (bpf_time, bpf_runs) = capture.bpf_stats();
    metrics.publish(
        "kernel_bpf_run_time_ns",
        "time spent in the sensor's programs (kernel.bpf_stats_enabled=1)",
        bpf_time,
    );
    metrics.publish(
        "kernel_bpf_run_count",
        "runs of the sensor's programs (kernel.bpf_stats_enabled=1)",
        bpf_runs,
    );
    metrics.publish(
        "capture_decode_errors",
        "ring-buffer records that could not be decoded",
        capture.decode_errors,
    );
    metrics.publish(
        "tls_probe_attach_errors",
        "OpenSSL functions that could not be probed in a watched process",
        capture.tls_attach_errors,
    );
    let overload = &pipeline.overload.stats;
    for (name, help, value) in [
        (
            "overload_bodies_shed",
            "message bodies not captured because the sensor was over its CPU or memory budget",
            overload.bodies_shed,
        ),
        (
            "overload_exchanges_shed",
            "exchanges dropped because the sensor was over its CPU or memory budget",
            overload.exchanges_shed,
        ),
        (
            "overload_level_changes",
            "changes of the overload level",
            overload.level_changes,
        ),
        (
            "overload_memory_trims",
            "times freed memory was handed back to the system (near the memory budget, or quiet after a burst)",
            overload.memory_trims,
        ),
    ] {
        metrics.publish(name, help, value);
    }
    metrics.set_gauge(
        "overload_level",
        "overload level: 0 normal, 1 shedding bodies, 2 shedding exchanges",
        pipeline.overload.level().as_i64(),
    );
    let tracker = pipeline.tracker.stats();
    for (name, help, value) in [
        ("connections_opened", "connections tracked", tracker.opened),
        ("connections_closed", "connections finished", tracker.closed),
        (
            "connections_evicted_capacity",
            "connections evicted at the table cap",
            tracker.evicted_capacity,
        ),
        (
            "connections_evicted_idle",
            "connections evicted after the idle timeout",
            tracker.evicted_idle,
        ),
        (
            "connections_unknown",
            "data for connections whose open was not seen",
            tracker.unknown_connection,
        ),
        ("stream_gaps", "gaps in captured streams", tracker.gaps),
        (
            "stream_gap_bytes",
            "bytes in gaps of captured streams",
            tracker.gap_bytes,
        ),
        (
            "stream_overlap_bytes",
            "overlapping bytes trimmed",
            tracker.overlap_bytes,
        ),
        (
            "tls_streams_bound",
            "TLS streams tied to their socket connection",
            tracker.tls_bound,
        ),
        (
            "tls_streams_bound_untracked_socket",
            "TLS streams tied to a socket connection that was not tracked",
            tracker.tls_bound_unknown_socket,
        ),
        (
            "exchanges",
            "exchange records built",
            pipeline.stats.records,
        ),
        (
            "unwatched_data",
            "data records of processes no longer watched",
            pipeline.stats.unwatched_data,
        ),
        (
            "processes_watched",
            "processes watched",
            pipeline.stats.watched,
        ),
        (
            "processes_rejected",
            "processes discovery did not watch",
            pipeline.stats.rejected,
        ),
        (
            "own_traffic_connections",
            "connections ignored because their peer is the sensor itself",
            pipeline.stats.own_traffic,
        ),
        (
            "addresses_from_proc",
            "accepted connections whose addresses were looked up in /proc on first use",
            pipeline.stats.addresses_from_proc,
        ),
        (
            "processes_deferred",
            "discovery decisions that waited for the process's pod",
            pipeline.stats.deferred,
        ),
        (
            "processes_deferred_timed_out",
            "discovery decisions taken without the pod, which stayed unknown",
            pipeline.stats.deferred_timed_out,
        ),
        (
            "processes_discovered_late",
            "processes found to embed Python only after their exec (uWSGI, mod_wsgi)",
            pipeline.stats.discovered_late,
        ),
        (
            "discovery_rechecks_dropped",
            "looks again at processes not Python at their exec, given up (too many waiting)",
            pipeline.rechecks.dropped,
        ),
    ] {
        metrics.publish(name, help, value);
    }
    for (name, help, value) in pipeline.tracker.http_stats().named() {
        metrics.publish(&format!("http_{name}"), help, value);
    }
    metrics.set_gauge(
        "connections_tracked",
        "connections tracked now",
        i64::try_from(pipeline.tracker.len()).unwrap_or(i64::MAX),
    );
    metrics.set_gauge(
        "http_buffered_bytes",
        "bytes held by HTTP reassembly now (buffers, waiting requests, finished exchanges)",
        i64::try_from(pipeline.tracker.buffered_bytes()).unwrap_or(i64::MAX),
    );
    metrics.set_gauge(
        "export_queued_bytes",
        "bytes of records waiting in the export queue now",
        i64::try_from(pipeline.exporter.queued_bytes()).unwrap_or(i64::MAX),
    );
    if let Some(stats) = pipeline.pods.stats() {
        for (name, help, value) in stats.named() {
            metrics.publish(name, help, value);
        }
    }
    let export = pipeline.exporter.stats();
    let load = |v: &std::sync::atomic::AtomicU64| v.load(std::sync::atomic::Ordering::Relaxed);
    metrics.publish(
        "export_queued",
        "records queued for export",
        load(&export.queued),
    );
    metrics.publish(
        "export_exported",
        "records exported",
        load(&export.exported),
    );
    metrics.publish(
        "export_dropped_queue_full",
        "records dropped because the export queue was full",
        load(&export.dropped_queue_full),
    );
    metrics.publish(
        "export_dropped_queue_bytes",
        "of the records dropped because the export queue was full, those refused for its byte limit",
        load(&export.dropped_queue_bytes),
    );
    metrics.publish(
        "export_failed",
        "records that failed to export",
        load(&export.failed),
    );
}

fn log_counters(capture: &Capture, pipeline: &Pipeline) {
    let kernel = capture.counters().unwrap_or_default();
    let export = pipeline.exporter.stats();
    let tracker = pipeline.tracker.stats();
    info!(
        records = pipeline.stats.records,
        watched = pipeline.watched.len(),
        connections = pipeline.tracker.len(),
        ringbuf_full = kernel.get(sensor_common::maps::Counter::RingbufFull),
        truncated_bytes = kernel.get(sensor_common::maps::Counter::TruncatedBytes),
        skipped_bytes = kernel.get(sensor_common::maps::Counter::SkippedBytes),
        sendfile_bytes = kernel.get(sensor_common::maps::Counter::SendfileBytes),
        ignored_http2 = kernel.get(sensor_common::maps::Counter::IgnoredHttp2),
        ignored_tls = kernel.get(sensor_common::maps::Counter::IgnoredTls),
        ignored_other = kernel.get(sensor_common::maps::Counter::IgnoredOther),
        gaps = tracker.gaps,
        evicted = tracker.evicted_capacity + tracker.evicted_idle,
        export_dropped = export
            .dropped_queue_full
            .load(std::sync::atomic::Ordering::Relaxed),
        decode_errors = capture.decode_errors,
        overload_level = pipeline.overload.level().as_i64(),
        bodies_shed = pipeline.overload.stats.bodies_shed,
        exchanges_shed = pipeline.overload.stats.exchanges_shed,
        "counters"
    );
    if let Some(stats) = pipeline.pods.stats() {
        let [
            lists,
            list_errors,
            watch_restarts,
            watch_errors,
            expired,
            events,
        ] = stats.named().map(|(_, _, value)| value);
        info!(
            pods = pipeline.pods.len(),
            lists,
            list_errors,
            watch_restarts,
            watch_errors,
            expired,
            events,
            deferred = pipeline.deferred.len(),
            "pod metadata counters"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_pids_must_include_a_running_process() {
        let root = std::env::temp_dir().join(format!("sensor-given-pids-{}", std::process::id()));
        for (pid, state) in [(20, "S"), (21, "Z")] {
            std::fs::create_dir_all(root.join(pid.to_string())).unwrap();
            std::fs::write(
                root.join(format!("{pid}/stat")),
                format!("{pid} (python3) {state} 1 1 1 0 -1"),
            )
            .unwrap();
        }
        assert!(require_running(&root, &[20, 21, 22]).is_ok());
        let error = require_running(&root, &[21, 22]).unwrap_err().to_string();
        assert!(error.contains("[21, 22]"), "{error}");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn rechecks_come_due_in_turn_stop_after_the_last_look_and_stay_bounded() {
        let start = Instant::now();
        let mut rechecks = Rechecks::default();
        rechecks.schedule(1, "/usr/bin/uwsgi", 0, start);
        rechecks.schedule(2, "/usr/sbin/apache2", 1, start);
        assert!(rechecks.take_due(start).is_empty());
        let first = rechecks.take_due(start + RECHECK_AFTER[0]);
        assert_eq!(first.iter().map(|r| r.pid).collect::<Vec<_>>(), [1]);
        assert_eq!(first[0].filename, "/usr/bin/uwsgi");
        let second = rechecks.take_due(start + RECHECK_AFTER[1]);
        assert_eq!(
            second
                .iter()
                .map(|r| (r.pid, r.attempt))
                .collect::<Vec<_>>(),
            [(2, 1)]
        );
        // No look after the last one.
        rechecks.schedule(2, "/usr/sbin/apache2", RECHECK_AFTER.len(), start);
        assert!(rechecks.queue.is_empty());
        // Bounded: the oldest are given up, counted.
        for pid in 0..RECHECKS_MAX as u32 + 3 {
            rechecks.schedule(pid, "x", 0, start);
        }
        assert_eq!(rechecks.queue.len(), RECHECKS_MAX);
        assert_eq!(rechecks.dropped, 3);
        assert_eq!(rechecks.queue.front().map(|r| r.pid), Some(3));
    }
}
