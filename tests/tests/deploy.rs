//! Deployment: the documented capability set (`deploy/capabilities.txt`) is proven by running
//! the real sensor with exactly those capabilities (setpriv) against a server owned by another
//! user and a client with more privileges than the sensor; one capability fewer makes
//! `sensor check` fail naming it; the Kubernetes manifests deserialise into the API's types and
//! grant exactly that set; the systemd unit grants it too and installs into a scratch root.

use std::{
    collections::BTreeSet,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    time::Duration,
};

use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{ConfigMap, Container, Namespace, PodSpec, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding},
};
use sensor_e2e::{Py, attr, records_of, require_root, scratch_dir, sensor_bin, wait_until};
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(30);

/// Host paths the DaemonSet mounts (read-only, at the same path in the container). The
/// end-to-end tests below run the sensor on a host where exactly these are what it reads.
const HOST_MOUNTS: &[&str] = &["/sys/kernel/tracing"];

/// The user the "other user's service" runs as.
const NOBODY: &str = "65534";

fn deploy_dir() -> PathBuf {
    sensor_e2e::workspace_root().join("deploy")
}

/// `CAP_*` names of `deploy/capabilities.txt` (`NAME  # reason` lines).
fn documented_capabilities() -> Vec<String> {
    let text = std::fs::read_to_string(deploy_dir().join("capabilities.txt"))
        .expect("deploy/capabilities.txt");
    text.lines()
        .map(|l| l.split('#').next().unwrap_or_default().trim())
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

fn capability_bit(name: &str) -> u32 {
    match name {
        "CAP_DAC_READ_SEARCH" => 2,
        "CAP_SYS_PTRACE" => 19,
        "CAP_SYS_ADMIN" => 21,
        "CAP_SYS_RESOURCE" => 24,
        "CAP_PERFMON" => 38,
        "CAP_BPF" => 39,
        other => panic!("add {other} to capability_bit"),
    }
}

/// `setpriv` arguments that run the command as uid 0 with exactly `caps` (effective,
/// permitted, inheritable, ambient and bounding) and no supplementary groups.
fn setpriv(caps: &[String]) -> Command {
    let list: Vec<String> = caps
        .iter()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_ascii_lowercase()))
        .collect();
    let set = if list.is_empty() {
        "-all".to_owned()
    } else {
        format!("-all,{}", list.join(","))
    };
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=0",
        "--regid=0",
        "--clear-groups",
        &format!("--inh-caps={set}"),
        &format!("--ambient-caps={set}"),
        &format!("--bounding-set={set}"),
        "--",
    ]);
    cmd
}

fn require_setpriv() {
    let found = Command::new("setpriv")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "setpriv not found: apt-get install util-linux (it runs the sensor with exact capabilities)"
    );
}

/// The distribution's Python: the test venv lives under root's home, which other users cannot
/// enter, and the server of these tests runs as another user.
fn system_python() -> &'static str {
    let path = "/usr/bin/python3";
    assert!(
        Path::new(path).exists(),
        "{path} not found: apt-get install python3 (the other user's server runs on it)"
    );
    path
}

fn sensor_check(caps: &[String]) -> Output {
    setpriv(caps)
        .arg(sensor_bin())
        .arg("check")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run sensor check under setpriv")
}

fn check_line<'a>(stdout: &'a str, name: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} line in:\n{stdout}"))
}

/// A child whose stdout lines arrive on a channel.
struct Lines {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Lines {
    fn spawn(mut cmd: Command) -> Lines {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn");
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines { child, lines }
    }

    fn expect(&self, prefix: &str) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(LONG)
                .unwrap_or_else(|_| panic!("no {prefix:?} line within {LONG:?}"));
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.trim().to_owned();
            }
        }
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) of our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn status_mask(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .unwrap_or_else(|| panic!("no {field}"))
        .trim();
    u64::from_str_radix(hex, 16).expect("hex mask")
}

/// The sensor, in discovery mode (as the DaemonSet and the systemd unit run it), with exactly
/// the documented capabilities: it names a server owned by another user from that process's own
/// environment, and captures both ends of a real exchange.
#[test]
fn documented_capabilities_capture_a_real_exchange() {
    require_root();
    require_setpriv();
    let caps = documented_capabilities();
    for path in HOST_MOUNTS {
        assert!(
            Path::new(path).is_dir(),
            "{path} is what the DaemonSet mounts"
        );
    }

    let mut server_cmd = Command::new("setpriv");
    server_cmd
        .args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
            system_python(),
            "-u",
        ])
        .arg(sensor_e2e::apps_dir().join("http_server.py"))
        .env("HT_SERVICE_NAME", "nobody-api")
        .current_dir("/");
    let server = Lines::spawn(server_cmd);
    let port: u16 = server.expect("READY").parse().expect("port");
    let server_pid = server.child.id();

    let dir = scratch_dir("deploy-capture");
    let (stdout, stderr) = (dir.join("stdout"), dir.join("stderr"));
    let mut sensor = setpriv(&caps)
        .arg(sensor_bin())
        .args(["run", "--output", "jsonl"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout).expect("stdout"))
        .stderr(std::fs::File::create(&stderr).expect("stderr"))
        .spawn()
        .expect("start the sensor under setpriv");
    let log = || std::fs::read_to_string(&stderr).unwrap_or_default();
    let started = wait_until(LONG, || {
        log().contains("sensor running") || matches!(sensor.try_wait(), Ok(Some(_)))
    });
    assert!(
        started && log().contains("sensor running"),
        "the sensor did not start with {caps:?}; its log:\n{}",
        log()
    );
    let expected: u64 = caps.iter().map(|c| 1u64 << capability_bit(c)).sum();
    assert_eq!(
        status_mask(sensor.id(), "CapEff:"),
        expected,
        "effective set"
    );
    assert_eq!(
        status_mask(sensor.id(), "CapBnd:"),
        expected,
        "bounding set"
    );

    let mut client = Py::spawn("urllib_client", &["urllib_client.py"], &[]);
    client.expect_line("READY", LONG);
    let url = format!("http://127.0.0.1:{port}/hello?via=setpriv");
    client.send_line(
        &json!({"method": "GET", "url": url, "headers": {"X-Test": "caps"}, "body": null})
            .to_string(),
    );
    let result: Value = serde_json::from_str(&client.expect_line("RESULT", LONG)).unwrap();
    let client_pid = client.pid();
    // Exchanges are printed as they complete; SIGTERM flushes anything still buffered.
    wait_until(Duration::from_secs(10), || {
        let out = std::fs::read_to_string(&stdout).unwrap_or_default();
        out.contains(&format!("\"process.pid\":{server_pid},"))
            && out.contains(&format!("\"process.pid\":{client_pid},"))
    });
    // SAFETY: plain kill(2) of our own child.
    unsafe { libc::kill(sensor.id() as i32, libc::SIGTERM) };
    let status = sensor.wait().expect("sensor status");
    assert!(status.success(), "sensor failed: {status}; log:\n{}", log());
    let records: Vec<Value> = std::fs::read_to_string(&stdout)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();

    let servers = records_of(&records, "server", server_pid);
    assert_eq!(servers.len(), 1, "server records: {servers:#?}");
    let server_record = servers[0];
    // The name comes from the other user's /proc/PID/environ: CAP_DAC_READ_SEARCH and
    // CAP_SYS_PTRACE at work.
    assert_eq!(server_record["resource"]["service.name"], "nobody-api");
    assert_eq!(server_record["name"], "GET /hello");
    assert_eq!(attr(server_record, "http.target"), "/hello?via=setpriv");
    assert_eq!(attr(server_record, "http.request.header.x-test"), "caps");
    assert_eq!(attr(server_record, "http.status_code"), 200);
    assert_eq!(attr(server_record, "http.response.body"), &result["body"]);

    // The client ran as root with every capability: recognising it as Python (its
    // /proc/PID/exe) takes CAP_SYS_PTRACE.
    let clients = records_of(&records, "client", client_pid);
    assert_eq!(clients.len(), 1, "client records: {clients:#?}");
    assert_eq!(attr(clients[0], "url.full"), url.as_str());
    assert_eq!(attr(clients[0], "http.response.body"), &result["body"]);
    client.wait(LONG);
}

/// `sensor check` passes with exactly the documented set and reports it held.
#[test]
fn check_passes_with_the_documented_capabilities() {
    require_root();
    require_setpriv();
    let caps = documented_capabilities();
    let output = sensor_check(&caps);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "sensor check failed with {caps:?}:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line = check_line(&stdout, "capabilities");
    assert!(line.contains(" ok "), "{line}");
    for cap in &caps {
        assert!(line.contains(cap.as_str()), "{line}");
    }
    assert!(check_line(&stdout, "load and attach").contains(" ok "));
    assert!(check_line(&stdout, "ring buffer").contains(" ok "));
    assert!(check_line(&stdout, "tracefs").contains(&format!("mounted at {}", HOST_MOUNTS[0])));
}

/// With any one documented capability left out, `sensor check` exits non-zero and names it.
/// `sensor check` loads the capture as `run` would: with the configured ring buffer, and not at
/// all with a configuration `run` would refuse.
#[test]
fn check_loads_the_configured_ring_buffer() {
    require_root();
    let check = |value: &str| {
        Command::new(sensor_bin())
            .arg("check")
            .env("RUST_LOG", "warn")
            .env("HT_SENSOR_RING_BUFFER_BYTES", value)
            .stdin(Stdio::null())
            .output()
            .expect("run sensor check")
    };
    let output = check("262144");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = check_line(&stdout, "load and attach");
    assert!(
        line.contains(" ok ") && line.contains("a 256 KiB ring buffer"),
        "{line}"
    );
    let output = check("1000");
    assert!(
        !output.status.success(),
        "a ring of 1000 bytes was accepted"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("sensor.ring_buffer_bytes")
            && stderr.contains("HT_SENSOR_RING_BUFFER_BYTES"),
        "{stderr}"
    );
}

#[test]
fn check_fails_naming_a_missing_capability() {
    require_root();
    require_setpriv();
    let caps = documented_capabilities();
    for left_out in &caps {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != left_out).cloned().collect();
        let output = sensor_check(&fewer);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            !output.status.success(),
            "sensor check passed without {left_out}:\n{stdout}"
        );
        let line = check_line(&stdout, "capabilities");
        assert!(line.contains(" FAIL "), "{line}");
        assert!(
            line.contains(&format!("missing {left_out} (")),
            "without {left_out}: {line}"
        );
        for other in &fewer {
            assert!(!line.contains(&format!("missing {other}")), "{line}");
        }
    }
}

/// The capabilities without the `CAP_` prefix, as Kubernetes spells them.
fn kubernetes_capabilities() -> Vec<String> {
    documented_capabilities()
        .iter()
        .map(|c| c.trim_start_matches("CAP_").to_owned())
        .collect()
}

/// Every YAML document of a manifest file.
fn documents(path: &Path) -> Vec<serde_yaml::Value> {
    let text = std::fs::read_to_string(path).expect("manifest");
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).expect("YAML"))
        .collect()
}

/// Deserialises into `T` and back: every field the manifest sets survives, so a misspelt or
/// misplaced field (which the typed form would drop) fails the test.
fn typed<T: serde::de::DeserializeOwned + serde::Serialize>(doc: &serde_yaml::Value) -> T {
    let value: T = serde_yaml::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{e}: {}", serde_yaml::to_string(doc).unwrap()));
    let back = serde_yaml::to_value(&value).expect("serialise");
    assert_eq!(
        &back,
        doc,
        "round trip lost fields:\n{}",
        serde_yaml::to_string(doc).unwrap()
    );
    value
}

fn sensor_container(spec: &PodSpec) -> &Container {
    assert_eq!(spec.containers.len(), 1);
    &spec.containers[0]
}

fn check_pod(spec: &PodSpec, privileged: bool) {
    assert_eq!(spec.host_pid, Some(true), "hostPID");
    assert_eq!(spec.host_network, None, "no hostNetwork");
    assert_eq!(spec.service_account_name.as_deref(), Some("pysensor"));
    let container = sensor_container(spec);
    let security = container
        .security_context
        .as_ref()
        .expect("securityContext");
    assert_eq!(security.run_as_user, Some(0), "tracefs is root's");
    if privileged {
        assert_eq!(security.privileged, Some(true));
        assert!(security.capabilities.is_none());
    } else {
        assert_eq!(security.privileged, Some(false));
        assert_eq!(security.allow_privilege_escalation, Some(false));
        let caps = security.capabilities.as_ref().expect("capabilities");
        assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_owned()][..]));
        assert_eq!(
            caps.add.as_deref(),
            Some(&kubernetes_capabilities()[..]),
            "exactly deploy/capabilities.txt"
        );
    }
    // hostPath volumes are exactly the proven mounts, read-only at the same path.
    let volumes = spec.volumes.as_deref().unwrap_or_default();
    let host_paths: BTreeSet<&str> = volumes
        .iter()
        .filter_map(|v| v.host_path.as_ref().map(|h| h.path.as_str()))
        .collect();
    assert_eq!(host_paths, HOST_MOUNTS.iter().copied().collect());
    let mounts = container.volume_mounts.as_deref().unwrap_or_default();
    for volume in volumes {
        let mount = mounts
            .iter()
            .find(|m| m.name == volume.name)
            .unwrap_or_else(|| panic!("volume {} is not mounted", volume.name));
        assert_eq!(mount.read_only, Some(true), "{} read-only", mount.name);
        if let Some(host) = &volume.host_path {
            assert_eq!(mount.mount_path, host.path);
        }
        if let Some(config) = &volume.config_map {
            assert_eq!(config.name, "pysensor-config");
            assert_eq!(mount.mount_path, "/etc/pysensor");
        }
    }
    let env = container.env.as_deref().unwrap_or_default();
    let config_file = env
        .iter()
        .find(|e| e.name == "HT_CONFIG_FILE")
        .expect("env");
    assert_eq!(
        config_file.value.as_deref(),
        Some("/etc/pysensor/config.yaml")
    );
    // Pod metadata: the node's name from the downward API scopes the pod watch, which
    // authenticates with the service account's token.
    let node = env
        .iter()
        .find(|e| e.name == "K8S_NODE_NAME")
        .expect("K8S_NODE_NAME");
    let field = node
        .value_from
        .as_ref()
        .and_then(|v| v.field_ref.as_ref())
        .expect("K8S_NODE_NAME from a fieldRef");
    assert_eq!(field.field_path, "spec.nodeName");
    assert_ne!(spec.automount_service_account_token, Some(false));
    assert_eq!(container.args.as_deref(), Some(&["run".to_owned()][..]));
    // Metrics on the pod's address, the port named, and the liveness probe asking its health.
    let metrics_addr = env
        .iter()
        .find(|e| e.name == "HT_SENSOR_METRICS_ADDR")
        .and_then(|e| e.value.as_deref())
        .expect("HT_SENSOR_METRICS_ADDR");
    let port: i32 = metrics_addr
        .strip_prefix("0.0.0.0:")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("metrics on every address of the pod: {metrics_addr}"));
    let ports = container.ports.as_deref().unwrap_or_default();
    assert!(
        ports
            .iter()
            .any(|p| p.name.as_deref() == Some("metrics") && p.container_port == port),
        "the metrics port is declared: {ports:?}"
    );
    let probe = container
        .liveness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
        .expect("an HTTP liveness probe");
    assert_eq!(probe.path.as_deref(), Some("/healthz"));
    assert_eq!(
        probe.port,
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("metrics".into())
    );
}

/// The manifests are valid Kubernetes objects and grant exactly what the setpriv tests proved.
#[test]
fn manifests_deserialise_and_grant_the_proven_set() {
    let dir = deploy_dir().join("kubernetes");
    let kustomization = documents(&dir.join("kustomization.yaml"));
    let resources: Vec<String> = kustomization[0]["resources"]
        .as_sequence()
        .expect("resources")
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    files.sort();
    let mut kinds = BTreeSet::new();
    for file in &files {
        assert!(
            resources.contains(file) || file == "daemonset-privileged.yaml",
            "{file} is not in kustomization.yaml"
        );
        for doc in documents(&dir.join(file)) {
            let kind = doc["kind"].as_str().expect("kind").to_owned();
            match kind.as_str() {
                "Namespace" => {
                    let ns: Namespace = typed(&doc);
                    assert_eq!(ns.metadata.name.as_deref(), Some("pysensor"));
                }
                "ServiceAccount" => {
                    let sa: ServiceAccount = typed(&doc);
                    assert_eq!(sa.metadata.name.as_deref(), Some("pysensor"));
                    assert_eq!(sa.metadata.namespace.as_deref(), Some("pysensor"));
                }
                "ClusterRole" => {
                    let role: ClusterRole = typed(&doc);
                    let rules = role.rules.expect("rules");
                    assert_eq!(rules.len(), 1);
                    assert_eq!(rules[0].api_groups.as_deref(), Some(&[String::new()][..]));
                    assert_eq!(
                        rules[0].resources.as_deref(),
                        Some(&["pods".to_owned()][..])
                    );
                    assert_eq!(rules[0].verbs, ["get", "list", "watch"]);
                }
                "ClusterRoleBinding" => {
                    let binding: ClusterRoleBinding = typed(&doc);
                    assert_eq!(binding.role_ref.name, "pysensor");
                    let subjects = binding.subjects.expect("subjects");
                    assert_eq!(subjects[0].kind, "ServiceAccount");
                    assert_eq!(subjects[0].name, "pysensor");
                    assert_eq!(subjects[0].namespace.as_deref(), Some("pysensor"));
                }
                "ConfigMap" => {
                    let map: ConfigMap = typed(&doc);
                    let config = std::fs::read_to_string(deploy_dir().join("config.yaml"))
                        .expect("deploy/config.yaml");
                    let data = map.data.expect("data");
                    assert_eq!(
                        data["config.yaml"], config,
                        "ConfigMap = deploy/config.yaml"
                    );
                }
                "DaemonSet" => {
                    let ds: DaemonSet = typed(&doc);
                    let spec = ds.spec.expect("spec").template.spec.expect("pod spec");
                    check_pod(&spec, file == "daemonset-privileged.yaml");
                }
                other => panic!("unexpected kind {other} in {file}"),
            }
            kinds.insert(kind);
        }
    }
    let expected: BTreeSet<String> = [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "DaemonSet",
    ]
    .map(str::to_owned)
    .into();
    assert_eq!(kinds, expected);
}

fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .flat_map(|v| v.split_whitespace().map(str::to_owned))
        .collect()
}

/// The systemd unit grants exactly the proven set, and install.sh installs binary, unit and
/// configuration into a scratch root where `systemd-analyze verify` accepts the unit.
#[test]
fn systemd_unit_grants_the_proven_set_and_installs() {
    let systemd = deploy_dir().join("systemd");
    let unit = std::fs::read_to_string(systemd.join("pysensor.service")).unwrap();
    let caps = documented_capabilities();
    assert_eq!(unit_values(&unit, "CapabilityBoundingSet"), caps);
    assert_eq!(unit_values(&unit, "AmbientCapabilities"), caps);
    assert_eq!(unit_values(&unit, "User"), ["root"]);
    assert_eq!(unit_values(&unit, "Restart"), ["on-failure"]);
    assert_eq!(
        unit_values(&unit, "Environment"),
        ["HT_CONFIG_FILE=/etc/pysensor/config.yaml", "RUST_LOG=info"]
    );

    let root = scratch_dir("systemd-root");
    let install = |binary: &Path| {
        let output = Command::new("sh")
            .arg(systemd.join("install.sh"))
            .arg(binary)
            .env("DESTDIR", &root)
            .output()
            .expect("run install.sh");
        assert!(
            output.status.success(),
            "install.sh failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    install(&sensor_bin());
    let installed = root.join("usr/local/bin/sensor");
    assert_eq!(
        std::fs::read(&installed).unwrap(),
        std::fs::read(sensor_bin()).unwrap()
    );
    let unit_path = root.join("etc/systemd/system/pysensor.service");
    assert_eq!(std::fs::read_to_string(&unit_path).unwrap(), unit);
    let config = root.join("etc/pysensor/config.yaml");
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        std::fs::read_to_string(deploy_dir().join("config.yaml")).unwrap()
    );
    // A second install keeps an edited configuration.
    std::fs::write(&config, "enabled: false\n").unwrap();
    assert!(install(&sensor_bin()).contains("keeping existing"));
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        "enabled: false\n"
    );

    let has_systemd = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if has_systemd {
        // The unit names /usr/local/bin/sensor; verify a copy pointing into the scratch root.
        let copy = root.join("pysensor.service");
        std::fs::write(
            &copy,
            unit.replace("/usr/local/bin/sensor", &installed.to_string_lossy()),
        )
        .unwrap();
        let output = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&copy)
            .output()
            .expect("systemd-analyze");
        assert!(
            output.status.success() && output.stderr.is_empty(),
            "systemd-analyze verify: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// The image builds the way `cargo xtask build` does (with the `kubernetes` feature, as
/// `cargo xtask test` tests it) and ships only the binary and the config.
#[test]
fn dockerfile_builds_like_xtask_and_ships_the_binary() {
    let dockerfile = std::fs::read_to_string(deploy_dir().join("Dockerfile")).unwrap();
    let stages: Vec<&str> = dockerfile
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert_eq!(stages.len(), 2, "{stages:?}");
    assert!(stages[0].ends_with(" AS builder"));
    assert!(stages[1].starts_with("FROM gcr.io/distroless/cc-debian12"));
    // With pod metadata: the image is what runs in clusters.
    assert!(dockerfile.contains("cargo build --release --locked -p sensor --features kubernetes"));
    assert!(dockerfile.contains("--component rust-src"));
    assert!(dockerfile.contains("cargo install bpf-linker"));
    let runtime = &dockerfile[dockerfile.find(stages[1]).unwrap()..];
    let copies: Vec<&str> = runtime.lines().filter(|l| l.starts_with("COPY ")).collect();
    assert_eq!(
        copies,
        [
            "COPY --from=builder /out/sensor /usr/local/bin/sensor",
            "COPY deploy/config.yaml /etc/pysensor/config.yaml",
        ]
    );
    let ignore = std::fs::read_to_string(deploy_dir().join("Dockerfile.dockerignore")).unwrap();
    assert!(ignore.lines().any(|l| l == "target"));
}

/// Logs on a pipe (journald, `kubectl logs`) carry no colour escapes; with
/// `PYSENSOR_LOG_FORMAT=json` every line is one JSON object with its level and fields.
#[test]
fn logs_are_plain_on_a_pipe_and_json_when_asked() {
    require_root();
    let check = |format: Option<&str>| {
        let mut command = Command::new(sensor_bin());
        command
            .arg("check")
            .env("RUST_LOG", "info")
            .env_remove("NO_COLOR")
            .stdin(Stdio::null());
        if let Some(format) = format {
            command.env("PYSENSOR_LOG_FORMAT", format);
        }
        let output = command.output().expect("run sensor check");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let text = check(None);
    assert!(text.contains("capture attached"), "{text}");
    assert!(!text.contains('\x1b'), "colour escapes on a pipe:\n{text}");
    let json = check(Some("json"));
    let lines: Vec<Value> = json
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    let attached = lines
        .iter()
        .find(|line| line["fields"]["message"] == "capture attached")
        .unwrap_or_else(|| panic!("no 'capture attached' line:\n{json}"));
    assert_eq!(attached["level"], "INFO", "{attached}");
    assert_eq!(attached["fields"]["openssl_probes"], true, "{attached}");
    let unknown = check(Some("xml"));
    assert!(
        unknown.contains("unknown log format") && unknown.contains("capture attached"),
        "{unknown}"
    );
}

/// Run as an ordinary user, the sensor says that tracefs is there but not readable and that it
/// must run as uid 0, rather than that tracefs is not mounted; `sensor check` says the same.
#[test]
fn as_another_user_it_says_it_needs_root() {
    require_root();
    require_setpriv();
    // Root's home is closed to other users: a copy of the binary they can run.
    let dir = scratch_dir("as-nobody");
    let binary = dir.join("sensor");
    std::fs::copy(sensor_bin(), &binary).expect("copy the sensor");
    use std::os::unix::fs::PermissionsExt as _;
    for path in [&dir, &binary] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let as_nobody = |args: &[&str]| {
        Command::new("setpriv")
            .args([
                &format!("--reuid={NOBODY}"),
                &format!("--regid={NOBODY}"),
                "--clear-groups",
                "--",
            ])
            .arg(&binary)
            .args(args)
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::null())
            .output()
            .expect("run the sensor as nobody")
    };
    let run = as_nobody(&["run"]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "run as nobody succeeded:\n{stderr}");
    assert!(
        stderr.contains("tracefs at /sys/kernel/tracing cannot be read")
            && stderr.contains("run the sensor as uid 0"),
        "{stderr}"
    );
    let check = as_nobody(&["check"]);
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert!(!check.status.success(), "check as nobody passed:\n{stdout}");
    let line = check_line(&stdout, "tracefs");
    assert!(
        line.contains("FAIL") && line.contains("mounted at /sys/kernel/tracing but"),
        "{line}"
    );
    let line = check_line(&stdout, "tracepoints");
    assert!(
        line.contains("tracefs is unreadable (see tracefs)"),
        "{line}"
    );
}
