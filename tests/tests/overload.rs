//! End to end: the overload policy (issue: a CPU and memory budget for the sensor; beyond it,
//! shed bodies first, then whole exchanges, counting each, and never block the application).
//!
//! A paced load of JSON POSTs against an asyncio keep-alive server (`overload_app.py`), the
//! real sensor watching the server with a tiny CPU budget (0.001 cores: any real work exceeds
//! it) or none, and a short measurement interval (`sensor.overload_interval_ms`) so levels move
//! within seconds. Every expectation is checked against what the load client sent and got back.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use sensor_e2e::{
    Py, Sensor, SensorOutput, attr, free_port, gauge, metric, records_of, scratch_dir, wait_until,
    without_colours,
};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(30);
const BODY_BYTES: usize = 1000;

/// The request body the load sends (`overload_app.py`).
fn request_body() -> String {
    format!("{{\"data\": \"{}\"}}", "x".repeat(BODY_BYTES - 12))
}

/// The response body the server answers.
fn response_body() -> String {
    format!("{{\"received\": {BODY_BYTES}}}")
}

/// What one load run did, seen from the client.
struct Load {
    requests: u64,
    errors: u64,
    /// Highest `overload_level` gauge seen while it ran.
    max_level: i64,
}

/// Runs the paced load for `seconds` against `port`, polling the level gauge meanwhile.
fn run_load(port: u16, seconds: f64, rate: u32, path: &str, metrics: &str) -> Load {
    let client = Py::spawn(
        "overload_load",
        &[
            "overload_app.py",
            "load",
            &port.to_string(),
            &seconds.to_string(),
            "2",
            &BODY_BYTES.to_string(),
            &rate.to_string(),
            path,
        ],
        &[],
    );
    let started = Instant::now();
    let mut max_level = 0;
    while started.elapsed() < Duration::from_secs_f64(seconds) {
        if let Some(level) = gauge(metrics, "overload_level") {
            max_level = max_level.max(level);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let done = client.expect_line("DONE", LONG);
    let mut parts = done.split_whitespace().map(|n| n.parse::<u64>().unwrap());
    let (requests, errors) = (parts.next().unwrap(), parts.next().unwrap());
    client.wait(LONG);
    Load {
        requests,
        errors,
        max_level,
    }
}

/// The overload counters on the metrics page.
#[derive(Debug)]
struct Counters {
    exported: u64,
    bodies_shed: u64,
    exchanges_shed: u64,
    level_changes: u64,
}

fn counters(metrics: &str) -> Counters {
    let get = |name: &str| metric(metrics, name).unwrap_or(0);
    Counters {
        exported: get("exchanges"),
        bodies_shed: get("overload_bodies_shed"),
        exchanges_shed: get("overload_exchanges_shed"),
        level_changes: get("overload_level_changes"),
    }
}

/// Waits until every one of `requests` exchanges is accounted for (built for export or shed),
/// as the metrics page tells, and returns the counters then.
fn settled(metrics: &str, requests: u64) -> Counters {
    wait_until(Duration::from_secs(10), || {
        let c = counters(metrics);
        c.exported + c.exchanges_shed >= requests
    });
    counters(metrics)
}

/// Ends the sensor once the `exported` records handed to its output are printed. It is killed
/// rather than stopped: its shutdown (tested elsewhere) is slow and nothing is left to flush.
fn finish(sensor: Sensor, exported: u64) -> SensorOutput {
    wait_until(Duration::from_secs(10), || {
        sensor
            .stdout_so_far()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .count() as u64
            >= exported
    });
    sensor.kill()
}

/// A server, and the sensor watching it with its metrics served.
struct Setup {
    server: Py,
    sensor: Sensor,
    metrics: String,
    port: u16,
}

fn start(name: &str, config: &Path) -> Setup {
    let server = Py::spawn("overload_server", &["overload_app.py", "server"], &[]);
    let port: u16 = server.expect_line("READY", LONG).parse().unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    let sensor = Sensor::start(
        name,
        &[
            "run",
            "--pid",
            &server.pid().to_string(),
            "--output",
            "jsonl",
            "--metrics-addr",
            &metrics,
            "--config",
            config.to_str().unwrap(),
        ],
    );
    assert!(
        wait_until(Duration::from_secs(5), || gauge(&metrics, "overload_level")
            .is_some()),
        "no overload_level gauge on the metrics page"
    );
    Setup {
        server,
        sensor,
        metrics,
        port,
    }
}

fn write_config(path: &Path, cpu: &str, interval_ms: u32) {
    std::fs::write(
        path,
        format!(
            "sensor:\n  cpu_budget_cores: {cpu}\n  memory_budget_bytes: 0\n  overload_interval_ms: {interval_ms}\n"
        ),
    )
    .unwrap();
}

fn is_shed(record: &Value, prefix: &str) -> bool {
    attr(record, &format!("{prefix}.body.shed")) == &Value::Bool(true)
}

/// Level 1: with the CPU budget exceeded, bodies are shed (the kernel skips them, the records
/// carry no body and say so), exchanges keep being exported, every one is accounted for, and
/// the application sees no error.
#[test]
fn over_the_cpu_budget_bodies_are_shed_and_exchanges_still_exported() {
    let dir = scratch_dir("overload-bodies");
    let config = dir.join("config.yaml");
    // 1 s readings: level 2 needs 4 more readings over budget after level 1, longer than the
    // load, so the load runs at level 1.
    write_config(&config, "0.001", 1000);
    let setup = start("overload-bodies", &config);
    let load = run_load(setup.port, 2.5, 400, "/bodies", &setup.metrics);
    assert_eq!(load.errors, 0, "the application saw errors");
    assert!(load.requests > 100, "too little load: {}", load.requests);
    assert!(load.max_level >= 1, "the level never rose");
    let c = settled(&setup.metrics, load.requests);
    eprintln!(
        "level 1: {} requests, max level {}, {c:?}",
        load.requests, load.max_level
    );
    let gauge_now = gauge(&setup.metrics, "overload_level").unwrap();
    let output = finish(setup.sensor, c.exported);
    let all = output.records();
    let records = records_of(&all, "server", setup.server.pid());
    assert_eq!(
        records.len() as u64 + c.exchanges_shed,
        load.requests,
        "every request is exported or counted as shed: {c:?}\n{}",
        output.stderr
    );
    assert_eq!(records.len() as u64, c.exported, "{c:?}");
    let shed: Vec<&&Value> = records
        .iter()
        .filter(|r| is_shed(r, "http.request"))
        .collect();
    assert!(
        shed.len() > 50,
        "exchanges with shed bodies are exported at level 1: {} of {} ({c:?})",
        shed.len(),
        records.len()
    );
    let mut flagged = 0;
    for record in &records {
        for (prefix, body) in [
            ("http.request", request_body()),
            ("http.response", response_body()),
        ] {
            if is_shed(record, prefix) {
                flagged += 1;
                assert!(
                    attr(record, &format!("{prefix}.body")).is_null(),
                    "a shed body is not exported: {record}"
                );
            } else {
                assert_eq!(attr(record, &format!("{prefix}.body")), &body, "{record}");
            }
        }
        assert_eq!(attr(record, "http.status_code"), 200);
        assert!(attr(record, "sensor.incomplete").is_null(), "{record}");
    }
    // Each shed body of an exported exchange is counted; so are those of shed exchanges.
    assert!(
        c.bodies_shed >= flagged && c.bodies_shed <= flagged + 2 * c.exchanges_shed,
        "{flagged} flagged bodies, {c:?}"
    );
    assert!(c.level_changes >= 1, "{c:?}");
    assert!(gauge_now >= 1, "the budget is still exceeded: {gauge_now}");
    let log = without_colours(&output.stderr);
    assert!(
        log.lines()
            .any(|l| l.contains("overload level changed") && l.contains("level=shed_bodies")),
        "the level change is logged:\n{log}"
    );
}

/// Level 2: held over budget, whole exchanges are shed and counted (exported + shed = sent);
/// a SIGHUP lifting the budget brings the level down step by step, and capture is whole again.
#[test]
fn held_over_budget_exchanges_are_shed_then_capture_recovers() {
    let dir = scratch_dir("overload-exchanges");
    let config = dir.join("config.yaml");
    write_config(&config, "0.001", 200);
    let setup = start("overload-exchanges", &config);
    let load = run_load(setup.port, 3.0, 400, "/shed", &setup.metrics);
    assert_eq!(load.errors, 0, "the application saw errors");
    let c = settled(&setup.metrics, load.requests);
    eprintln!(
        "level 2: {} requests, max level {}, {c:?}",
        load.requests, load.max_level
    );
    assert!(
        c.exchanges_shed > 0,
        "level 2 sheds exchanges: {c:?}, max level seen {}",
        load.max_level
    );
    assert!(c.level_changes >= 2, "{c:?}");
    assert!(c.bodies_shed > 0, "{c:?}");

    // Unlimited budget: every reading is under 80 % of it, 4 readings per step down.
    write_config(&config, "0", 200);
    // SAFETY: plain kill(2) to the sensor this test started.
    unsafe {
        libc::kill(setup.sensor.pid() as i32, libc::SIGHUP);
    }
    assert!(
        wait_until(Duration::from_secs(8), || gauge(
            &setup.metrics,
            "overload_level"
        ) == Some(0)),
        "the level did not come back to 0: {:?}\n{}",
        gauge(&setup.metrics, "overload_level"),
        setup.sensor.stderr_so_far()
    );
    let before = counters(&setup.metrics);
    let after = run_load(setup.port, 1.0, 200, "/after", &setup.metrics);
    assert_eq!(after.errors, 0);
    assert_eq!(after.max_level, 0);
    let end = settled(&setup.metrics, load.requests + after.requests);
    assert_eq!(end.exchanges_shed, before.exchanges_shed, "{end:?}");
    assert_eq!(end.bodies_shed, before.bodies_shed, "{end:?}");

    let output = finish(setup.sensor, end.exported);
    let all = output.records();
    let records = records_of(&all, "server", setup.server.pid());
    assert_eq!(
        records.len() as u64 + end.exchanges_shed,
        load.requests + after.requests,
        "every request is exported or counted as shed: {end:?}\n{}",
        output.stderr
    );
    let recovered: Vec<&&Value> = records
        .iter()
        .filter(|r| attr(r, "url.path").as_str().is_some_and(|p| p == "/after"))
        .collect();
    assert_eq!(recovered.len() as u64, after.requests);
    for record in recovered {
        assert_eq!(attr(record, "http.request.body"), &request_body());
        assert_eq!(attr(record, "http.response.body"), &response_body());
        assert!(!is_shed(record, "http.request") && !is_shed(record, "http.response"));
    }
    let log = without_colours(&output.stderr);
    for level in ["shed_bodies", "shed_exchanges", "normal"] {
        assert!(
            log.lines()
                .any(|l| l.contains("overload level changed")
                    && l.contains(&format!("level={level}"))),
            "no change to {level} logged:\n{log}"
        );
    }
    assert!(
        log.lines()
            .any(|l| l.contains("policy reloaded") && l.contains("cpu_budget_cores=0")),
        "the reload names the new budgets:\n{log}"
    );
}

/// Budgets of 0 are unlimited: under the same load nothing is shed and every exchange is
/// exported whole.
#[test]
fn unlimited_budgets_shed_nothing() {
    let dir = scratch_dir("overload-unlimited");
    let config = dir.join("config.yaml");
    write_config(&config, "0", 200);
    let setup = start("overload-unlimited", &config);
    let load = run_load(setup.port, 1.5, 400, "/unlimited", &setup.metrics);
    assert_eq!(load.errors, 0);
    assert_eq!(load.max_level, 0);
    let c = settled(&setup.metrics, load.requests);
    eprintln!("unlimited: {} requests, {c:?}", load.requests);
    assert_eq!(
        (c.bodies_shed, c.exchanges_shed, c.level_changes),
        (0, 0, 0),
        "{c:?}"
    );
    let output = finish(setup.sensor, c.exported);
    let all = output.records();
    let records = records_of(&all, "server", setup.server.pid());
    assert_eq!(records.len() as u64, load.requests, "{}", output.stderr);
    for record in &records {
        assert_eq!(attr(record, "http.request.body"), &request_body());
        assert_eq!(attr(record, "http.response.body"), &response_body());
        assert!(!is_shed(record, "http.request") && !is_shed(record, "http.response"));
    }
    assert!(!output.stderr.contains("overload level changed"));
}

/// The memory budget: a resident size over it (any, for a budget of 1 byte) sheds bodies, and
/// memory is handed back to the system while shedding near the budget. A budget of 1 byte
/// stays exceeded, so the level goes on to shed exchanges four readings later; the metrics,
/// read when the test scrapes them, may show either level.
#[test]
fn over_the_memory_budget_bodies_are_shed() {
    let dir = scratch_dir("overload-memory");
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        "sensor:\n  cpu_budget_cores: 0\n  memory_budget_bytes: 1\n  overload_interval_ms: 200\n",
    )
    .unwrap();
    let setup = start("overload-memory", &config);
    assert!(
        wait_until(Duration::from_secs(5), || {
            gauge(&setup.metrics, "overload_level").is_some_and(|level| level >= 1)
                && metric(&setup.metrics, "overload_memory_trims").is_some_and(|n| n > 0)
        }),
        "level {:?}, trims {:?}",
        gauge(&setup.metrics, "overload_level"),
        metric(&setup.metrics, "overload_memory_trims")
    );
    // Nothing to flush: only the log is checked.
    let output = setup.sensor.kill();
    let log = without_colours(&output.stderr);
    assert!(
        log.lines().any(|l| l.contains("overload level changed")
            && l.contains("level=shed_bodies")
            && l.contains("memory_budget_bytes=1")),
        "{log}"
    );
}
