//! `cargo xtask setup`: every prerequisite of the build and the tests, checked and installed.
//!
//! Two routes to the eBPF toolchain, chosen by what the machine can reach:
//! - online: `rustup toolchain install nightly --component rust-src`;
//! - offline (package registries only): the nightly already installed, Debian's
//!   `rust-web-src` library sources linked in as its `rust-src`. When those sources are of
//!   another Rust version than the nightly, the crates that must match the compiler (core and the
//!   `#[path]` modules it includes) are restored from the nightly's own rust-docs component,
//!   whose HTML source pages hold the exact text of the nightly's library.
//!
//! `bpf-linker` is built from crates.io against the nightly's own libLLVM, which needs no system
//! LLVM and works on both routes.

use std::{
    net::{TcpStream, ToSocketAddrs},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::{run, workspace_root};

/// What later tasks need to know about the prepared environment.
pub struct Env {
    /// Python interpreter of the test venv.
    pub python: PathBuf,
    /// The venv of the in-process agent (`tests/requirements-agent.txt`): Flask 2.x, gunicorn,
    /// uvicorn, FastAPI and the Hypertrace agent.
    pub agent_venv: PathBuf,
    /// The venv of OpenTelemetry's instrumentation (`tests/requirements-otel.txt`), same
    /// framework versions.
    pub otel_venv: PathBuf,
}

/// Where set-up keeps what it builds: outside the clone, so it survives between CI runs.
pub fn cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/tmp"));
    base.join("pysensor")
}

/// Whether we run as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc_geteuid() == 0 }
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

fn step<T>(name: &str, fix: &str, body: impl FnOnce() -> Result<T>) -> Result<T> {
    let started = Instant::now();
    let result = body().with_context(|| format!("set-up step `{name}` failed; fix: {fix}"));
    if result.is_ok() {
        let took = started.elapsed();
        if took > Duration::from_millis(500) {
            eprintln!("setup: {name}: done in {:.1}s", took.as_secs_f64());
        }
    }
    result
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stderr(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed with {}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether the online route applies: the Rust distribution server answers, and
/// `SENSOR_SETUP_OFFLINE` (which forces the offline route, e.g. to test it) is not set.
fn online() -> bool {
    std::env::var_os("SENSOR_SETUP_OFFLINE").is_none() && rust_dist_reachable()
}

/// Can this machine reach the Rust distribution server?
fn rust_dist_reachable() -> bool {
    let Ok(mut addrs) = ("static.rust-lang.org", 443).to_socket_addrs() else {
        return false;
    };
    addrs.any(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(3)).is_ok())
}

/// Runs every set-up step.
pub fn setup() -> Result<Env> {
    let started = Instant::now();
    step(
        "mount tracefs and bpffs",
        "run as root, or mount them: mount -t tracefs tracefs /sys/kernel/tracing; mount -t bpf bpf /sys/fs/bpf",
        mount_filesystems,
    )?;
    let nightly = step(
        "nightly toolchain",
        "rustup toolchain install nightly --profile minimal --component rust-src",
        nightly_toolchain,
    )?;
    step(
        "nightly rust-src",
        "rustup component add rust-src --toolchain nightly (online), or apt-get install rust-web-src",
        || rust_src(&nightly),
    )?;
    step(
        "bpf-linker",
        "see the error above; bpf-linker builds with `cargo install bpf-linker` against the nightly's LLVM",
        || bpf_linker(&nightly),
    )?;
    let python = step(
        "python test venv",
        "python3 with the venv module and access to PyPI (apt-get install python3-venv)",
        || python_venv("venv", "tests/requirements.txt"),
    )?;
    let agent_python = step(
        "python agent venv",
        "python3 with the venv module and access to PyPI (apt-get install python3-venv)",
        || python_venv("venv-agent", "tests/requirements-agent.txt"),
    )?;
    let otel_python = step(
        "python OpenTelemetry venv (benchmark)",
        "python3 with the venv module and access to PyPI (apt-get install python3-venv)",
        || python_venv("venv-otel", "tests/requirements-otel.txt"),
    )?;
    step("cargo-fuzz", "cargo install cargo-fuzz", cargo_fuzz)?;
    step(
        "openssl command (test certificates for the HTTPS tests)",
        "apt-get install openssl",
        || debian_command("openssl", &["version"], "openssl"),
    )?;
    step(
        "uwsgi_python3 command (uWSGI embedding Python, for a discovery test)",
        "apt-get install uwsgi-plugin-python3",
        || debian_command("uwsgi_python3", &["--version"], "uwsgi-plugin-python3"),
    )?;
    step(
        "ip command (the loopback of the container test's network namespace)",
        "apt-get install iproute2",
        || debian_command("ip", &["-V"], "iproute2"),
    )?;
    step(
        "hey command (the benchmark's load generator)",
        "apt-get install hey",
        || debian_command("hey", &["-n", "1", "http://127.0.0.1:1/"], "hey"),
    )?;
    eprintln!("setup: ready in {:.1}s", started.elapsed().as_secs_f64());
    let venv_of = |python: &Path| {
        python
            .parent()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .ok_or_else(|| anyhow!("{} is not in a venv", python.display()))
    };
    Ok(Env {
        agent_venv: venv_of(&agent_python)?,
        otel_venv: venv_of(&otel_python)?,
        python,
    })
}

/// Makes sure `command` runs (`command args` starts; its exit status does not matter: `hey`
/// exits 0 even when its request fails), installing Debian's `package` when it does not.
fn debian_command(command: &str, args: &[&str], package: &str) -> Result<()> {
    let present = || {
        Command::new(command)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    };
    if present() {
        return Ok(());
    }
    if !is_root() {
        bail!("the {command} command is missing and we are not root to install it");
    }
    let install = || {
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq", package])
            .env("DEBIAN_FRONTEND", "noninteractive"))
    };
    if install().is_err() {
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        install()?;
    }
    if present() {
        Ok(())
    } else {
        bail!("apt-get install {package} left no working {command} command")
    }
}

fn is_mounted(path: &str, fstype: &str) -> bool {
    std::fs::read_to_string("/proc/mounts").is_ok_and(|mounts| {
        mounts.lines().any(|line| {
            let mut cols = line.split_whitespace();
            let _dev = cols.next();
            cols.next() == Some(path) && cols.next() == Some(fstype)
        })
    })
}

fn mount_filesystems() -> Result<()> {
    for (path, fstype) in [("/sys/kernel/tracing", "tracefs"), ("/sys/fs/bpf", "bpf")] {
        if is_mounted(path, fstype) {
            continue;
        }
        if !is_root() {
            bail!("{fstype} is not mounted at {path} and we are not root");
        }
        run(Command::new("mount").args(["-t", fstype, fstype, path]))?;
    }
    Ok(())
}

/// Facts about the nightly toolchain.
struct Nightly {
    sysroot: PathBuf,
    /// `1.97.0` from `rustc -vV`.
    release: String,
    /// Commit hash, identifies the exact nightly.
    commit: String,
    /// LLVM major version.
    llvm_major: u32,
}

fn nightly_toolchain() -> Result<Nightly> {
    let installed = output(Command::new("rustup").args(["toolchain", "list"]))?;
    if !installed.lines().any(|l| l.starts_with("nightly")) {
        if !online() {
            bail!(
                "no nightly toolchain is installed and the Rust distribution server is unreachable"
            );
        }
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))?;
    }
    let version = output(Command::new("rustc").args(["+nightly", "-vV"]))?;
    let field = |name: &str| {
        version
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
            .ok_or_else(|| anyhow!("`rustc +nightly -vV` has no {name}"))
    };
    let release = field("release:")?;
    let release = release.split('-').next().unwrap_or(&release).to_owned();
    let llvm = field("LLVM version:")?;
    let llvm_major = llvm
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .ok_or_else(|| anyhow!("cannot read LLVM version {llvm}"))?;
    let sysroot = PathBuf::from(
        output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?.trim(),
    );
    Ok(Nightly {
        sysroot,
        release,
        commit: field("commit-hash:")?,
        llvm_major,
    })
}

fn rust_src(nightly: &Nightly) -> Result<()> {
    let link = nightly.sysroot.join("lib/rustlib/src/rust");
    let stamp = cache_dir().join("rust-src.ok");
    if link.join("library/core/src/lib.rs").exists()
        && std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == nightly.commit)
    {
        return Ok(());
    }
    if link.join("library/core/src/lib.rs").exists() && !link.is_symlink() {
        // Installed by rustup: it always matches its toolchain.
        write_stamp(&stamp, &nightly.commit)?;
        return Ok(());
    }
    if link.is_symlink() {
        std::fs::remove_file(&link).with_context(|| format!("removing {}", link.display()))?;
    }
    if online() {
        let added = run(Command::new("timeout").args([
            "300",
            "rustup",
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]));
        match added {
            Ok(()) => return write_stamp(&stamp, &nightly.commit),
            Err(error) => eprintln!(
                "setup: rustup could not add rust-src ({error:#}); using Debian's sources"
            ),
        }
    }
    let debian = debian_rust_sources()?;
    let debian_release = debian
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("rustc-"))
        .unwrap_or("")
        .to_owned();
    let source_root = if debian_release == nightly.release {
        debian
    } else {
        restore_matching_library(nightly, &debian)?
    };
    std::fs::create_dir_all(link.parent().expect("rustlib/src"))?;
    if link.is_symlink() || link.exists() {
        std::fs::remove_file(&link)
            .or_else(|_| std::fs::remove_dir_all(&link))
            .with_context(|| format!("removing {}", link.display()))?;
    }
    std::os::unix::fs::symlink(&source_root, &link)
        .with_context(|| format!("linking {} to {}", link.display(), source_root.display()))?;
    write_stamp(&stamp, &nightly.commit)
}

fn write_stamp(path: &Path, content: &str) -> Result<()> {
    std::fs::create_dir_all(path.parent().expect("stamp has a parent"))?;
    std::fs::write(path, content).with_context(|| format!("writing {}", path.display()))
}

/// `/usr/src/rustc-X.Y.Z` from Debian's rust-web-src, installing the package if needed.
fn debian_rust_sources() -> Result<PathBuf> {
    let find = || -> Option<PathBuf> {
        let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/src")
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("rustc-"))
                    && p.join("library/core/src/lib.rs").exists()
            })
            .collect();
        found.sort_by_key(|p| version_key(p));
        found.pop()
    };
    if let Some(found) = find() {
        return Ok(found);
    }
    if !is_root() {
        bail!("Debian's rust-web-src is not installed and we are not root to install it");
    }
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "rust-web-src"])
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    find().ok_or_else(|| anyhow!("rust-web-src installed no /usr/src/rustc-*/library"))
}

fn version_key(path: &Path) -> Vec<u32> {
    path.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("rustc-"))
        .unwrap_or("")
        .split('.')
        .map(|p| p.parse().unwrap_or(0))
        .collect()
}

/// Builds a library tree for the nightly: Debian's sources for the workspace and support
/// crates, with `core` (and the stdarch / portable-simd modules it includes by path) replaced by
/// the nightly's exact text from its rust-docs source pages.
fn restore_matching_library(nightly: &Nightly, debian: &Path) -> Result<PathBuf> {
    let docs = nightly.sysroot.join("share/doc/rust/html/src/core");
    if !docs.join("lib.rs.html").exists() {
        bail!(
            "Debian's sources ({}) are not of the nightly's version {} and the nightly has no \
             rust-docs component to restore core from",
            debian.display(),
            nightly.release
        );
    }
    let root = cache_dir().join("rust-src").join(&nightly.commit);
    if root.join("library/core/src/lib.rs").exists() && root.join(".complete").exists() {
        return Ok(root);
    }
    if root.exists() {
        std::fs::remove_dir_all(&root)?;
    }
    std::fs::create_dir_all(&root)?;
    run(Command::new("cp")
        .arg("-r")
        .arg(debian.join("library"))
        .arg(root.join("library")))?;
    let core_src = root.join("library/core/src");
    std::fs::remove_dir_all(&core_src)?;
    let mut restored = 0usize;
    for file in walk_files(&docs)? {
        let relative = file.strip_prefix(&docs).expect("walked under docs");
        let Some(name) = relative.to_str().and_then(|n| n.strip_suffix(".html")) else {
            continue;
        };
        if !name.ends_with(".rs") {
            continue;
        }
        let target = if let Some(rest) = name.strip_prefix("stdarch/") {
            root.join("library/stdarch").join(rest)
        } else if let Some(rest) = name.strip_prefix("portable-simd/") {
            root.join("library/portable-simd").join(rest)
        } else {
            core_src.join(name)
        };
        let page = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        let source = source_from_rustdoc_page(&page)
            .ok_or_else(|| anyhow!("no source listing in {}", file.display()))?;
        std::fs::create_dir_all(target.parent().expect("file has a parent"))?;
        std::fs::write(&target, source)?;
        restored += 1;
    }
    if restored < 100 {
        bail!("only {restored} core source files found in the nightly's rust-docs");
    }
    std::fs::write(root.join(".complete"), format!("{restored} files\n"))?;
    eprintln!(
        "setup: restored {restored} core sources of rust {} ({}) from rust-docs",
        nightly.release, nightly.commit
    );
    Ok(root)
}

fn walk_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
        {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    Ok(files)
}

/// The source text of a rustdoc source page: the `<pre class="rust"><code>` listing without
/// line-number anchors and highlighting tags, entities decoded.
pub fn source_from_rustdoc_page(page: &str) -> Option<String> {
    const OPEN: &str = "<pre class=\"rust\"><code>";
    let start = page.find(OPEN)? + OPEN.len();
    let end = start + page[start..].find("</code></pre>")?;
    let listing = &page[start..end];
    let mut text = String::with_capacity(listing.len());
    let mut rest = listing;
    while let Some(lt) = rest.find('<') {
        text.push_str(&rest[..lt]);
        let tag_end = rest[lt..].find('>').map(|i| lt + i + 1)?;
        let tag = &rest[lt..tag_end];
        rest = &rest[tag_end..];
        if tag.starts_with("<a ") && tag.contains("data-nosnippet") {
            // A line-number anchor: skip its text up to </a>.
            let close = rest.find("</a>")?;
            rest = &rest[close + 4..];
        }
    }
    text.push_str(rest);
    Some(decode_entities(&text))
}

fn decode_entities(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let Some(semi) = rest.find(';').filter(|i| *i <= 10) else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let entity = &rest[1..semi];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn bpf_linker(nightly: &Nightly) -> Result<()> {
    if Command::new("bpf-linker")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        return Ok(());
    }
    // A prefix whose lib/ holds the nightly's libLLVM under the names llvm-sys looks for.
    let lib_dir = nightly.sysroot.join("lib");
    let llvm = std::fs::read_dir(&lib_dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so."))
        .ok_or_else(|| {
            anyhow!(
                "the nightly toolchain ships no libLLVM.so.* in {}",
                lib_dir.display()
            )
        })?;
    let prefix = cache_dir().join("llvm-nightly");
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)?;
    for name in ["libLLVM.so".to_owned(), llvm.clone()] {
        let link = prefix_lib.join(&name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(lib_dir.join(&llvm), &link)?;
    }
    let feature = format!("llvm-{}", nightly.llvm_major);
    let mut cmd = Command::new("cargo");
    cmd.args([
        "install",
        "bpf-linker",
        "--no-default-features",
        "--features",
    ])
    .arg(&feature)
    .env("LLVM_PREFIX", &prefix);
    if nightly.llvm_major == 22 {
        cmd.args(["--version", "0.13.0"]);
    }
    run(&mut cmd).with_context(|| format!("building bpf-linker with feature {feature}"))
}

/// A venv under the cache directory named `name` with the packages of `requirements` (a path
/// in the workspace) installed; left as it is when it already holds exactly those.
fn python_venv(name: &str, requirements: &str) -> Result<PathBuf> {
    let requirements = workspace_root().join(requirements);
    let wanted = std::fs::read_to_string(&requirements)
        .with_context(|| format!("reading {}", requirements.display()))?;
    let venv = cache_dir().join(name);
    let python = venv.join("bin/python");
    let stamp = venv.join(".requirements");
    if python.exists() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        return Ok(python);
    }
    if !python.exists() {
        run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    }
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(&requirements))?;
    std::fs::write(&stamp, wanted)?;
    Ok(python)
}

fn cargo_fuzz() -> Result<()> {
    if Command::new("cargo")
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        return Ok(());
    }
    run(Command::new("cargo").args(["install", "cargo-fuzz"]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rustdoc_source_pages_round_trip() {
        let page = concat!(
            "<html><pre class=\"rust\"><code>",
            "<a href=#1 id=1 data-nosnippet>1</a><span class=\"kw\">fn </span>f() -&gt; &amp;<span>str</span> {\n",
            "<a href=#2 id=2 data-nosnippet>2</a>    <span class=\"string\">\"&lt;a&gt; &#39;x&#39; &#x26;\"\n",
            "<a href=#3 id=3 data-nosnippet>3</a>}</code></pre></html>"
        );
        assert_eq!(
            source_from_rustdoc_page(page).unwrap(),
            "fn f() -> &str {\n    \"<a> 'x' &\"\n}"
        );
    }

    #[test]
    fn debian_source_versions_sort_numerically() {
        let mut dirs = [
            PathBuf::from("/usr/src/rustc-1.9.0"),
            PathBuf::from("/usr/src/rustc-1.96.0"),
            PathBuf::from("/usr/src/rustc-1.85.0"),
        ];
        dirs.sort_by_key(|p| version_key(p));
        assert_eq!(
            dirs.last().unwrap(),
            &PathBuf::from("/usr/src/rustc-1.96.0")
        );
    }
}
