//! Rebuild the programs when bpf-linker changes: it is the linker of the `bpfel-unknown-none`
//! target, which cargo does not track by itself.
use which::which;

fn main() {
    match which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(_) => println!("cargo:warning=bpf-linker not found; run `cargo xtask setup`"),
    }
}
