//! End to end: pod metadata in the real sensor (built with the `kubernetes` feature, as
//! `cargo xtask test` and the container image build it).
//!
//! No cluster is needed: a local endpoint answers the pod list and watch the way the API
//! server does, the sensor finds it through a kubeconfig (`KUBECONFIG`, kube's
//! `Config::infer`) with `K8S_NODE_NAME` naming the node, and real Python servers run in
//! cgroups named the way the kubelet names a container's (`/kubepods/besteffort/pod<uid>/<id>`,
//! in the cgroup v1 `pids` hierarchy), so their container ids match the pods' container
//! statuses.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::Command,
    sync::{Arc, Mutex, mpsc},
    time::Duration,
};

use sensor_e2e::{Py, Sensor, python, records_of, scratch_dir, sensor_bin};
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(30);
const NODE: &str = "node-e2e";

/// A pod of the node, and the container id its (only) container runs with.
struct PodSpec {
    uid: &'static str,
    name: &'static str,
    namespace: &'static str,
    labels: Value,
    annotations: Value,
    owner: Option<(&'static str, &'static str)>,
    container_id: &'static str,
}

impl PodSpec {
    /// The Pod as the API server serialises it; `started` says whether the kubelet has
    /// reported the container's id yet.
    fn json(&self, started: bool, resource_version: u32) -> Value {
        let state = if started {
            json!({"containerID": format!("containerd://{}", self.container_id),
                   "image": "docker.io/library/python:3.11-slim",
                   "imageID": "docker.io/library/python@sha256:2f1e0d9c8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e",
                   "lastState": {}, "name": "app", "ready": true, "restartCount": 0, "started": true,
                   "state": {"running": {"startedAt": "2026-11-22T06:00:02Z"}}})
        } else {
            json!({"image": "docker.io/library/python:3.11-slim", "imageID": "", "lastState": {},
                   "name": "app", "ready": false, "restartCount": 0, "started": false,
                   "state": {"waiting": {"reason": "ContainerCreating"}}})
        };
        let owners: Vec<Value> = self
            .owner
            .iter()
            .map(|(kind, name)| {
                json!({"apiVersion": "apps/v1", "blockOwnerDeletion": true, "controller": true,
                       "kind": kind, "name": name, "uid": "6e0f3c2a-9b1d-4f7e-8a5c-1d2e3f4a5b6c"})
            })
            .collect();
        json!({
            "kind": "Pod", "apiVersion": "v1",
            "metadata": {"name": self.name, "namespace": self.namespace, "uid": self.uid,
                         "resourceVersion": resource_version.to_string(),
                         "creationTimestamp": "2026-11-22T06:00:00Z",
                         "labels": self.labels, "annotations": self.annotations,
                         "ownerReferences": owners},
            "spec": {"nodeName": NODE, "restartPolicy": "Always", "schedulerName": "default-scheduler",
                     "containers": [{"name": "app", "image": "docker.io/library/python:3.11-slim",
                                     "imagePullPolicy": "IfNotPresent", "resources": {}}]},
            "status": {"phase": if started { "Running" } else { "Pending" }, "hostIP": "10.0.3.21",
                       "podIP": "10.244.1.7", "qosClass": "BestEffort",
                       "startTime": "2026-11-22T06:00:00Z", "containerStatuses": [state]}
        })
    }
}

/// The endpoint: the pod list, then one watch whose events the test sends.
struct ApiServer {
    port: u16,
    events: mpsc::Sender<String>,
}

impl ApiServer {
    fn start(list: Value) -> ApiServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (events, receiver) = mpsc::channel::<String>();
        let receiver = Arc::new(Mutex::new(Some(receiver)));
        let list = list.to_string();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let list = list.clone();
                let receiver = receiver.clone();
                std::thread::spawn(move || serve(stream, &list, &receiver));
            }
        });
        ApiServer { port, events }
    }

    fn kubeconfig(&self, dir: &std::path::Path) -> PathBuf {
        kubeconfig(dir, self.port)
    }
}

/// A kubeconfig in `dir` whose cluster is `http://127.0.0.1:<port>`.
fn kubeconfig(dir: &std::path::Path, port: u16) -> PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: mock\n  cluster:\n    server: http://127.0.0.1:{port}\ncontexts:\n- name: mock\n  context:\n    cluster: mock\n    user: mock\n    namespace: default\ncurrent-context: mock\nusers:\n- name: mock\n  user: {{}}\n"
        ),
    )
    .unwrap();
    path
}

type Events = Arc<Mutex<Option<mpsc::Receiver<String>>>>;

fn serve(stream: TcpStream, list: &str, events: &Events) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut request = String::new();
        if reader.read_line(&mut request).unwrap_or(0) == 0 {
            return;
        }
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 || header.trim().is_empty() {
                break;
            }
        }
        let target = request.split_whitespace().nth(1).unwrap_or("/").to_owned();
        assert!(target.starts_with("/api/v1/pods?"), "{target}");
        assert!(
            target.contains(&format!("fieldSelector=spec.nodeName%3D{NODE}")),
            "{target}"
        );
        if !target.contains("watch=true") {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                list.len()
            );
            if writer.write_all(head.as_bytes()).is_err()
                || writer.write_all(list.as_bytes()).is_err()
            {
                return;
            }
            continue;
        }
        let Some(receiver) = events.lock().unwrap().take() else {
            // One watch is scripted; later ones wait (the sensor stops first).
            std::thread::sleep(Duration::from_secs(3600));
            return;
        };
        let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
        if writer.write_all(head.as_bytes()).is_err() {
            return;
        }
        while let Ok(event) = receiver.recv() {
            let line = format!("{event}\n");
            let chunk = format!("{:x}\r\n{line}\r\n", line.len());
            if writer.write_all(chunk.as_bytes()).is_err() {
                return;
            }
        }
        return;
    }
}

/// A cgroup named like a kubelet's container cgroup; removed when dropped (after the processes
/// in it are gone).
struct ContainerCgroup {
    dir: PathBuf,
}

impl ContainerCgroup {
    fn new(pod_uid: &str, container_id: &str) -> ContainerCgroup {
        let dir = PathBuf::from("/sys/fs/cgroup/pids/kubepods/besteffort")
            .join(format!("pod{pod_uid}"))
            .join(container_id);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (the test needs the cgroup v1 pids hierarchy, as root)",
                dir.display()
            )
        });
        ContainerCgroup { dir }
    }

    /// The test venv's Python, exec'd from a shell that first moved itself into this cgroup:
    /// the sensor sees the exec with the container id already in place.
    fn spawn(&self, name: &str, args: &[&str], env: &[(&str, &str)]) -> Py {
        let procs = self.dir.join("cgroup.procs");
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!(
                "echo $$ > {} && exec \"$0\" \"$@\"",
                procs.display()
            ))
            .arg(python())
            .args(args);
        Py::spawn_command(name, command, env)
    }
}

impl Drop for ContainerCgroup {
    fn drop(&mut self) {
        let mut dir = self.dir.clone();
        for _ in 0..4 {
            let _ = std::fs::remove_dir(&dir);
            dir.pop();
        }
    }
}

fn get(port: u16, target: &str) -> bool {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(LONG)).unwrap();
    write!(
        stream,
        "GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.contains(" 200 OK")
}

fn server(cgroup: Option<&ContainerCgroup>, marker: &str) -> (Py, u16) {
    let option = format!("sel={marker}");
    let args = ["-X", option.as_str(), "http_server.py"];
    let py = match cgroup {
        Some(cgroup) => cgroup.spawn(marker, &args, &[]),
        None => Py::spawn(marker, &args, &[]),
    };
    let port = py.expect_line("READY", LONG).parse().unwrap();
    (py, port)
}

/// Pod metadata names services and adds `k8s.*` attributes; namespace and label selectors
/// choose processes by their pod, and a process whose container id the kubelet reports only
/// after it started is decided once the watch brings it.
#[test]
fn pods_name_services_add_attributes_and_select_processes() {
    let version = Command::new(sensor_bin())
        .arg("--version")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&version.stdout).contains("kubernetes"),
        "{} is built without the `kubernetes` feature: build it with `cargo build --release -p sensor --features kubernetes` (`cargo xtask test` does)",
        sensor_bin().display()
    );
    let orders = PodSpec {
        uid: "5b0c6f1e-2a3d-4e8f-9c1b-7d6e5f4a3b2c",
        name: "orders-7d9f8b6c5d-q8m2x",
        namespace: "shop",
        labels: json!({"app.kubernetes.io/name": "orders", "pod-template-hash": "7d9f8b6c5d"}),
        annotations: json!({"pysensor.io/service-name": "orders-from-pod", "team": "checkout"}),
        owner: Some(("ReplicaSet", "orders-7d9f8b6c5d")),
        container_id: "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0",
    };
    let payments = PodSpec {
        uid: "8c7d6e5f-4a3b-4c2d-9e1f-0a1b2c3d4e5f",
        name: "payments-0",
        namespace: "shop",
        labels: json!({"app.kubernetes.io/name": "payments"}),
        annotations: json!({}),
        owner: Some(("StatefulSet", "payments")),
        container_id: "1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f809",
    };
    let system = PodSpec {
        uid: "2d3e4f5a-6b7c-4d8e-9f0a-1b2c3d4e5f6a",
        name: "metrics-agent-x7k2p",
        namespace: "kube-system",
        labels: json!({}),
        annotations: json!({}),
        owner: Some(("DaemonSet", "metrics-agent")),
        container_id: "2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a",
    };
    let internal = PodSpec {
        uid: "3e4f5a6b-7c8d-4e9f-8a1b-2c3d4e5f6a7b",
        name: "report-29395680-5zq9w",
        namespace: "batch",
        labels: json!({"tier": "internal"}),
        annotations: json!({}),
        owner: Some(("Job", "report-29395680")),
        container_id: "3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b",
    };
    let list = json!({
        "kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "100"},
        "items": [orders.json(true, 90), payments.json(false, 91), system.json(true, 92),
                  internal.json(true, 93)]
    });
    let api = ApiServer::start(list);
    let dir = scratch_dir("kubernetes");
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        "sensor:\n  include:\n    namespaces: [shop, batch]\n  exclude:\n    pod_labels: ['tier=internal']\n",
    )
    .unwrap();
    let kubeconfig = api.kubeconfig(&dir);
    let cgroups: Vec<ContainerCgroup> = [&orders, &payments, &system, &internal]
        .iter()
        .map(|pod| ContainerCgroup::new(pod.uid, pod.container_id))
        .collect();
    let sensor = Sensor::start_with_env(
        "kubernetes",
        &[
            "run",
            "--config",
            config.to_str().unwrap(),
            "--output",
            "jsonl",
        ],
        &[
            ("KUBECONFIG", kubeconfig.to_str().unwrap()),
            ("K8S_NODE_NAME", NODE),
        ],
    );
    let (orders_py, orders_port) = server(Some(&cgroups[0]), "orders");
    let (payments_py, payments_port) = server(Some(&cgroups[1]), "payments");
    let (system_py, system_port) = server(Some(&cgroups[2]), "system");
    let (internal_py, internal_port) = server(Some(&cgroups[3]), "internal");
    let (host_py, host_port) = server(None, "host");
    std::thread::sleep(Duration::from_millis(500));
    // The payments container's id reaches the API server after the process started: its
    // decision waited for it.
    api.events
        .send(json!({"type": "MODIFIED", "object": payments.json(true, 101)}).to_string())
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    for port in [
        orders_port,
        payments_port,
        system_port,
        internal_port,
        host_port,
    ] {
        assert!(get(port, "/hello?k8s=1"));
    }
    std::thread::sleep(Duration::from_millis(500));
    let output = sensor.stop();
    let records = output.records();
    let count = |py: &Py| records_of(&records, "server", py.pid()).len();
    assert_eq!(count(&orders_py), 1, "{}", output.stderr);
    assert_eq!(
        count(&payments_py),
        1,
        "waited for its pod: {}",
        output.stderr
    );
    assert_eq!(count(&system_py), 0, "namespace not included");
    assert_eq!(count(&internal_py), 0, "excluded by label");
    assert_eq!(count(&host_py), 0, "no pod, so no included namespace");

    let resource = &records_of(&records, "server", orders_py.pid())[0]["resource"];
    for (key, value) in [
        ("service.name", "orders-from-pod"),
        ("container.id", orders.container_id),
        ("k8s.pod.name", orders.name),
        ("k8s.pod.uid", orders.uid),
        ("k8s.namespace.name", "shop"),
        ("k8s.node.name", NODE),
        ("k8s.container.name", "app"),
        ("k8s.deployment.name", "orders"),
        ("k8s.replicaset.name", "orders-7d9f8b6c5d"),
        ("k8s.pod.label.app.kubernetes.io/name", "orders"),
        ("k8s.pod.annotation.team", "checkout"),
    ] {
        assert_eq!(resource[key], value, "{key}: {resource}");
    }
    let resource = &records_of(&records, "server", payments_py.pid())[0]["resource"];
    assert_eq!(resource["service.name"], "payments", "{resource}");
    assert_eq!(resource["k8s.statefulset.name"], "payments", "{resource}");
    assert!(output.stderr.contains("listed the pods of this node"));
    drop((orders_py, payments_py, system_py, internal_py, host_py));
    drop(cgroups);
}

/// `sensor check` says whether pod metadata can be had: not configured (ok), the API server
/// listing the node's pods (ok), or an API server that cannot be reached (FAIL, exit 1).
#[test]
fn check_reports_whether_the_api_server_answers() {
    let check = |env: &[(&str, &str)]| {
        let output = Command::new(sensor_bin())
            .arg("check")
            .env_remove("K8S_NODE_NAME")
            .env_remove("NODE_NAME")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .envs(env.iter().copied())
            .output()
            .expect("run sensor check");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let line = stdout
            .lines()
            .find(|l| l.starts_with("kubernetes api"))
            .unwrap_or_else(|| panic!("no kubernetes api line in:\n{stdout}"))
            .to_owned();
        (output.status.success(), line, stdout)
    };

    let (passed, line, stdout) = check(&[]);
    assert!(passed, "{stdout}");
    assert!(
        line.contains(" ok ") && line.contains("not configured"),
        "{line}"
    );

    let api = ApiServer::start(json!({
        "kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": []
    }));
    let dir = scratch_dir("kubernetes-check");
    let reachable = api.kubeconfig(&dir);
    let (passed, line, stdout) = check(&[
        ("KUBECONFIG", reachable.to_str().unwrap()),
        ("K8S_NODE_NAME", NODE),
    ]);
    assert!(passed, "{stdout}");
    assert!(
        line.contains(" ok ")
            && line.contains(&format!(
                "http://127.0.0.1:{}/ lists the pods of node {NODE}",
                api.port
            )),
        "{line}"
    );

    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let unreachable_dir = scratch_dir("kubernetes-check-unreachable");
    let unreachable = kubeconfig(&unreachable_dir, closed);
    let (passed, line, stdout) = check(&[
        ("KUBECONFIG", unreachable.to_str().unwrap()),
        ("K8S_NODE_NAME", NODE),
    ]);
    assert!(
        !passed,
        "an unreachable API server fails the check:\n{stdout}"
    );
    assert!(
        line.contains(" FAIL ") && line.contains(&format!("listing the pods of node {NODE}")),
        "{line}"
    );
}
