//! End to end: discovery's include/exclude selectors (`sensor.include`, `sensor.exclude`), for
//! processes present at start (the initial scan) and started later (exec-time discovery).

use std::time::Duration;

use sensor_e2e::{Py, Sensor, records_of, scratch_dir, sensor_bin, wait_until, without_colours};
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

/// A plain HTTP/1.1 GET on a fresh connection (the test process is not Python, so only the
/// server's side is captured); the response, or `None` when the connection closed without one.
fn get(port: u16, target: &str) -> Option<String> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(LONG)).unwrap();
    write!(
        stream,
        "GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    (!response.is_empty()).then_some(response)
}

/// The server records of `pid`, by request target.
fn by_target(records: &[Value], pid: u32) -> std::collections::BTreeMap<String, Value> {
    records_of(records, "server", pid)
        .into_iter()
        .map(|r| {
            let target = r["attributes"]["http.target"].as_str().unwrap().to_owned();
            (target, r["resource"].clone())
        })
        .collect()
}

fn assert_identity(resource: &Value, service: &str, command_line_has: &str) {
    assert_eq!(resource["service.name"], service, "{resource}");
    let command_line = resource["process.command_line"]
        .as_str()
        .unwrap_or_default();
    assert!(
        command_line.contains(command_line_has),
        "{command_line:?} should contain {command_line_has:?}"
    );
}

/// The same pid running another program (execve): the old program's exchanges keep the old
/// identity — including one cut short by the exec, reported when its connection went away —
/// and the new program's get the new one.
#[test]
fn a_program_replacing_itself_gets_a_fresh_identity() {
    let sensor = Sensor::start("exec-identity", &["run", "--output", "jsonl"]);
    let py = Py::spawn(
        "exec_server",
        &["-X", "sel=before", "exec_server.py"],
        &[
            ("HT_SERVICE_NAME", "before-exec"),
            ("EXEC_SERVICE_NAME", "after-exec"),
        ],
    );
    let port: u16 = py.expect_line("READY", LONG).parse().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(get(port, "/hello?n=1").is_some_and(|r| r.contains(" 200 OK")));
    assert_eq!(get(port, "/exec"), None, "the exec answers nothing");
    let again: u16 = py.expect_line("READY", LONG).parse().unwrap();
    assert_eq!(again, port);
    assert!(get(port, "/hello?n=2").is_some_and(|r| r.contains(" 200 OK")));
    std::thread::sleep(Duration::from_millis(500));
    let output = sensor.stop();
    let records = by_target(&output.records(), py.pid());
    let before = records.get("/hello?n=1").expect("first program's exchange");
    assert_identity(before, "before-exec", "sel=before exec_server.py");
    let cut = records
        .get("/exec")
        .expect("the exchange the exec cut short");
    assert_identity(cut, "before-exec", "sel=before exec_server.py");
    let after = records
        .get("/hello?n=2")
        .expect("second program's exchange");
    assert_identity(after, "after-exec", "sel=after http_server.py");
}

/// Starts `spawn()` until the process it starts gets `pid` (the kernel hands out
/// `ns_last_pid + 1` next, unless another process takes it first).
fn spawn_with_pid(pid: u32, spawn: impl Fn() -> Py) -> Py {
    for _ in 0..200 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string())
            .expect("write /proc/sys/kernel/ns_last_pid (needs root)");
        let py = spawn();
        if py.pid() == pid {
            return py;
        }
    }
    panic!("could not start a process with pid {pid}");
}

/// A pid whose process exited is given to a different program: its records carry the new
/// program's service name and command line, never the old one's.
#[test]
fn a_reused_pid_gets_a_fresh_identity() {
    let sensor = Sensor::start("reused-pid", &["run", "--output", "jsonl"]);
    let first = Py::spawn(
        "first",
        &["-X", "sel=first", "http_server.py"],
        &[("HT_SERVICE_NAME", "pid-first")],
    );
    let port: u16 = first.expect_line("READY", LONG).parse().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(get(port, "/hello?who=first").is_some());
    let pid = first.pid();
    drop(first);
    std::thread::sleep(Duration::from_millis(200));

    let second = spawn_with_pid(pid, || {
        Py::spawn(
            "second",
            &["-X", "sel=second", "http_server.py"],
            &[("HT_SERVICE_NAME", "pid-second")],
        )
    });
    let port: u16 = second.expect_line("READY", LONG).parse().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(get(port, "/hello?who=second").is_some());
    std::thread::sleep(Duration::from_millis(500));
    let output = sensor.stop();
    let records = by_target(&output.records(), pid);
    assert_identity(
        records.get("/hello?who=first").expect("first exchange"),
        "pid-first",
        "sel=first",
    );
    assert_identity(
        records.get("/hello?who=second").expect("second exchange"),
        "pid-second",
        "sel=second",
    );
}

/// Two processes that are each pid 1 of a fresh pid namespace (`unshare --pid`): the sensor
/// tells them apart by their host pids, each with its own identity.
#[test]
fn processes_in_fresh_pid_namespaces_keep_their_own_identity() {
    let sensor = Sensor::start("pid-namespaces", &["run", "--output", "jsonl"]);
    let in_namespace = |marker: &str, service: &str| {
        let mut command = std::process::Command::new("unshare");
        command
            .args(["--pid", "--kill-child", "--mount-proc"])
            .arg(sensor_e2e::python())
            .args(["-X", &format!("sel={marker}"), "http_server.py"]);
        let py = Py::spawn_command(marker, command, &[("HT_SERVICE_NAME", service)]);
        let port: u16 = py.expect_line("READY", LONG).parse().unwrap();
        let children = sensor_e2e::children(py.pid());
        assert_eq!(
            children.len(),
            1,
            "unshare forks the namespace's first process"
        );
        let host_pid = children[0];
        let status = std::fs::read_to_string(format!("/proc/{host_pid}/status")).unwrap();
        let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
        assert!(nspid.ends_with("\t1"), "pid 1 in its namespace: {nspid}");
        (py, port, host_pid)
    };
    let (_one, port_one, pid_one) = in_namespace("ns-one", "in-ns-one");
    let (_two, port_two, pid_two) = in_namespace("ns-two", "in-ns-two");
    std::thread::sleep(Duration::from_millis(500));
    assert!(get(port_one, "/hello?ns=one").is_some());
    assert!(get(port_two, "/hello?ns=two").is_some());
    std::thread::sleep(Duration::from_millis(500));
    let output = sensor.stop();
    let records = output.records();
    let one = by_target(&records, pid_one);
    let two = by_target(&records, pid_two);
    assert_identity(
        one.get("/hello?ns=one")
            .expect("first namespace's exchange"),
        "in-ns-one",
        "sel=ns-one",
    );
    assert_identity(
        two.get("/hello?ns=two")
            .expect("second namespace's exchange"),
        "in-ns-two",
        "sel=ns-two",
    );
    assert_eq!(one.len(), 1);
    assert_eq!(two.len(), 1);
}

/// `attach` follows its processes: it refuses a pid no process has, and once every process it
/// watches has exited it reports what it captured and ends by itself (as `strace -p` does).
#[test]
fn attach_ends_once_its_processes_have_exited() {
    use std::io::{Read as _, Write as _};

    let stderr_path = scratch_dir("attach-missing").join("stderr");
    let mut missing = std::process::Command::new(sensor_bin())
        .args(["attach", "--pid", "4194303"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .expect("run sensor attach");
    let mut status = None;
    let ended = wait_until(LONG, || {
        status = missing.try_wait().expect("wait for attach");
        status.is_some()
    });
    if !ended {
        let _ = missing.kill();
        let _ = missing.wait();
    }
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    assert!(
        status.is_some_and(|s| !s.success())
            && stderr.contains("no running process has the pid given"),
        "attach to a missing pid: {status:?}\n{stderr}"
    );

    let (server, port) = server("attach");
    let pid = server.pid();
    let sensor = Sensor::start(
        "attach",
        &["attach", "--pid", &pid.to_string(), "--output", "jsonl"],
    );
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        stream,
        "GET /hello?attached=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("answer");
    assert!(
        answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"),
        "{answer}"
    );
    drop(server);
    assert!(
        wait_until(LONG, || !is_running(sensor.pid())),
        "attach still runs after its process exited; its log:\n{}",
        sensor.stderr_so_far()
    );
    let output = sensor.stop();
    let log = without_colours(&output.stderr);
    assert!(
        log.contains("every watched process has exited; stopping"),
        "{log}"
    );
    let records = output.records();
    let served = records_of(&records, "server", pid);
    assert_eq!(served.len(), 1, "{records:#?}");
    assert_eq!(served[0]["attributes"]["http.target"], "/hello?attached=1");
}

/// Whether process `pid` runs (a zombie waiting for this test to reap it does not).
fn is_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| Some(stat.rsplit_once(')')?.1.split_whitespace().next()? != "Z"))
        .unwrap_or(false)
}
