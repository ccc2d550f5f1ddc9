//! End to end: discovery's include/exclude selectors (`sensor.include`, `sensor.exclude`), for
//! processes present at start (the initial scan) and started later (exec-time discovery).

use std::time::Duration;

use sensor_e2e::{Py, Sensor, records_of, scratch_dir};
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(30);

/// `http_server.py` with a marker on its command line (`-X sel=<marker>`; Python keeps unknown
/// `-X` options in `sys._xoptions` and otherwise ignores them).
fn server(marker: &str) -> (Py, u16) {
    let option = format!("sel={marker}");
    let py = Py::spawn(marker, &["-X", &option, "http_server.py"], &[]);
    let port = py.expect_line("READY", LONG).parse().unwrap();
    (py, port)
}

#[test]
fn include_and_exclude_select_discovered_processes() {
    let dir = scratch_dir("selectors");
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        "sensor:\n  include:\n    command_lines: ['-X sel=(keep|drop)']\n  exclude:\n    command_lines: ['sel=drop']\n",
    )
    .unwrap();
    let before = [server("keep"), server("drop"), server("other")];
    let sensor = Sensor::start(
        "selectors",
        &[
            "run",
            "--config",
            config.to_str().unwrap(),
            "--output",
            "jsonl",
        ],
    );
    let after = [server("keep"), server("drop"), server("other")];
    // Exec-time discovery decides when the process's exec event is handled.
    std::thread::sleep(Duration::from_millis(500));

    let mut client = Py::spawn("urllib_client", &["urllib_client.py"], &[]);
    client.expect_line("READY", LONG);
    for (_, port) in before.iter().chain(after.iter()) {
        let url = format!("http://127.0.0.1:{port}/hello?selectors=1");
        client.send_line(
            &json!({"method": "GET", "url": url, "headers": {}, "body": null}).to_string(),
        );
        client.expect_line("RESULT", LONG);
    }
    std::thread::sleep(Duration::from_millis(500));
    let output = sensor.stop();
    let records: Vec<Value> = output.records();
    let count = |py: &Py| records_of(&records, "server", py.pid()).len();
    for (when, servers) in [("present at start", &before), ("started later", &after)] {
        let [keep, drop, other] = servers;
        assert_eq!(count(&keep.0), 1, "included, {when}: {}", output.stderr);
        assert_eq!(count(&drop.0), 0, "excluded, {when}");
        assert_eq!(count(&other.0), 0, "not included, {when}");
    }
    // The client matches no include rule either.
    assert!(records_of(&records, "client", client.pid()).is_empty());
    client.wait(LONG);
}
