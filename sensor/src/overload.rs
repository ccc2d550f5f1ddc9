//! The overload policy: a CPU and memory budget for the sensor itself, and what it gives up
//! beyond it — bodies first, then whole exchanges — so that the sensor never takes more than
//! it was given and never slows the application down.
//!
//! Every interval (`sensor.overload_interval_ms`, 2 s by default) the daemon measures its own
//! CPU time (`getrusage(RUSAGE_SELF)`, user + system, over the interval: cores used) and
//! resident memory (`/proc/self/statm`), and the [`Governor`] keeps a [`Level`]:
//!
//! - [`Level::Normal`] → [`Level::ShedBodies`] on the first reading over a budget;
//! - [`Level::ShedBodies`] → [`Level::ShedExchanges`] after [`ESCALATE_AFTER`] consecutive
//!   readings still over a budget;
//! - one level down after [`STEP_DOWN_AFTER`] consecutive readings under [`STEP_DOWN_SHARE`]
//!   of every budget (hysteresis: a reading between the two thresholds keeps the level and
//!   restarts both counts).
//!
//! The decision is pure ([`Governor::observe`] on a [`Reading`]) and tested on synthetic
//! readings; [`Sampler`] takes the real ones. A budget of 0 is unlimited.

use std::{fmt, time::Instant};

use tracing::warn;

use crate::config::SensorSettings;

/// Consecutive readings over budget, at [`Level::ShedBodies`], that make the sensor shed whole
/// exchanges.
pub const ESCALATE_AFTER: u32 = 4;

/// Consecutive readings under [`STEP_DOWN_SHARE`] of the budgets that bring the level one step
/// down.
pub const STEP_DOWN_AFTER: u32 = 4;

/// The share of a budget a reading must stay under for the level to step down.
pub const STEP_DOWN_SHARE: f64 = 0.8;

/// How much the sensor gives up to stay within its budgets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Everything is captured.
    #[default]
    Normal = 0,
    /// Bodies are not captured (the kernel skips their bytes); exchanges are still reported,
    /// their shed bodies flagged.
    ShedBodies = 1,
    /// Bodies are not captured and finished exchanges are dropped before enrichment and
    /// export (counted).
    ShedExchanges = 2,
}

impl Level {
    /// The level as a number (the `overload_level` gauge).
    pub fn as_i64(self) -> i64 {
        self as i64
    }

    /// Whether bodies are shed at this level.
    pub fn sheds_bodies(self) -> bool {
        self >= Level::ShedBodies
    }

    /// Whether whole exchanges are shed at this level.
    pub fn sheds_exchanges(self) -> bool {
        self >= Level::ShedExchanges
    }

    fn up(self) -> Level {
        match self {
            Level::Normal => Level::ShedBodies,
            Level::ShedBodies | Level::ShedExchanges => Level::ShedExchanges,
        }
    }

    fn down(self) -> Level {
        match self {
            Level::Normal | Level::ShedBodies => Level::Normal,
            Level::ShedExchanges => Level::ShedBodies,
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Normal => "normal",
            Level::ShedBodies => "shed_bodies",
            Level::ShedExchanges => "shed_exchanges",
        })
    }
}

/// What the sensor may use; 0 means unlimited.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Budgets {
    /// CPU, in cores (CPU seconds per second).
    pub cpu_cores: f64,
    /// Resident memory, in bytes.
    pub memory_bytes: u64,
}

impl Budgets {
    /// The budgets of the `sensor` configuration section.
    pub fn from_settings(settings: &SensorSettings) -> Budgets {
        Budgets {
            cpu_cores: settings.cpu_budget_cores,
            memory_bytes: settings.memory_budget_bytes,
        }
    }

    /// Whether a reading exceeds a budget.
    fn exceeded(&self, reading: &Reading) -> bool {
        (self.cpu_cores > 0.0 && reading.cpu_cores > self.cpu_cores)
            || (self.memory_bytes > 0 && reading.rss_bytes > self.memory_bytes)
    }

    /// Whether a reading is under `share` of every budget.
    fn under(&self, reading: &Reading, share: f64) -> bool {
        let cpu = self.cpu_cores <= 0.0 || reading.cpu_cores < self.cpu_cores * share;
        let memory =
            self.memory_bytes == 0 || (reading.rss_bytes as f64) < self.memory_bytes as f64 * share;
        cpu && memory
    }

    /// Whether resident memory is near the memory budget (over [`STEP_DOWN_SHARE`] of it):
    /// freed memory is then handed back to the system.
    pub fn near_memory_budget(&self, reading: &Reading) -> bool {
        self.memory_bytes > 0
            && reading.rss_bytes as f64 >= self.memory_bytes as f64 * STEP_DOWN_SHARE
    }
}

/// The sensor's use over one interval.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Reading {
    /// CPU time used over the interval divided by its length: cores in use.
    pub cpu_cores: f64,
    /// Resident memory at the end of the interval, in bytes.
    pub rss_bytes: u64,
}

/// A level change and the reading that caused it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Change {
    /// The level before.
    pub from: Level,
    /// The level now.
    pub to: Level,
    /// The reading that decided it.
    pub reading: Reading,
}

/// The decision logic: readings in, level out (see the module documentation).
#[derive(Clone, Debug)]
pub struct Governor {
    budgets: Budgets,
    level: Level,
    /// Consecutive readings over budget at [`Level::ShedBodies`].
    over: u32,
    /// Consecutive readings under [`STEP_DOWN_SHARE`] of the budgets.
    under: u32,
}

impl Governor {
    /// A governor at [`Level::Normal`].
    pub fn new(budgets: Budgets) -> Self {
        Governor {
            budgets,
            level: Level::Normal,
            over: 0,
            under: 0,
        }
    }

    /// The current level.
    pub fn level(&self) -> Level {
        self.level
    }

    /// The budgets in force.
    pub fn budgets(&self) -> Budgets {
        self.budgets
    }

    /// New budgets (configuration reloaded); the level stays and moves with the next readings.
    pub fn set_budgets(&mut self, budgets: Budgets) {
        if budgets != self.budgets {
            self.budgets = budgets;
            self.over = 0;
            self.under = 0;
        }
    }

    /// Takes one reading into account; returns the level change it caused, if any.
    pub fn observe(&mut self, reading: Reading) -> Option<Change> {
        let exceeded = self.budgets.exceeded(&reading);
        if self.budgets.under(&reading, STEP_DOWN_SHARE) {
            self.under += 1;
        } else {
            self.under = 0;
        }
        if exceeded && self.level == Level::ShedBodies {
            self.over += 1;
        } else {
            self.over = 0;
        }
        let to = if (exceeded && self.level == Level::Normal) || self.over >= ESCALATE_AFTER {
            self.level.up()
        } else if self.under >= STEP_DOWN_AFTER && self.level != Level::Normal {
            self.level.down()
        } else {
            return None;
        };
        let from = self.level;
        self.level = to;
        self.over = 0;
        self.under = 0;
        Some(Change { from, to, reading })
    }
}

/// Takes readings of the sensor's own process.
#[derive(Debug, Default)]
pub struct Sampler {
    /// Time and CPU seconds of the previous sample.
    last: Option<(Instant, f64)>,
}

impl Sampler {
    /// A reading over the time since the previous call; `None` the first time (there is no
    /// interval yet) or when the process's use cannot be read.
    pub fn sample(&mut self) -> Option<Reading> {
        let now = Instant::now();
        let cpu = cpu_seconds()?;
        let previous = self.last.replace((now, cpu));
        let (then, cpu_then) = previous?;
        let wall = now.duration_since(then).as_secs_f64();
        if wall <= 0.0 {
            return None;
        }
        Some(Reading {
            cpu_cores: (cpu - cpu_then).max(0.0) / wall,
            rss_bytes: rss_bytes()?,
        })
    }
}

/// User and system CPU time of this process so far, in seconds.
fn cpu_seconds() -> Option<f64> {
    // SAFETY: an all-zero rusage is valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid out-pointer.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return None;
    }
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Some(seconds(usage.ru_utime) + seconds(usage.ru_stime))
}

/// Resident memory of this process (`/proc/self/statm`, second field, in pages).
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: plain sysconf.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages.saturating_mul(u64::try_from(page).ok().filter(|p| *p > 0).unwrap_or(4096)))
}

/// Counters of the overload policy; every body and exchange it drops is counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OverloadStats {
    /// Message bodies not captured (or freed) because of overload.
    pub bodies_shed: u64,
    /// Finished exchanges dropped before enrichment and export because of overload.
    pub exchanges_shed: u64,
    /// Level changes.
    pub level_changes: u64,
    /// Times memory was handed back to the system: near the memory budget while shedding, or
    /// when the sensor went quiet after a burst.
    pub memory_trims: u64,
}

/// CPU use (cores) from which the sensor counts as busy: about 170 16 KB POSTs/s or 700 small
/// GETs/s, enough traffic for its buffers to have grown.
const BUSY_CORES: f64 = 0.01;
/// CPU use (cores) under which a busy sensor counts as quiet again (idle, it uses about 0.0005;
/// holding 10,000 idle connections, 0.002): the buffers the traffic grew (export batches,
/// parser buffers) are handed back to the system then, rather than at the allocator's
/// next purge.
const QUIET_CORES: f64 = 0.005;

/// The daemon's overload state: the governor, its sampler and its counters.
#[derive(Debug)]
pub struct Overload {
    governor: Governor,
    sampler: Sampler,
    /// Busy since the last trim (see [`QUIET_CORES`]).
    busy: bool,
    /// Counters.
    pub stats: OverloadStats,
}

/// What one periodic measurement decided.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tick {
    /// The level changed.
    pub change: Option<Change>,
    /// Memory is near its budget while shedding, or the sensor went quiet after a burst: freed
    /// memory should be handed back.
    pub trim: bool,
}

impl Overload {
    /// The policy with these budgets, at [`Level::Normal`].
    pub fn new(budgets: Budgets) -> Self {
        Overload {
            governor: Governor::new(budgets),
            sampler: Sampler::default(),
            busy: false,
            stats: OverloadStats::default(),
        }
    }

    /// The current level.
    pub fn level(&self) -> Level {
        self.governor.level()
    }

    /// New budgets (SIGHUP).
    pub fn set_budgets(&mut self, budgets: Budgets) {
        self.governor.set_budgets(budgets);
    }

    /// Measures the sensor and updates the level; a change is counted and logged once.
    pub fn tick(&mut self) -> Tick {
        let Some(reading) = self.sampler.sample() else {
            return Tick {
                change: None,
                trim: false,
            };
        };
        self.apply(reading)
    }

    /// Takes a reading into account (see [`Overload::tick`]).
    fn apply(&mut self, reading: Reading) -> Tick {
        let change = self.governor.observe(reading);
        let budgets = self.governor.budgets();
        if let Some(change) = &change {
            self.stats.level_changes += 1;
            warn!(
                level = %change.to,
                previous = %change.from,
                cpu_cores = (reading.cpu_cores * 1000.0).round() / 1000.0,
                rss_bytes = reading.rss_bytes,
                cpu_budget_cores = budgets.cpu_cores,
                memory_budget_bytes = budgets.memory_bytes,
                "overload level changed"
            );
        }
        let gone_quiet = self.busy && reading.cpu_cores < QUIET_CORES;
        if reading.cpu_cores >= BUSY_CORES {
            self.busy = true;
        } else if gone_quiet {
            self.busy = false;
        }
        let trim =
            gone_quiet || (self.level().sheds_bodies() && budgets.near_memory_budget(&reading));
        if trim {
            self.stats.memory_trims += 1;
        }
        Tick { change, trim }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn budgets(cpu_cores: f64, memory_mib: u64) -> Budgets {
        Budgets {
            cpu_cores,
            memory_bytes: memory_mib * MIB,
        }
    }

    fn reading(cpu_cores: f64, rss_mib: u64) -> Reading {
        Reading {
            cpu_cores,
            rss_bytes: rss_mib * MIB,
        }
    }

    use Level::{Normal as N, ShedBodies as B, ShedExchanges as X};

    /// A name, budgets, then readings (cores, MiB) and the level after each one.
    type Case = (&'static str, Budgets, &'static [((f64, u64), Level)]);

    #[test]
    fn levels_follow_readings() {
        let cases: &[Case] = &[
            (
                "under budget stays normal",
                budgets(1.0, 512),
                &[((0.5, 100), N), ((0.99, 500), N), ((1.0, 512), N)],
            ),
            (
                "one reading over the CPU budget sheds bodies",
                budgets(1.0, 512),
                &[((0.2, 100), N), ((1.2, 100), B)],
            ),
            (
                "one reading over the memory budget sheds bodies",
                budgets(1.0, 512),
                &[((0.2, 513), B)],
            ),
            (
                "four more readings over budget shed exchanges",
                budgets(1.0, 512),
                &[
                    ((2.0, 100), B),
                    ((2.0, 100), B),
                    ((2.0, 100), B),
                    ((2.0, 100), B),
                    ((2.0, 100), X),
                    ((3.0, 100), X),
                ],
            ),
            (
                "memory still over budget escalates too",
                budgets(1.0, 512),
                &[
                    ((0.1, 600), B),
                    ((0.1, 600), B),
                    ((0.1, 600), B),
                    ((0.1, 600), B),
                    ((0.1, 600), X),
                ],
            ),
            (
                "CPU and memory over budget alternately still count as over",
                budgets(1.0, 512),
                &[
                    ((2.0, 100), B),
                    ((0.1, 600), B),
                    ((2.0, 100), B),
                    ((0.1, 600), B),
                    ((2.0, 100), X),
                ],
            ),
            (
                "a reading within budget restarts the escalation count",
                budgets(1.0, 512),
                &[
                    ((2.0, 100), B),
                    ((2.0, 100), B),
                    ((2.0, 100), B),
                    ((2.0, 100), B),
                    ((0.9, 100), B),
                    ((2.0, 100), B),
                    ((2.0, 100), B),
                    ((2.0, 100), B),
                    ((2.0, 100), X),
                ],
            ),
            (
                "four readings under 80 % step down one level at a time",
                budgets(1.0, 512),
                &[
                    ((2.0, 100), B),
                    ((2.0, 100), B),
                    ((2.0, 100), B),
                    ((2.0, 100), B),
                    ((2.0, 100), X),
                    ((0.1, 100), X),
                    ((0.1, 100), X),
                    ((0.1, 100), X),
                    ((0.1, 100), B),
                    ((0.1, 100), B),
                    ((0.1, 100), B),
                    ((0.1, 100), B),
                    ((0.1, 100), N),
                    ((0.1, 100), N),
                ],
            ),
            (
                "between 80 % and the budget the level holds and the count restarts",
                budgets(1.0, 512),
                &[
                    ((2.0, 100), B),
                    ((0.1, 100), B),
                    ((0.1, 100), B),
                    ((0.1, 100), B),
                    ((0.85, 100), B),
                    ((0.1, 100), B),
                    ((0.1, 100), B),
                    ((0.1, 100), B),
                    ((0.1, 100), N),
                ],
            ),
            (
                "memory between 80 % and the budget holds the level",
                budgets(1.0, 100),
                &[
                    ((2.0, 10), B),
                    ((0.1, 90), B),
                    ((0.1, 90), B),
                    ((0.1, 90), B),
                    ((0.1, 90), B),
                    ((0.1, 79), B),
                    ((0.1, 79), B),
                    ((0.1, 79), B),
                    ((0.1, 79), N),
                ],
            ),
            (
                "back over budget after stepping down sheds bodies again at once",
                budgets(1.0, 512),
                &[
                    ((2.0, 100), B),
                    ((0.1, 100), B),
                    ((0.1, 100), B),
                    ((0.1, 100), B),
                    ((0.1, 100), N),
                    ((1.5, 100), B),
                ],
            ),
            (
                "zero budgets are unlimited",
                budgets(0.0, 0),
                &[
                    ((64.0, 1 << 20), N),
                    ((64.0, 1 << 20), N),
                    ((64.0, 1 << 20), N),
                    ((64.0, 1 << 20), N),
                    ((64.0, 1 << 20), N),
                ],
            ),
            (
                "an unlimited CPU budget still enforces memory",
                budgets(0.0, 100),
                &[((64.0, 50), N), ((0.0, 101), B)],
            ),
            (
                "a tiny CPU budget is exceeded by any work",
                budgets(0.001, 0),
                &[((0.0005, 1), N), ((0.002, 1), B)],
            ),
        ];
        for (name, budgets, steps) in cases {
            let mut governor = Governor::new(*budgets);
            for (i, ((cpu, rss), expected)) in steps.iter().enumerate() {
                governor.observe(reading(*cpu, *rss));
                assert_eq!(
                    governor.level(),
                    *expected,
                    "{name}: after reading {}",
                    i + 1
                );
            }
        }
    }

    #[test]
    fn changes_report_both_levels_and_the_reading() {
        let mut governor = Governor::new(budgets(1.0, 0));
        assert_eq!(governor.observe(reading(0.5, 1)), None);
        assert_eq!(
            governor.observe(reading(1.5, 1)),
            Some(Change {
                from: N,
                to: B,
                reading: reading(1.5, 1)
            })
        );
        assert_eq!(governor.observe(reading(1.5, 1)), None);
    }

    #[test]
    fn new_budgets_apply_to_the_next_readings() {
        let mut governor = Governor::new(budgets(1.0, 0));
        governor.observe(reading(1.5, 1));
        governor.observe(reading(1.5, 1));
        governor.observe(reading(1.5, 1));
        governor.set_budgets(budgets(0.0, 0));
        assert_eq!(
            governor.level(),
            B,
            "the level holds until readings move it"
        );
        for _ in 0..3 {
            governor.observe(reading(1.5, 1));
            assert_eq!(governor.level(), B);
        }
        governor.observe(reading(1.5, 1));
        assert_eq!(governor.level(), N, "unlimited: every reading is under");
    }

    #[test]
    fn changes_are_counted_and_trims_asked_near_the_memory_budget() {
        let mut overload = Overload::new(budgets(0.0, 100));
        let tick = overload.apply(reading(0.1, 50));
        assert_eq!((tick.change, tick.trim), (None, false));
        let tick = overload.apply(reading(0.1, 120));
        assert_eq!(tick.change.map(|c| c.to), Some(B));
        assert!(tick.trim, "shedding near the memory budget trims");
        let tick = overload.apply(reading(0.1, 85));
        assert!(tick.trim && tick.change.is_none());
        for _ in 0..4 {
            overload.apply(reading(0.1, 10));
        }
        assert_eq!(overload.level(), N);
        assert!(
            !overload.apply(reading(0.1, 90)).trim,
            "not shedding: no trim"
        );
        assert_eq!(overload.stats.level_changes, 2);
        assert_eq!(overload.stats.memory_trims, 2);
        crate::allocator::trim();
    }

    #[test]
    fn memory_is_trimmed_once_when_the_sensor_goes_quiet_after_a_burst() {
        let mut overload = Overload::new(budgets(0.0, 1_000));
        let trims = |overload: &mut Overload, readings: &[f64]| -> Vec<bool> {
            readings
                .iter()
                .map(|cpu| overload.apply(reading(*cpu, 10)).trim)
                .collect()
        };
        assert_eq!(
            trims(&mut overload, &[0.0, 0.003, 0.009]),
            [false; 3],
            "never busy"
        );
        assert_eq!(
            trims(&mut overload, &[0.03, 0.009, 0.006, 0.004, 0.0, 0.0]),
            [false, false, false, true, false, false],
            "once, at the first quiet reading after the burst"
        );
        assert_eq!(trims(&mut overload, &[0.01, 0.003]), [false, true]);
        assert_eq!(overload.stats.memory_trims, 2);
    }

    #[test]
    fn the_sampler_reads_this_process() {
        let mut sampler = Sampler::default();
        assert_eq!(sampler.sample(), None, "no interval yet");
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let reading = sampler.sample().expect("a reading");
        assert!(reading.cpu_cores >= 0.0);
        assert!(reading.rss_bytes > 1 << 20, "{reading:?}");
    }
}
