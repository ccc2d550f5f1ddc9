//! Where a watched process's OpenSSL is, and where in it the probed functions start.
//!
//! A process may use OpenSSL from shared libraries (`libssl`/`libcrypto`, the usual case), or
//! linked into `libpython`, the `_ssl` extension or the interpreter itself. Paths are resolved
//! through `/proc/PID/root`, so a container's own copy is the one probed. Besides what the
//! process has mapped now, the libraries it *would* load are probed in advance (the standard
//! library directories of its root, and its interpreter's `_ssl` extension): Python imports `ssl`
//! lazily, and a uprobe attached to a file before the process maps it takes effect at the
//! mapping, so the first TLS call is never missed.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use object::{Architecture, Object as _, ObjectSection as _, ObjectSymbol as _, SectionKind};

/// An OpenSSL function the kernel programs probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TlsFunction {
    /// `SSL_read`: plaintext in.
    SslRead,
    /// `SSL_read_ex`: plaintext in (the only read Python 3.10+ calls).
    SslReadEx,
    /// `SSL_write`: plaintext out.
    SslWrite,
    /// `SSL_write_ex`: plaintext out.
    SslWriteEx,
    /// `SSL_do_handshake`: a stream seen from its start; socket calls inside it bind the stream.
    SslDoHandshake,
    /// `SSL_free`: the stream ends.
    SslFree,
    /// `SSL_set_bio`: which stream reads a (memory) BIO.
    SslSetBio,
    /// `BIO_write`: the application feeding ciphertext into a memory BIO.
    BioWrite,
    /// The unexported function `SSL_read` and `SSL_read_ex` both call (`ssl_read_internal`,
    /// with `SSL_read_ex`'s arguments and result), probed instead of both where it is found.
    SslReadInternal,
    /// The unexported function `SSL_write` and `SSL_write_ex` both call (`ssl_write_internal`).
    SslWriteInternal,
    /// A direct call of `BIO_write` in the application's code (CPython's `_ssl` feeding a memory
    /// BIO), probed instead of `BIO_write` itself where every call the file makes is found (see
    /// [`bio_write_calls`]): OpenSSL's own writes into its write BIO, two per HTTPS request,
    /// then never trap.
    BioWriteCall,
}

impl TlsFunction {
    /// The exported functions, looked up by name.
    pub const EXPORTED: [TlsFunction; 8] = [
        TlsFunction::SslRead,
        TlsFunction::SslReadEx,
        TlsFunction::SslWrite,
        TlsFunction::SslWriteEx,
        TlsFunction::SslDoHandshake,
        TlsFunction::SslFree,
        TlsFunction::SslSetBio,
        TlsFunction::BioWrite,
    ];

    /// The exported symbol.
    pub fn symbol(self) -> &'static str {
        match self {
            TlsFunction::SslRead => "SSL_read",
            TlsFunction::SslReadEx => "SSL_read_ex",
            TlsFunction::SslWrite => "SSL_write",
            TlsFunction::SslWriteEx => "SSL_write_ex",
            TlsFunction::SslDoHandshake => "SSL_do_handshake",
            TlsFunction::SslFree => "SSL_free",
            TlsFunction::SslSetBio => "SSL_set_bio",
            TlsFunction::BioWrite => "BIO_write",
            TlsFunction::SslReadInternal => "ssl_read_internal (for SSL_read and SSL_read_ex)",
            TlsFunction::SslWriteInternal => "ssl_write_internal (for SSL_write and SSL_write_ex)",
            TlsFunction::BioWriteCall => "a call of BIO_write (for BIO_write)",
        }
    }

    /// The kernel program attached at the function's entry.
    pub fn entry_program(self) -> &'static str {
        match self {
            TlsFunction::SslRead => "ssl_read",
            TlsFunction::SslReadEx | TlsFunction::SslReadInternal => "ssl_read_ex",
            TlsFunction::SslWrite => "ssl_write",
            TlsFunction::SslWriteEx | TlsFunction::SslWriteInternal => "ssl_write_ex",
            TlsFunction::SslDoHandshake => "ssl_do_handshake",
            TlsFunction::SslFree => "ssl_free",
            TlsFunction::SslSetBio => "ssl_set_bio",
            TlsFunction::BioWrite | TlsFunction::BioWriteCall => "bio_write",
        }
    }

    /// The kernel program attached at the function's return, if any.
    pub fn return_program(self) -> Option<&'static str> {
        match self {
            TlsFunction::SslRead
            | TlsFunction::SslReadEx
            | TlsFunction::SslWrite
            | TlsFunction::SslWriteEx
            | TlsFunction::SslReadInternal
            | TlsFunction::SslWriteInternal
            | TlsFunction::SslDoHandshake => Some("ssl_return"),
            _ => None,
        }
    }
}

/// Every kernel program of the OpenSSL probes, `(name, is_return_probe)`.
pub const TLS_PROGRAMS: &[(&str, bool)] = &[
    ("ssl_read", false),
    ("ssl_read_ex", false),
    ("ssl_write", false),
    ("ssl_write_ex", false),
    ("ssl_do_handshake", false),
    ("ssl_free", false),
    ("ssl_set_bio", false),
    ("bio_write", false),
    ("ssl_return", true),
];

/// The probed functions a file defines, with their file offsets.
pub type FunctionOffsets = Arc<Vec<(TlsFunction, u64)>>;

/// A file holding (some of) OpenSSL's functions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsLibrary {
    /// The file as the sensor opens it (through `/proc/PID/root`).
    pub path: PathBuf,
    /// Device and inode: the identity uprobes attach to.
    pub id: (u64, u64),
    /// File offsets of the probed functions it defines.
    pub functions: FunctionOffsets,
    /// Whether the process has it mapped now (else it is probed in advance).
    pub mapped: bool,
}

impl TlsLibrary {
    /// Whether the file has the plaintext functions (a `libssl`, not only a `libcrypto`).
    pub fn has_plaintext(&self) -> bool {
        self.functions.iter().any(|(f, _)| {
            matches!(
                f,
                TlsFunction::SslReadEx | TlsFunction::SslRead | TlsFunction::SslReadInternal
            )
        })
    }
}

/// Symbol tables already read, by file identity: `libcrypto` is megabytes, read once.
#[derive(Default)]
pub struct SymbolCache {
    by_file: HashMap<(u64, u64), FunctionOffsets>,
}

impl SymbolCache {
    /// The probed functions `path` defines (empty when none, or when it is not an ELF file).
    pub fn functions(&mut self, path: &Path, id: (u64, u64)) -> FunctionOffsets {
        if let Some(found) = self.by_file.get(&id) {
            return found.clone();
        }
        let found = Arc::new(std::fs::read(path).map_or_else(|_| Vec::new(), |d| offsets(&d)));
        if self.by_file.len() > 1024 {
            self.by_file.clear();
        }
        self.by_file.insert(id, found.clone());
        found
    }
}

/// File offsets of the probed functions an ELF image defines (dynamic or static symbols).
pub fn offsets(data: &[u8]) -> Vec<(TlsFunction, u64)> {
    let Ok(file) = object::File::parse(data) else {
        return Vec::new();
    };
    let mut addresses: Vec<(TlsFunction, u64)> = Vec::new();
    for symbol in file.dynamic_symbols().chain(file.symbols()) {
        if !symbol.is_definition() {
            continue;
        }
        let Ok(name) = symbol.name() else {
            continue;
        };
        let Some(function) = TlsFunction::EXPORTED.iter().find(|f| f.symbol() == name) else {
            continue;
        };
        if addresses.iter().any(|(f, _)| f == function) {
            continue;
        }
        addresses.push((*function, symbol.address()));
    }
    let x86_64 = file.architecture() == Architecture::X86_64;
    if x86_64 {
        probe_shared_internals(&file, &mut addresses);
        if addresses.is_empty() {
            addresses.extend(
                bio_write_calls(&file)
                    .into_iter()
                    .map(|address| (TlsFunction::BioWriteCall, address)),
            );
        }
    }
    addresses
        .into_iter()
        .filter_map(|(function, address)| {
            let (code, offset) = code_at(&file, address)?;
            let skip = if x86_64
                && function.return_program().is_none()
                && function != TlsFunction::BioWriteCall
            {
                probe_skip(code, address)
            } else {
                0
            };
            Some((function, offset + skip))
        })
        .collect()
}

/// The addresses of every call of `BIO_write` in an ELF image that imports it and is not OpenSSL
/// itself (x86-64): the direct `call`s (and tail `jmp`s) to its PLT stub, which the kernel
/// emulates, so a probe there costs one trap and sees `BIO_write`'s arguments in place. Empty
/// unless every use is such a call: a load of the GOT slot or of the stub's address could call
/// it out of sight, and then `BIO_write` itself is probed.
fn bio_write_calls(file: &object::File<'_>) -> Vec<u64> {
    use iced_x86::{Decoder, DecoderOptions, FlowControl, Mnemonic};
    use object::{ObjectSymbolTable as _, RelocationTarget};
    let Some(symbols) = file.dynamic_symbol_table() else {
        return Vec::new();
    };
    let Some(slot) = file.dynamic_relocations().and_then(|mut relocations| {
        relocations.find_map(|(offset, relocation)| match relocation.target() {
            RelocationTarget::Symbol(index) => symbols
                .symbol_by_index(index)
                .ok()
                .filter(|symbol| symbol.name() == Ok(TlsFunction::BioWrite.symbol()))
                .map(|_| offset),
            _ => None,
        })
    }) else {
        return Vec::new();
    };
    let code_sections: Vec<_> = file
        .sections()
        .filter(|section| section.kind() == SectionKind::Text)
        .filter_map(|section| {
            Some((
                section.name().ok()?,
                section.address(),
                section.data().ok()?,
            ))
        })
        .collect();
    let mut stub = None;
    for (name, address, data) in &code_sections {
        if !name.starts_with(".plt") {
            continue;
        }
        let mut decoder = Decoder::with_ip(64, data, *address, DecoderOptions::NONE);
        let mut previous: Option<iced_x86::Instruction> = None;
        while decoder.can_decode() {
            let instruction = decoder.decode();
            if instruction.mnemonic() == Mnemonic::Jmp
                && instruction.is_ip_rel_memory_operand()
                && instruction.ip_rel_memory_address() == slot
            {
                stub = Some(match previous {
                    Some(endbr) if endbr.mnemonic() == Mnemonic::Endbr64 => endbr.ip(),
                    _ => instruction.ip(),
                });
            }
            previous = Some(instruction);
        }
    }
    let Some(stub) = stub else {
        return Vec::new();
    };
    let mut calls = Vec::new();
    for (name, address, data) in &code_sections {
        if name.starts_with(".plt") {
            continue;
        }
        let mut decoder = Decoder::with_ip(64, data, *address, DecoderOptions::NONE);
        while decoder.can_decode() {
            let instruction = decoder.decode();
            let branch = matches!(
                instruction.flow_control(),
                FlowControl::Call | FlowControl::UnconditionalBranch
            );
            if branch && instruction.near_branch_target() == stub {
                calls.push(instruction.ip());
            } else if instruction.is_ip_rel_memory_operand()
                && [slot, stub].contains(&instruction.ip_rel_memory_address())
            {
                return Vec::new();
            }
        }
    }
    calls
}

/// The code of an ELF image from `address` on, and that address's file offset.
fn code_at<'data>(file: &object::File<'data>, address: u64) -> Option<(&'data [u8], u64)> {
    let section = file.sections().find(|section| {
        section.kind() == SectionKind::Text
            && address >= section.address()
            && address - section.address() < section.size()
    })?;
    let (file_start, _) = section.file_range()?;
    let start = address - section.address();
    let code = section.data().ok()?.get(usize::try_from(start).ok()?..)?;
    Some((code, file_start + start))
}

/// The read and the write pair, each with the internal function both of its members call.
const SHARED_INTERNALS: [(TlsFunction, TlsFunction, TlsFunction); 2] = [
    (
        TlsFunction::SslReadEx,
        TlsFunction::SslRead,
        TlsFunction::SslReadInternal,
    ),
    (
        TlsFunction::SslWriteEx,
        TlsFunction::SslWrite,
        TlsFunction::SslWriteInternal,
    ),
];

/// Replaces `SSL_read_ex` and `SSL_read` (and the write pair) by the internal function both
/// call, where the image shows it unambiguously (x86-64).
///
/// Both functions carry a return probe, which must sit on the first instruction, and OpenSSL
/// 3's wrappers start with `sub $8,%rsp`, which the kernel single-steps: a second trap, about
/// 20 µs per call on our VM against 1–2 µs for the internal function, whose first instruction
/// (`push`) is emulated. An asyncio HTTPS request makes three such calls. The internal function
/// takes `SSL_read_ex`'s arguments and returns its result (1 and the count, or ≤ 0), so the same
/// programs apply. It is recognised only when `SSL_read_ex` is a pure wrapper — arguments
/// untouched up to its only call, nothing but straight-line code from there to its return — and
/// `SSL_read` calls the same function; otherwise both stay probed as before.
fn probe_shared_internals(file: &object::File<'_>, addresses: &mut Vec<(TlsFunction, u64)>) {
    for (ex, plain, internal) in SHARED_INTERNALS {
        let address_of = |wanted: TlsFunction| {
            addresses
                .iter()
                .find(|(function, _)| *function == wanted)
                .map(|(_, address)| *address)
        };
        let (Some(ex_at), Some(plain_at)) = (address_of(ex), address_of(plain)) else {
            continue;
        };
        let Some(target) = code_at(file, ex_at).and_then(|(code, _)| wrapper_target(code, ex_at))
        else {
            continue;
        };
        let plain_calls_it = code_at(file, plain_at)
            .is_some_and(|(code, _)| direct_calls(code, plain_at).contains(&target));
        if !plain_calls_it || code_at(file, target).is_none() {
            continue;
        }
        addresses.retain(|(function, _)| *function != ex && *function != plain);
        addresses.push((internal, target));
    }
}

/// Most instructions of a wrapper looked at by [`wrapper_target`].
const WRAPPER_INSTRUCTIONS: usize = 16;

/// Most instructions looked through by [`direct_calls`].
const CALLER_INSTRUCTIONS: usize = 96;

/// The function a pure wrapper (its code from `code`, at address `ip`) hands its arguments to:
/// its only direct call, reached without touching the argument registers, followed by nothing
/// but straight-line code up to its return.
fn wrapper_target(code: &[u8], ip: u64) -> Option<u64> {
    use iced_x86::{Decoder, DecoderOptions, FlowControl};
    let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut info = iced_x86::InstructionInfoFactory::new();
    let mut target = None;
    for _ in 0..WRAPPER_INSTRUCTIONS {
        if !decoder.can_decode() {
            return None;
        }
        let instruction = decoder.decode();
        match instruction.flow_control() {
            FlowControl::Return => return target,
            FlowControl::Call if target.is_none() && instruction.is_call_near() => {
                target = Some(instruction.near_branch_target());
            }
            FlowControl::Next if target.is_some() || !writes_argument(&mut info, &instruction) => {}
            _ => return None,
        }
    }
    None
}

/// The targets of the direct calls in a function's code (at address `ip`), read straight
/// through up to its first return.
fn direct_calls(code: &[u8], ip: u64) -> Vec<u64> {
    use iced_x86::{Decoder, DecoderOptions, FlowControl};
    let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut targets = Vec::new();
    for _ in 0..CALLER_INSTRUCTIONS {
        if !decoder.can_decode() {
            break;
        }
        let instruction = decoder.decode();
        match instruction.flow_control() {
            FlowControl::Return => break,
            FlowControl::Call if instruction.is_call_near() => {
                targets.push(instruction.near_branch_target());
            }
            _ => {}
        }
    }
    targets
}

/// Whether an instruction writes one of the registers that carry a function's arguments.
fn writes_argument(
    info: &mut iced_x86::InstructionInfoFactory,
    instruction: &iced_x86::Instruction,
) -> bool {
    use iced_x86::{OpAccess, Register};
    const ARGUMENTS: [Register; 6] = [
        Register::RDI,
        Register::RSI,
        Register::RDX,
        Register::RCX,
        Register::R8,
        Register::R9,
    ];
    info.info(instruction).used_registers().iter().any(|used| {
        ARGUMENTS.contains(&used.register().full_register())
            && !matches!(used.access(), OpAccess::Read | OpAccess::CondRead)
    })
}

/// Most leading instructions of a function looked through by [`probe_skip`].
const PROBE_SKIP_INSTRUCTIONS: usize = 12;

/// How many bytes past the start of an x86-64 function (its code from `code`, at address `ip`)
/// its entry-only probe goes: to the first instruction the kernel emulates rather than
/// single-steps (a direct jump, conditional jump or call, `push reg`, a nop).
///
/// A uprobe trap is cheap when the kernel can emulate the probed instruction, and costs a
/// second trap when it must run it out of line and single-step it: on this VM 0.7 µs against
/// 21 µs per hit, measured on `push %rbp` and `sub $0x18,%rsp` (`BIO_write`'s first
/// instruction), and `BIO_write` traps three times per asyncio HTTPS request. The instructions
/// passed over must run on every call (no control flow) and leave the argument registers the
/// programs read untouched; otherwise, or when no such instruction comes soon, 0: the entry.
/// Return probes stay at the entry, where the return address is.
pub fn probe_skip(code: &[u8], ip: u64) -> u64 {
    use iced_x86::{Decoder, DecoderOptions, FlowControl};
    let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut info = iced_x86::InstructionInfoFactory::new();
    for _ in 0..PROBE_SKIP_INSTRUCTIONS {
        if !decoder.can_decode() {
            return 0;
        }
        let instruction = decoder.decode();
        if instruction.is_invalid() {
            return 0;
        }
        if kernel_emulates(&instruction) {
            return instruction.ip() - ip;
        }
        if instruction.flow_control() != FlowControl::Next
            || writes_argument(&mut info, &instruction)
        {
            return 0;
        }
    }
    0
}

/// Whether the kernel's x86-64 uprobes emulate an instruction (a direct jump, conditional jump
/// or call, `push reg`, a nop) rather than run it out of line and single-step it.
fn kernel_emulates(instruction: &iced_x86::Instruction) -> bool {
    use iced_x86::{FlowControl, Mnemonic, OpKind};
    match instruction.flow_control() {
        FlowControl::ConditionalBranch => instruction.is_jcc_short_or_near(),
        FlowControl::UnconditionalBranch => instruction.is_jmp_short_or_near(),
        FlowControl::Call => instruction.is_call_near(),
        FlowControl::Next => {
            instruction.mnemonic() == Mnemonic::Nop
                || (instruction.mnemonic() == Mnemonic::Push
                    && instruction.op0_kind() == OpKind::Register
                    && instruction.op0_register().is_gpr64())
        }
        _ => false,
    }
}

/// Directories, relative to a process's root, where a dynamically linked Python finds OpenSSL.
const LIBRARY_DIRS: &[&str] = &[
    "usr/lib/x86_64-linux-gnu",
    "lib/x86_64-linux-gnu",
    "usr/lib/aarch64-linux-gnu",
    "lib/aarch64-linux-gnu",
    "usr/lib64",
    "lib64",
    "usr/lib",
    "lib",
    "usr/local/lib",
    "usr/local/ssl/lib",
];

/// OpenSSL library names, newest first.
const LIBRARY_NAMES: &[&str] = &[
    "libssl.so.3",
    "libcrypto.so.3",
    "libssl.so.1.1",
    "libcrypto.so.1.1",
];

/// Whether a mapped file's name suggests it may hold OpenSSL's functions.
fn may_hold_openssl(name: &str) -> bool {
    name.starts_with("libssl")
        || name.starts_with("libcrypto")
        || name.starts_with("libpython")
        || name.starts_with("_ssl")
        || name.starts_with("python")
}

/// The mapped files of process `pid` whose names suggest OpenSSL (see `may_hold_openssl`), in
/// map order, each once. Cheap next to [`libraries`]: one read of `/proc/PID/maps`, so the
/// daemon's periodic rescan compares it with the last probe's and looks further only on change.
pub fn mapped_candidates(proc_root: &Path, pid: u32) -> Vec<String> {
    let mut candidates: Vec<String> = Vec::new();
    let Ok(maps) = std::fs::read_to_string(proc_root.join(pid.to_string()).join("maps")) else {
        return candidates;
    };
    for line in maps.lines() {
        let Some(path) = line.split_whitespace().nth(5) else {
            continue;
        };
        if !path.starts_with('/') || line.ends_with("(deleted)") {
            continue;
        }
        let name = path.rsplit('/').next().unwrap_or(path);
        if may_hold_openssl(name) && !candidates.iter().any(|p| p == path) {
            candidates.push(path.to_string());
        }
    }
    candidates
}

/// The files of process `pid` that hold OpenSSL functions: mapped ones, and the ones it would
/// load. Each file once; unreadable or foreign files are left out.
pub fn libraries(proc_root: &Path, pid: u32, cache: &mut SymbolCache) -> Vec<TlsLibrary> {
    libraries_from(proc_root, pid, &mapped_candidates(proc_root, pid), cache)
}

/// [`libraries`], given the process's [`mapped_candidates`] already read.
pub fn libraries_from(
    proc_root: &Path,
    pid: u32,
    mapped: &[String],
    cache: &mut SymbolCache,
) -> Vec<TlsLibrary> {
    let proc_dir = proc_root.join(pid.to_string());
    let root = proc_dir.join("root");
    let mut candidates: Vec<(String, bool)> =
        mapped.iter().map(|path| (path.clone(), true)).collect();
    for dir in LIBRARY_DIRS {
        for name in LIBRARY_NAMES {
            candidates.push((format!("/{dir}/{name}"), false));
        }
    }
    if let Ok(exe) = std::fs::read_link(proc_dir.join("exe")) {
        candidates.extend(
            ssl_extensions(&root, &exe)
                .into_iter()
                .map(|path| (path, false)),
        );
    }
    let mut found: Vec<TlsLibrary> = Vec::new();
    for (path, mapped) in candidates {
        let host_path = root.join(path.trim_start_matches('/'));
        let Ok(meta) = std::fs::metadata(&host_path) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        let id = (meta.dev(), meta.ino());
        if let Some(known) = found.iter_mut().find(|l| l.id == id) {
            known.mapped |= mapped;
            continue;
        }
        let functions = cache.functions(&host_path, id);
        if functions.is_empty() {
            continue;
        }
        found.push(TlsLibrary {
            path: host_path,
            id,
            functions,
            mapped,
        });
    }
    prefer_bio_write_calls(&mut found);
    found
}

/// Where a file of the process calls `BIO_write` at probed call sites, `BIO_write` itself is not
/// probed: the application's feeds are seen at the calls, and OpenSSL's own writes stay quiet.
fn prefer_bio_write_calls(found: &mut Vec<TlsLibrary>) {
    let has = |library: &TlsLibrary, wanted: TlsFunction| {
        library
            .functions
            .iter()
            .any(|(function, _)| *function == wanted)
    };
    if !found.iter().any(|l| has(l, TlsFunction::BioWriteCall)) {
        return;
    }
    for library in found.iter_mut() {
        if has(library, TlsFunction::BioWrite) {
            library.functions = Arc::new(
                library
                    .functions
                    .iter()
                    .copied()
                    .filter(|(function, _)| *function != TlsFunction::BioWrite)
                    .collect(),
            );
        }
    }
    found.retain(|library| !library.functions.is_empty());
}

/// The `_ssl` extension modules next to interpreter `exe` (a path inside the process's root):
/// `<prefix>/lib/python3.X/lib-dynload/_ssl*.so`.
fn ssl_extensions(root: &Path, exe: &Path) -> Vec<String> {
    let Some(prefix) = exe.parent().and_then(Path::parent) else {
        return Vec::new();
    };
    let lib = root.join(prefix.join("lib").to_string_lossy().trim_start_matches('/'));
    let Ok(entries) = std::fs::read_dir(&lib) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("python3") {
            continue;
        }
        let dynload = entry.path().join("lib-dynload");
        let Ok(modules) = std::fs::read_dir(&dynload) else {
            continue;
        };
        for module in modules.flatten() {
            let module_name = module.file_name().to_string_lossy().into_owned();
            if module_name.starts_with("_ssl") && module_name.ends_with(".so") {
                found.push(format!(
                    "{}/lib/{name}/lib-dynload/{module_name}",
                    prefix.display()
                ));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The system's copy of an OpenSSL 3 library (`libssl.so.3`, `libcrypto.so.3`).
    fn system_library(name: &str) -> PathBuf {
        ["/usr/lib/x86_64-linux-gnu", "/lib64"]
            .into_iter()
            .map(|dir| Path::new(dir).join(name))
            .find(|path| path.exists())
            .unwrap_or_else(|| panic!("OpenSSL 3 ({name}) is installed"))
    }

    fn system_libssl() -> PathBuf {
        system_library("libssl.so.3")
    }

    #[test]
    fn finds_the_probed_functions_in_the_system_openssl() {
        let libssl = system_libssl();
        let found = offsets(&std::fs::read(&libssl).unwrap());
        let has = |function| found.iter().any(|(f, off)| *f == function && *off > 0);
        for function in [
            TlsFunction::SslDoHandshake,
            TlsFunction::SslFree,
            TlsFunction::SslSetBio,
        ] {
            assert!(
                has(function),
                "{} not found in {}: {found:?}",
                function.symbol(),
                libssl.display()
            );
        }
        for (ex, plain, internal) in SHARED_INTERNALS {
            // Either the internal function alone, or both exported ones: never both forms, which
            // would capture every call twice.
            assert!(
                has(internal) != (has(ex) && has(plain)),
                "{}: {found:?}",
                internal.symbol()
            );
        }
        assert!(!found.iter().any(|(f, _)| *f == TlsFunction::BioWrite));
    }

    #[test]
    fn system_read_and_write_are_probed_on_their_shared_internal_function() {
        let data = std::fs::read(system_libssl()).unwrap();
        let found = offsets(&data);
        for internal in [TlsFunction::SslReadInternal, TlsFunction::SslWriteInternal] {
            let (_, offset) = found
                .iter()
                .find(|(f, _)| *f == internal)
                .unwrap_or_else(|| panic!("{} not recognised: {found:?}", internal.symbol()));
            let first = iced_x86::Decoder::new(64, &data[*offset as usize..], 0).decode();
            assert_eq!(
                first.mnemonic(),
                iced_x86::Mnemonic::Push,
                "{} starts with {first:?}",
                internal.symbol()
            );
        }
    }

    #[test]
    fn offsets_are_file_offsets_of_the_function_code() {
        // The bytes at SSL_do_handshake's file offset are the function's first instruction
        // bytes; at least they are not zero padding.
        let data = std::fs::read(system_libssl()).unwrap();
        let found = offsets(&data);
        let (_, offset) = found
            .iter()
            .find(|(f, _)| *f == TlsFunction::SslDoHandshake)
            .expect("SSL_do_handshake");
        let code = &data[*offset as usize..*offset as usize + 4];
        assert_ne!(code, [0, 0, 0, 0]);
    }

    /// `wrapper_target` on byte fixtures at address 0x1000: (what, code, target).
    const WRAPPER_CASES: &[(&str, &[u8], Option<u64>)] = &[
        (
            "SSL_read_ex of OpenSSL 3.0 (Debian 12)",
            &[
                0x48, 0x83, 0xec, 0x08, // sub $0x8,%rsp
                0xe8, 0xc7, 0xfd, 0xff, 0xff, // call -0x239
                0x31, 0xd2, 0x85, 0xc0, 0x0f, 0x48, 0xc2, // xor; test; cmovs
                0x48, 0x83, 0xc4, 0x08, // add $0x8,%rsp
                0x31, 0xd2, 0x31, 0xc9, 0x31, 0xf6, 0x31, 0xff, 0xc3, // xor ×4; ret
            ],
            Some(0x1009 - 0x239),
        ),
        (
            "an argument moved before the call",
            &[0x48, 0x89, 0xf7, 0xe8, 0x00, 0x00, 0x00, 0x00, 0xc3],
            None,
        ),
        (
            "two calls",
            &[
                0xe8, 0x00, 0x00, 0x00, 0x00, 0xe8, 0x00, 0x00, 0x00, 0x00, 0xc3,
            ],
            None,
        ),
        (
            "a branch after the call",
            &[
                0xe8, 0x00, 0x00, 0x00, 0x00, 0x85, 0xc0, 0x74, 0x01, 0xc3, 0xc3,
            ],
            None,
        ),
        ("no call", &[0x31, 0xc0, 0xc3], None),
        (
            "no return in sight",
            &[0xe8, 0x00, 0x00, 0x00, 0x00, 0x31, 0xc0, 0x31, 0xc0],
            None,
        ),
    ];

    #[test]
    fn only_pure_wrappers_lead_to_their_callee() {
        for (what, code, expected) in WRAPPER_CASES {
            assert_eq!(wrapper_target(code, 0x1000), *expected, "{what}");
        }
    }

    #[test]
    fn direct_calls_are_read_up_to_the_first_return() {
        let code = [
            0xe8, 0x0b, 0x00, 0x00, 0x00, // call 0x1010
            0xff, 0xd0, // call *%rax (not direct)
            0xe8, 0x00, 0x00, 0x00, 0x00, // call 0x100c
            0xc3, // ret
            0xe8, 0x00, 0x00, 0x00, 0x00, // after the return: not read
        ];
        assert_eq!(direct_calls(&code, 0x1000), vec![0x1010, 0x100c]);
    }

    /// `probe_skip` on byte fixtures: (what, code, bytes skipped).
    const SKIP_CASES: &[(&str, &[u8], u64)] = &[
        (
            "BIO_write of OpenSSL 3.0 (Debian 12): sub, stack guard, xor, test, then jle",
            &[
                0x48, 0x83, 0xec, 0x18, // sub $0x18,%rsp
                0x64, 0x48, 0x8b, 0x04, 0x25, 0x28, 0x00, 0x00, 0x00, // mov %fs:0x28,%rax
                0x48, 0x89, 0x44, 0x24, 0x08, // mov %rax,0x8(%rsp)
                0x31, 0xc0, // xor %eax,%eax
                0x85, 0xd2, // test %edx,%edx
                0x7e, 0x12, // jle
            ],
            0x16,
        ),
        (
            "push %rbp first: already emulated",
            &[0x55, 0x48, 0x89, 0xe5],
            0,
        ),
        (
            "endbr64, then push %rbx",
            &[0xf3, 0x0f, 0x1e, 0xfa, 0x53, 0x48, 0x89, 0xfb],
            4,
        ),
        (
            "sub, then call: the call is emulated",
            &[0x48, 0x83, 0xec, 0x08, 0xe8, 0x00, 0x00, 0x00, 0x00],
            4,
        ),
        (
            "an argument register overwritten before the jump: stay at the entry",
            &[0x48, 0x89, 0xf7, 0x85, 0xd2, 0x7e, 0x12], // mov %rsi,%rdi; test; jle
            0,
        ),
        (
            "a return before anything emulated: stay at the entry",
            &[0x31, 0xc0, 0xc3, 0x55],
            0,
        ),
        (
            "an indirect jump: stay at the entry",
            &[0x48, 0x83, 0xec, 0x08, 0xff, 0xe0],
            0,
        ),
        ("truncated code: stay at the entry", &[0x48, 0x83], 0),
        (
            "nothing emulated within the instructions looked at",
            &[
                0x31, 0xc0, 0x31, 0xc0, 0x31, 0xc0, 0x31, 0xc0, 0x31, 0xc0, 0x31, 0xc0, 0x31, 0xc0,
                0x31, 0xc0, 0x31, 0xc0, 0x31, 0xc0, 0x31, 0xc0, 0x31, 0xc0, 0x31, 0xc0,
            ], // 13 × xor %eax,%eax
            0,
        ),
    ];

    #[test]
    fn entry_only_probes_skip_to_an_emulated_instruction() {
        for (what, code, expected) in SKIP_CASES {
            assert_eq!(probe_skip(code, 0x1000), *expected, "{what}");
        }
    }

    #[test]
    fn system_bio_write_is_probed_past_its_single_stepped_start() {
        let data = std::fs::read(system_library("libcrypto.so.3")).unwrap();
        let (_, offset) = offsets(&data)
            .into_iter()
            .find(|(f, _)| *f == TlsFunction::BioWrite)
            .expect("BIO_write");
        let at = iced_x86::Decoder::new(64, &data[offset as usize..], 0).decode();
        assert!(
            kernel_emulates(&at),
            "BIO_write's probe sits on {at:?}, which the kernel single-steps"
        );
    }

    /// The `_ssl` extension of this machine's `python3`, which links the system OpenSSL.
    fn python_ssl_extension() -> PathBuf {
        let output = std::process::Command::new("python3")
            .args(["-c", "import _ssl; print(_ssl.__file__)"])
            .output()
            .expect("python3 runs");
        PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
    }

    #[test]
    fn the_ssl_extension_is_probed_at_its_bio_write_calls() {
        let path = python_ssl_extension();
        let data = std::fs::read(&path).unwrap();
        let found = offsets(&data);
        assert!(
            !found.is_empty() && found.iter().all(|(f, _)| *f == TlsFunction::BioWriteCall),
            "{}: {found:?}",
            path.display()
        );
        for (_, offset) in &found {
            let at = iced_x86::Decoder::new(64, &data[*offset as usize..], 0).decode();
            assert!(
                at.mnemonic() == iced_x86::Mnemonic::Call && kernel_emulates(&at),
                "the probe at {offset:#x} of {} sits on {at:?}, not on an emulated call",
                path.display()
            );
        }
    }

    #[test]
    fn openssl_itself_has_no_bio_write_call_probes() {
        for name in ["libssl.so.3", "libcrypto.so.3"] {
            let data = std::fs::read(system_library(name)).unwrap();
            assert!(
                !offsets(&data)
                    .iter()
                    .any(|(f, _)| *f == TlsFunction::BioWriteCall),
                "{name}'s own calls of BIO_write must not be probed"
            );
        }
    }

    #[test]
    fn bio_write_is_not_probed_where_its_calls_are() {
        let library = |functions: Vec<(TlsFunction, u64)>| TlsLibrary {
            path: PathBuf::from("/x"),
            id: (1, functions.len() as u64),
            functions: Arc::new(functions),
            mapped: true,
        };
        let libssl = library(vec![(TlsFunction::SslReadEx, 1), (TlsFunction::SslFree, 2)]);
        let libcrypto = library(vec![(TlsFunction::BioWrite, 3)]);
        let extension = library(vec![(TlsFunction::BioWriteCall, 4)]);
        let mut without_calls = vec![libssl.clone(), libcrypto.clone()];
        prefer_bio_write_calls(&mut without_calls);
        assert_eq!(without_calls, [libssl.clone(), libcrypto]);
        let mut found = vec![
            libssl.clone(),
            library(vec![(TlsFunction::BioWrite, 3)]),
            extension.clone(),
        ];
        prefer_bio_write_calls(&mut found);
        assert_eq!(found, [libssl, extension]);
    }

    #[test]
    fn mapped_candidates_are_the_openssl_like_files_each_once_in_map_order() {
        let root = std::env::temp_dir().join(format!("pysensor-maps-{}", std::process::id()));
        std::fs::create_dir_all(root.join("42")).unwrap();
        std::fs::write(
            root.join("42/maps"),
            "\
55d0-55d1 r--p 00000000 fe:00 1 /usr/bin/python3.11
7f00-7f01 r--p 00000000 fe:00 2 /venv/lib/libssl-1a2b.so.3
7f01-7f02 r-xp 00001000 fe:00 2 /venv/lib/libssl-1a2b.so.3
7f02-7f03 r--p 00000000 fe:00 3 /usr/lib/x86_64-linux-gnu/libc.so.6
7f03-7f04 r--p 00000000 fe:00 4 /usr/lib/libcrypto.so.3 (deleted)
7f04-7f05 rw-p 00000000 00:00 0 [heap]
7f05-7f06 r--p 00000000 fe:00 5 /usr/lib/python3.11/lib-dynload/_ssl.cpython-311.so
",
        )
        .unwrap();
        let found = mapped_candidates(&root, 42);
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(
            found,
            [
                "/usr/bin/python3.11",
                "/venv/lib/libssl-1a2b.so.3",
                "/usr/lib/python3.11/lib-dynload/_ssl.cpython-311.so",
            ]
        );
        assert!(mapped_candidates(Path::new("/nonexistent"), 42).is_empty());
    }

    #[test]
    fn garbage_is_not_a_library() {
        assert!(offsets(b"not an elf file").is_empty());
        assert!(offsets(&[]).is_empty());
    }

    #[test]
    fn the_sensor_itself_is_scanned_through_its_root() {
        let mut cache = SymbolCache::default();
        let found = libraries(Path::new("/proc"), std::process::id(), &mut cache);
        // This test binary does not map OpenSSL, but the system's libssl is found in advance.
        let ssl = found
            .iter()
            .find(|l| l.has_plaintext())
            .expect("the system libssl is found under /proc/self/root");
        assert!(!ssl.mapped);
        assert!(
            ssl.path
                .starts_with(format!("/proc/{}/root", std::process::id()))
        );
        assert!(
            found
                .iter()
                .any(|l| l.functions.iter().any(|(f, _)| *f == TlsFunction::BioWrite)),
            "libcrypto found too"
        );
    }
}
