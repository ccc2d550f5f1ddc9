//! End to end over HTTPS (issue 6): the plaintext comes from the OpenSSL probes, both for
//! socket-BIO TLS (gunicorn `--certfile`, requests, http.client) and asyncio's memory-BIO TLS
//! (uvicorn `--ssl-*`, httpx async, aiohttp), each record on its own connection. Every
//! expectation comes from what the Python side sent and received.

#[path = "frameworks/common.rs"]
#[allow(dead_code)]
mod common;

use std::{collections::BTreeSet, time::Duration};

use common::{Exchange, LONG, Side, ask_scheme, check, check_both, children, find, result};
use sensor_e2e::{Py, Sensor, attr, proxy, records_of, tls_files};
use serde_json::{Value, json};

/// Flask under gunicorn `--certfile` (two forked sync workers, started before the sensor) and
/// a `requests` Session: every HTTPS exchange exact on both sides, in the worker that served it.
#[test]
fn gunicorn_certfile_sync_workers_and_a_requests_session() {
    gunicorn_certfile_and_a_requests_session("sync");
}

/// The same with gevent workers (`-k gevent`, a common production set-up): the worker's
/// sockets and `ssl` are monkey-patched onto gevent's hub, non-blocking, each call retried
/// after the hub says the socket is ready.
#[test]
fn gunicorn_certfile_gevent_workers_and_a_requests_session() {
    gunicorn_certfile_and_a_requests_session("gevent");
}

/// One request for [`ask_all_https`]: method, target, headers, body, the span name expected.
type Ask<'a> = (&'a str, &'a str, Value, Option<&'a str>, &'a str);

/// Has `client` make each request to `https://127.0.0.1:port`, in order; each must succeed.
/// Returns what each exchanged, with the client's result.
fn ask_all_https<const N: usize>(
    client: &mut Py,
    port: u16,
    requests: [Ask; N],
) -> Vec<(Exchange, Value)> {
    requests
        .into_iter()
        .map(|(method, target, headers, body, name)| {
            let (exchange, res) =
                ask_scheme(client, "https", port, method, target, headers, body, name);
            assert_eq!(res["status"].as_u64().unwrap() / 100, 2, "{res}");
            (exchange, res)
        })
        .collect()
}

/// Flask under gunicorn `--certfile` with two workers of `worker_class` started before the
/// sensor, and a `requests` Session: every HTTPS exchange exact on both sides, in the worker
/// that served it.
fn gunicorn_certfile_and_a_requests_session(worker_class: &str) {
    let tls = tls_files();
    let (cert, key) = tls.paths();
    let server = Py::spawn(
        &format!("gunicorn flask tls ({worker_class} workers)"),
        &["-m", "gunicorn", "-c", "gunicorn_conf.py", "flask_app:app"],
        &[
            ("GUNICORN_WORKERS", "2"),
            ("GUNICORN_WORKER_CLASS", worker_class),
            ("GUNICORN_CERTFILE", cert),
            ("GUNICORN_KEYFILE", key),
        ],
    );
    let port: u16 = server.expect_line("READY", LONG).parse().unwrap();
    let mut workers = BTreeSet::new();
    for _ in 0..2 {
        workers.insert(server.expect_line("WORKER", LONG).parse::<u32>().unwrap());
    }
    assert_eq!(
        children(server.pid()).into_iter().collect::<BTreeSet<_>>(),
        workers
    );
    let mut client = Py::spawn(
        "requests client",
        &["requests_client.py"],
        &tls.client_env(),
    );
    client.expect_line("READY", LONG);
    let sensor = Sensor::watching(
        &format!("tls-gunicorn-{worker_class}"),
        &[server.pid(), client.pid()],
    );
    let requests: [Ask; 4] = [
        (
            "GET",
            "/items/42?x=1&y=two",
            json!({"X-Test": "tls"}),
            None,
            "GET /items/{id}",
        ),
        (
            "POST",
            "/echo",
            json!({"Content-Type": "application/json", "Authorization": "Bearer tls-secret"}),
            Some(r#"{"card": "none", "n": 1}"#),
            "POST /echo",
        ),
        ("GET", "/items/7", json!({}), None, "GET /items/{id}"),
        ("GET", "/items/8", json!({}), None, "GET /items/{id}"),
    ];
    let mut sent: Vec<(Exchange, u32)> = Vec::new();
    for (exchange, res) in ask_all_https(&mut client, port, requests) {
        let worker: u32 = res["headers"]["X-Worker-Pid"]
            .as_str()
            .expect("X-Worker-Pid")
            .parse()
            .unwrap();
        sent.push((exchange, worker));
    }
    std::thread::sleep(Duration::from_millis(500));
    let output = sensor.stop();
    let records = output.records();
    let clients = records_of(&records, "client", client.pid());
    let mut servers: Vec<&Value> = Vec::new();
    for worker in &workers {
        servers.extend(records_of(&records, "server", *worker));
    }
    assert_eq!(servers.len(), sent.len(), "server records: {servers:#?}");
    assert_eq!(clients.len(), sent.len(), "client records: {clients:#?}");
    for (exchange, worker) in &sent {
        check(
            find(&servers, exchange, "server"),
            exchange,
            "server",
            *worker,
            "flask_app",
        );
        check(
            find(&clients, exchange, "client"),
            exchange,
            "client",
            client.pid(),
            "requests_client",
        );
    }
    assert!(!output.stdout.contains("tls-secret"));
}

/// Starts `serve_uvicorn.py fastapi_app:app` over HTTPS (idle connections kept a minute, so a
/// connection can outlive a sensor start); returns it and its port.
fn uvicorn_tls() -> (Py, u16) {
    let (cert, key) = tls_files().paths();
    let server = Py::spawn(
        "uvicorn fastapi tls",
        &["serve_uvicorn.py", "fastapi_app:app"],
        &[
            ("UVICORN_SSL_CERTFILE", cert),
            ("UVICORN_SSL_KEYFILE", key),
            ("UVICORN_TIMEOUT_KEEP_ALIVE", "60"),
        ],
    );
    let port: u16 = server.expect_line("READY", LONG).parse().unwrap();
    (server, port)
}

/// uvicorn with `--ssl-*` (asyncio memory BIO on the server) and httpx clients, one sync
/// (socket BIO) and one async (memory BIO): each exchange exact on both sides.
#[test]
fn uvicorn_tls_with_httpx_sync_and_async_clients() {
    let (server, port) = uvicorn_tls();
    let tls = tls_files();
    let mut clients = Vec::new();
    for (name, mode) in [("httpx sync", "0"), ("httpx async", "1")] {
        let mut env = tls.client_env().to_vec();
        env.push(("HTTPX_ASYNC", mode));
        let client = Py::spawn(name, &["httpx_client.py"], &env);
        client.expect_line("READY", LONG);
        clients.push(client);
    }
    let sensor = Sensor::watching(
        "tls-uvicorn",
        &[server.pid(), clients[0].pid(), clients[1].pid()],
    );
    let mut sent: Vec<(Exchange, u32)> = Vec::new();
    for client in clients.iter_mut() {
        let (exchange, _) = ask_scheme(
            client,
            "https",
            port,
            "GET",
            "/items/5?q=tls",
            json!({"X-Test": "abc"}),
            None,
            "GET /items/{id}",
        );
        sent.push((exchange, client.pid()));
        let (exchange, _) = ask_scheme(
            client,
            "https",
            port,
            "POST",
            "/echo",
            json!({"Content-Type": "application/json"}),
            Some(r#"{"order": 17, "items": ["a", "b"]}"#),
            "POST /echo",
        );
        sent.push((exchange, client.pid()));
    }
    std::thread::sleep(Duration::from_millis(500));
    let output = sensor.stop();
    let records = output.records();
    let servers = records_of(&records, "server", server.pid());
    assert_eq!(servers.len(), sent.len(), "server records: {servers:#?}");
    for (exchange, pid) in &sent {
        check(
            find(&servers, exchange, "server"),
            exchange,
            "server",
            server.pid(),
            "fastapi_app",
        );
        let mine = records_of(&records, "client", *pid);
        assert_eq!(mine.len(), 2, "client {pid} records: {mine:#?}");
        check(
            find(&mine, exchange, "client"),
            exchange,
            "client",
            *pid,
            "httpx_client",
        );
    }
}

/// An aiohttp handler calling an HTTPS server (client-side memory BIO): the aiohttp process's
/// client record of the outbound call is exact, and so is the HTTPS server's record of it.
#[test]
fn aiohttp_handler_calling_an_https_server() {
    let (upstream, upstream_port) = uvicorn_tls();
    let tls = tls_files();
    let front = Py::spawn(
        "aiohttp front",
        &["aiohttp_app.py"],
        &[
            ("HT_SERVICE_NAME", "aio-front"),
            ("SSL_CERT_FILE", tls.paths().0),
        ],
    );
    let front_port: u16 = front.expect_line("READY", LONG).parse().unwrap();
    let mut client = Py::spawn("requests client", &["requests_client.py"], &[]);
    client.expect_line("READY", LONG);
    let sensor = Sensor::watching("tls-aiohttp", &[upstream.pid(), front.pid()]);
    let mut outbound = Vec::new();
    for n in [3, 4] {
        let target = format!("/items/{n}?via=aiohttp");
        let url = format!("https://127.0.0.1:{upstream_port}{target}");
        client.send_line(&common::request(
            "GET",
            &format!(
                "http://127.0.0.1:{front_port}/fetch?url={}",
                url.replace('?', "%3F")
                    .replace('&', "%26")
                    .replace('=', "%3D")
            ),
            json!({}),
            None,
        ));
        let res = result(&client);
        assert_eq!(res["status"], 200, "{res}");
        let report: Value = serde_json::from_str(res["body"].as_str().unwrap()).unwrap();
        assert_eq!(report["status"], 200, "{report}");
        let mut exchange =
            Exchange::from_client(&report, "GET", &target, upstream_port, "GET /items/{id}");
        exchange.scheme = "https";
        outbound.push(exchange);
    }
    std::thread::sleep(Duration::from_millis(500));
    let output = sensor.stop();
    let records = output.records();
    let front_clients = records_of(&records, "client", front.pid());
    let upstream_servers = records_of(&records, "server", upstream.pid());
    assert_eq!(front_clients.len(), outbound.len(), "{front_clients:#?}");
    assert_eq!(
        upstream_servers.len(),
        outbound.len(),
        "{upstream_servers:#?}"
    );
    let client_side = Side::new(&front_clients, front.pid(), "aio-front");
    let server_side = Side::new(&upstream_servers, upstream.pid(), "fastapi_app");
    for exchange in &outbound {
        check_both(exchange, &client_side, &server_side);
    }
}

/// 500 HTTPS requests over 10 concurrent keep-alive connections, each carrying a distinct id
/// that the server echoes with the client's port: exactly 500 records on each side, every one
/// on the connection that carried it.
#[test]
fn https_500_requests_over_10_connections_each_on_its_own_connection() {
    const THREADS: usize = 10;
    const PER: usize = 50;
    let (server, port) = uvicorn_tls();
    let mut client = Py::spawn(
        "requests client",
        &["requests_client.py"],
        &tls_files().client_env(),
    );
    client.expect_line("READY", LONG);
    let sensor = Sensor::watching("tls-500", &[server.pid(), client.pid()]);
    client.send_line(
        &json!({"op": "threads", "base": format!("https://127.0.0.1:{port}"),
                "threads": THREADS, "per": PER})
        .to_string(),
    );
    let res = result(&client);
    let results = res.as_array().expect("thread results");
    assert_eq!(results.len(), THREADS * PER);
    let mut sent = std::collections::BTreeMap::new();
    let mut ports = BTreeSet::new();
    for r in results {
        assert_eq!(r["status"], 200);
        let body: Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
        let id = r["id"].as_str().unwrap().to_owned();
        assert_eq!(body["id"], id.as_str());
        assert_eq!(
            body["port"], r["local_port"],
            "the server saw the client's port"
        );
        ports.insert(r["local_port"].as_u64().unwrap());
        sent.insert(id, (r["body"].clone(), r["local_port"].as_u64().unwrap()));
    }
    assert_eq!(ports.len(), THREADS, "one connection per thread");
    std::thread::sleep(Duration::from_millis(500));
    let output = sensor.stop();
    let records = output.records();
    for (kind, pid, port_key) in [
        ("server", server.pid(), "net.peer.port"),
        ("client", client.pid(), "net.host.port"),
    ] {
        let got = records_of(&records, kind, pid);
        assert_eq!(
            got.len(),
            THREADS * PER,
            "{kind} records (log:\n{})",
            output.stderr
        );
        let mut seen = BTreeSet::new();
        for record in &got {
            let id = common::id_of(record, kind);
            assert!(seen.insert(id.clone()), "{kind}: {id} recorded twice");
            let (body, local_port) = sent
                .get(&id)
                .unwrap_or_else(|| panic!("{kind}: {id} was never sent"));
            assert_eq!(attr(record, "http.response.body"), body, "{kind} {id}");
            assert_eq!(
                attr(record, port_key),
                *local_port,
                "{kind} {id}: recorded on another connection"
            );
            assert_eq!(attr(record, "url.scheme"), "https", "{kind} {id}");
            assert_eq!(
                attr(record, "sensor.incomplete"),
                &Value::Null,
                "{kind} {id}"
            );
        }
    }
}

/// Whether process `pid` has an OpenSSL library mapped.
fn maps_openssl(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap_or_default()
        .contains("libssl")
}

/// A client that imports `ssl` only after the sensor started (the library is mapped after the
/// probes were set up) and a TLS keep-alive connection opened before the sensor started: both
/// captured exactly from their next request on, nothing from before.
#[test]
fn ssl_imported_after_the_sensor_started_and_a_connection_opened_before_it() {
    let (server, port) = uvicorn_tls();
    let tls = tls_files();
    let mut lazy = Py::spawn(
        "lazy tls client",
        &["lazy_tls_client.py"],
        &tls.client_env(),
    );
    lazy.expect_line("READY", LONG);
    assert!(!maps_openssl(lazy.pid()), "ssl is not loaded yet");
    let mut early = Py::spawn(
        "requests client",
        &["requests_client.py"],
        &tls.client_env(),
    );
    early.expect_line("READY", LONG);
    let (_, before) = ask_scheme(
        &mut early,
        "https",
        port,
        "GET",
        "/items/1?before=1",
        json!({}),
        None,
        "GET /items/{id}",
    );
    let early_port = before["local_port"].as_u64().unwrap();

    let sensor = Sensor::watching("tls-late", &[server.pid(), lazy.pid(), early.pid()]);
    let mut sent: Vec<(Exchange, u32, &str)> = Vec::new();
    for n in [21, 22, 23] {
        let (exchange, res) = ask_scheme(
            &mut early,
            "https",
            port,
            "GET",
            &format!("/items/{n}?after=1"),
            json!({}),
            None,
            "GET /items/{id}",
        );
        assert_eq!(
            res["local_port"].as_u64().unwrap(),
            early_port,
            "the keep-alive connection from before the sensor is reused"
        );
        sent.push((exchange, early.pid(), "requests_client"));
    }
    let targets = ["/items/31?lazy=1", "/items/32?lazy=2", "/items/33?lazy=3"];
    lazy.send_line(
        &json!({"base": format!("https://127.0.0.1:{port}"), "targets": targets}).to_string(),
    );
    for target in targets {
        let res = result(&lazy);
        let mut exchange = Exchange::from_client(&res, "GET", target, port, "GET /items/{id}");
        exchange.scheme = "https";
        sent.push((exchange, lazy.pid(), "lazy_tls_client"));
    }
    assert!(maps_openssl(lazy.pid()), "ssl is loaded now");
    std::thread::sleep(Duration::from_millis(500));
    let output = sensor.stop();
    let records = output.records();
    let servers = records_of(&records, "server", server.pid());
    assert_eq!(servers.len(), sent.len(), "server records: {servers:#?}");
    for (exchange, pid, service) in &sent {
        let mine = records_of(&records, "client", *pid);
        assert_eq!(mine.len(), 3, "client {service} records: {mine:#?}");
        check(
            find(&mine, exchange, "client"),
            exchange,
            "client",
            *pid,
            service,
        );
        check(
            find(&servers, exchange, "server"),
            exchange,
            "server",
            server.pid(),
            "fastapi_app",
        );
    }
    assert!(
        !output.stdout.contains("before=1"),
        "nothing from before the sensor started"
    );
}

/// The files of OpenSSL (`libssl`, `libcrypto`) the test Python's `ssl` module maps.
fn openssl_files() -> Vec<std::path::PathBuf> {
    let out = std::process::Command::new(sensor_e2e::python())
        .args(["-c", "import ssl; print(open('/proc/self/maps').read())"])
        .output()
        .expect("run python");
    let maps = String::from_utf8_lossy(&out.stdout).into_owned();
    let files: BTreeSet<std::path::PathBuf> = maps
        .lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .filter(|path| {
            let name = path.rsplit('/').next().unwrap_or(path);
            name.starts_with("libssl.so") || name.starts_with("libcrypto.so")
        })
        .map(std::path::PathBuf::from)
        .collect();
    assert_eq!(
        files.len(),
        2,
        "libssl and libcrypto mapped by `import ssl`:\n{maps}"
    );
    files.into_iter().collect()
}

/// A client whose OpenSSL is a copy outside every directory the sensor probes in advance
/// (`LD_LIBRARY_PATH`), loaded by `import ssl` after the sensor started: the kernel reports the
/// executable mapping, the sensor probes the copy within seconds (its full rescan of every
/// process's mappings runs only once a minute), and the client's HTTPS exchanges from then on
/// are captured exactly.
#[test]
fn openssl_mapped_from_an_unusual_directory_after_the_sensor_started() {
    let (server, port) = uvicorn_tls();
    let tls = tls_files();
    let dir = sensor_e2e::scratch_dir("private-openssl");
    for file in openssl_files() {
        std::fs::copy(&file, dir.join(file.file_name().expect("file name"))).expect("copy");
    }
    let dir_text = dir.to_str().expect("utf-8 path");
    let mut env = tls.client_env().to_vec();
    env.push(("LD_LIBRARY_PATH", dir_text));
    let mut lazy = Py::spawn("lazy tls client", &["lazy_tls_client.py"], &env);
    lazy.expect_line("READY", LONG);
    let sensor = Sensor::start_with_env(
        "tls-private-openssl",
        &[
            "run",
            "--pid",
            &server.pid().to_string(),
            "--pid",
            &lazy.pid().to_string(),
            "--output",
            "jsonl",
        ],
        &[("RUST_LOG", "info,sensor::capture=debug")],
    );
    // `import ssl` with nothing to request yet: the copy is mapped, then probed.
    lazy.send_line(
        &json!({"base": format!("https://127.0.0.1:{port}"), "targets": []}).to_string(),
    );
    let copy = dir.join("libssl.so.3");
    let copy_text = copy.to_str().expect("utf-8 path");
    assert!(
        sensor_e2e::wait_until(Duration::from_secs(10), || {
            std::fs::read_to_string(format!("/proc/{}/maps", lazy.pid()))
                .unwrap_or_default()
                .contains(copy_text)
        }),
        "the client maps its own copy of OpenSSL"
    );
    assert!(
        sensor_e2e::wait_until(Duration::from_secs(10), || {
            sensor_e2e::without_colours(&sensor.stderr_so_far())
                .lines()
                .any(|line| {
                    line.contains("probing OpenSSL")
                        && line.contains(&format!("pid={}", lazy.pid()))
                        && line.contains(copy_text)
                })
        }),
        "the sensor did not probe the OpenSSL the client mapped from {copy_text} within 10 s; its log:\n{}",
        sensor.stderr_so_far()
    );
    let targets = ["/items/41?own=1", "/items/42?own=2"];
    lazy.send_line(
        &json!({"base": format!("https://127.0.0.1:{port}"), "targets": targets}).to_string(),
    );
    let mut sent = Vec::new();
    for target in targets {
        let res = result(&lazy);
        let mut exchange = Exchange::from_client(&res, "GET", target, port, "GET /items/{id}");
        exchange.scheme = "https";
        sent.push(exchange);
    }
    std::thread::sleep(Duration::from_millis(500));
    let output = sensor.stop();
    let records = output.records();
    let clients = records_of(&records, "client", lazy.pid());
    let servers = records_of(&records, "server", server.pid());
    assert_eq!(clients.len(), 2, "client records: {clients:#?}");
    assert_eq!(servers.len(), 2, "server records: {servers:#?}");
    let client_side = Side::new(&clients, lazy.pid(), "lazy_tls_client");
    let server_side = Side::new(&servers, server.pid(), "fastapi_app");
    for exchange in &sent {
        check_both(exchange, &client_side, &server_side);
    }
}

/// The inode of a mapped file whose name starts with `prefix`, as process `pid`'s maps show it.
fn mapped_inode(pid: u32, prefix: &str) -> Option<u64> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    maps.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let name = fields.get(5)?.rsplit('/').next()?;
        name.starts_with(prefix).then(|| fields[4].parse().ok())?
    })
}

/// A Python service in a container, the way a node runs a pod: mount and network namespaces of
/// its own, a root entered with pivot_root, and its own libssl at the path the host's has
/// (`tests/apps/container.sh`, under `unshare`). Flask under gunicorn `--certfile` starts in it
/// before the sensor, a `requests` client joins it (`nsenter`) after; the sensor watches every
/// Python process on the host (no --pid). Every HTTPS exchange is exact on both sides, the
/// plaintext read through probes on the container's libssl, which the sensor finds through the
/// process's root: the same path on the host is another file, whose probes never fire here.
#[test]
fn a_python_service_in_a_container_with_its_own_libssl() {
    use std::os::unix::fs::MetadataExt as _;
    let tls = tls_files();
    let (cert, key) = tls.paths();
    let libssl = openssl_files()
        .into_iter()
        .find(|f| f.to_string_lossy().contains("libssl"))
        .and_then(|f| f.canonicalize().ok())
        .expect("the host's libssl");
    let root = sensor_e2e::scratch_dir("container-root");
    let python = sensor_e2e::python();
    let mut container = std::process::Command::new("unshare");
    container
        .args(["--mount", "--net", "sh"])
        .arg(sensor_e2e::apps_dir().join("container.sh"))
        .arg(&root)
        .arg(sensor_e2e::apps_dir())
        .arg(&libssl)
        .arg(&python)
        .args(["-m", "gunicorn", "-c", "gunicorn_conf.py", "flask_app:app"]);
    let server = Py::spawn_command(
        "gunicorn flask tls in a container",
        container,
        &[
            ("GUNICORN_WORKERS", "1"),
            ("GUNICORN_CERTFILE", cert),
            ("GUNICORN_KEYFILE", key),
        ],
    );
    let port: u16 = server.expect_line("READY", LONG).parse().unwrap();
    let worker: u32 = server.expect_line("WORKER", LONG).parse().unwrap();
    let host_inode = std::fs::metadata(&libssl).expect("host libssl").ino();
    let worker_inode = mapped_inode(worker, "libssl").expect("the worker maps libssl");
    assert_ne!(
        worker_inode, host_inode,
        "the container's libssl must be its own copy, or this test proves nothing"
    );
    let sensor = Sensor::start("tls-container", &["run", "--output", "jsonl"]);
    let mut join = std::process::Command::new("nsenter");
    join.arg("--target")
        .arg(server.pid().to_string())
        .args(["--mount", "--net", "--root", "--wd", "--"])
        .arg(&python)
        .arg("requests_client.py");
    let mut client = Py::spawn_command("requests client in the container", join, &tls.client_env());
    client.expect_line("READY", LONG);
    let requests: [Ask; 3] = [
        (
            "GET",
            "/items/5?in=container",
            json!({"X-Test": "ctr"}),
            None,
            "GET /items/{id}",
        ),
        (
            "POST",
            "/echo",
            json!({"Content-Type": "application/json"}),
            Some(r#"{"pod": "orders-7d9f", "n": 2}"#),
            "POST /echo",
        ),
        ("GET", "/items/6", json!({}), None, "GET /items/{id}"),
    ];
    let sent: Vec<Exchange> = ask_all_https(&mut client, port, requests)
        .into_iter()
        .map(|(exchange, _)| exchange)
        .collect();
    assert_eq!(
        mapped_inode(client.pid(), "libssl"),
        Some(worker_inode),
        "the client runs the container's libssl"
    );
    std::thread::sleep(Duration::from_millis(500));
    let output = sensor.stop();
    let records = output.records();
    let servers = records_of(&records, "server", worker);
    let clients = records_of(&records, "client", client.pid());
    assert_eq!(
        servers.len(),
        sent.len(),
        "server records (log:\n{})",
        output.stderr
    );
    assert_eq!(
        clients.len(),
        sent.len(),
        "client records (log:\n{})",
        output.stderr
    );
    let client_side = Side::new(&clients, client.pid(), "requests_client");
    let server_side = Side::new(&servers, worker, "flask_app");
    for exchange in &sent {
        check_both(exchange, &client_side, &server_side);
    }
    drop(client);
    drop(server);
}

/// A `requests` client behind a forward proxy (`HTTPS_PROXY`, `tests/apps/connect_proxy.py`,
/// not watched) calling uvicorn over HTTPS: see [`through_a_connect_proxy`].
#[test]
fn https_through_a_connect_proxy() {
    through_a_connect_proxy("requests_client.py", &[]);
}

/// An aiohttp client behind the same proxy: asyncio runs the tunnel's TLS in a memory BIO, which
/// the sensor ties to the tunnel's socket by the ciphertext its reads return, although the
/// socket began as plain HTTP (the CONNECT).
#[test]
fn aiohttp_https_through_a_connect_proxy() {
    through_a_connect_proxy("aiohttp_client.py", &[]);
}

/// An httpx `AsyncClient` behind the same proxy: anyio's TLS stream, a memory BIO too.
#[test]
fn httpx_async_https_through_a_connect_proxy() {
    through_a_connect_proxy("httpx_client.py", &[("HTTPX_ASYNC", "1")]);
}

/// `client` (a script taking the `request` commands, with `client_env`) calls uvicorn over
/// HTTPS through a forward proxy: the tunnel's `CONNECT` is one client record naming the
/// tunnel's end as its server (no URL), and each call through the tunnel is a client record of
/// its own, read from the client's TLS on the same socket, with the URL the client asked for
/// and the connection's addresses; every span id differs (the CONNECT and the first call
/// through the tunnel are both their stream's first exchange); uvicorn records each call.
fn through_a_connect_proxy(client: &str, client_env: &[(&str, &str)]) {
    let (server, port) = uvicorn_tls();
    let (proxy, proxy_port, proxy_url) = proxy::spawn();
    let mut env = tls_files().client_env().to_vec();
    env.push(("HTTPS_PROXY", proxy_url.as_str()));
    env.extend_from_slice(client_env);
    let mut client = Py::spawn(&format!("{client} behind a proxy"), &[client], &env);
    client.expect_line("READY", LONG);
    let sensor = Sensor::watching("tls-proxy", &[server.pid(), client.pid()]);
    let answers = proxy::ask(&mut client, &format!("https://127.0.0.1:{port}"));
    std::thread::sleep(Duration::from_millis(500));
    let output = sensor.stop();
    let records = output.records();
    let clients = records_of(&records, "client", client.pid());
    let servers = records_of(&records, "server", server.pid());
    let names: Vec<&str> = clients
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        clients.len(),
        1 + answers.len(),
        "client records: {names:?}"
    );
    assert_eq!(servers.len(), answers.len(), "server records");
    let connect = clients
        .iter()
        .find(|r| attr(r, "http.method") == "CONNECT")
        .unwrap_or_else(|| panic!("no CONNECT among {names:?}"));
    assert_eq!(
        attr(connect, "http.target"),
        format!("127.0.0.1:{port}").as_str()
    );
    assert_eq!(attr(connect, "http.status_code"), 200, "{connect:#}");
    assert_eq!(attr(connect, "server.address"), "127.0.0.1", "{connect:#}");
    assert_eq!(attr(connect, "server.port"), port, "{connect:#}");
    assert_eq!(
        attr(connect, "network.peer.port"),
        proxy_port,
        "{connect:#}"
    );
    for absent in ["url.full", "http.url", "url.path"] {
        assert!(attr(connect, absent).is_null(), "{absent}: {connect:#}");
    }
    proxy::check(&clients, &servers, &answers, port, proxy_port);
    for call in clients
        .iter()
        .filter(|r| attr(r, "http.method") != "CONNECT")
    {
        assert_eq!(attr(call, "url.scheme"), "https", "{call:#}");
    }
    let span_ids: BTreeSet<&str> = clients
        .iter()
        .map(|r| attr(r, "sensor.span_id").as_str().expect("span id"))
        .collect();
    assert_eq!(
        span_ids.len(),
        clients.len(),
        "every client span has its own id"
    );
    drop(proxy);
}
