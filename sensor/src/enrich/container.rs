//! Container identity: the container id in a process's `/proc/PID/cgroup`.
//!
//! Runtimes name the container's cgroup after its 64-hex-digit id, in forms that differ by
//! runtime, cgroup driver and cgroup version:
//!
//! - Docker: `/docker/<id>` (cgroupfs), `/system.slice/docker-<id>.scope` (systemd)
//! - containerd under Kubernetes: `/kubepods/burstable/pod<uid>/<id>` (cgroupfs),
//!   `/kubepods.slice/.../cri-containerd-<id>.scope` (systemd)
//! - CRI-O: `/kubepods.slice/.../crio-<id>.scope` (its `crio-conmon-<id>.scope` is the monitor,
//!   not the container)
//! - Podman: `/machine.slice/libpod-<id>.scope`
//!
//! cgroup v1 lists one line per hierarchy (`12:memory:/docker/<id>`), v2 one line (`0::/...`).

use std::path::Path;

/// Prefixes runtimes put before the id in a systemd scope name.
const SCOPE_PREFIXES: &[&str] = &[
    "docker-",
    "cri-containerd-",
    "crio-",
    "libpod-",
    "containerd-",
];

/// Scope names of runtime helpers, which are not containers.
const NOT_CONTAINERS: &[&str] = &["crio-conmon-", "libpod-conmon-"];

/// The container id in the text of a `/proc/PID/cgroup` file, if the process is in a container.
pub fn container_id_from_cgroup(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        // hierarchy-ID:controller-list:path — the path may itself contain ':'.
        let path = line.splitn(3, ':').nth(2)?;
        path.rsplit('/').find_map(id_in_segment)
    })
}

fn id_in_segment(segment: &str) -> Option<String> {
    if NOT_CONTAINERS.iter().any(|p| segment.starts_with(p)) {
        return None;
    }
    let name = segment.strip_suffix(".scope").unwrap_or(segment);
    let name = SCOPE_PREFIXES
        .iter()
        .find_map(|p| name.strip_prefix(p))
        .unwrap_or(name);
    let is_id = name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit());
    is_id.then(|| name.to_ascii_lowercase())
}

/// The container id of a live process, from `<proc_root>/<pid>/cgroup`.
pub fn container_id(proc_root: &Path, pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup")).ok()?;
    container_id_from_cgroup(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f5e5c0b1d2a4e6f8a9b0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f";

    fn id_of(text: &str) -> Option<String> {
        container_id_from_cgroup(&text.replace("{ID}", ID))
    }

    #[test]
    fn docker_cgroup_v1_cgroupfs() {
        let text = "12:memory:/docker/{ID}\n11:cpuset:/docker/{ID}\n1:name=systemd:/docker/{ID}\n0::/system.slice/containerd.service\n";
        assert_eq!(id_of(text).as_deref(), Some(ID));
    }

    #[test]
    fn docker_cgroup_v2_systemd() {
        assert_eq!(
            id_of("0::/system.slice/docker-{ID}.scope\n").as_deref(),
            Some(ID)
        );
    }

    #[test]
    fn containerd_kubernetes_v2_systemd() {
        let text = "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1b2c3d4e_5f60_4a7b_8c9d_0e1f2a3b4c5d.slice/cri-containerd-{ID}.scope\n";
        assert_eq!(id_of(text).as_deref(), Some(ID));
    }

    #[test]
    fn containerd_kubernetes_v1_cgroupfs() {
        let text = "11:pids:/kubepods/besteffort/pod1b2c3d4e-5f60-4a7b-8c9d-0e1f2a3b4c5d/{ID}\n10:memory:/kubepods/besteffort/pod1b2c3d4e-5f60-4a7b-8c9d-0e1f2a3b4c5d/{ID}\n";
        assert_eq!(id_of(text).as_deref(), Some(ID));
    }

    #[test]
    fn crio_v2_and_its_monitor() {
        let text = "0::/kubepods.slice/kubepods-pod1b2c3d4e_5f60.slice/crio-{ID}.scope\n";
        assert_eq!(id_of(text).as_deref(), Some(ID));
        let nested =
            "0::/kubepods.slice/kubepods-pod1b2c3d4e_5f60.slice/crio-{ID}.scope/container\n";
        assert_eq!(id_of(nested).as_deref(), Some(ID));
        let conmon = "0::/kubepods.slice/kubepods-pod1b2c3d4e_5f60.slice/crio-conmon-{ID}.scope\n";
        assert_eq!(id_of(conmon), None);
    }

    #[test]
    fn crio_v1_systemd() {
        let text = "1:name=systemd:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1b2c3d4e_5f60.slice/crio-{ID}.scope\n";
        assert_eq!(id_of(text).as_deref(), Some(ID));
    }

    #[test]
    fn podman() {
        let text = "0::/machine.slice/libpod-{ID}.scope/container\n";
        assert_eq!(id_of(text).as_deref(), Some(ID));
    }

    #[test]
    fn host_processes_have_none() {
        for text in [
            "0::/user.slice/user-1000.slice/session-3.scope\n",
            "0::/system.slice/ssh.service\n",
            "0::/\n",
            "12:memory:/user.slice\n0::/init.scope\n",
            "",
        ] {
            assert_eq!(id_of(text), None, "{text}");
        }
    }

    #[test]
    fn this_process() {
        // Whatever this test runs in, reading its own cgroup works and yields an id or none.
        let own = container_id(Path::new("/proc"), std::process::id());
        assert!(own.is_none_or(|id| id.len() == 64));
    }
}
