//! Rebuild the programs when bpf-linker changes: it is the linker of the `bpfel-unknown-none`
//! target, which cargo does not track by itself.
use which::which;

fn main() {
    // Set by aya-build to the architecture the programs are built for.
    println!(
        "cargo::rustc-check-cfg=cfg(bpf_target_arch, values(\"x86_64\", \"arm\", \"aarch64\", \"riscv64\", \"powerpc64\", \"s390x\", \"mips\", \"loongarch64\"))"
    );
    match which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(_) => println!("cargo:warning=bpf-linker not found; run `cargo xtask setup`"),
    }
}
