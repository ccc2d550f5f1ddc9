//! The highest open-loop rate at which the sensor exports every exchange: `hey -q` (a fixed rate
//! per connection) at doubling rates against each selected framework's small JSON GET over HTTP,
//! until the sensor exports fewer exchanges than were sent, requests fail, or the app cannot keep
//! up with the rate.

use anyhow::{Context as _, Result};

use super::{
    apps::{Bench, Case, Config, Endpoint, run_once},
    hey,
};

/// The first rate tried; each step doubles it.
const FIRST_RATE: f64 = 200.0;
/// The last rate tried.
const LAST_RATE: f64 = 25_600.0;
/// Highest rate per `hey` connection, so that a connection is never the bottleneck while the
/// app answers within 1/RATE_PER_CONNECTION s.
const RATE_PER_CONNECTION: f64 = 100.0;
/// Share of the offered rate the app must reach to count as keeping up.
const KEEPS_UP: f64 = 0.95;

/// Runs the search for each selected framework's small GET over HTTP and prints a table each.
pub fn bench(bench: &Bench, cases: &[Case]) -> Result<()> {
    let seconds = bench.settings.seconds;
    for case in cases
        .iter()
        .filter(|c| c.endpoint == Endpoint::SmallGet && !c.https)
    {
        println!();
        println!(
            "== open loop with the sensor, {}: hey -q at doubling rates, {seconds} s each, until exported < sent, errors, or the app falls below {:.0}% of the rate",
            case.label(),
            KEEPS_UP * 100.0
        );
        println!(
            "{:>9} {:>9} {:>9} {:>7} {:>17}  verdict",
            "offered", "achieved", "p99 ms", "errors", "exported/sent"
        );
        let mut best = None;
        let mut rate = FIRST_RATE;
        while rate <= LAST_RATE {
            let connections = (rate / RATE_PER_CONNECTION).ceil().max(2.0) as usize;
            let load = hey::Load {
                url: String::new(),
                seconds,
                connections,
                rate_per_connection: Some(rate / connections as f64),
                post_body: None,
            };
            let run = run_once(bench, *case, Config::Sensor, &load)
                .with_context(|| format!("open loop at {rate} req/s: {}", case.label()))?;
            let sent = run.load.sent();
            let exported = run.exported.unwrap_or(0);
            let kept_up = run.load.rps >= KEEPS_UP * rate;
            let complete = exported == sent && run.load.errors == 0;
            let verdict = match (kept_up, complete) {
                (true, true) => "ok",
                (false, true) => "app cannot keep up (all it answered was exported)",
                (_, false) if run.load.errors > 0 => "client errors",
                _ => "exported < sent",
            };
            println!(
                "{:>9.0} {:>9.0} {:>9.2} {:>7} {:>17}  {verdict}",
                rate,
                run.load.rps,
                run.load.p99 * 1e3,
                run.load.errors,
                format!("{exported}/{sent}"),
            );
            if complete {
                let reached = if kept_up { rate } else { run.load.rps };
                best = Some(best.map_or(reached, |b: f64| b.max(reached)));
            }
            if !(kept_up && complete) {
                break;
            }
            rate *= 2.0;
        }
        match best {
            Some(best) => println!(
                "highest open-loop rate with exported = sent: {best:.0} req/s (target: exported = sent at the highest rate the app sustains)"
            ),
            None => println!("exported < sent even at {FIRST_RATE:.0} req/s"),
        }
    }
    Ok(())
}
