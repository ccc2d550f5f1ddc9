//! Pod metadata: which pod, namespace, workload and container a process belongs to, from the
//! Kubernetes API server.
//!
//! In a DaemonSet the sensor lists and watches the pods of its own node (field selector
//! `spec.nodeName=<node>`, the node's name from `K8S_NODE_NAME` or `NODE_NAME`, set through the
//! downward API) and keeps them in a [`PodDirectory`], by pod UID. A process is matched to its
//! pod through the container id of its cgroup ([`super::container`]), which the kubelet reports
//! in `status.containerStatuses[].containerID` (`containerd://<id>`, `cri-o://<id>`,
//! `docker://<id>`).
//!
//! The API client (kube-rs) is behind the `kubernetes` cargo feature; without it, or outside a
//! cluster, the directory is inactive and records carry no `k8s.*` attributes.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

/// Pod annotation that names the service of a pod's processes (after their own environment).
pub const SERVICE_NAME_ANNOTATION: &str = "pysensor.io/service-name";
/// OpenTelemetry's annotation for the same, accepted after [`SERVICE_NAME_ANNOTATION`].
pub const OTEL_SERVICE_NAME_ANNOTATION: &str = "resource.opentelemetry.io/service.name";
/// The recommended label naming an application, used after the annotations.
pub const APP_NAME_LABEL: &str = "app.kubernetes.io/name";
/// Annotations never copied into records (`kubectl apply`'s copy of the whole manifest).
const SKIPPED_ANNOTATIONS: &[&str] = &["kubectl.kubernetes.io/last-applied-configuration"];

/// The workload that owns a pod, as far as the pod's own owner reference tells.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Workload {
    /// `k8s.deployment.name`: the owning ReplicaSet's name without its pod-template hash.
    pub deployment: Option<String>,
    /// `k8s.replicaset.name`.
    pub replicaset: Option<String>,
    /// `k8s.statefulset.name`.
    pub statefulset: Option<String>,
    /// `k8s.daemonset.name`.
    pub daemonset: Option<String>,
    /// `k8s.cronjob.name`: the owning Job's name without the CronJob's schedule suffix.
    pub cronjob: Option<String>,
    /// `k8s.job.name`.
    pub job: Option<String>,
}

impl Workload {
    /// The workload of a pod whose controlling owner is `kind`/`name`, without further API
    /// calls: a ReplicaSet named `<deployment>-<hash>`, where `<hash>` is the pod's
    /// `pod-template-hash` label, belongs to that Deployment; a Job named `<cronjob>-<minutes>`
    /// (8 or more digits: the scheduled time in minutes since the epoch) to that CronJob.
    pub fn from_owner(kind: &str, name: &str, pod_template_hash: Option<&str>) -> Self {
        let name = name.to_owned();
        match kind {
            "ReplicaSet" => Workload {
                deployment: pod_template_hash
                    .filter(|hash| !hash.is_empty())
                    .and_then(|hash| name.strip_suffix(hash)?.strip_suffix('-'))
                    .filter(|d| !d.is_empty())
                    .map(str::to_owned),
                replicaset: Some(name),
                ..Workload::default()
            },
            "StatefulSet" => Workload {
                statefulset: Some(name),
                ..Workload::default()
            },
            "DaemonSet" => Workload {
                daemonset: Some(name),
                ..Workload::default()
            },
            "Job" => Workload {
                cronjob: name
                    .rsplit_once('-')
                    .filter(|(base, minutes)| {
                        !base.is_empty()
                            && minutes.len() >= 8
                            && minutes.bytes().all(|b| b.is_ascii_digit())
                    })
                    .map(|(base, _)| base.to_owned()),
                job: Some(name),
                ..Workload::default()
            },
            _ => Workload::default(),
        }
    }

    /// The name of the outermost workload known (Deployment, StatefulSet, DaemonSet, CronJob,
    /// Job, then a bare ReplicaSet).
    pub fn name(&self) -> Option<&str> {
        self.deployment
            .as_deref()
            .or(self.statefulset.as_deref())
            .or(self.daemonset.as_deref())
            .or(self.cronjob.as_deref())
            .or(self.job.as_deref())
            .or(self.replicaset.as_deref())
    }

    /// The `k8s.<kind>.name` attributes that are known.
    pub fn attributes(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("k8s.deployment.name", &self.deployment),
            ("k8s.replicaset.name", &self.replicaset),
            ("k8s.statefulset.name", &self.statefulset),
            ("k8s.daemonset.name", &self.daemonset),
            ("k8s.cronjob.name", &self.cronjob),
            ("k8s.job.name", &self.job),
        ]
        .into_iter()
        .filter_map(|(key, value)| Some((key, value.as_deref()?)))
    }
}

/// One container of a pod, as its status reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerRef {
    /// The runtime's container id, without its `<runtime>://` prefix, lower-case.
    pub id: String,
    /// The container's name in the pod spec.
    pub name: String,
}

/// What the sensor keeps of one pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodMeta {
    /// `metadata.uid` (`k8s.pod.uid`), the directory's key.
    pub uid: String,
    /// `metadata.name` (`k8s.pod.name`).
    pub name: String,
    /// `metadata.namespace` (`k8s.namespace.name`).
    pub namespace: String,
    /// `spec.nodeName` (`k8s.node.name`).
    pub node_name: String,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// `metadata.annotations`.
    pub annotations: BTreeMap<String, String>,
    /// The owning workload.
    pub workload: Workload,
    /// Containers with a runtime id (init, regular and ephemeral).
    pub containers: Vec<ContainerRef>,
}

/// A container of a known pod: what enrichment gets for a container id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodContainer {
    /// The pod.
    pub pod: Arc<PodMeta>,
    /// The container's name (`k8s.container.name`).
    pub container_name: String,
}

impl PodContainer {
    /// The service name the pod gives: its [`SERVICE_NAME_ANNOTATION`], else its
    /// [`OTEL_SERVICE_NAME_ANNOTATION`], else its [`APP_NAME_LABEL`] label, else its owning
    /// workload's name.
    pub fn service_name(&self) -> Option<&str> {
        fn non_empty(v: Option<&String>) -> Option<&str> {
            v.map(|v| v.trim()).filter(|v| !v.is_empty())
        }
        let pod = &*self.pod;
        non_empty(pod.annotations.get(SERVICE_NAME_ANNOTATION))
            .or_else(|| non_empty(pod.annotations.get(OTEL_SERVICE_NAME_ANNOTATION)))
            .or_else(|| non_empty(pod.labels.get(APP_NAME_LABEL)))
            .or_else(|| pod.workload.name())
    }

    /// The `k8s.*` resource attributes: pod, namespace, node, container, workload, and the
    /// pod's labels and annotations as `k8s.pod.label.<key>` / `k8s.pod.annotation.<key>`.
    pub fn attributes(&self) -> Vec<(String, String)> {
        let pod = &*self.pod;
        let mut out: Vec<(String, String)> = [
            ("k8s.pod.name", &pod.name),
            ("k8s.pod.uid", &pod.uid),
            ("k8s.namespace.name", &pod.namespace),
            ("k8s.node.name", &pod.node_name),
            ("k8s.container.name", &self.container_name),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.to_owned(), v.clone()))
        .collect();
        out.extend(
            pod.workload
                .attributes()
                .map(|(k, v)| (k.to_owned(), v.to_owned())),
        );
        out.extend(
            pod.labels
                .iter()
                .map(|(k, v)| (format!("k8s.pod.label.{k}"), v.clone())),
        );
        out.extend(
            pod.annotations
                .iter()
                .filter(|(k, _)| !SKIPPED_ANNOTATIONS.contains(&k.as_str()))
                .map(|(k, v)| (format!("k8s.pod.annotation.{k}"), v.clone())),
        );
        out
    }
}

/// The container id in a `containerID` status field: the part after `<runtime>://`,
/// lower-case; `None` when empty (a container not started yet).
pub fn container_id_of_status(container_id: &str) -> Option<String> {
    let id = container_id
        .split_once("://")
        .map_or(container_id, |(_, id)| id)
        .trim();
    (!id.is_empty()).then(|| id.to_ascii_lowercase())
}

/// Counters of the watch, published as metrics.
#[derive(Debug, Default)]
pub struct PodWatchStats {
    /// Successful lists (the first, and every relist).
    pub lists: AtomicU64,
    /// Failed list requests.
    pub list_errors: AtomicU64,
    /// Watch requests started after the first (reconnects).
    pub watch_restarts: AtomicU64,
    /// Watches that failed (request refused, stream broken, error event).
    pub watch_errors: AtomicU64,
    /// Relists because the resource version had expired (410 Gone).
    pub expired: AtomicU64,
    /// Pod events applied (added, modified, deleted).
    pub events: AtomicU64,
}

impl PodWatchStats {
    /// Each counter with its metric name and help text.
    pub fn named(&self) -> [(&'static str, &'static str, u64); 6] {
        let load = |v: &AtomicU64| v.load(Ordering::Relaxed);
        [
            (
                "k8s_pod_lists",
                "pod lists from the API server",
                load(&self.lists),
            ),
            (
                "k8s_pod_list_errors",
                "failed pod list requests",
                load(&self.list_errors),
            ),
            (
                "k8s_pod_watch_restarts",
                "pod watches restarted (reconnects)",
                load(&self.watch_restarts),
            ),
            (
                "k8s_pod_watch_errors",
                "pod watches that failed",
                load(&self.watch_errors),
            ),
            (
                "k8s_pod_watch_expired",
                "relists after an expired resource version",
                load(&self.expired),
            ),
            ("k8s_pod_events", "pod events applied", load(&self.events)),
        ]
    }
}

/// Pods by UID, and their containers by container id.
#[derive(Debug, Default)]
struct Cache {
    pods: HashMap<String, Arc<PodMeta>>,
    containers: HashMap<String, (String, String)>,
}

impl Cache {
    fn insert(&mut self, pod: PodMeta) {
        self.remove(&pod.uid.clone());
        for container in &pod.containers {
            self.containers.insert(
                container.id.clone(),
                (pod.uid.clone(), container.name.clone()),
            );
        }
        self.pods.insert(pod.uid.clone(), Arc::new(pod));
    }

    fn remove(&mut self, uid: &str) {
        if let Some(old) = self.pods.remove(uid) {
            for container in &old.containers {
                if self
                    .containers
                    .get(&container.id)
                    .is_some_and(|(owner, _)| owner == uid)
                {
                    self.containers.remove(&container.id);
                }
            }
        }
    }
}

#[derive(Debug, Default)]
struct Shared {
    cache: RwLock<Cache>,
    synced: AtomicBool,
    stats: PodWatchStats,
}

/// The pods of this node, as the watch last saw them: the handle enrichment and the selectors
/// query by container id. Cloning it is cheap; every clone sees the same pods. An inactive
/// directory (no cluster, or built without the `kubernetes` feature) knows no pod.
#[derive(Clone, Debug, Default)]
pub struct PodDirectory {
    shared: Option<Arc<Shared>>,
}

impl PodDirectory {
    /// A directory that never knows any pod.
    pub fn inactive() -> Self {
        PodDirectory { shared: None }
    }

    /// An empty directory that a watch fills.
    pub fn active() -> Self {
        PodDirectory {
            shared: Some(Arc::default()),
        }
    }

    /// Whether pod metadata is available at all (a watch feeds this directory).
    pub fn is_active(&self) -> bool {
        self.shared.is_some()
    }

    /// Whether the first list has been applied.
    pub fn is_synced(&self) -> bool {
        self.shared
            .as_ref()
            .is_some_and(|s| s.synced.load(Ordering::Acquire))
    }

    /// Waits until the first list has been applied, at most `timeout`; whether it was.
    pub async fn wait_synced(&self, timeout: Duration) -> bool {
        if !self.is_active() {
            return false;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.is_synced() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.is_synced()
    }

    /// The pod container whose runtime id is `container_id` (as parsed from a cgroup).
    pub fn container(&self, container_id: &str) -> Option<PodContainer> {
        let shared = self.shared.as_ref()?;
        let cache = shared.cache.read().unwrap_or_else(|e| e.into_inner());
        let (uid, name) = cache.containers.get(container_id)?;
        Some(PodContainer {
            pod: cache.pods.get(uid)?.clone(),
            container_name: name.clone(),
        })
    }

    /// The pod with this UID.
    pub fn pod(&self, uid: &str) -> Option<Arc<PodMeta>> {
        let shared = self.shared.as_ref()?;
        let cache = shared.cache.read().unwrap_or_else(|e| e.into_inner());
        cache.pods.get(uid).cloned()
    }

    /// How many pods are known.
    pub fn len(&self) -> usize {
        self.shared.as_ref().map_or(0, |s| {
            s.cache.read().unwrap_or_else(|e| e.into_inner()).pods.len()
        })
    }

    /// Whether no pod is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The watch's counters (none when inactive).
    pub fn stats(&self) -> Option<&PodWatchStats> {
        self.shared.as_ref().map(|s| &s.stats)
    }

    fn write(&self, f: impl FnOnce(&mut Cache)) {
        if let Some(shared) = &self.shared {
            f(&mut shared.cache.write().unwrap_or_else(|e| e.into_inner()));
        }
    }

    /// Adds or replaces a pod (an ADDED or MODIFIED event); nothing when inactive.
    pub fn apply(&self, pod: PodMeta) {
        self.write(|cache| cache.insert(pod));
    }

    /// Forgets a pod (a DELETED event).
    pub fn delete(&self, uid: &str) {
        self.write(|cache| cache.remove(uid));
    }

    /// Replaces every pod with a fresh list (a list or relist), and marks the directory
    /// synced.
    pub fn replace(&self, pods: impl IntoIterator<Item = PodMeta>) {
        let mut fresh = Cache::default();
        for pod in pods {
            fresh.insert(pod);
        }
        self.write(|cache| *cache = fresh);
        if let Some(shared) = &self.shared {
            shared.synced.store(true, Ordering::Release);
        }
    }
}

/// The node this sensor runs on: `K8S_NODE_NAME`, else `NODE_NAME` (the DaemonSet sets them
/// from `spec.nodeName`).
pub fn node_name() -> Option<String> {
    ["K8S_NODE_NAME", "NODE_NAME"]
        .into_iter()
        .filter_map(|var| std::env::var(var).ok())
        .map(|v| v.trim().to_owned())
        .find(|v| !v.is_empty())
}

/// Starts pod metadata for this node: in a cluster (and with the `kubernetes` feature) a
/// directory kept current by a background watch; otherwise an inactive one, said once in the
/// log.
pub async fn start() -> PodDirectory {
    #[cfg(feature = "kubernetes")]
    {
        watch::start().await
    }
    #[cfg(not(feature = "kubernetes"))]
    {
        if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
            tracing::info!(
                "running in a Kubernetes cluster, but this sensor was built without the `kubernetes` feature: no pod metadata"
            );
        }
        PodDirectory::inactive()
    }
}

/// For `sensor check`: whether pod metadata can be had. `None` when it is not configured
/// (no node name and not in a cluster); otherwise what one list of this node's pods (limit 1,
/// within 5 s) found: the API server that answered, or why it could not be asked.
pub async fn probe() -> Option<Result<String, String>> {
    let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
    let node = node_name();
    if node.is_none() && !in_cluster {
        return None;
    }
    #[cfg(feature = "kubernetes")]
    {
        let Some(node) = node else {
            return Some(Err(
                "in a Kubernetes cluster without K8S_NODE_NAME; fix: set it from spec.nodeName through the downward API".to_owned(),
            ));
        };
        Some(watch::probe(&node).await)
    }
    #[cfg(not(feature = "kubernetes"))]
    {
        Some(Err(
            "configured, but this sensor was built without the `kubernetes` feature; fix: use the container image or build with --features kubernetes".to_owned(),
        ))
    }
}

#[cfg(feature = "kubernetes")]
pub use watch::{WatchSettings, pod_meta, spawn_watch};

/// The list-and-watch of the node's pods (kube-rs).
#[cfg(feature = "kubernetes")]
mod watch {
    use std::{sync::atomic::Ordering, time::Duration};

    use futures::StreamExt as _;
    use k8s_openapi::api::core::v1::Pod;
    use kube::{
        Api, Client,
        api::{ListParams, WatchEvent, WatchParams},
    };
    use tracing::{info, warn};

    use super::{ContainerRef, PodDirectory, PodMeta, Workload, container_id_of_status};

    /// How the watch retries and how long one watch request lasts.
    #[derive(Clone, Debug)]
    pub struct WatchSettings {
        /// First wait after a failure; doubled on each further failure.
        pub min_backoff: Duration,
        /// Longest wait after a failure.
        pub max_backoff: Duration,
        /// `timeoutSeconds` of each watch request (the server ends the watch after it).
        pub watch_timeout_secs: u32,
    }

    impl Default for WatchSettings {
        fn default() -> Self {
            WatchSettings {
                min_backoff: Duration::from_millis(500),
                max_backoff: Duration::from_secs(30),
                watch_timeout_secs: 290,
            }
        }
    }

    /// What the sensor keeps of a Pod object (`None` without a UID).
    pub fn pod_meta(pod: &Pod) -> Option<PodMeta> {
        let meta = &pod.metadata;
        let uid = meta.uid.clone().filter(|u| !u.is_empty())?;
        let labels = meta.labels.clone().unwrap_or_default();
        let owner = meta.owner_references.as_deref().and_then(|owners| {
            owners
                .iter()
                .find(|o| o.controller == Some(true))
                .or(owners.first())
        });
        let workload = owner
            .map(|o| {
                Workload::from_owner(
                    &o.kind,
                    &o.name,
                    labels.get("pod-template-hash").map(String::as_str),
                )
            })
            .unwrap_or_default();
        let status = pod.status.as_ref();
        let containers = status
            .into_iter()
            .flat_map(|s| {
                s.init_container_statuses
                    .iter()
                    .chain(s.container_statuses.iter())
                    .chain(s.ephemeral_container_statuses.iter())
                    .flatten()
            })
            .filter_map(|c| {
                Some(ContainerRef {
                    id: container_id_of_status(c.container_id.as_deref()?)?,
                    name: c.name.clone(),
                })
            })
            .collect();
        Some(PodMeta {
            uid,
            name: meta.name.clone().unwrap_or_default(),
            namespace: meta.namespace.clone().unwrap_or_default(),
            node_name: pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default(),
            labels,
            annotations: meta.annotations.clone().unwrap_or_default(),
            workload,
            containers,
        })
    }

    /// In a cluster: an active directory and its watch; otherwise an inactive directory.
    pub(super) async fn start() -> PodDirectory {
        let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
        let Some(node) = super::node_name() else {
            if in_cluster {
                warn!(
                    "running in a Kubernetes cluster without K8S_NODE_NAME: no pod metadata (set it from spec.nodeName through the downward API)"
                );
            } else {
                info!("not in a Kubernetes cluster (no K8S_NODE_NAME): no pod metadata");
            }
            return PodDirectory::inactive();
        };
        let config = match kube::Config::infer().await {
            Ok(config) => config,
            Err(error) if in_cluster => {
                warn!(node, %error, "cannot read the in-cluster configuration (service-account token): no pod metadata");
                return PodDirectory::inactive();
            }
            Err(error) => {
                info!(node, %error, "no Kubernetes cluster configuration: no pod metadata");
                return PodDirectory::inactive();
            }
        };
        let cluster_url = config.cluster_url.to_string();
        let client = match Client::try_from(config) {
            Ok(client) => client,
            Err(error) => {
                warn!(node, cluster_url, %error, "cannot build a Kubernetes client: no pod metadata");
                return PodDirectory::inactive();
            }
        };
        info!(node, cluster_url, "watching the pods of this node");
        spawn_watch(client, node, WatchSettings::default())
    }

    /// How long `sensor check` waits for the API server.
    const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

    /// The field selector of `node`'s pods, for every list and watch.
    fn node_selector(node: &str) -> String {
        format!("spec.nodeName={node}")
    }

    /// One list of `node`'s pods (limit 1) within [`PROBE_TIMEOUT`], with the configuration
    /// `start` would use: the API server's address when it answered, else what went wrong.
    pub(super) async fn probe(node: &str) -> Result<String, String> {
        let config = kube::Config::infer().await.map_err(|e| {
            format!("no cluster configuration (service-account token or KUBECONFIG): {e}")
        })?;
        let cluster_url = config.cluster_url.to_string();
        let client = Client::try_from(config)
            .map_err(|e| format!("cannot build a client for {cluster_url}: {e}"))?;
        let api: Api<Pod> = Api::all(client);
        let params = ListParams::default().fields(&node_selector(node)).limit(1);
        match tokio::time::timeout(PROBE_TIMEOUT, api.list(&params)).await {
            Ok(Ok(_)) => Ok(format!("{cluster_url} lists the pods of node {node}")),
            Ok(Err(error)) => Err(format!(
                "listing the pods of node {node} at {cluster_url} failed: {error}; fix: the API server must be reachable and the service account allowed to list pods (deploy/kubernetes)"
            )),
            Err(_) => Err(format!(
                "{cluster_url} did not answer within {} s",
                PROBE_TIMEOUT.as_secs()
            )),
        }
    }

    /// Lists and watches the pods of `node` through `client` in a background task, for as long
    /// as the runtime runs; the directory it fills.
    pub fn spawn_watch(client: Client, node: String, settings: WatchSettings) -> PodDirectory {
        let directory = PodDirectory::active();
        tokio::spawn(run(client, node, directory.clone(), settings));
        directory
    }

    /// How one watch request ended.
    enum Ended {
        /// The server closed it (its timeout): watch again from the same version.
        Closed,
        /// The version is too old (410 Gone): list again.
        Expired,
        /// An error: wait, then watch again.
        Failed(String),
    }

    async fn run(client: Client, node: String, directory: PodDirectory, settings: WatchSettings) {
        let Some(stats) = directory.stats() else {
            return;
        };
        let api: Api<Pod> = Api::all(client);
        let selector = node_selector(&node);
        let list_params = ListParams::default().fields(&selector);
        let watch_params = WatchParams::default()
            .fields(&selector)
            .timeout(settings.watch_timeout_secs);
        let mut failures = 0u32;
        let backoff = |failures: u32| {
            let factor = 1u32 << failures.min(16);
            settings
                .min_backoff
                .saturating_mul(factor)
                .min(settings.max_backoff)
        };
        let mut watches = 0u64;
        loop {
            let mut version = match api.list(&list_params).await {
                Ok(list) => {
                    let pods: Vec<PodMeta> = list.items.iter().filter_map(pod_meta).collect();
                    info!(node, pods = pods.len(), "listed the pods of this node");
                    directory.replace(pods);
                    stats.lists.fetch_add(1, Ordering::Relaxed);
                    failures = 0;
                    list.metadata.resource_version.unwrap_or_default()
                }
                Err(error) => {
                    stats.list_errors.fetch_add(1, Ordering::Relaxed);
                    let wait = backoff(failures);
                    failures = failures.saturating_add(1);
                    warn!(node, %error, retry_in_ms = wait.as_millis() as u64, "listing pods failed");
                    tokio::time::sleep(wait).await;
                    continue;
                }
            };
            loop {
                if watches > 0 {
                    stats.watch_restarts.fetch_add(1, Ordering::Relaxed);
                }
                watches += 1;
                let started = tokio::time::Instant::now();
                let ended = match api.watch(&watch_params, &version).await {
                    Ok(stream) => {
                        let mut stream = std::pin::pin!(stream);
                        loop {
                            match stream.next().await {
                                None => break Ended::Closed,
                                Some(Ok(WatchEvent::Added(pod) | WatchEvent::Modified(pod))) => {
                                    if let Some(v) = &pod.metadata.resource_version {
                                        version.clone_from(v);
                                    }
                                    if let Some(meta) = pod_meta(&pod) {
                                        directory.apply(meta);
                                        stats.events.fetch_add(1, Ordering::Relaxed);
                                    }
                                }
                                Some(Ok(WatchEvent::Deleted(pod))) => {
                                    if let Some(v) = &pod.metadata.resource_version {
                                        version.clone_from(v);
                                    }
                                    if let Some(uid) = &pod.metadata.uid {
                                        directory.delete(uid);
                                        stats.events.fetch_add(1, Ordering::Relaxed);
                                    }
                                }
                                Some(Ok(WatchEvent::Bookmark(bookmark))) => {
                                    version = bookmark.metadata.resource_version;
                                }
                                Some(Ok(WatchEvent::Error(status))) if status.code == 410 => {
                                    break Ended::Expired;
                                }
                                Some(Ok(WatchEvent::Error(status))) => {
                                    break Ended::Failed(format!(
                                        "{} ({})",
                                        status.message, status.code
                                    ));
                                }
                                Some(Err(kube::Error::Api(status))) if status.code == 410 => {
                                    break Ended::Expired;
                                }
                                Some(Err(error)) => break Ended::Failed(error.to_string()),
                            }
                        }
                    }
                    Err(kube::Error::Api(status)) if status.code == 410 => Ended::Expired,
                    Err(error) => Ended::Failed(error.to_string()),
                };
                match ended {
                    // A watch the server ends at once is treated as a failure, so that a
                    // misbehaving server is not hammered.
                    Ended::Closed if started.elapsed() >= Duration::from_secs(1) => failures = 0,
                    Ended::Closed => {
                        let wait = backoff(failures);
                        failures = failures.saturating_add(1);
                        tokio::time::sleep(wait).await;
                    }
                    Ended::Expired => {
                        stats.expired.fetch_add(1, Ordering::Relaxed);
                        info!(node, version, "pod watch version expired: listing again");
                        break;
                    }
                    Ended::Failed(error) => {
                        stats.watch_errors.fetch_add(1, Ordering::Relaxed);
                        let wait = backoff(failures);
                        failures = failures.saturating_add(1);
                        warn!(
                            node,
                            error,
                            retry_in_ms = wait.as_millis() as u64,
                            "pod watch failed"
                        );
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID_A: &str = "6b7e45e136716ed030ebdb79bcc5674204b1abd6cee0add02ea4c2e891e65183";
    const ID_B: &str = "757c70c48a431c72d2facb2a3fa91c662922687eb9264195379fde9544f38dee";

    fn pod(uid: &str, name: &str, containers: &[(&str, &str)]) -> PodMeta {
        PodMeta {
            uid: uid.into(),
            name: name.into(),
            namespace: "shop".into(),
            node_name: "node-1".into(),
            containers: containers
                .iter()
                .map(|(id, name)| ContainerRef {
                    id: (*id).into(),
                    name: (*name).into(),
                })
                .collect(),
            ..PodMeta::default()
        }
    }

    #[test]
    fn container_ids_lose_their_runtime_prefix() {
        for prefix in ["containerd://", "cri-o://", "docker://", ""] {
            assert_eq!(
                container_id_of_status(&format!("{prefix}{}", ID_A.to_uppercase())).as_deref(),
                Some(ID_A),
                "{prefix}"
            );
        }
        assert_eq!(container_id_of_status(""), None);
        assert_eq!(container_id_of_status("containerd://"), None);
    }

    #[test]
    fn workloads_from_owner_references() {
        let deployment =
            Workload::from_owner("ReplicaSet", "orders-api-7d9f8b6c5d", Some("7d9f8b6c5d"));
        assert_eq!(deployment.deployment.as_deref(), Some("orders-api"));
        assert_eq!(
            deployment.replicaset.as_deref(),
            Some("orders-api-7d9f8b6c5d")
        );
        assert_eq!(deployment.name(), Some("orders-api"));
        // A ReplicaSet of its own: no Deployment is made up.
        let bare = Workload::from_owner("ReplicaSet", "legacy-rs", None);
        assert_eq!(bare.deployment, None);
        assert_eq!(bare.name(), Some("legacy-rs"));
        let other_hash = Workload::from_owner("ReplicaSet", "orders-api-7d9f8b6c5d", Some("abc"));
        assert_eq!(other_hash.deployment, None);
        assert_eq!(
            Workload::from_owner("StatefulSet", "db", None).name(),
            Some("db")
        );
        assert_eq!(
            Workload::from_owner("DaemonSet", "agent", None).name(),
            Some("agent")
        );
        let cron = Workload::from_owner("Job", "nightly-report-29395680", None);
        assert_eq!(cron.cronjob.as_deref(), Some("nightly-report"));
        assert_eq!(cron.job.as_deref(), Some("nightly-report-29395680"));
        assert_eq!(cron.name(), Some("nightly-report"));
        let job = Workload::from_owner("Job", "db-migrate-2", None);
        assert_eq!(job.cronjob, None);
        assert_eq!(job.name(), Some("db-migrate-2"));
        assert_eq!(
            Workload::from_owner("Node", "node-1", None),
            Workload::default()
        );
        let attributes: Vec<_> = deployment.attributes().collect();
        assert_eq!(
            attributes,
            [
                ("k8s.deployment.name", "orders-api"),
                ("k8s.replicaset.name", "orders-api-7d9f8b6c5d")
            ]
        );
    }

    #[test]
    fn pod_service_names_in_order() {
        let mut meta = pod("u1", "orders-api-7d9f8b6c5d-x2x4q", &[(ID_A, "api")]);
        meta.workload =
            Workload::from_owner("ReplicaSet", "orders-api-7d9f8b6c5d", Some("7d9f8b6c5d"));
        let name = |meta: &PodMeta| {
            PodContainer {
                pod: Arc::new(meta.clone()),
                container_name: "api".into(),
            }
            .service_name()
            .map(str::to_owned)
        };
        assert_eq!(name(&meta).as_deref(), Some("orders-api"));
        meta.labels.insert(APP_NAME_LABEL.into(), "orders".into());
        assert_eq!(name(&meta).as_deref(), Some("orders"));
        meta.annotations
            .insert(OTEL_SERVICE_NAME_ANNOTATION.into(), "orders-otel".into());
        assert_eq!(name(&meta).as_deref(), Some("orders-otel"));
        meta.annotations
            .insert(SERVICE_NAME_ANNOTATION.into(), "orders-svc".into());
        assert_eq!(name(&meta).as_deref(), Some("orders-svc"));
        meta.annotations
            .insert(SERVICE_NAME_ANNOTATION.into(), " ".into());
        assert_eq!(name(&meta).as_deref(), Some("orders-otel"));
        assert_eq!(name(&pod("u2", "bare", &[])), None);
    }

    #[test]
    fn attributes_name_pod_container_workload_labels_and_annotations() {
        let mut meta = pod("u1", "db-0", &[(ID_A, "postgres")]);
        meta.workload = Workload::from_owner("StatefulSet", "db", None);
        meta.labels.insert("tier".into(), "data".into());
        meta.annotations.insert("team".into(), "storage".into());
        meta.annotations.insert(
            "kubectl.kubernetes.io/last-applied-configuration".into(),
            "{...}".into(),
        );
        let attributes = PodContainer {
            pod: Arc::new(meta),
            container_name: "postgres".into(),
        }
        .attributes();
        let expected: Vec<(String, String)> = [
            ("k8s.pod.name", "db-0"),
            ("k8s.pod.uid", "u1"),
            ("k8s.namespace.name", "shop"),
            ("k8s.node.name", "node-1"),
            ("k8s.container.name", "postgres"),
            ("k8s.statefulset.name", "db"),
            ("k8s.pod.label.tier", "data"),
            ("k8s.pod.annotation.team", "storage"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(attributes, expected);
    }

    #[test]
    fn directory_updates_and_deletes() {
        let directory = PodDirectory::active();
        assert!(!directory.is_synced());
        directory.replace([pod("u1", "a", &[(ID_A, "app")])]);
        assert!(directory.is_synced());
        let found = directory.container(ID_A).unwrap();
        assert_eq!(
            (found.pod.name.as_str(), found.container_name.as_str()),
            ("a", "app")
        );
        // The container restarted with a new id: the old one no longer resolves.
        directory.apply(pod("u1", "a", &[(ID_B, "app")]));
        assert!(directory.container(ID_A).is_none());
        assert_eq!(directory.container(ID_B).unwrap().pod.uid, "u1");
        directory.delete("u1");
        assert!(directory.container(ID_B).is_none());
        assert!(directory.is_empty());
        // A relist drops pods that are gone.
        directory.apply(pod("u2", "b", &[(ID_A, "app")]));
        directory.replace([pod("u3", "c", &[(ID_B, "app")])]);
        assert!(directory.container(ID_A).is_none());
        assert_eq!(directory.len(), 1);
    }

    #[test]
    fn inactive_directory_knows_nothing() {
        let directory = PodDirectory::inactive();
        directory.replace([pod("u1", "a", &[(ID_A, "app")])]);
        assert!(!directory.is_active());
        assert!(directory.container(ID_A).is_none());
        assert!(directory.stats().is_none());
    }
}
