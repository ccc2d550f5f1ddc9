//! The in-cluster pod metadata path against a local endpoint that answers the way the API
//! server does: `GET /api/v1/pods?fieldSelector=spec.nodeName=...` returns a `PodList`, the
//! same with `watch=true` a chunked stream of newline-delimited `WatchEvent`s (ADDED, MODIFIED,
//! DELETED, BOOKMARK, and ERROR with a 410 `Status` when the resource version expired). The
//! kube client is the real one, built against the endpoint's URL; the fixtures are Pod JSON as
//! the API server serialises it (`tests/fixtures/kubernetes`).

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use sensor::enrich::kubernetes::{PodDirectory, WatchSettings, spawn_watch};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};

const NODE: &str = "node-1";
const ID_INIT: &str = "852bd520d6c69e9cd3011bff79869f66ca4b170de55c13379bdd6b84c02db7f1";
const ID_API: &str = "e4d8d4e83d335fd8ee8209de7cb2ed215bf75ac6e501bd5c4bb8fc72b15970e5";
const ID_PROXY: &str = "6f5319b3655d9171fd2ebb59ab85666c56de8b5cd8c8301f5affb836271fb266";
const ID_DB: &str = "f37b3f623bf633553dc38eb32e206e6d221469c0c5de609cf0d4e64372fe3341";
const ID_REPORT: &str = "d097c22816eaa4c48b87828c0de924a036b4706ba241fb82f30ced2a86225860";
const ID_WEB: &str = "7c6e862c9a5f553f261f83f6b9c60bd328282ad68068bf70e81fb9723fe29b0a";
const ID_API_RESTARTED: &str = "a52a5ff65435156c1eb562148c5cdece2a8593f0ab429b7dbd214f6dd22d2e9f";
const ID_PAYMENTS: &str = "b21fcecd76c5ce452afef907c322659a78ee45bf3658c7a5173537f999831042";

fn fixture(name: &str) -> String {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    let path = format!("{manifest_dir}/tests/fixtures/kubernetes/{name}");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// One request the endpoint received: its path and decoded query parameters.
#[derive(Clone, Debug)]
struct Request {
    path: String,
    query: BTreeMap<String, String>,
}

impl Request {
    fn is_watch(&self) -> bool {
        matches!(
            self.query.get("watch").map(String::as_str),
            Some("true" | "1")
        )
    }
}

/// What the endpoint answers: list responses in order, and for each watch request a stream
/// whose lines the test sends (the response ends when the test drops the sender).
#[derive(Default)]
struct Script {
    lists: VecDeque<(u16, String)>,
    watches: VecDeque<mpsc::UnboundedReceiver<String>>,
    requests: Vec<Request>,
}

struct ApiServer {
    url: String,
    script: Arc<Mutex<Script>>,
}

impl ApiServer {
    async fn start() -> ApiServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let script = Arc::new(Mutex::new(Script::default()));
        let shared = script.clone();
        tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(serve(socket, shared.clone()));
            }
        });
        ApiServer { url, script }
    }

    fn list(&self, status: u16, body: String) {
        self.script.lock().unwrap().lists.push_back((status, body));
    }

    /// Queues a watch response; its events are sent through the returned sender.
    fn watch(&self) -> mpsc::UnboundedSender<String> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.script.lock().unwrap().watches.push_back(rx);
        tx
    }

    fn requests(&self) -> Vec<Request> {
        self.script.lock().unwrap().requests.clone()
    }

    fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url.parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

fn parse_target(target: &str) -> Request {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let query = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    Request {
        path: path.to_owned(),
        query,
    }
}

/// HTTP/1.1 with keep-alive, as the API server speaks it to a client without TLS.
async fn serve(socket: TcpStream, script: Arc<Mutex<Script>>) {
    let (read, mut write) = socket.into_split();
    let mut read = BufReader::new(read);
    loop {
        let mut request_line = String::new();
        if read.read_line(&mut request_line).await.unwrap_or(0) == 0 {
            return;
        }
        loop {
            let mut header = String::new();
            if read.read_line(&mut header).await.unwrap_or(0) == 0 {
                return;
            }
            if header == "\r\n" || header == "\n" {
                break;
            }
        }
        let target = request_line.split_whitespace().nth(1).unwrap_or("/");
        let request = parse_target(target);
        assert_eq!(request_line.split_whitespace().next(), Some("GET"));
        let watch = request.is_watch();
        let next = {
            let mut script = script.lock().unwrap();
            script.requests.push(request);
            if watch {
                script.watches.pop_front().map(Err)
            } else {
                script.lists.pop_front().map(Ok)
            }
        };
        let result = match next {
            Some(Ok((status, body))) => {
                let head = format!(
                    "HTTP/1.1 {status} {}\r\nAudit-Id: 5e1b2c3d\r\nCache-Control: no-cache, private\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    if status == 200 { "OK" } else { "Error" },
                    body.len()
                );
                write.write_all(head.as_bytes()).await.ok();
                write.write_all(body.as_bytes()).await
            }
            Some(Err(mut events)) => {
                let head = "HTTP/1.1 200 OK\r\nAudit-Id: 5e1b2c3e\r\nCache-Control: no-cache, private\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
                write.write_all(head.as_bytes()).await.ok();
                while let Some(event) = events.recv().await {
                    let line = format!("{}\n", event.trim_end());
                    let chunk = format!("{:x}\r\n{line}\r\n", line.len());
                    if write.write_all(chunk.as_bytes()).await.is_err() {
                        return;
                    }
                }
                write.write_all(b"0\r\n\r\n").await
            }
            None => {
                // Nothing scripted: the test is over, or not there yet; hold the request.
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return;
            }
        };
        if result.is_err() {
            return;
        }
    }
}

async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn counter(directory: &PodDirectory, name: &str) -> u64 {
    directory
        .stats()
        .unwrap()
        .named()
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, _, v)| *v)
        .unwrap()
}

fn attributes(directory: &PodDirectory, id: &str) -> BTreeMap<String, String> {
    directory
        .container(id)
        .unwrap_or_else(|| panic!("container {id} not resolved"))
        .attributes()
        .into_iter()
        .collect()
}

#[tokio::test]
async fn node_pods_are_listed_watched_updated_and_relisted() {
    let server = ApiServer::start().await;
    // Refused at first (the ClusterRoleBinding not applied yet): counted, and retried.
    server.list(403, fixture("list-forbidden.json"));
    server.list(200, fixture("pods-list.json"));
    let first_watch = server.watch();
    let settings = WatchSettings {
        min_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        watch_timeout_secs: 290,
    };
    let directory = spawn_watch(server.client(), NODE.to_owned(), settings);
    assert!(directory.wait_synced(Duration::from_secs(10)).await);
    assert_eq!(counter(&directory, "k8s_pod_list_errors"), 1);
    assert_eq!(counter(&directory, "k8s_pod_lists"), 1);
    assert_eq!(directory.len(), 3);

    // The list: node-scoped, and each container id resolves to its pod and container.
    let requests = server.requests();
    assert_eq!(requests[0].path, "/api/v1/pods");
    assert_eq!(requests[1].query["fieldSelector"], "spec.nodeName=node-1");
    let api = directory.container(ID_API).unwrap();
    assert_eq!(api.container_name, "api");
    assert_eq!(api.service_name(), Some("orders"));
    let orders = attributes(&directory, ID_API);
    for (key, value) in [
        ("k8s.pod.name", "orders-api-7d9f8b6c5d-x2x4q"),
        ("k8s.pod.uid", "c5575c0f-1af6-4464-ae99-ea507987dd2a"),
        ("k8s.namespace.name", "shop"),
        ("k8s.node.name", "node-1"),
        ("k8s.container.name", "api"),
        ("k8s.deployment.name", "orders-api"),
        ("k8s.replicaset.name", "orders-api-7d9f8b6c5d"),
        ("k8s.pod.label.app.kubernetes.io/part-of", "shop"),
        ("k8s.pod.annotation.prometheus.io/scrape", "true"),
    ] {
        assert_eq!(orders.get(key).map(String::as_str), Some(value), "{key}");
    }
    assert_eq!(
        directory.container(ID_PROXY).unwrap().container_name,
        "proxy"
    );
    assert_eq!(
        directory.container(ID_INIT).unwrap().container_name,
        "migrate"
    );
    // cri-o and docker ids, a StatefulSet and a CronJob's Job.
    let db = directory.container(ID_DB).unwrap();
    assert_eq!(db.service_name(), Some("postgres"));
    assert_eq!(attributes(&directory, ID_DB)["k8s.statefulset.name"], "db");
    let report = attributes(&directory, ID_REPORT);
    assert_eq!(report["k8s.job.name"], "nightly-report-29395680");
    assert_eq!(report["k8s.cronjob.name"], "nightly-report");
    assert_eq!(
        directory.container(ID_REPORT).unwrap().service_name(),
        Some("nightly-report")
    );

    // The watch starts from the list's resource version, for this node only.
    until("the watch request", || {
        server.requests().iter().any(Request::is_watch)
    })
    .await;
    let watch = server
        .requests()
        .into_iter()
        .find(Request::is_watch)
        .unwrap();
    assert_eq!(watch.path, "/api/v1/pods");
    assert_eq!(watch.query["resourceVersion"], "1042");
    assert_eq!(watch.query["fieldSelector"], "spec.nodeName=node-1");
    assert_eq!(watch.query["allowWatchBookmarks"], "true");

    let events: Vec<String> = fixture("watch-events.jsonl")
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(events.len(), 5);
    // ADDED: a pod whose container has not started has no id yet.
    first_watch.send(events[0].clone()).unwrap();
    until("the new pod", || directory.len() == 4).await;
    assert!(directory.container(ID_WEB).is_none());
    // MODIFIED: the container started.
    first_watch.send(events[1].clone()).unwrap();
    until("the started container", || {
        directory.container(ID_WEB).is_some()
    })
    .await;
    let web = directory.container(ID_WEB).unwrap();
    assert_eq!(web.service_name(), Some("edge-web"));
    assert_eq!(attributes(&directory, ID_WEB)["k8s.daemonset.name"], "web");
    // MODIFIED: the api container restarted; only the new id is the running container.
    first_watch.send(events[2].clone()).unwrap();
    until("the restarted container", || {
        directory.container(ID_API_RESTARTED).is_some()
    })
    .await;
    assert!(directory.container(ID_API).is_none());
    assert_eq!(
        directory
            .container(ID_API_RESTARTED)
            .unwrap()
            .container_name,
        "api"
    );
    // DELETED.
    first_watch.send(events[3].clone()).unwrap();
    until("the deleted pod to go", || {
        directory.container(ID_DB).is_none()
    })
    .await;
    assert_eq!(directory.len(), 3);
    assert_eq!(counter(&directory, "k8s_pod_events"), 4);

    // BOOKMARK, then the server ends the watch (its timeout): the next watch starts from the
    // bookmark's version.
    let second_watch = server.watch();
    first_watch.send(events[4].clone()).unwrap();
    drop(first_watch);
    until("the second watch", || {
        server.requests().iter().filter(|r| r.is_watch()).count() == 2
    })
    .await;
    let rewatch = server
        .requests()
        .into_iter()
        .filter(Request::is_watch)
        .nth(1)
        .unwrap();
    assert_eq!(rewatch.query["resourceVersion"], "1500");
    assert_eq!(counter(&directory, "k8s_pod_watch_restarts"), 1);

    // 410 Gone: the client lists again; the relist replaces the pods (the report pod's
    // deletion was missed, a new pod appeared) and the watch resumes from the new version.
    server.list(200, fixture("pods-relist.json"));
    let third_watch = server.watch();
    second_watch
        .send(fixture("watch-expired.jsonl").trim().to_owned())
        .unwrap();
    until("the relist", || counter(&directory, "k8s_pod_lists") == 2).await;
    assert_eq!(counter(&directory, "k8s_pod_watch_expired"), 1);
    assert!(directory.container(ID_REPORT).is_none());
    let payments = directory.container(ID_PAYMENTS).unwrap();
    assert_eq!(payments.pod.namespace, "payments");
    // A bare pod: no workload, no name label; no service name from the pod.
    assert_eq!(payments.service_name(), None);
    assert!(directory.container(ID_WEB).is_some());
    until("the third watch", || {
        server.requests().iter().filter(|r| r.is_watch()).count() == 3
    })
    .await;
    let resumed = server
        .requests()
        .into_iter()
        .filter(Request::is_watch)
        .nth(2)
        .unwrap();
    assert_eq!(resumed.query["resourceVersion"], "2210");
    assert_eq!(counter(&directory, "k8s_pod_watch_errors"), 0);
    drop(second_watch);
    drop(third_watch);
}

#[tokio::test]
async fn a_broken_watch_is_counted_and_resumed() {
    let server = ApiServer::start().await;
    server.list(200, fixture("pods-list.json"));
    let first_watch = server.watch();
    let settings = WatchSettings {
        min_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        watch_timeout_secs: 290,
    };
    let directory = spawn_watch(server.client(), NODE.to_owned(), settings);
    assert!(directory.wait_synced(Duration::from_secs(10)).await);
    until("the watch request", || {
        server.requests().iter().any(Request::is_watch)
    })
    .await;
    // A line that is not a watch event breaks the stream: counted, then watched again from
    // the last version seen, without a relist.
    let second_watch = server.watch();
    first_watch.send("{not json".to_owned()).unwrap();
    until("the second watch", || {
        server.requests().iter().filter(|r| r.is_watch()).count() == 2
    })
    .await;
    assert_eq!(counter(&directory, "k8s_pod_watch_errors"), 1);
    assert_eq!(counter(&directory, "k8s_pod_lists"), 1);
    assert_eq!(directory.len(), 3);
    drop(first_watch);
    drop(second_watch);
}
