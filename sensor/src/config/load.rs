//! Reading the sources and merging them: flags > `HT_*` > `OTEL_*` > file > defaults.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::anyhow;
use serde_yaml::Value;

use super::keys::{self, KEYS, KeyDoc, Raw};
use super::{Config, MetricReporterType, OutputKind};

/// Settings given on the command line; they override every other source.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    /// `--config`: the configuration file (else `HT_CONFIG_FILE`).
    pub config_file: Option<PathBuf>,
    /// `--output`: the local output.
    pub output: Option<OutputKind>,
    /// `--metrics-addr`: where Prometheus metrics are served.
    pub metrics_addr: Option<SocketAddr>,
}

impl From<&crate::cli::RunArgs> for Overrides {
    fn from(args: &crate::cli::RunArgs) -> Self {
        Overrides {
            config_file: args.config.clone(),
            output: args.output.map(OutputKind::from),
            metrics_addr: args.metrics_addr,
        }
    }
}

/// Where a key's final value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The configuration file ([`Loaded::config_file`]).
    File,
    /// This environment variable (`HT_*` or `OTEL_*`).
    Env(&'static str),
    /// This command-line flag.
    Flag(&'static str),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File => f.write_str("config file"),
            Source::Env(var) => write!(f, "${var}"),
            Source::Flag(flag) => f.write_str(flag),
        }
    }
}

/// The result of [`load`]: the merged configuration and what was noticed on the way.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    /// The merged configuration.
    pub config: Config,
    /// Problems that did not stop loading (unknown keys, contradictory settings); each one
    /// was also logged with `tracing::warn!`.
    pub warnings: Vec<String>,
    /// For each key (as in [`KEYS`]) set by some source, the source of its final value; keys
    /// absent here have their defaults.
    pub sources: BTreeMap<&'static str, Source>,
    /// The configuration file that was read, if any.
    pub config_file: Option<PathBuf>,
}

/// Merges flags, the environment (read through `env`), the file and the defaults.
///
/// The file is `overrides.config_file`, else `HT_CONFIG_FILE`; a file that cannot be read or
/// parsed, and any invalid value, is an error naming its key path and source. Environment
/// variables set to the empty string count as unset.
pub fn load(overrides: &Overrides, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Loaded> {
    let env = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    let mut loader = Loader::default();

    let config_file = overrides
        .config_file
        .clone()
        .or_else(|| env("HT_CONFIG_FILE").map(PathBuf::from));
    if let Some(path) = &config_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow!("cannot read config file {}: {e}", path.display()))?;
        loader.file(&text, &path.display().to_string())?;
    }
    loader.otel(&env)?;
    loader.ht(&env)?;
    loader.flags(overrides);
    loader.check();

    Ok(Loaded {
        config: loader.config,
        warnings: loader.warnings,
        sources: loader.sources,
        config_file,
    })
}

/// [`load`] with the process environment; also warns about unknown `HT_*` variables.
pub fn load_from_process_env(overrides: &Overrides) -> anyhow::Result<Loaded> {
    let env = |name: &str| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned());
    let mut loaded = load(overrides, &env)?;
    let names: Vec<String> = std::env::vars_os()
        .map(|(k, _)| k.to_string_lossy().into_owned())
        .collect();
    for warning in unknown_env_vars(names.iter().map(String::as_str)) {
        tracing::warn!("{warning}");
        loaded.warnings.push(warning);
    }
    Ok(loaded)
}

/// Parses one file's text over the defaults (no environment, no flags).
pub(super) fn from_yaml_str(text: &str) -> anyhow::Result<Loaded> {
    file_only(Loader::default(), text, "<text>")
}

/// Parses the Hypertrace agent configuration file a watched process names in its own
/// `HT_CONFIG_FILE` (`name` for messages), as the sensor's own file is parsed but leniently:
/// nothing is logged, and an invalid value is a warning that leaves its key out. Its `sources`
/// say which keys the file set.
pub fn process_file(text: &str, name: &str) -> anyhow::Result<Loaded> {
    let loader = Loader {
        process_file: true,
        ..Loader::default()
    };
    file_only(loader, text, name)
}

/// `text` (file `name`) read by `loader` over the defaults, then checked.
fn file_only(mut loader: Loader, text: &str, name: &str) -> anyhow::Result<Loaded> {
    loader.file(text, name)?;
    loader.check();
    Ok(Loaded {
        config: loader.config,
        warnings: loader.warnings,
        sources: loader.sources,
        config_file: None,
    })
}

/// agent-config keys (and everything under them) that the sensor accepts but does not use.
const UNUSED_AGENT_KEYS: &[&str] = &[
    "reporting.opa",
    "reporting.metric_endpoint",
    "reporting.enable_grpc_loadbalancing",
    "data_capture.rpc_metadata",
    "data_capture.rpc_body",
    "javaagent",
    "goagent",
    "telemetry",
];

/// `HT_*` variables of the Hypertrace agents (prefixes) that the sensor does not use.
const UNUSED_AGENT_VARS: &[&str] = &[
    "HT_CONFIG_FILE",
    "HT_LOG_LEVEL",
    "HT_ENABLE_CONSOLE_SPAN_EXPORTER",
    "HT_TRACES_EXPORTER",
    "HT_REPORTING_OPA_",
    "HT_REPORTING_METRIC_ENDPOINT",
    "HT_REPORTING_ENABLE_GRPC_LOADBALANCING",
    "HT_DATA_CAPTURE_RPC_",
    "HT_JAVAAGENT_",
    "HT_GOAGENT_",
    "HT_TELEMETRY_",
];

/// Warnings for `HT_*` variable names that neither the sensor nor the agents know.
pub(super) fn unknown_env_vars<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    names
        .into_iter()
        .filter(|name| name.starts_with("HT_"))
        .filter(|name| !KEYS.iter().any(|doc| doc.env == *name))
        .filter(|name| !UNUSED_AGENT_VARS.iter().any(|p| name.starts_with(p)))
        .map(|name| format!("unknown environment variable {name} ignored"))
        .collect()
}

/// Converts a key to snake_case: `bodyMaxSizeBytes` → `body_max_size_bytes`,
/// `HTTPHeaders` → `http_headers`, `cert-file` → `cert_file`.
pub(super) fn normalise_key(key: &str) -> String {
    let chars: Vec<char> = key.trim().chars().collect();
    let mut out = String::with_capacity(key.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if c == '-' {
            out.push('_');
        } else if c.is_uppercase() {
            let prev = i.checked_sub(1).map(|j| chars[j]);
            let next = chars.get(i + 1);
            let boundary = match prev {
                Some(p) if p.is_lowercase() || p.is_ascii_digit() => true,
                Some(p) if p.is_uppercase() => next.is_some_and(|n| n.is_lowercase()),
                _ => false,
            };
            if boundary && !out.ends_with('_') {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// One value found in the file.
struct FileValue<'a> {
    value: &'a Value,
    written: String,
}

/// The merge in progress.
#[derive(Default)]
struct Loader {
    config: Config,
    warnings: Vec<String>,
    sources: BTreeMap<&'static str, Source>,
    /// Reading a watched process's own agent file ([`process_file`]): nothing is logged and an
    /// invalid value is a warning that skips its key, not an error.
    process_file: bool,
}

impl Loader {
    /// Records a warning, logging it unless reading a process's file.
    fn warn(&mut self, message: String) {
        if !self.process_file {
            tracing::warn!("{message}");
        }
        self.warnings.push(message);
    }

    /// Applies one value to `doc`'s key; errors name the key path and the source.
    fn set(
        &mut self,
        doc: &'static KeyDoc,
        raw: Raw<'_>,
        source: Source,
        origin: &str,
    ) -> anyhow::Result<()> {
        doc.apply(raw, &mut self.config)
            .map_err(|reason| anyhow!("{}: {reason} ({origin})", doc.key))?;
        if !matches!(raw, Raw::Yaml(Value::Null)) {
            self.sources.insert(doc.key, source);
        }
        Ok(())
    }

    /// Applies text from environment variable `var` to `key`.
    fn set_env(&mut self, key: &str, var: &'static str, text: &str) -> anyhow::Result<()> {
        let doc = keys::find(key).ok_or_else(|| anyhow!("internal: no key {key}"))?;
        self.set(
            doc,
            Raw::Text(text),
            Source::Env(var),
            &format!("from {var}"),
        )
    }

    /// The file layer.
    fn file(&mut self, text: &str, name: &str) -> anyhow::Result<()> {
        let root: Value = serde_yaml::from_str(text)
            .map_err(|e| anyhow!("config file {name} is not valid YAML: {e}"))?;
        let mapping = match &root {
            Value::Null => return Ok(()),
            Value::Mapping(m) => m,
            other => {
                return Err(anyhow!(
                    "config file {name}: expected a mapping of keys at the top level, got {}",
                    keys::describe_yaml(other)
                ));
            }
        };
        let mut found: BTreeMap<usize, FileValue<'_>> = BTreeMap::new();
        self.walk(mapping, "", "", name, &mut found)?;
        let origin = format!("in config file {name}");
        for (index, item) in found {
            let origin = if item.written == KEYS[index].key {
                origin.clone()
            } else {
                format!("{origin}, written {}", item.written)
            };
            let applied = self.set(&KEYS[index], Raw::Yaml(item.value), Source::File, &origin);
            match applied {
                Err(e) if self.process_file => self.warn(e.to_string()),
                applied => applied?,
            }
        }
        Ok(())
    }

    /// Collects the schema keys of one file mapping, warning about unknown keys.
    fn walk<'a>(
        &mut self,
        mapping: &'a serde_yaml::Mapping,
        prefix: &str,
        written_prefix: &str,
        name: &str,
        found: &mut BTreeMap<usize, FileValue<'a>>,
    ) -> anyhow::Result<()> {
        for (k, value) in mapping {
            let join = |p: &str, k: &str| {
                if p.is_empty() {
                    k.to_string()
                } else {
                    format!("{p}.{k}")
                }
            };
            let Some(key) = k.as_str() else {
                let shown = keys::describe_yaml(k);
                let at = if written_prefix.is_empty() {
                    "the top level"
                } else {
                    written_prefix
                };
                self.warn(format!(
                    "key {shown} at {at} of config file {name} is not a string; ignored"
                ));
                continue;
            };
            let path = join(prefix, &normalise_key(key));
            let written = join(written_prefix, key);
            if let Some(index) = KEYS.iter().position(|doc| doc.key == path) {
                let previous = found.insert(
                    index,
                    FileValue {
                        value,
                        written: written.clone(),
                    },
                );
                if let Some(previous) = previous {
                    self.warn(format!(
                            "{path} is given twice in config file {name} (as {} and {written}); the later one is used",
                            previous.written
                        ),
                    );
                }
            } else if KEYS
                .iter()
                .any(|doc| doc.key.starts_with(&format!("{path}.")) && !doc.is_map())
            {
                match value {
                    Value::Null => {}
                    Value::Mapping(inner) => self.walk(inner, &path, &written, name, found)?,
                    other => {
                        return Err(anyhow!(
                            "{path}: expected a mapping, got {} (in config file {name})",
                            keys::describe_yaml(other)
                        ));
                    }
                }
            } else if UNUSED_AGENT_KEYS
                .iter()
                .any(|unused| path == *unused || path.starts_with(&format!("{unused}.")))
            {
                if !self.process_file {
                    tracing::info!("config key {written} in {name} has no effect in the sensor");
                }
            } else {
                self.warn(format!(
                    "unknown key {written} in config file {name} ignored"
                ));
            }
        }
        Ok(())
    }

    /// The `OTEL_EXPORTER_OTLP_*` layer (and `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`).
    /// A `_TRACES_` variable replaces its general counterpart.
    fn otel(&mut self, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<()> {
        let pick = |general: &'static str, traces: &'static str| {
            env(traces)
                .map(|v| (traces, v))
                .or_else(|| env(general).map(|v| (general, v)))
        };
        if let Some(v) = env("OTEL_SERVICE_NAME") {
            self.set_env("service_name", "OTEL_SERVICE_NAME", &v)?;
        }
        if let Some(v) = env("OTEL_RESOURCE_ATTRIBUTES") {
            self.set_env("resource_attributes", "OTEL_RESOURCE_ATTRIBUTES", &v)?;
        }
        if let Some(v) = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            self.set_env(
                "reporting.endpoint",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                &v,
            )?;
            self.config.reporting.endpoint_exact = self.config.reporting.endpoint.is_some();
        } else if let Some(v) = env("OTEL_EXPORTER_OTLP_ENDPOINT") {
            self.set_env("reporting.endpoint", "OTEL_EXPORTER_OTLP_ENDPOINT", &v)?;
        }
        if let Some((var, v)) = pick(
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        ) {
            let mode = keys::parse_mode(v.trim())
                .ok()
                .filter(|mode| matches!(mode, keys::Mode::Wire(_)))
                .ok_or_else(|| {
                    anyhow!("reporting.protocol: expected one of grpc, http/protobuf, http/json, got {v:?} (from {var})")
                })?;
            keys::apply_mode(&mut self.config, mode);
            self.sources.insert("reporting.protocol", Source::Env(var));
        }
        if let Some((var, v)) = pick(
            "OTEL_EXPORTER_OTLP_HEADERS",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        ) {
            self.set_env("reporting.headers", var, &v)?;
        }
        if let Some((var, v)) = pick(
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
            "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
        ) {
            self.set_env("reporting.cert_file", var, &v)?;
        }
        if let Some((var, v)) = pick(
            "OTEL_EXPORTER_OTLP_INSECURE",
            "OTEL_EXPORTER_OTLP_TRACES_INSECURE",
        ) {
            let insecure = keys::parse_bool(v.trim()).map_err(|expected| {
                anyhow!("reporting.secure: expected {expected}, got {v:?} (from {var})")
            })?;
            self.config.reporting.secure = !insecure;
            self.sources.insert("reporting.secure", Source::Env(var));
        }
        Ok(())
    }

    /// The `HT_*` layer, in [`KEYS`] order.
    fn ht(&mut self, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<()> {
        for doc in KEYS {
            if let Some(v) = env(doc.env) {
                self.set(
                    doc,
                    Raw::Text(&v),
                    Source::Env(doc.env),
                    &format!("from {}", doc.env),
                )?;
            }
        }
        Ok(())
    }

    /// The command-line layer.
    fn flags(&mut self, overrides: &Overrides) {
        if let Some(output) = overrides.output {
            self.config.sensor.output = output;
            self.sources
                .insert("sensor.output", Source::Flag("--output"));
        }
        if let Some(addr) = overrides.metrics_addr {
            self.config.sensor.metrics_addr = Some(addr);
            self.sources
                .insert("sensor.metrics_addr", Source::Flag("--metrics-addr"));
        }
    }

    /// Warnings about settings that are valid one by one but do not fit together.
    fn check(&mut self) {
        let c = &self.config;
        let mut found = Vec::new();
        let url = c.traces_endpoint();
        let plain_http = url.as_deref().is_some_and(|u| {
            u.get(..7)
                .is_some_and(|s| s.eq_ignore_ascii_case("http://"))
        });
        if c.reporting.secure && plain_http {
            found.push(
                "reporting.secure is true but reporting.endpoint starts with http://; the connection will not use TLS (write https://)"
                    .to_string(),
            );
        }
        if let Some(cert) = &c.reporting.cert_file
            && plain_http
        {
            found.push(format!(
                "reporting.cert_file ({}) is set but the endpoint does not use TLS; the certificate is not used",
                display(cert)
            ));
        }
        match c.reporting.metric_reporter_type {
            MetricReporterType::Otlp | MetricReporterType::Logging => found.push(
                "reporting.metric_reporter_type: the sensor does not push metrics; set sensor.metrics_addr to serve them for Prometheus"
                    .to_string(),
            ),
            MetricReporterType::Prometheus if c.sensor.metrics_addr.is_none() => found.push(
                "reporting.metric_reporter_type is PROMETHEUS but sensor.metrics_addr is not set; no metrics are served"
                    .to_string(),
            ),
            _ => {}
        }
        if c.data_capture.body_max_size_bytes > c.data_capture.body_max_processing_size_bytes {
            found.push(format!(
                "data_capture.body_max_size_bytes ({}) exceeds data_capture.body_max_processing_size_bytes ({}); bodies are cut at the latter",
                c.data_capture.body_max_size_bytes, c.data_capture.body_max_processing_size_bytes
            ));
        }
        for message in found {
            self.warn(message);
        }
    }
}

/// A path for messages.
fn display(path: &Path) -> String {
    path.display().to_string()
}
