//! How much the app loses to work on the other core alone: on a VM the two cores may share a
//! physical core or its caches, so the sensor's CPU on the load core can slow the app even
//! where it never touches the app. For each selected small GET over HTTP, the app runs bare,
//! alone and beside a busy loop on the load core that uses as much CPU as the sensor did in
//! that case (a lower bound of such interference: the loop touches no memory).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::{
    apps::{Bench, Case, Config, Endpoint, Run, median_app_core, run_once},
    median,
};

/// The busy loop's period: it spins for its share of each, then sleeps.
const PERIOD: Duration = Duration::from_millis(10);

/// A thread that keeps its core busy for a share of the time until dropped.
struct BusyLoop {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl BusyLoop {
    /// Starts the loop on the calling thread's core (threads inherit its affinity).
    fn start(share: f64) -> BusyLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let busy = PERIOD.mul_f64(share.clamp(0.0, 1.0));
        let thread = std::thread::spawn({
            let stop = Arc::clone(&stop);
            move || {
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    while started.elapsed() < busy {
                        std::hint::spin_loop();
                    }
                    std::thread::sleep(PERIOD.saturating_sub(busy));
                }
            }
        });
        BusyLoop {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for BusyLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Runs bare, alone and beside the busy loop, interleaved over the rounds, for each selected
/// small GET over HTTP; `sensor_cores[i]` is what the sensor used in `cases[i]`.
pub fn bench(bench: &Bench, cases: &[Case], sensor_cores: &[f64]) -> Result<()> {
    let picked: Vec<(Case, f64)> = cases
        .iter()
        .zip(sensor_cores)
        .filter(|(c, _)| c.endpoint == Endpoint::SmallGet && !c.https)
        .map(|(c, cores)| (*c, *cores))
        .collect();
    if picked.is_empty() {
        return Ok(());
    }
    println!();
    println!(
        "== the app bare, alone and beside a busy loop on the load core using the sensor's CPU of that case ({} rounds, medians): what work on the other core alone costs the app",
        bench.settings.rounds
    );
    println!(
        "{:<44} {:>8} {:>10} {:>12} {:>7} {:>16} {:>16}",
        "case", "loop", "alone", "beside loop", "ratio", "app user us", "app sys us"
    );
    for (case, cores) in picked {
        let load = bench.closed_loop(case);
        let (mut alone, mut beside) = (Vec::new(), Vec::new());
        for round in 0..bench.settings.rounds {
            let context = || format!("round {}: {}, busy loop", round + 1, case.label());
            alone.push(run_once(bench, case, Config::Bare, &load).with_context(context)?);
            let busy = BusyLoop::start(cores);
            beside.push(run_once(bench, case, Config::Bare, &load).with_context(context)?);
            drop(busy);
        }
        let rps = |runs: &[Run]| median(runs.iter().map(|r| r.load.rps).collect());
        let pair = |pick| match (
            median_app_core(&alone, pick),
            median_app_core(&beside, pick),
        ) {
            (Some(a), Some(b)) => format!("{a:.1} -> {b:.1}"),
            _ => "n/a".to_owned(),
        };
        let (alone_rps, beside_rps) = (rps(&alone), rps(&beside));
        println!(
            "{:<44} {:>8.3} {:>10.0} {:>12.0} {:>7.3} {:>16} {:>16}",
            case.label(),
            cores,
            alone_rps,
            beside_rps,
            if alone_rps > 0.0 {
                beside_rps / alone_rps
            } else {
                0.0
            },
            pair(|c| c.user_us),
            pair(|c| c.system_us)
        );
    }
    Ok(())
}
