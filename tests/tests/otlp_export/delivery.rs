//! Delivery: a collector down for 10 s loses nothing up to the queue size and drops an exact
//! count beyond it; SIGTERM delivers what is buffered; the configured service_name names the
//! sensor instance, not the processes.

use std::time::{Duration, Instant};

use sensor_e2e::{Py, Sensor, free_port, metric, otlp::Receiver, wait_until, without_colours};
use serde_json::{Value, json};

use super::{LONG, result};

fn get(url: &str) -> String {
    json!({"op": "request", "method": "GET", "url": url, "headers": {}, "body": null}).to_string()
}

fn targets(receiver: &Receiver) -> Vec<String> {
    receiver
        .spans()
        .iter()
        .map(|s| {
            s.attr("http.target")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

/// The collector stops (connections refused) for 10 s while the sensor exports, then comes
/// back on the same address. The batch in flight (one span) and the queue
/// (`sensor.export_queue_size` = 10 spans) wait and are all delivered, in order; the 5
/// spans beyond are dropped and counted exactly (`/metrics` and the exporter's last log).
#[test]
fn collector_down_for_ten_seconds_loses_nothing_up_to_the_queue_size() {
    const QUEUE: usize = 10;
    const BEYOND: usize = 5;
    let receiver = Receiver::start();
    let (grpc, http) = receiver.addresses();
    let endpoint = receiver.grpc_endpoint();
    let server = Py::spawn("http_server", &["http_server.py"], &[]);
    let port: u16 = server.expect_line("READY", LONG).parse().unwrap();
    let mut client = Py::spawn("requests client", &["requests_client.py"], &[]);
    client.expect_line("READY", LONG);
    let metrics = format!("127.0.0.1:{}", free_port());
    let sensor = Sensor::start_with_env(
        "collector-down",
        &[
            "run",
            "--pid",
            &server.pid().to_string(),
            "--metrics-addr",
            &metrics,
        ],
        &[
            ("HT_REPORTING_ENDPOINT", &endpoint),
            ("HT_SENSOR_EXPORT_QUEUE_SIZE", &QUEUE.to_string()),
            ("HT_SENSOR_BATCH_TIMEOUT_MS", "200"),
        ],
    );
    let base = format!("http://127.0.0.1:{port}");
    client.send_line(&get(&format!("{base}/hello?phase=up")));
    result(&client);
    assert!(receiver.wait_for_spans(1, LONG), "export works at first");
    // The receiver counts a span before it answers; stopping it in between would leave the
    // sensor retrying that request, holding the "first" span below in the queue.
    assert!(
        wait_until(LONG, || metric(&metrics, "export_exported") == Some(1)),
        "the sensor saw its first request answered: {:?}",
        metric(&metrics, "export_exported")
    );
    receiver.stop();
    let down = Instant::now();

    // The first span while down becomes a batch of its own, sent and retried.
    client.send_line(&get(&format!("{base}/hello?phase=first")));
    result(&client);
    std::thread::sleep(Duration::from_secs(1));
    // The next ones fill the queue; those beyond it are dropped.
    client.send_line(
        &json!({"op": "burst", "base": format!("{base}/down"), "n": QUEUE + BEYOND}).to_string(),
    );
    result(&client);
    let dropped = || metric(&metrics, "export_dropped_queue_full");
    assert!(
        wait_until(Duration::from_secs(5), || dropped() == Some(BEYOND as u64)),
        "{BEYOND} spans dropped while the queue is full: {:?}",
        dropped()
    );
    assert_eq!(
        metric(&metrics, "export_queued"),
        Some(2 + QUEUE as u64),
        "the first span, the one in flight and the queue's"
    );
    std::thread::sleep(Duration::from_secs(10).saturating_sub(down.elapsed()));

    let receiver = Receiver::start_at(grpc, http);
    let delivered = receiver.wait_for_spans(1 + QUEUE, LONG);
    let all = Some(2 + QUEUE as u64);
    wait_until(Duration::from_secs(5), || {
        metric(&metrics, "export_exported") == all
    });
    let exported = metric(&metrics, "export_exported");
    let output = sensor.stop();
    assert!(
        delivered,
        "the spans waiting arrive once the collector is back: {:?}\n{}",
        targets(&receiver),
        output.stderr
    );
    let mut expected = vec!["/hello?phase=first".to_owned()];
    expected.extend((0..QUEUE).map(|i| format!("/down/n/{i}?i={i}")));
    assert_eq!(
        targets(&receiver),
        expected,
        "nothing lost up to the queue size, in order; the {BEYOND} beyond dropped"
    );
    assert_eq!(exported, all, "{}", output.stderr);
    assert_eq!(dropped(), None, "the sensor stopped");
    let log = without_colours(&output.stderr);
    assert!(
        log.lines().any(|l| l.contains("OTLP exporter stopped")
            && l.contains(&format!("dropped_queue_full={BEYOND} "))
            && l.contains(&format!("exported={} ", 2 + QUEUE))),
        "{log}"
    );
    client.wait(LONG);
}

/// With a batch timeout of a minute, spans wait in the exporter; SIGTERM delivers them
/// before the sensor exits.
#[test]
fn sigterm_delivers_buffered_spans() {
    let receiver = Receiver::start();
    let server = Py::spawn("http_server", &["http_server.py"], &[]);
    let port: u16 = server.expect_line("READY", LONG).parse().unwrap();
    let mut client = Py::spawn("requests client", &["requests_client.py"], &[]);
    client.expect_line("READY", LONG);
    let metrics = format!("127.0.0.1:{}", free_port());
    let sensor = Sensor::start_with_env(
        "sigterm-flush",
        &[
            "run",
            "--pid",
            &server.pid().to_string(),
            "--pid",
            &client.pid().to_string(),
            "--metrics-addr",
            &metrics,
        ],
        &[
            ("HT_REPORTING_ENDPOINT", &receiver.http_endpoint()),
            ("HT_REPORTING_PROTOCOL", "http/protobuf"),
            ("HT_SENSOR_BATCH_TIMEOUT_MS", "60000"),
        ],
    );
    for i in 0..3 {
        client.send_line(&get(&format!("http://127.0.0.1:{port}/hello?n={i}")));
        result(&client);
    }
    assert!(
        wait_until(Duration::from_secs(5), || metric(&metrics, "export_queued")
            == Some(6)),
        "3 server and 3 client spans queued: {:?}",
        metric(&metrics, "export_queued")
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        receiver.spans().is_empty(),
        "the batch waits for its timeout"
    );
    let stopping = Instant::now();
    let output = sensor.stop();
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "stopped well before the batch timeout"
    );
    let mut got = targets(&receiver);
    got.sort();
    assert_eq!(
        got,
        [
            "/hello?n=0",
            "/hello?n=0",
            "/hello?n=1",
            "/hello?n=1",
            "/hello?n=2",
            "/hello?n=2"
        ],
        "every buffered span delivered before exit: {}",
        output.stderr
    );
    client.wait(LONG);
}

/// `service_name` (here HT_SERVICE_NAME of the sensor) is the resource attribute
/// `sensor.instance` of every span; processes with a name of their own keep it as
/// `service.name` (one from its environment, one from its command line).
#[test]
fn configured_service_name_names_the_sensor_instance() {
    let receiver = Receiver::start();
    let server = Py::spawn(
        "http_server",
        &["http_server.py"],
        &[("OTEL_SERVICE_NAME", "orders")],
    );
    let port: u16 = server.expect_line("READY", LONG).parse().unwrap();
    let mut client = Py::spawn("requests client", &["requests_client.py"], &[]);
    client.expect_line("READY", LONG);
    let sensor = Sensor::start_with_env(
        "sensor-instance",
        &[
            "run",
            "--pid",
            &server.pid().to_string(),
            "--pid",
            &client.pid().to_string(),
        ],
        &[
            ("HT_REPORTING_ENDPOINT", &receiver.grpc_endpoint()),
            ("HT_SERVICE_NAME", "sensor-node-7"),
            ("HT_SENSOR_BATCH_TIMEOUT_MS", "100"),
        ],
    );
    client.send_line(&get(&format!("http://127.0.0.1:{port}/hello?who=1")));
    result(&client);
    let arrived = receiver.wait_for_spans(2, LONG);
    let output = sensor.stop();
    assert!(arrived, "{}", output.stderr);
    let spans = receiver.spans();
    assert_eq!(spans.len(), 2, "{spans:#?}");
    for span in &spans {
        assert_eq!(
            span.resource.get("sensor.instance"),
            Some(&json!("sensor-node-7")),
            "{span:#?}"
        );
        let expected = if span.kind == "server" {
            "orders"
        } else {
            "requests_client"
        };
        assert_eq!(
            span.resource.get("service.name"),
            Some(&json!(expected)),
            "{span:#?}"
        );
    }
    client.wait(LONG);
}
