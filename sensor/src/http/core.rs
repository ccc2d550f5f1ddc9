//! The state both directions share: requests waiting for responses, pairing, emission.
//!
//! Requests are queued in stream order as their heads complete; responses are paired with
//! them first in, first out. A response can only answer a request that started no later than
//! it did (time causality): one that starts before the oldest waiting request, or while no
//! request can still appear before it, answers a request the capture never saw and is
//! dropped. After bytes were lost on the response stream, a waiting request whose successor
//! also started before the response, and after the loss, is taken to have lost its response.

use std::collections::VecDeque;
use std::sync::Arc;

use super::{HttpExchange, HttpRequest, HttpResponse, HttpSettings, HttpStats};

/// Fixed bookkeeping cost counted for each queued exchange.
const ENTRY_OVERHEAD: usize = std::mem::size_of::<Entry>();

/// How many bare placeholders (requests past the pipeline limit) are kept per allowed
/// pipelined request.
const STUBS_PER_SLOT: usize = 16;

/// One request, from its head on, and what answered it.
struct Entry {
    start_ns: u64,
    end_ns: u64,
    is_head: bool,
    is_connect: bool,
    /// Past the pipeline limit: kept only to keep pairing aligned, never emitted.
    stub: bool,
    request: Option<HttpRequest>,
    req_done: bool,
    response: Option<HttpResponse>,
    resp_done: bool,
    paired: bool,
    incomplete: bool,
    /// Given up without a response at a close or the timeout: when the wait ended (never
    /// before the request did).
    gave_up_ns: Option<u64>,
}

/// What a response head pairs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Pairing {
    /// The request with this id.
    Entry(u64),
    /// No request: the capture missed it.
    Orphan,
    /// Not decidable yet: a request may still appear on the request stream.
    Wait,
}

/// The flags of a request a response's framing depends on.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct RequestFlags {
    /// HEAD: the response has no body.
    pub is_head: bool,
    /// CONNECT: a 2xx response turns the connection into a tunnel.
    pub is_connect: bool,
}

/// Shared state of one connection.
pub(super) struct Core {
    pub settings: Arc<HttpSettings>,
    pub stats: HttpStats,
    entries: VecDeque<Entry>,
    /// Id of `entries[0]`.
    base: u64,
    /// Id of the oldest request not yet answered (or given up).
    cursor: u64,
    stubs: usize,
    /// Earliest time bytes were lost on the response stream since the last pairing.
    loss_since: Option<u64>,
    /// Finished exchanges not yet taken.
    pub done: Vec<HttpExchange>,
    /// Set after 101 / CONNECT 2xx.
    pub upgraded: bool,
    /// The request the upgrade answered (`None`: one the capture never saw).
    pub upgrade_entry: Option<u64>,
    /// Decide pairings now (closing, expiring, or buffer cap): no more requests are awaited.
    pub force: bool,
    /// No request head can start earlier than this on the request stream.
    pub req_horizon: u64,
    /// Overload: bodies that start now are not kept (flagged shed).
    pub shed_bodies: bool,
    /// The capture of this connection ended before the connection did (the sensor stopped,
    /// or stopped tracking it): whatever is finished from now on is incomplete.
    pub capture_ended: bool,
}

impl Core {
    /// Empty state.
    pub(super) fn new(settings: Arc<HttpSettings>) -> Self {
        Core {
            settings,
            stats: HttpStats::default(),
            entries: VecDeque::new(),
            base: 0,
            cursor: 0,
            stubs: 0,
            loss_since: None,
            done: Vec::new(),
            upgraded: false,
            upgrade_entry: None,
            force: false,
            req_horizon: 0,
            shed_bodies: false,
            capture_ended: false,
        }
    }

    /// Sheds the bodies of requests and responses held here (waiting for their other half,
    /// or finished and not taken yet).
    pub(super) fn shed_held_bodies(&mut self) {
        for entry in &mut self.entries {
            if let Some(request) = entry.request.as_mut() {
                request.body.shed();
            }
            if let Some(response) = entry.response.as_mut() {
                response.body.shed();
            }
        }
        for exchange in &mut self.done {
            exchange.shed_bodies();
        }
    }

    fn next_id(&self) -> u64 {
        self.base + self.entries.len() as u64
    }

    fn get(&self, id: u64) -> Option<&Entry> {
        let idx = usize::try_from(id.checked_sub(self.base)?).ok()?;
        self.entries.get(idx)
    }

    fn get_mut(&mut self, id: u64) -> Option<&mut Entry> {
        let idx = usize::try_from(id.checked_sub(self.base)?).ok()?;
        self.entries.get_mut(idx)
    }

    /// Notes bytes lost on the response stream at `time`.
    pub(super) fn response_loss(&mut self, time: u64) {
        self.loss_since = Some(self.loss_since.map_or(time, |t| t.min(time)));
    }

    /// Queues a request whose head just completed. `None` when it had to be dropped (the
    /// pipeline is full and so are the placeholders).
    pub(super) fn new_request(&mut self, start_ns: u64, flags: RequestFlags) -> Option<u64> {
        let waiting = usize::try_from(self.next_id() - self.cursor).unwrap_or(usize::MAX);
        let max = self.settings.max_pipelined.max(1);
        let stub = waiting >= max;
        if stub {
            self.stats.pipeline_overflows += 1;
            if self.stubs >= max.saturating_mul(STUBS_PER_SLOT) {
                return None;
            }
            self.stubs += 1;
        }
        let id = self.next_id();
        self.entries.push_back(Entry {
            start_ns,
            end_ns: start_ns,
            is_head: flags.is_head,
            is_connect: flags.is_connect,
            stub,
            request: None,
            req_done: false,
            response: None,
            resp_done: false,
            paired: false,
            incomplete: false,
            gave_up_ns: None,
        });
        Some(id)
    }

    /// The request of entry `id` is complete (or given up, `incomplete`).
    pub(super) fn request_done(&mut self, id: u64, req: HttpRequest, incomplete: bool) {
        let incomplete = incomplete || self.capture_ended;
        if let Some(e) = self.get_mut(id) {
            e.end_ns = req.end_ns;
            e.req_done = true;
            e.incomplete |= incomplete;
            if !e.stub {
                e.request = Some(req);
            }
        }
        self.flush();
    }

    /// Whether the request with this id needs no more waiting for its response's verdict on
    /// an upgrade: it was answered, given up, or is gone.
    pub(super) fn resolved(&self, id: u64) -> bool {
        self.get(id).is_none_or(|e| e.paired || e.resp_done)
    }

    /// Decides what a final response starting at `start` answers.
    pub(super) fn decide(&mut self, start: u64, force: bool) -> Pairing {
        let Some(front) = self.get(self.cursor) else {
            if force || self.force || self.req_horizon > start {
                return Pairing::Orphan;
            }
            return Pairing::Wait;
        };
        if front.start_ns > start {
            return Pairing::Orphan;
        }
        if let Some(loss) = self.loss_since {
            loop {
                let Some(next) = self.get(self.cursor + 1) else {
                    // Whether the front lost its response depends on a request not read
                    // yet: wait until the request stream is past the response's start.
                    if force || self.force || self.req_horizon > start {
                        break;
                    }
                    return Pairing::Wait;
                };
                if next.start_ns < loss || next.start_ns > start {
                    break;
                }
                self.give_up_front(None);
            }
        }
        self.loss_since = None;
        Pairing::Entry(self.cursor)
    }

    /// The request at the cursor gets no response; `at`: when the wait for it ended, if it
    /// ended for a reason seen (a close, the timeout) rather than in lost bytes.
    fn give_up_front(&mut self, at: Option<u64>) {
        let unseen = self.loss_since.is_some() || self.capture_ended;
        let cursor = self.cursor;
        if let Some(e) = self.get_mut(cursor) {
            e.resp_done = true;
            e.incomplete |= unseen;
            e.gave_up_ns = at.map(|at| at.max(e.end_ns));
            self.stats.unanswered_requests += 1;
        }
        self.cursor += 1;
    }

    /// The flags of the request a response was paired with.
    pub(super) fn flags(&self, id: u64) -> RequestFlags {
        self.get(id)
            .map_or_else(RequestFlags::default, |e| RequestFlags {
                is_head: e.is_head,
                is_connect: e.is_connect,
            })
    }

    /// Marks entry `id` (the one [`Core::decide`] returned) as answered.
    pub(super) fn pair(&mut self, id: u64) {
        if let Some(e) = self.get_mut(id) {
            e.paired = true;
        }
        if id == self.cursor {
            self.cursor += 1;
        }
    }

    /// The response paired with `id` is complete (or given up, `incomplete`). `None` id: an
    /// orphan, dropped.
    pub(super) fn response_done(&mut self, id: Option<u64>, resp: HttpResponse, incomplete: bool) {
        let Some(id) = id else { return };
        let incomplete = incomplete || self.capture_ended;
        if let Some(e) = self.get_mut(id) {
            e.resp_done = true;
            e.incomplete |= incomplete;
            if !e.stub {
                e.response = Some(resp);
            }
        }
        self.flush();
    }

    /// A 101 or a CONNECT 2xx answered `id` (or an unseen request, `None`): requests queued
    /// after it were never HTTP; any still unanswered before it get no response.
    pub(super) fn upgrade(&mut self, id: Option<u64>) {
        self.upgraded = true;
        self.upgrade_entry = id;
        let keep = match id {
            Some(id) => id + 1,
            None => self.cursor,
        };
        while self.next_id() > keep {
            if let Some(e) = self.entries.pop_back() {
                self.stats.dropped_after_upgrade += 1;
                if e.stub {
                    self.stubs = self.stubs.saturating_sub(1);
                }
            }
        }
        self.flush();
    }

    /// Gives up requests that have waited longer than `timeout` for a response.
    pub(super) fn expire(&mut self, now: u64, timeout: u64) {
        while let Some(e) = self.get(self.cursor) {
            if !e.req_done || e.paired || now.saturating_sub(e.end_ns) <= timeout {
                break;
            }
            self.give_up_front(Some(now));
        }
        self.flush();
    }

    /// Connection closed at `time`: every request still waiting gets no response, every
    /// request still being read is emitted as it is.
    pub(super) fn close(&mut self, time: u64) {
        while self.get(self.cursor).is_some() {
            self.give_up_front(Some(time));
        }
        for e in &mut self.entries {
            e.req_done = true;
            e.resp_done = true;
        }
        self.flush();
    }

    /// Moves finished exchanges, oldest first, to `done`.
    pub(super) fn flush(&mut self) {
        while let Some(front) = self.entries.front() {
            if !(front.req_done && front.resp_done) {
                break;
            }
            let Some(e) = self.entries.pop_front() else {
                break;
            };
            self.base += 1;
            if e.stub {
                self.stubs = self.stubs.saturating_sub(1);
                continue;
            }
            let Some(request) = e.request else { continue };
            let incomplete = e.incomplete;
            if incomplete {
                self.stats.incomplete_exchanges += 1;
            }
            self.stats.exchanges += 1;
            self.done.push(HttpExchange {
                request: Some(request),
                response: e.response,
                incomplete,
                // Without every byte, the response may have come: when the wait ended is not
                // when the call did.
                gave_up_ns: e.gave_up_ns.filter(|_| !incomplete),
            });
        }
        if self.cursor < self.base {
            self.cursor = self.base;
        }
    }

    /// The oldest request whose exchange is not finished: its id, and the request once
    /// complete.
    pub(super) fn oldest_unfinished(&self) -> Option<(u64, Option<&HttpRequest>)> {
        let front = self.entries.front()?;
        Some((self.base, front.request.as_ref()))
    }

    /// Memory held by queued and finished exchanges.
    pub(super) fn held_bytes(&self) -> usize {
        let queued: usize = self
            .entries
            .iter()
            .map(|e| {
                ENTRY_OVERHEAD
                    + e.request.as_ref().map_or(0, HttpRequest::held_bytes)
                    + e.response.as_ref().map_or(0, HttpResponse::held_bytes)
            })
            .sum();
        let done: usize = self
            .done
            .iter()
            .map(|x| {
                std::mem::size_of::<HttpExchange>()
                    + x.request.as_ref().map_or(0, HttpRequest::held_bytes)
                    + x.response.as_ref().map_or(0, HttpResponse::held_bytes)
            })
            .sum();
        queued + done
    }
}
