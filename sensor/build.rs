//! Builds the kernel programs (`sensor-ebpf`, target `bpfel-unknown-none`) with the nightly
//! toolchain and places the object in OUT_DIR, where `capture` embeds it. Cargo reruns this
//! whenever the programs' sources change (see aya-build).
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let metadata = std::process::Command::new(env!("CARGO"))
        .args(["metadata", "--format-version=1", "--no-deps"])
        .output()
        .context("cargo metadata")?;
    let metadata: serde_json::Value =
        serde_json::from_slice(&metadata.stdout).context("cargo metadata output")?;
    let packages = metadata["packages"]
        .as_array()
        .ok_or_else(|| anyhow!("cargo metadata: no packages"))?;
    let ebpf = packages
        .iter()
        .find(|p| p["name"] == "sensor-ebpf")
        .ok_or_else(|| anyhow!("sensor-ebpf package not found"))?;
    let manifest = ebpf["manifest_path"]
        .as_str()
        .ok_or_else(|| anyhow!("sensor-ebpf manifest path"))?;
    let root_dir = std::path::Path::new(manifest)
        .parent()
        .ok_or_else(|| anyhow!("sensor-ebpf root"))?
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path"))?
        .to_owned();
    aya_build::build_ebpf(
        [Package {
            name: "sensor-ebpf",
            root_dir: &root_dir,
            ..Default::default()
        }],
        Toolchain::default(),
    )
    .context(
        "building the eBPF programs failed; run `cargo xtask setup` to install the nightly \
         toolchain, its library sources and bpf-linker",
    )
}
