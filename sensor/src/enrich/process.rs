//! Who a process is: executable, command line, telemetry environment and service name.
//!
//! A process's identity is taken at `execve` time from the kernel's argument records, so it is
//! known even for a process that exits before `/proc` can be read; processes that were running
//! before the sensor started are read from `/proc`.

use std::{
    collections::{BTreeMap, HashMap},
    io::Read as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use super::kubernetes::PodContainer;
use crate::capture::events::{ExecArg, ExecInfo};

/// What the sensor knows of one process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessInfo {
    /// Process id.
    pub pid: u32,
    /// Basename of the executable (the interpreter for scripts).
    pub executable_name: String,
    /// Full executable path, when known.
    pub executable_path: String,
    /// Arguments.
    pub argv: Vec<String>,
    /// `HT_*` and `OTEL_*` environment entries.
    pub env: BTreeMap<String, String>,
    /// The service name the process itself gives: its environment's, else one derived from
    /// its command line (see [`resolve_service_name`] for the name its records carry).
    pub service_name: String,
    /// Where [`Self::service_name`] came from.
    pub name_source: NameSource,
    /// The id of the container the process runs in, from its cgroup (resource `container.id`).
    pub container_id: Option<String>,
    /// The resource attributes the process declares for its telemetry, sorted by key: see
    /// [`ProcessInfo::resource_attributes`].
    declared_resource: Vec<(String, String)>,
    /// `enabled` in the process's agent file ([`AgentFile`]), when it sets it.
    enabled_in_agent_file: Option<bool>,
}

impl ProcessInfo {
    /// The command line, space-separated.
    pub fn command_line(&self) -> String {
        self.argv.join(" ")
    }

    /// Builds the identity from its parts, choosing the service name.
    pub fn new(
        pid: u32,
        executable_path: String,
        argv: Vec<String>,
        env: BTreeMap<String, String>,
    ) -> Self {
        Self::started_in(pid, executable_path, argv, env, || None)
    }

    /// [`ProcessInfo::new`] for a process whose working directory can be read (it places a
    /// script named by a relative path, see [`service_name_from_command_line`]; read only
    /// when the name needs it).
    pub fn started_in(
        pid: u32,
        executable_path: String,
        argv: Vec<String>,
        env: BTreeMap<String, String>,
        working_directory: impl FnOnce() -> Option<PathBuf>,
    ) -> Self {
        let executable_name = basename(&executable_path).to_owned();
        let (service_name, name_source) = match service_name_from_env(&env) {
            Some(name) => (name, NameSource::Environment),
            None => (
                service_name_from_command_line(&executable_name, &argv, working_directory),
                NameSource::CommandLine,
            ),
        };
        let declared_resource = declared_resource(&env, &[]);
        ProcessInfo {
            pid,
            executable_name,
            executable_path,
            argv,
            env,
            service_name,
            name_source,
            container_id: None,
            declared_resource,
            enabled_in_agent_file: None,
        }
    }

    /// Takes what the process's agent file says: its `service_name` when the environment
    /// names no service, its `enabled`, and its `resource_attributes` (see
    /// [`ProcessInfo::resource_attributes`]).
    pub fn adopt_agent_file(&mut self, file: AgentFile) {
        if self.name_source == NameSource::CommandLine
            && let Some(name) = file.service_name
        {
            self.service_name = name;
            self.name_source = NameSource::AgentFile;
        }
        self.enabled_in_agent_file = file.enabled;
        self.declared_resource = declared_resource(&self.env, &file.resource_attributes);
    }

    /// Whether the process opts out: `HT_ENABLED=false` in its environment, else `enabled:
    /// false` in its agent file (the variable wins, as in the agent).
    pub fn opted_out(&self) -> bool {
        match self
            .env
            .get("HT_ENABLED")
            .map(|v| v.trim().to_ascii_lowercase())
        {
            Some(v) if !v.is_empty() => matches!(v.as_str(), "false" | "0" | "no"),
            _ => self.enabled_in_agent_file == Some(false),
        }
    }

    /// The resource attributes the process declares, as an OpenTelemetry SDK or the Hypertrace
    /// agent inside it would export them: `OTEL_RESOURCE_ATTRIBUTES`, its agent file's
    /// `resource_attributes` over it, then `HT_RESOURCE_ATTRIBUTES` over both (URL-decoded
    /// values), sorted by key.
    pub fn resource_attributes(&self) -> &[(String, String)] {
        &self.declared_resource
    }
}

/// [`ProcessInfo::resource_attributes`] from the process's environment and its agent file's
/// attributes.
fn declared_resource(
    env: &BTreeMap<String, String>,
    from_agent_file: &[(String, String)],
) -> Vec<(String, String)> {
    let mut merged = BTreeMap::new();
    if let Some(raw) = env.get("OTEL_RESOURCE_ATTRIBUTES") {
        merged.extend(parse_key_values(raw));
    }
    merged.extend(from_agent_file.iter().cloned());
    if let Some(raw) = env.get("HT_RESOURCE_ATTRIBUTES") {
        merged.extend(parse_key_values(raw));
    }
    merged.into_iter().collect()
}

/// What the Hypertrace agent configuration file a process names in its own `HT_CONFIG_FILE`
/// says about the process: the agent read that file at start-up, so a service moved from the
/// agent to the sensor keeps the name, the opt-out and the resource attributes it declared
/// there (the agent itself never exported the file's name, hence its "pythonagent").
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentFile {
    /// `service_name` (`serviceName`), when set and not blank.
    pub service_name: Option<String>,
    /// `enabled`, when the file sets it.
    pub enabled: Option<bool>,
    /// `resource_attributes`, sorted by key.
    pub resource_attributes: Vec<(String, String)>,
}

/// Longest agent file read; a longer one is not an agent configuration.
const AGENT_FILE_MAX_BYTES: u64 = 1 << 20;

impl AgentFile {
    /// Parses a file's text (`name` for messages) with the sensor's own reader of the agent's
    /// YAML, leniently: an invalid value leaves its key out. `Err` when the text is not a
    /// YAML mapping.
    pub fn parse(text: &str, name: &str) -> Result<AgentFile, String> {
        let loaded = crate::config::process_file(text, name).map_err(|e| e.to_string())?;
        for warning in &loaded.warnings {
            tracing::debug!(file = name, "{warning}");
        }
        let config = loaded.config;
        Ok(AgentFile {
            service_name: config
                .service_name
                .map(|name| name.trim().to_owned())
                .filter(|name| !name.is_empty()),
            enabled: loaded
                .sources
                .contains_key("enabled")
                .then_some(config.enabled),
            resource_attributes: config.resource_attributes.into_iter().collect(),
        })
    }

    /// The agent file process `pid` names in `HT_CONFIG_FILE` (of its environment `env`),
    /// read as the process sees it: an absolute path in its root, a relative one from its
    /// working directory. `None` without the variable or a readable agent file.
    pub fn of_process(
        proc_root: &Path,
        pid: u32,
        env: &BTreeMap<String, String>,
    ) -> Option<AgentFile> {
        let path = env.get("HT_CONFIG_FILE").map(|p| p.trim())?;
        if path.is_empty() {
            return None;
        }
        let dir = proc_root.join(pid.to_string());
        let host_path = match path.strip_prefix('/') {
            Some(inside_root) => dir.join("root").join(inside_root),
            None => dir.join("cwd").join(path),
        };
        let mut text = String::new();
        if let Err(error) = std::fs::File::open(&host_path)
            .and_then(|file| file.take(AGENT_FILE_MAX_BYTES).read_to_string(&mut text))
        {
            tracing::debug!(pid, path, %error, "cannot read the process's HT_CONFIG_FILE");
            return None;
        }
        match AgentFile::parse(&text, path) {
            Ok(file) => Some(file),
            Err(error) => {
                tracing::warn!(
                    pid,
                    path,
                    %error,
                    "the process's HT_CONFIG_FILE is not an agent configuration; its service name is not taken from it"
                );
                None
            }
        }
    }
}

/// Where a process's own service name came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameSource {
    /// `HT_SERVICE_NAME`, `OTEL_SERVICE_NAME` or `service.name` in `OTEL_RESOURCE_ATTRIBUTES`.
    Environment,
    /// `service_name` in the agent file its `HT_CONFIG_FILE` names ([`AgentFile`]).
    AgentFile,
    /// Derived from the command line.
    CommandLine,
}

/// The service name of a process's records, first found of: the process's own environment
/// (`HT_SERVICE_NAME`, `OTEL_SERVICE_NAME`, `service.name` in `OTEL_RESOURCE_ATTRIBUTES`); its
/// pod's service-name annotation, `app.kubernetes.io/name` label or owning workload (see
/// [`PodContainer::service_name`]); the `service_name` of its agent file ([`AgentFile`]: after
/// the pod, as the agent's guides mount one ConfigMap into many services); the name derived
/// from its command line; the configured `service_name`; `unknown_service`.
pub fn resolve_service_name(
    process: &ProcessInfo,
    pod: Option<&PodContainer>,
    configured: Option<&str>,
) -> String {
    let own = (!process.service_name.is_empty()).then_some(process.service_name.as_str());
    let from = |source: NameSource| own.filter(|_| process.name_source == source);
    from(NameSource::Environment)
        .or_else(|| pod.and_then(PodContainer::service_name))
        .or(from(NameSource::AgentFile))
        .or(from(NameSource::CommandLine))
        .or(configured.map(str::trim).filter(|c| !c.is_empty()))
        .unwrap_or("unknown_service")
        .to_owned()
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Parses `k=v,k2=v2` (OTEL list syntax), percent-decoding values.
pub fn parse_key_values(raw: &str) -> Vec<(String, String)> {
    raw.split(',')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            let k = k.trim();
            if k.is_empty() {
                return None;
            }
            Some((k.to_owned(), percent_decode(v.trim())))
        })
        .collect()
}

fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The service name the process's own environment gives: `HT_SERVICE_NAME`, then
/// `OTEL_SERVICE_NAME`, then `service.name` in `OTEL_RESOURCE_ATTRIBUTES`.
pub fn service_name_from_env(env: &BTreeMap<String, String>) -> Option<String> {
    let non_empty = |v: &String| {
        let v = v.trim();
        (!v.is_empty()).then(|| v.to_owned())
    };
    env.get("HT_SERVICE_NAME")
        .and_then(non_empty)
        .or_else(|| env.get("OTEL_SERVICE_NAME").and_then(non_empty))
        .or_else(|| {
            env.get("OTEL_RESOURCE_ATTRIBUTES").and_then(|raw| {
                parse_key_values(raw)
                    .into_iter()
                    .find(|(k, _)| k == "service.name")
                    .map(|(_, v)| v)
                    .filter(|v| !v.is_empty())
            })
        })
}

/// A service name from the command line: the WSGI/ASGI application module under gunicorn,
/// uvicorn and friends (`app:app` gives `app`), the application a runner is given (celery's and
/// flask's `-A`, uWSGI's `--module`/`--wsgi-file`, Django's `--settings`, the file `fastapi
/// run` serves), the module of `python -m`, the Django project of a `manage.py` (its
/// directory, placed in `working_directory` — asked only then — when relative), else the
/// script name without `.py`; never a bare interpreter name.
pub fn service_name_from_command_line(
    executable_name: &str,
    argv: &[String],
    working_directory: impl FnOnce() -> Option<PathBuf>,
) -> String {
    let mut args = argv.iter().map(String::as_str).peekable();
    let first = args.next().unwrap_or(executable_name);
    let launcher = basename(first);
    let rest: Vec<&str> = args.collect();
    if is_python_name(launcher) {
        let mut i = 0;
        while i < rest.len() {
            let arg = rest[i];
            if arg == "--" {
                i += 1;
                break;
            }
            if let Some(long) = arg.strip_prefix("--") {
                i += if PYTHON_LONG_OPTIONS_WITH_VALUE.contains(&long) {
                    2
                } else {
                    1
                };
                continue;
            }
            let Some(cluster) = arg.strip_prefix('-').filter(|c| !c.is_empty()) else {
                break;
            };
            match interpreter_option(cluster) {
                InterpreterOption::Flags => i += 1,
                InterpreterOption::Value { attached } => i += if attached { 1 } else { 2 },
                InterpreterOption::Command => return "python-command".to_owned(),
                InterpreterOption::Module(attached) => {
                    let (module, tail) = match attached {
                        Some(module) => (module, &rest[i + 1..]),
                        None => match rest.get(i + 1) {
                            Some(module) => (*module, rest.get(i + 2..).unwrap_or_default()),
                            None => return "python".to_owned(),
                        },
                    };
                    return application(module, tail).unwrap_or_else(|| module.to_owned());
                }
            }
        }
        if let Some(path) = rest.get(i).filter(|s| **s != "-") {
            let script = basename(path);
            let runner = script.strip_suffix(".py").unwrap_or(script);
            return application(runner, &rest[i + 1..])
                .or_else(|| {
                    (script == "manage.py")
                        .then(|| project_directory(path, working_directory))
                        .flatten()
                })
                .unwrap_or_else(|| runner.to_owned());
        }
        return "python".to_owned();
    }
    let runner = launcher.strip_suffix(".py").unwrap_or(launcher);
    if let Some(app) = application(runner, &rest) {
        return app;
    }
    runner.to_owned()
}

/// The interpreter's long options that take their value as the next argument.
const PYTHON_LONG_OPTIONS_WITH_VALUE: &[&str] = &["check-hash-based-pycs"];

/// What a cluster of the interpreter's short options (`-u`, `-uW ignore`, `-mhttp.server`)
/// means for finding the program it runs.
enum InterpreterOption<'a> {
    /// Only flags (`-u`, `-OO`, `-Bs`).
    Flags,
    /// Ends in an option taking a value (`-W`, `-X`): attached (`-Wignore`) or the next argument.
    Value { attached: bool },
    /// `-c`: the program is a command string.
    Command,
    /// `-m`: the program is this module, attached or (None) the next argument.
    Module(Option<&'a str>),
}

/// Reads a short-option cluster (without its `-`) as CPython's option parser does: an option
/// taking a value takes the rest of the cluster, else the next argument.
fn interpreter_option(cluster: &str) -> InterpreterOption<'_> {
    for (at, option) in cluster.char_indices() {
        let attached = &cluster[at + option.len_utf8()..];
        match option {
            'c' => return InterpreterOption::Command,
            'm' => return InterpreterOption::Module((!attached.is_empty()).then_some(attached)),
            'W' | 'X' => {
                return InterpreterOption::Value {
                    attached: !attached.is_empty(),
                };
            }
            _ => {}
        }
    }
    InterpreterOption::Flags
}

/// The application module among a runner's arguments: the first `module:attribute` (the
/// gunicorn/uvicorn/hypercorn application spec), else what the runner takes as its application:
/// gunicorn a bare module (`gunicorn mysite.wsgi`, the callable `application` implied), the
/// first positional argument that is a dotted module name; celery `-A`/`--app`; flask
/// `-A`/`--app` (a module or a file); `fastapi run|dev` its `.py` file; uWSGI
/// `--module`/`-w`/`--wsgi`, else the file of `--wsgi-file`/`--file`; Django's `manage.py` and
/// `django-admin` the project of `--settings`.
fn application(runner: &str, args: &[&str]) -> Option<String> {
    // Distributions version some launchers (Debian's `gunicorn3`, `uwsgi_python3`).
    let unversioned = runner.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
    app_module(args).or_else(|| match unversioned {
        "gunicorn" => gunicorn_module(args),
        "celery" => option_value(args, &["-A", "--app"]).and_then(module_of),
        "flask" => option_value(args, &["-A", "--app"])
            .and_then(|app| module_of(app).or_else(|| script_stem(app))),
        "fastapi" => args
            .iter()
            .find(|arg| arg.ends_with(".py"))
            .and_then(|path| script_stem(path)),
        "manage" | "django-admin" => option_value(args, &["--settings"])
            .and_then(module_of)
            .map(|settings| settings.split('.').next().unwrap_or_default().to_owned()),
        _ if unversioned.starts_with("uwsgi") => option_value(args, &["--module", "-w", "--wsgi"])
            .and_then(module_of)
            .or_else(|| script_stem(option_value(args, &["--wsgi-file", "--file"])?)),
        _ => None,
    })
}

/// The value of the first of `names` among `args`: `--name value`, `--name=value`, or for a
/// one-letter option also `-Nvalue`.
fn option_value<'a>(args: &[&'a str], names: &[&str]) -> Option<&'a str> {
    args.iter().enumerate().find_map(|(at, arg)| {
        names.iter().find_map(|name| {
            let attached = arg.strip_prefix(name)?;
            if attached.is_empty() {
                return args.get(at + 1).copied();
            }
            let short = name.len() == 2 && !name.starts_with("--");
            attached
                .strip_prefix('=')
                .filter(|_| !short)
                .or(short.then_some(attached))
        })
    })
}

/// The name of a Python file without its directory and `.py` (`src/hello.py` gives `hello`).
fn script_stem(path: &str) -> Option<String> {
    let name = basename(path);
    let stem = name.strip_suffix(".py").unwrap_or(name);
    (!stem.is_empty()).then(|| stem.to_owned())
}

/// The module of an application spec (`proj.celery:app` gives `proj.celery`), when it is one.
fn module_of(spec: &str) -> Option<String> {
    let module = spec.split(':').next().unwrap_or(spec);
    is_dotted_identifier(module).then(|| module.to_owned())
}

/// A Django project's name from its `manage.py`: the directory holding it, placed in
/// `working_directory` when the path is relative.
fn project_directory(
    script: &str,
    working_directory: impl FnOnce() -> Option<PathBuf>,
) -> Option<String> {
    let script = Path::new(script);
    let path = match script.is_relative().then(working_directory).flatten() {
        Some(directory) => directory.join(script),
        None => script.to_path_buf(),
    };
    let directory = path.parent()?.file_name()?.to_str()?;
    (!directory.is_empty() && directory != "." && directory != "..").then(|| directory.to_owned())
}

/// The first `module:attribute` argument (gunicorn/uvicorn/hypercorn application spec).
fn app_module(args: &[&str]) -> Option<String> {
    args.iter().find_map(|arg| {
        if arg.starts_with('-') || arg.contains('=') || arg.contains('/') {
            return None;
        }
        let (module, attr) = arg.split_once(':')?;
        let attr = attr.split('(').next().unwrap_or(attr);
        (is_dotted_identifier(module) && is_dotted_identifier(attr)).then(|| module.to_owned())
    })
}

/// gunicorn's options that take no value: the argument after one of them is positional.
const GUNICORN_FLAGS: &[&str] = &[
    "--reload",
    "--spew",
    "--check-config",
    "--print-config",
    "--preload",
    "--no-sendfile",
    "--reuse-port",
    "-D",
    "--daemon",
    "--initgroups",
    "--capture-output",
    "-R",
    "--enable-stdio-inheritance",
    "--log-syslog",
    "--disable-redirect-access-to-syslog",
    "--proxy-protocol",
    "--do-handshake-on-connect",
    "--suppress-ragged-eofs",
    "--strip-header-spaces",
];

/// gunicorn's positional application module without `:callable`: the first argument that is
/// not an option, nor the value of one, and is a dotted module name.
fn gunicorn_module(args: &[&str]) -> Option<String> {
    let mut previous: Option<&str> = None;
    for arg in args {
        let takes_value = previous.is_some_and(|p| {
            p.starts_with('-') && !p.contains('=') && !GUNICORN_FLAGS.contains(&p)
        });
        if !arg.starts_with('-') && !takes_value && is_dotted_identifier(arg) {
            return Some((*arg).to_owned());
        }
        previous = Some(arg);
    }
    None
}

/// A Python identifier, or several joined by dots (a module path).
fn is_dotted_identifier(s: &str) -> bool {
    s.split('.').all(|part| {
        part.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

/// Whether an executable name is a CPython interpreter (`python`, `python3`, `python3.11`).
pub fn is_python_name(name: &str) -> bool {
    let Some(version) = name.strip_prefix("python") else {
        return false;
    };
    let version = version.strip_suffix("-dbg").unwrap_or(version);
    version.chars().all(|c| c.is_ascii_digit() || c == '.')
}

/// Whether a process is CPython: its executable is a Python interpreter, or it maps libpython
/// (embedded interpreters), or — for a process already gone — its program is a Python script.
pub fn is_python(proc_root: &Path, pid: u32, filename: &str) -> bool {
    let dir = proc_root.join(pid.to_string());
    if let Ok(exe) = std::fs::read_link(dir.join("exe")) {
        let name = exe.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if is_python_name(name) {
            return true;
        }
        if let Ok(maps) = std::fs::read_to_string(dir.join("maps"))
            && maps.contains("/libpython")
        {
            return true;
        }
        return false;
    }
    if is_python_name(basename(filename)) {
        return true;
    }
    script_interpreter(Path::new(filename)).is_some_and(|i| is_python_name(basename(&i)))
}

/// The interpreter named by a script's `#!` line (`#!/usr/bin/env python3` gives `python3`).
pub fn script_interpreter(path: &Path) -> Option<String> {
    use std::io::Read as _;
    let mut head = [0u8; 256];
    let n = std::fs::File::open(path).ok()?.read(&mut head).ok()?;
    let line = head[..n].split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.strip_prefix("#!")?;
    let mut parts = line.split_whitespace();
    let interpreter = parts.next()?;
    if basename(interpreter) == "env" {
        return parts.find(|p| !p.starts_with('-')).map(str::to_owned);
    }
    Some(interpreter.to_owned())
}

/// Reads a live process's identity from `/proc`.
pub fn read_proc(proc_root: &Path, pid: u32) -> Option<ProcessInfo> {
    let dir = proc_root.join(pid.to_string());
    let cmdline = std::fs::read(dir.join("cmdline")).ok()?;
    let argv: Vec<String> = cmdline
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let exe = std::fs::read_link(dir.join("exe"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| argv.first().cloned().unwrap_or_default());
    let env = std::fs::read(dir.join("environ"))
        .map(|raw| {
            telemetry_env(
                raw.split(|&b| b == 0)
                    .map(|e| String::from_utf8_lossy(e).into_owned()),
            )
        })
        .unwrap_or_default();
    let mut info = ProcessInfo::started_in(pid, exe, argv, env, || {
        std::fs::read_link(dir.join("cwd")).ok()
    });
    if let Some(file) = AgentFile::of_process(proc_root, pid, &info.env) {
        info.adopt_agent_file(file);
    }
    info.container_id = super::container::container_id(proc_root, pid);
    Some(info)
}

/// The parent of a live process, from `/proc/PID/stat`.
pub fn parent_pid(proc_root: &Path, pid: u32) -> Option<u32> {
    stat_field(proc_root, pid, 1)?.parse().ok()
}

/// Whether process `pid` exists and has not exited (a zombie waiting for its parent has).
pub fn is_running(proc_root: &Path, pid: u32) -> bool {
    !matches!(
        stat_field(proc_root, pid, 0).as_deref(),
        None | Some("Z" | "X" | "x")
    )
}

/// Field `index` of `/proc/PID/stat` counted after the command name (0 is the state, 1 the
/// parent), which may itself hold spaces and parentheses.
fn stat_field(proc_root: &Path, pid: u32, index: usize) -> Option<String> {
    let stat = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
    let after_comm = stat.rsplit_once(')')?.1;
    after_comm.split_whitespace().nth(index).map(str::to_owned)
}

/// Whether the command line is a worker Python's `multiprocessing` started with the `spawn` or
/// `forkserver` method (`python -c "from multiprocessing.spawn import spawn_main; …"
/// --multiprocessing-fork`), as `uvicorn --workers N` starts its workers: such a process runs
/// its parent's application, so it takes its parent's service name.
pub fn is_multiprocessing_child(argv: &[String]) -> bool {
    argv.iter().any(|a| a == "--multiprocessing-fork")
        || argv
            .windows(2)
            .any(|w| w[0] == "-c" && w[1].trim_start().starts_with("from multiprocessing."))
}

/// Keeps the `HT_*` and `OTEL_*` entries of an environment.
pub fn telemetry_env(entries: impl IntoIterator<Item = String>) -> BTreeMap<String, String> {
    entries
        .into_iter()
        .filter_map(|entry| {
            let (k, v) = entry.split_once('=')?;
            (k.starts_with("HT_") || k.starts_with("OTEL_")).then(|| (k.to_owned(), v.to_owned()))
        })
        .collect()
}

#[derive(Default)]
struct PendingExec {
    argv: BTreeMap<u32, String>,
    env: Vec<String>,
}

/// Identities of the processes the sensor has seen.
pub struct ProcessTable {
    proc_root: PathBuf,
    procs: HashMap<u32, Arc<ProcessInfo>>,
    pending: HashMap<u32, PendingExec>,
}

impl ProcessTable {
    /// An empty table reading `/proc` under `proc_root`.
    pub fn new(proc_root: impl Into<PathBuf>) -> Self {
        ProcessTable {
            proc_root: proc_root.into(),
            procs: HashMap::new(),
            pending: HashMap::new(),
        }
    }

    /// Where `/proc` is.
    pub fn proc_root(&self) -> &Path {
        &self.proc_root
    }

    /// One argument record of an `execve` in progress.
    pub fn exec_arg(&mut self, arg: ExecArg) {
        let pending = self.pending.entry(arg.tid).or_default();
        if arg.env {
            pending.env.push(arg.value);
        } else {
            if arg.index == 0 {
                // A new execve attempt by the same thread (e.g. PATH search) starts over.
                *pending = PendingExec::default();
            }
            pending.argv.insert(arg.index, arg.value);
        }
        if self.pending.len() > 4096 {
            self.pending.clear();
        }
    }

    /// A successful `execve`: the identity from its argument records (or `/proc`).
    pub fn exec(&mut self, exec: &ExecInfo) -> Arc<ProcessInfo> {
        let pending = self
            .pending
            .remove(&exec.old_tid)
            .or_else(|| self.pending.remove(&exec.pid));
        let info = match pending {
            Some(pending) if !pending.argv.is_empty() => {
                let dir = self.proc_root.join(exec.pid.to_string());
                let exe = std::fs::read_link(dir.join("exe"))
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_else(|_| exec.filename.clone());
                let mut info = ProcessInfo::started_in(
                    exec.pid,
                    exe,
                    pending.argv.into_values().collect(),
                    telemetry_env(pending.env),
                    || std::fs::read_link(dir.join("cwd")).ok(),
                );
                if let Some(file) = AgentFile::of_process(&self.proc_root, exec.pid, &info.env) {
                    info.adopt_agent_file(file);
                }
                info
            }
            _ => read_proc(&self.proc_root, exec.pid).unwrap_or_else(|| {
                ProcessInfo::new(
                    exec.pid,
                    exec.filename.clone(),
                    vec![exec.filename.clone()],
                    BTreeMap::new(),
                )
            }),
        };
        let mut info = info;
        if info.container_id.is_none() {
            info.container_id = super::container::container_id(&self.proc_root, exec.pid);
        }
        // Before the exec the pid had the identity its parent gave it at fork, if seen.
        let before = self.procs.get(&exec.pid).cloned();
        self.inherit_service_name(&mut info, before);
        let info = Arc::new(info);
        self.procs.insert(exec.pid, info.clone());
        info
    }

    /// A `multiprocessing` worker named only by its command line takes the service name of
    /// its parent (`parent`, else the pid's parent now).
    fn inherit_service_name(&mut self, info: &mut ProcessInfo, parent: Option<Arc<ProcessInfo>>) {
        if info.name_source != NameSource::CommandLine || !is_multiprocessing_child(&info.argv) {
            return;
        }
        let parent = parent.or_else(|| {
            let ppid = parent_pid(&self.proc_root, info.pid)?;
            (ppid != info.pid && ppid > 1)
                .then(|| self.get(ppid))
                .flatten()
        });
        if let Some(parent) = parent {
            info.service_name = parent.service_name.clone();
            info.name_source = parent.name_source;
        }
    }

    /// A forked child has its parent's identity (until it execs).
    pub fn fork(&mut self, parent: u32, child: u32) {
        let info = self.get(parent).map(|p| {
            let mut info = (*p).clone();
            info.pid = child;
            Arc::new(info)
        });
        if let Some(info) = info {
            self.procs.insert(child, info);
        }
    }

    /// The identity of `pid`, read from `/proc` the first time.
    pub fn get(&mut self, pid: u32) -> Option<Arc<ProcessInfo>> {
        if let Some(info) = self.procs.get(&pid) {
            return Some(info.clone());
        }
        let mut info = read_proc(&self.proc_root, pid)?;
        self.inherit_service_name(&mut info, None);
        let info = Arc::new(info);
        self.procs.insert(pid, info.clone());
        Some(info)
    }

    /// Forgets a process.
    pub fn remove(&mut self, pid: u32) {
        self.procs.remove(&pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn service_names_from_command_lines() {
        let cases: &[(&[&str], &str)] = &[
            (
                &[
                    "/venv/bin/python3",
                    "/venv/bin/gunicorn",
                    "-w",
                    "2",
                    "app:app",
                ],
                "app",
            ),
            (
                &[
                    "/venv/bin/python3",
                    "/venv/bin/uvicorn",
                    "main:app",
                    "--port",
                    "8000",
                ],
                "main",
            ),
            (
                &[
                    "/venv/bin/gunicorn",
                    "--bind=0.0.0.0:8080",
                    "mysite.wsgi:application",
                ],
                "mysite.wsgi",
            ),
            (&["python3", "server.py"], "server"),
            (
                &["python3", "-u", "/srv/api/server.py", "--port", "1"],
                "server",
            ),
            (&["python3", "-m", "http.server", "8000"], "http.server"),
            (
                &["python3", "-m", "gunicorn", "orders:create_app()"],
                "orders",
            ),
            (
                &["/venv/bin/python3", "/venv/bin/gunicorn", "mysite.wsgi"],
                "mysite.wsgi",
            ),
            (
                &[
                    "/venv/bin/python3",
                    "/venv/bin/gunicorn",
                    "-w",
                    "4",
                    "-k",
                    "uvicorn.workers.UvicornWorker",
                    "--preload",
                    "api.main",
                ],
                "api.main",
            ),
            (
                &[
                    "gunicorn",
                    "--bind",
                    "0.0.0.0:80",
                    "--reload",
                    "orders.wsgi",
                ],
                "orders.wsgi",
            ),
            (
                &["python3", "-m", "gunicorn", "-D", "shop.wsgi"],
                "shop.wsgi",
            ),
            (&["gunicorn", "-c", "gunicorn.conf.py"], "gunicorn"),
            (
                &["/venv/bin/python3", "/venv/bin/uvicorn", "main"],
                "uvicorn",
            ),
            (&["python3"], "python"),
            (&["/usr/bin/python3.11", "-c", "print(1)"], "python-command"),
            (&["python3", "-W", "ignore", "client.py"], "client"),
            (&["python3", "-uW", "ignore", "client.py"], "client"),
            (
                &["python3", "-Wignore", "-X", "importtime", "api.py"],
                "api",
            ),
            (&["python3", "-X", "dev", "-m", "uvicorn", "svc:app"], "svc"),
            (&["python3", "-mhttp.server", "8000"], "http.server"),
            (&["python3", "-Bm", "orders"], "orders"),
            (&["python3", "-uc", "import x"], "python-command"),
            (
                &["python3", "--check-hash-based-pycs", "never", "worker.py"],
                "worker",
            ),
            (&["python3", "-u", "--", "-odd.py"], "-odd"),
            (&["python3", "-"], "python"),
            (&["python3", "-W"], "python"),
            (&["python3", "-m"], "python"),
            (
                &[
                    "/venv/bin/python",
                    "/venv/bin/celery",
                    "-A",
                    "proj",
                    "worker",
                ],
                "proj",
            ),
            (
                &["celery", "--app=shop.tasks", "worker", "-l", "info"],
                "shop.tasks",
            ),
            (
                &["python3", "-m", "celery", "-Aproj.celery:app", "beat"],
                "proj.celery",
            ),
            (&["celery", "worker"], "celery"),
            (
                &["uwsgi", "--http", ":8000", "--module", "mysite.wsgi"],
                "mysite.wsgi",
            ),
            (&["uwsgi_python3", "-w", "api"], "api"),
            (
                &["/usr/bin/gunicorn3", "-w", "2", "mysite.wsgi"],
                "mysite.wsgi",
            ),
            (&["celery3.11", "-A", "proj", "worker"], "proj"),
            (
                &[
                    "uwsgi",
                    "--http-socket",
                    ":80",
                    "--wsgi-file",
                    "/srv/shop/app.py",
                ],
                "app",
            ),
            (&["uwsgi", "--ini", "uwsgi.ini"], "uwsgi"),
            (
                &[
                    "python3",
                    "manage.py",
                    "runserver",
                    "--settings",
                    "shop.settings.prod",
                ],
                "shop",
            ),
            (&["python3", "/srv/blog/manage.py", "runserver"], "blog"),
            (
                &["django-admin", "runserver", "--settings=blog.settings"],
                "blog",
            ),
            (&["python3", "manage.py", "runserver"], "manage"),
            (
                &[
                    "/venv/bin/python",
                    "/venv/bin/flask",
                    "--app",
                    "hello",
                    "run",
                ],
                "hello",
            ),
            (
                &["python3", "-m", "flask", "--app=src/shop.py", "run"],
                "shop",
            ),
            (&["flask", "-A", "api:create_app()", "run"], "api"),
            (&["flask", "run"], "flask"),
            (
                &["/venv/bin/fastapi", "run", "app/orders.py", "--port", "80"],
                "orders",
            ),
            (&["fastapi", "dev"], "fastapi"),
            (&["python3", "./manage.py", "runserver"], "manage"),
        ];
        for (args, expected) in cases {
            assert_eq!(
                service_name_from_command_line("python3", &argv(args), || None),
                *expected,
                "{args:?}"
            );
        }
    }

    #[test]
    fn a_relative_manage_py_is_named_after_the_directory_it_runs_in() {
        let shop = Some("/srv/shop");
        let name = |args: &[&str], cwd: Option<&str>| {
            service_name_from_command_line("python3", &argv(args), || cwd.map(PathBuf::from))
        };
        assert_eq!(name(&["python3", "manage.py", "runserver"], shop), "shop");
        assert_eq!(name(&["python3", "./manage.py", "runserver"], shop), "shop");
        assert_eq!(name(&["python3", "web/manage.py"], shop), "web");
        assert_eq!(name(&["python3", "/srv/blog/manage.py"], shop), "blog");
        assert_eq!(name(&["python3", "manage.py"], Some("/")), "manage");
        assert_eq!(name(&["python3", "server.py"], shop), "server");
        let not_asked = || -> Option<PathBuf> { panic!("only a relative manage.py needs it") };
        for args in [
            &["python3", "server.py"][..],
            &["python3", "/srv/blog/manage.py"],
        ] {
            service_name_from_command_line("python3", &argv(args), not_asked);
        }
    }

    #[test]
    fn env_names_win_in_order() {
        let mut env = BTreeMap::new();
        env.insert(
            "OTEL_RESOURCE_ATTRIBUTES".into(),
            "team=a,service.name=from%20attrs".into(),
        );
        assert_eq!(service_name_from_env(&env).as_deref(), Some("from attrs"));
        env.insert("OTEL_SERVICE_NAME".into(), "otel".into());
        assert_eq!(service_name_from_env(&env).as_deref(), Some("otel"));
        env.insert("HT_SERVICE_NAME".into(), "ht".into());
        assert_eq!(service_name_from_env(&env).as_deref(), Some("ht"));
        env.insert("HT_SERVICE_NAME".into(), "  ".into());
        assert_eq!(service_name_from_env(&env).as_deref(), Some("otel"));
    }

    /// Environment > pod annotation > app.kubernetes.io/name > workload > command line >
    /// configured name: each level is knocked out in turn, the next one must win.
    #[test]
    fn service_name_precedence() {
        use super::super::kubernetes::{
            APP_NAME_LABEL, OTEL_SERVICE_NAME_ANNOTATION, PodContainer, PodMeta,
            SERVICE_NAME_ANNOTATION, Workload,
        };
        let mut env = BTreeMap::new();
        env.insert("OTEL_SERVICE_NAME".to_owned(), "from-env".to_owned());
        let with_env = ProcessInfo::new(
            1,
            "/usr/bin/python3".into(),
            argv(&["python3", "-m", "gunicorn", "orders:app"]),
            env,
        );
        let plain = ProcessInfo::new(
            1,
            "/usr/bin/python3".into(),
            argv(&["python3", "-m", "gunicorn", "orders:app"]),
            BTreeMap::new(),
        );
        let mut with_agent_file = plain.clone();
        with_agent_file.adopt_agent_file(AgentFile {
            service_name: Some("from-agent-file".into()),
            ..AgentFile::default()
        });
        let mut with_env_and_agent_file = with_env.clone();
        with_env_and_agent_file.adopt_agent_file(AgentFile {
            service_name: Some("from-agent-file".into()),
            ..AgentFile::default()
        });
        let unknown = ProcessInfo::new(1, String::new(), Vec::new(), BTreeMap::new());
        let mut pod = PodMeta {
            uid: "u".into(),
            name: "orders-api-7d9f8b6c5d-x2x4q".into(),
            workload: Workload::from_owner(
                "ReplicaSet",
                "orders-api-7d9f8b6c5d",
                Some("7d9f8b6c5d"),
            ),
            ..PodMeta::default()
        };
        pod.annotations
            .insert(SERVICE_NAME_ANNOTATION.into(), "from-annotation".into());
        pod.annotations.insert(
            OTEL_SERVICE_NAME_ANNOTATION.into(),
            "from-otel-annotation".into(),
        );
        pod.labels
            .insert(APP_NAME_LABEL.into(), "from-label".into());
        let container = |pod: &PodMeta| PodContainer {
            pod: Arc::new(pod.clone()),
            container_name: "api".into(),
        };
        let name = |process: &ProcessInfo, pod: Option<&PodMeta>, configured: Option<&str>| {
            resolve_service_name(process, pod.map(container).as_ref(), configured)
        };
        let configured = Some("configured");
        assert_eq!(name(&with_env, Some(&pod), configured), "from-env");
        assert_eq!(
            name(&with_env_and_agent_file, Some(&pod), configured),
            "from-env"
        );
        assert_eq!(
            name(&with_agent_file, Some(&pod), configured),
            "from-annotation",
            "a pod names its service over an agent file many pods may share"
        );
        assert_eq!(name(&plain, Some(&pod), configured), "from-annotation");
        pod.annotations.remove(SERVICE_NAME_ANNOTATION);
        assert_eq!(name(&plain, Some(&pod), configured), "from-otel-annotation");
        pod.annotations.remove(OTEL_SERVICE_NAME_ANNOTATION);
        assert_eq!(name(&plain, Some(&pod), configured), "from-label");
        pod.labels.remove(APP_NAME_LABEL);
        assert_eq!(name(&plain, Some(&pod), configured), "orders-api");
        pod.workload = Workload::default();
        assert_eq!(name(&plain, Some(&pod), configured), "orders");
        assert_eq!(
            name(&with_agent_file, Some(&pod), configured),
            "from-agent-file"
        );
        assert_eq!(name(&plain, None, configured), "orders");
        assert_eq!(
            name(&with_agent_file, None, configured),
            "from-agent-file",
            "outside a pod the agent file names the service over the command line"
        );
        assert_eq!(name(&unknown, None, configured), "configured");
        assert_eq!(name(&unknown, None, None), "unknown_service");
    }

    #[test]
    fn python_names() {
        for yes in ["python", "python3", "python3.11", "python3.12-dbg"] {
            assert!(is_python_name(yes), "{yes}");
        }
        for no in ["pythonista", "gunicorn", "py", "python3x"] {
            assert!(!is_python_name(no), "{no}");
        }
    }

    #[test]
    fn opt_out_and_resource_attributes() {
        let mut env = BTreeMap::new();
        env.insert("HT_ENABLED".into(), "False".into());
        env.insert(
            "OTEL_RESOURCE_ATTRIBUTES".into(),
            "team = payments,deployment.environment=prod,region=eu%2Dwest".into(),
        );
        env.insert(
            "HT_RESOURCE_ATTRIBUTES".into(),
            "team=checkout,service.version=1.4".into(),
        );
        let info = ProcessInfo::new(
            1,
            "/usr/bin/python3".into(),
            argv(&["python3", "a.py"]),
            env,
        );
        assert!(info.opted_out());
        assert_eq!(
            info.resource_attributes(),
            [
                ("deployment.environment".to_owned(), "prod".to_owned()),
                ("region".to_owned(), "eu-west".to_owned()),
                ("service.version".to_owned(), "1.4".to_owned()),
                ("team".to_owned(), "checkout".to_owned()),
            ]
        );
        assert_eq!(info.executable_name, "python3");
        assert_eq!(info.command_line(), "python3 a.py");
    }

    #[test]
    fn agent_files_in_either_key_style() {
        let camel = "serviceName: orders\nenabled: false\nresourceAttributes:\n  team: payments\nreporting:\n  endpoint: http://collector:4317\n  opa: {enabled: true}\n";
        assert_eq!(
            AgentFile::parse(camel, "camel.yaml"),
            Ok(AgentFile {
                service_name: Some("orders".into()),
                enabled: Some(false),
                resource_attributes: vec![("team".into(), "payments".into())],
            })
        );
        let snake = "service_name: ' billing '\nno_such_key: 1\ndata_capture:\n  body_max_size_bytes: lots\n";
        assert_eq!(
            AgentFile::parse(snake, "snake.yaml"),
            Ok(AgentFile {
                service_name: Some("billing".into()),
                ..AgentFile::default()
            }),
            "unknown keys and invalid values elsewhere leave the name"
        );
        assert_eq!(
            AgentFile::parse("service_name: '  '\nenabled: true\n", "blank.yaml"),
            Ok(AgentFile {
                enabled: Some(true),
                ..AgentFile::default()
            })
        );
        assert!(AgentFile::parse("- a\n- b\n", "list.yaml").is_err());
        assert!(AgentFile::parse("service_name: [unclosed\n", "broken.yaml").is_err());
    }

    /// A fake `/proc/PID` whose environment names an agent file, with `root/` and `cwd/`
    /// directories standing for the process's root and working directory.
    fn process_with_agent_file(root: &Path, pid: u32, config_file: &str, env: &[&str]) {
        fake_process(root, pid, 1, &["/venv/bin/gunicorn", "app:app"]);
        let dir = root.join(pid.to_string());
        let environ: Vec<String> = env
            .iter()
            .map(|e| e.to_string())
            .chain([format!("HT_CONFIG_FILE={config_file}"), "PATH=/bin".into()])
            .collect();
        std::fs::write(dir.join("environ"), environ.join("\0") + "\0").unwrap();
        std::fs::create_dir_all(dir.join("root/etc/agent")).unwrap();
        std::fs::create_dir_all(dir.join("cwd/conf")).unwrap();
        std::fs::write(
            dir.join("root/etc/agent/config.yaml"),
            "service_name: orders\nenabled: false\nresource_attributes: {team: payments, tier: gold}\n",
        )
        .unwrap();
        std::fs::write(dir.join("cwd/conf/agent.yaml"), "serviceName: billing\n").unwrap();
    }

    #[test]
    fn a_process_agent_file_is_read_in_its_own_root_and_working_directory() {
        let root = std::env::temp_dir().join(format!("sensor-agent-file-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        process_with_agent_file(&root, 10, "/etc/agent/config.yaml", &[]);
        let info = read_proc(&root, 10).unwrap();
        assert_eq!(
            (info.service_name.as_str(), info.name_source),
            ("orders", NameSource::AgentFile)
        );
        assert!(info.opted_out(), "enabled: false in the file opts out");
        assert_eq!(
            info.resource_attributes(),
            [
                ("team".to_owned(), "payments".to_owned()),
                ("tier".to_owned(), "gold".to_owned()),
            ]
        );

        process_with_agent_file(&root, 11, "conf/agent.yaml", &[]);
        let info = read_proc(&root, 11).unwrap();
        assert_eq!(
            (info.service_name.as_str(), info.name_source),
            ("billing", NameSource::AgentFile),
            "a relative path is read from the working directory"
        );
        assert!(!info.opted_out());

        process_with_agent_file(
            &root,
            12,
            "/etc/agent/config.yaml",
            &[
                "HT_SERVICE_NAME=checkout",
                "HT_ENABLED=true",
                "OTEL_RESOURCE_ATTRIBUTES=team=ops,zone=a",
                "HT_RESOURCE_ATTRIBUTES=tier=silver",
            ],
        );
        let info = read_proc(&root, 12).unwrap();
        assert_eq!(
            (info.service_name.as_str(), info.name_source),
            ("checkout", NameSource::Environment),
            "the environment names the service over the file"
        );
        assert!(!info.opted_out(), "HT_ENABLED=true wins over the file");
        assert_eq!(
            info.resource_attributes(),
            [
                ("team".to_owned(), "payments".to_owned()),
                ("tier".to_owned(), "silver".to_owned()),
                ("zone".to_owned(), "a".to_owned()),
            ],
            "OTEL_RESOURCE_ATTRIBUTES, then the file, then HT_RESOURCE_ATTRIBUTES"
        );

        process_with_agent_file(&root, 13, "/etc/agent/missing.yaml", &[]);
        let info = read_proc(&root, 13).unwrap();
        assert_eq!(
            (info.service_name.as_str(), info.name_source),
            ("app", NameSource::CommandLine),
            "a missing file leaves the command line's name"
        );
        assert!(!info.opted_out());

        let mut table = ProcessTable::new(&root);
        for (index, arg) in ["/venv/bin/gunicorn", "app:app"].iter().enumerate() {
            table.exec_arg(ExecArg {
                tid: 11,
                index: index as u32,
                env: false,
                value: arg.to_string(),
            });
        }
        table.exec_arg(ExecArg {
            tid: 11,
            index: 0,
            env: true,
            value: "HT_CONFIG_FILE=conf/agent.yaml".into(),
        });
        let info = table.exec(&ExecInfo {
            pid: 11,
            old_tid: 11,
            time_ns: 0,
            filename: "/venv/bin/gunicorn".into(),
            watch_state: 0,
        });
        assert_eq!(
            (info.service_name.as_str(), info.name_source),
            ("billing", NameSource::AgentFile),
            "an exec's own environment names the file"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn shebang_interpreters() {
        let dir = std::env::temp_dir().join(format!("sensor-shebang-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let direct = dir.join("direct");
        std::fs::write(&direct, "#!/opt/venv/bin/python3.11\nimport x\n").unwrap();
        let via_env = dir.join("via_env");
        std::fs::write(&via_env, "#!/usr/bin/env -S python3 -u\n").unwrap();
        assert_eq!(
            script_interpreter(&direct).as_deref(),
            Some("/opt/venv/bin/python3.11")
        );
        assert_eq!(script_interpreter(&via_env).as_deref(), Some("python3"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A fake `/proc` entry: command line, parent, empty environment.
    fn fake_process(root: &Path, pid: u32, ppid: u32, argv: &[&str]) {
        let dir = root.join(pid.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cmdline"), argv.join("\0") + "\0").unwrap();
        std::fs::write(
            dir.join("stat"),
            format!("{pid} (python3) S {ppid} {pid} {pid} 0 -1"),
        )
        .unwrap();
        std::fs::write(dir.join("environ"), "").unwrap();
    }

    #[test]
    fn running_means_present_and_not_a_zombie() {
        let root = std::env::temp_dir().join(format!("sensor-running-{}", std::process::id()));
        fake_process(&root, 10, 1, &["python3", "app.py"]);
        fake_process(&root, 11, 1, &["python3", "done.py"]);
        std::fs::write(root.join("11/stat"), "11 (a) b) Z 1 11 11 0 -1").unwrap();
        assert!(is_running(&root, 10));
        assert!(!is_running(&root, 11), "a zombie has exited");
        assert!(!is_running(&root, 12), "no such process");
        std::fs::remove_dir_all(&root).unwrap();
    }

    const SPAWNED: &[&str] = &[
        "/venv/bin/python",
        "-B",
        "-c",
        "from multiprocessing.spawn import spawn_main; spawn_main(tracker_fd=7, pipe_handle=9)",
        "--multiprocessing-fork",
    ];

    #[test]
    fn multiprocessing_children_are_recognised() {
        assert!(is_multiprocessing_child(&argv(SPAWNED)));
        assert!(is_multiprocessing_child(&argv(&[
            "python3",
            "-c",
            "from multiprocessing.forkserver import main; main(5, 6, ['__main__'])",
        ])));
        assert!(!is_multiprocessing_child(&argv(&[
            "python3",
            "-c",
            "print('from multiprocessing.spawn')",
        ])));
        assert!(!is_multiprocessing_child(&argv(&["python3", "app.py"])));
    }

    /// `uvicorn --workers 2 app:app` spawns its workers as `python -c "from multiprocessing…"`:
    /// they are named after the uvicorn parent, whether first seen in `/proc` (running before
    /// the sensor) or at their exec after a fork the sensor saw. Other `-c` commands are not.
    #[test]
    fn multiprocessing_workers_take_their_parents_service_name() {
        let root = std::env::temp_dir().join(format!("sensor-mp-{}", std::process::id()));
        let uvicorn = [
            "/venv/bin/python",
            "/venv/bin/uvicorn",
            "--workers",
            "2",
            "shop:app",
        ];
        fake_process(&root, 100, 1, &uvicorn);
        fake_process(&root, 101, 100, SPAWNED);
        fake_process(&root, 103, 100, &["/venv/bin/python", "-c", "import x"]);
        let mut table = ProcessTable::new(&root);
        let running = table.get(101).unwrap();
        assert_eq!(running.service_name, "shop");
        assert_eq!(running.name_source, NameSource::CommandLine);
        assert_eq!(
            running.argv,
            argv(SPAWNED),
            "the command line stays the worker's own"
        );
        assert_eq!(table.get(103).unwrap().service_name, "python-command");

        table.fork(100, 102);
        for (index, value) in SPAWNED.iter().enumerate() {
            table.exec_arg(ExecArg {
                tid: 102,
                env: false,
                index: index as u32,
                value: (*value).to_owned(),
            });
        }
        let exec = ExecInfo {
            pid: 102,
            old_tid: 102,
            time_ns: 0,
            filename: "/venv/bin/python".into(),
            watch_state: 0,
        };
        let spawned = table.exec(&exec);
        assert_eq!(spawned.service_name, "shop");
        assert_eq!(spawned.pid, 102);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
