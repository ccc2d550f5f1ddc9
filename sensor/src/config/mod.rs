//! The one configuration schema of the sensor.
//!
//! The sensor reads the Hypertrace agent's configuration (the YAML file of
//! [hypertrace/agent-config](https://github.com/hypertrace/agent-config), in its snake_case form
//! or the camelCase form of the integration guides, mixed freely), the agent's `HT_*`
//! environment variables, the standard `OTEL_EXPORTER_OTLP_*` variables and its own keys under
//! `sensor:` in the same file.
//!
//! Precedence, highest first: command-line flags > `HT_*` variables > `OTEL_*` variables > the
//! file (from `--config`, else `HT_CONFIG_FILE`) > defaults. [`KEYS`] lists every key with its
//! default and variables; [`keys_markdown`] renders that list for the README.

mod keys;
mod load;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use keys::{KEYS, KeyDoc, keys_markdown};
pub use load::{Loaded, Overrides, Source, load, load_from_process_env, process_file};

/// The sensor's whole configuration, after every source has been merged.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// When `false` the sensor captures and exports nothing (`HT_ENABLED=false`).
    pub enabled: bool,
    /// Names this sensor instance; used as the service name of captured traffic only when no
    /// better name (from the process itself) is found.
    pub service_name: Option<String>,
    /// Static resource attributes added to everything the sensor exports.
    pub resource_attributes: BTreeMap<String, String>,
    /// Trace-context headers an exchange may join a trace by, in order of preference
    /// (`TRACECONTEXT`, `B3`, as written): see [`Config::propagation`].
    pub propagation_formats: Vec<String>,
    /// Where and how spans are sent.
    pub reporting: Reporting,
    /// What is captured from each HTTP exchange.
    pub data_capture: DataCapture,
    /// The sensor's own settings (the `sensor:` section).
    pub sensor: SensorSettings,
}

/// Where and how spans are sent (the `reporting:` section).
#[derive(Debug, Clone, PartialEq)]
pub struct Reporting {
    /// The collector's address as configured; see [`Config::traces_endpoint`] for the URL used.
    pub endpoint: Option<String>,
    /// `true` when [`Reporting::endpoint`] is a complete traces URL to be used exactly as given
    /// (it came from `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`).
    pub endpoint_exact: bool,
    /// The OTLP wire protocol.
    pub protocol: Protocol,
    /// The agent-config reporter type; decides between OTLP export, local output and nothing.
    pub trace_reporter_type: TraceReporterType,
    /// Connect over TLS when the endpoint has no scheme.
    pub secure: bool,
    /// CA certificate file used to verify the collector's certificate.
    pub cert_file: Option<PathBuf>,
    /// Extra headers sent with every export request (e.g. authentication tokens).
    pub headers: BTreeMap<String, String>,
    /// The agent-config user token for the backend; the exporter decides how to send it.
    pub token: Option<String>,
    /// The agent-config metric reporter type; the sensor only serves Prometheus metrics.
    pub metric_reporter_type: MetricReporterType,
}

/// What is captured from each HTTP exchange (the `data_capture:` section).
#[derive(Debug, Clone, PartialEq)]
pub struct DataCapture {
    /// Largest number of body bytes recorded per message.
    pub body_max_size_bytes: u64,
    /// Largest number of body bytes buffered for processing per message.
    pub body_max_processing_size_bytes: u64,
    /// Whether request and response headers are recorded.
    pub http_headers: CaptureToggle,
    /// Whether request and response bodies are recorded.
    pub http_body: CaptureToggle,
    /// Content-type substrings (lower case) whose bodies are recorded; empty allows every type.
    pub allowed_content_types: Vec<String>,
    /// Header names (lower case) whose values are replaced before export.
    pub redact_headers: Vec<String>,
    /// JSONPaths (`$.user.email`, `$.users[*].credit_card`) of request-body values replaced
    /// before export.
    pub redact_request_body: Vec<String>,
    /// JSONPaths of response-body values replaced before export.
    pub redact_response_body: Vec<String>,
    /// Query-string parameter names (lower case) whose values are replaced before export.
    pub redact_query_params: Vec<String>,
    /// Form (`application/x-www-form-urlencoded`) field names (lower case) whose values are
    /// replaced before export.
    pub redact_form_fields: Vec<String>,
    /// Replace payment card numbers (13 to 19 digits passing the Luhn check) in bodies and
    /// query strings.
    pub redact_card_numbers: bool,
    /// Replace e-mail addresses in bodies and query strings.
    pub redact_emails: bool,
    /// Regular expressions (Rust `regex` syntax) whose matches in bodies and query strings are
    /// replaced.
    pub redact_patterns: Vec<String>,
    /// Paths whose exchanges are not reported: a prefix ending at a segment boundary
    /// (`/health` covers `/health` and `/health/live`), or a glob (`*` within a segment, `**`
    /// across segments, `?` one character).
    pub exclude_paths: Vec<String>,
    /// Share of exchanges reported (0 to 1); errors (server status ≥ 500, client status ≥ 400)
    /// are always reported.
    pub sampling_ratio: f64,
    /// Per-service settings (keyed by `service.name`) that override the `data_capture` keys
    /// above for that service's exchanges.
    pub service_overrides: BTreeMap<String, ServiceOverride>,
}

/// The `data_capture` settings one service overrides: canonical key paths (as in [`KEYS`],
/// all under `data_capture.`) with their YAML values, validated when loaded.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ServiceOverride {
    /// `(key path, value)` pairs, applied in order over the global settings.
    pub settings: Vec<(&'static str, serde_yaml::Value)>,
}

/// A request/response pair of switches (agent-config's `Message`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaptureToggle {
    /// Capture on requests.
    pub request: bool,
    /// Capture on responses.
    pub response: bool,
}

/// The sensor's own settings (the `sensor:` section).
#[derive(Debug, Clone, PartialEq)]
pub struct SensorSettings {
    /// Local output of exchange records when no OTLP endpoint is used.
    pub output: OutputKind,
    /// How long a request waits for its response before it is reported without one.
    pub response_timeout_ms: u64,
    /// Most connections tracked at once.
    pub max_connections: usize,
    /// How long an idle connection is kept before it is forgotten.
    pub idle_timeout_ms: u64,
    /// Address for Prometheus metrics; none serves no metrics.
    pub metrics_addr: Option<SocketAddr>,
    /// Most spans waiting for export; beyond it new spans are dropped.
    pub export_queue_size: usize,
    /// Most bytes of spans (bodies included) waiting for export; beyond it new spans are dropped.
    pub export_queue_bytes: usize,
    /// Largest export request body in bytes.
    pub batch_max_bytes: usize,
    /// Longest time a span waits before its batch is sent.
    pub batch_timeout_ms: u64,
    /// Size of the kernel ring buffer in bytes (a power of two, page multiple, 64 KiB..1 GiB).
    pub ring_buffer_bytes: u64,
    /// Remember the payload syscalls' arguments at entry instead of reading them at exit.
    pub syscall_arguments_at_entry: bool,
    /// Which discovered processes are watched (`sensor.include` / `sensor.exclude`).
    pub selectors: Selectors,
    /// CPU the sensor may use, in cores (0: unlimited); beyond it the overload policy sheds.
    pub cpu_budget_cores: f64,
    /// Resident memory the sensor may use, in bytes (0: unlimited); beyond it the overload
    /// policy sheds.
    pub memory_budget_bytes: u64,
    /// How often the overload policy measures the sensor's CPU and memory (a tuning knob).
    pub overload_interval_ms: u64,
}

/// Include and exclude rules of discovery (`--pid` is not subject to them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selectors {
    /// Rules a process must match (any one) to be watched; none means every Python process.
    pub include: SelectorRules,
    /// Rules that keep a process unwatched when it matches any one.
    pub exclude: SelectorRules,
}

/// One side of [`Selectors`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SelectorRules {
    /// Executable names or full paths (`python3.11`, `/opt/venv/bin/python3`).
    pub executables: Vec<String>,
    /// Regular expressions searched in the space-separated command line.
    pub command_lines: Vec<String>,
    /// Container ids or their prefixes (12 or more hex digits, as `docker ps` shows them).
    pub container_ids: Vec<String>,
    /// Kubernetes namespaces of the process's pod.
    pub namespaces: Vec<String>,
    /// `key=value` labels of the process's pod.
    pub pod_labels: Vec<String>,
}

impl SelectorRules {
    /// Whether no rule is set.
    pub fn is_empty(&self) -> bool {
        self.executables.is_empty()
            && self.command_lines.is_empty()
            && self.container_ids.is_empty()
            && self.namespaces.is_empty()
            && self.pod_labels.is_empty()
    }

    /// Whether a rule needs the process's pod (namespace or label).
    pub fn uses_pods(&self) -> bool {
        !self.namespaces.is_empty() || !self.pod_labels.is_empty()
    }
}

/// OTLP wire protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP over gRPC (`grpc`).
    Grpc,
    /// OTLP over HTTP with protobuf bodies (`http/protobuf`).
    HttpProtobuf,
    /// OTLP over HTTP with JSON bodies (`http/json`).
    HttpJson,
}

/// agent-config's `TraceReporterType`, as far as the sensor supports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceReporterType {
    /// OTLP over gRPC (`OTLP`, also agent-config's `UNSPECIFIED`).
    Otlp,
    /// OTLP over HTTP (`OTLP_HTTP`).
    OtlpHttp,
    /// Records go to the local output instead of a collector (`LOGGING`).
    Logging,
    /// Nothing is exported (`NONE`).
    None,
}

/// agent-config's `MetricReporterType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricReporterType {
    /// Push metrics over OTLP (not supported by the sensor).
    Otlp,
    /// Prometheus exposition, served on `sensor.metrics_addr`.
    Prometheus,
    /// Log metrics (not supported by the sensor).
    Logging,
    /// No metric reporting.
    None,
}

/// Local output of exchange records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// One readable line per exchange.
    Console,
    /// One JSON record per line.
    Jsonl,
}

/// Where the exporter sends records, as decided by [`Config::export_target`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportTarget {
    /// Send spans to an OTLP collector at this URL.
    Otlp {
        /// The URL to connect or post to (see [`Config::traces_endpoint`]).
        url: String,
        /// The wire protocol.
        protocol: Protocol,
    },
    /// Write records to the local output.
    Local(OutputKind),
    /// Export nothing (disabled sensor or reporter type `NONE`).
    Nothing,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            enabled: true,
            service_name: None,
            resource_attributes: BTreeMap::new(),
            propagation_formats: vec!["TRACECONTEXT".to_owned(), "B3".to_owned()],
            reporting: Reporting::default(),
            data_capture: DataCapture::default(),
            sensor: SensorSettings::default(),
        }
    }
}

impl Default for Reporting {
    fn default() -> Self {
        Reporting {
            endpoint: None,
            endpoint_exact: false,
            protocol: Protocol::Grpc,
            trace_reporter_type: TraceReporterType::Otlp,
            secure: false,
            cert_file: None,
            headers: BTreeMap::new(),
            token: None,
            metric_reporter_type: MetricReporterType::None,
        }
    }
}

/// Content types whose bodies are recorded by default, as substrings (see
/// [`crate::http::content_type_allowed`]): `json` admits every JSON type (`application/json`,
/// `text/json`, `application/problem+json`, `application/vnd.api+json`, `application/x-ndjson`),
/// `+xml` the XML-based ones (`application/soap+xml`) but not `xml` inside other names
/// (`…openxmlformats…` documents are binary).
pub const DEFAULT_ALLOWED_CONTENT_TYPES: &[&str] = &[
    "json",
    "application/xml",
    "text/xml",
    "+xml",
    "application/x-www-form-urlencoded",
    "application/graphql",
];

/// Headers whose values are redacted by default.
pub const DEFAULT_REDACT_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
];

impl Default for DataCapture {
    fn default() -> Self {
        DataCapture {
            body_max_size_bytes: 131_072,
            body_max_processing_size_bytes: 1_048_576,
            http_headers: CaptureToggle::default(),
            http_body: CaptureToggle::default(),
            allowed_content_types: DEFAULT_ALLOWED_CONTENT_TYPES
                .iter()
                .map(|s| s.to_string())
                .collect(),
            redact_headers: DEFAULT_REDACT_HEADERS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            redact_request_body: Vec::new(),
            redact_response_body: Vec::new(),
            redact_query_params: Vec::new(),
            redact_form_fields: Vec::new(),
            redact_card_numbers: false,
            redact_emails: false,
            redact_patterns: Vec::new(),
            exclude_paths: Vec::new(),
            sampling_ratio: 1.0,
            service_overrides: BTreeMap::new(),
        }
    }
}

impl Default for CaptureToggle {
    fn default() -> Self {
        CaptureToggle {
            request: true,
            response: true,
        }
    }
}

impl Default for SensorSettings {
    fn default() -> Self {
        SensorSettings {
            output: OutputKind::Console,
            response_timeout_ms: 120_000,
            max_connections: 65_536,
            idle_timeout_ms: 300_000,
            metrics_addr: None,
            export_queue_size: 2048,
            export_queue_bytes: crate::export::queue::DEFAULT_QUEUE_BYTES,
            batch_max_bytes: 3 * 1024 * 1024,
            batch_timeout_ms: 1000,
            ring_buffer_bytes: u64::from(sensor_common::maps::EVENTS_BYTES),
            syscall_arguments_at_entry: false,
            selectors: Selectors::default(),
            cpu_budget_cores: 1.0,
            memory_budget_bytes: 512 * 1024 * 1024,
            overload_interval_ms: 2000,
        }
    }
}

impl Config {
    /// Parses one configuration file's text (either key style) over the defaults, without
    /// looking at the environment; returns the configuration and its warnings.
    pub fn from_yaml_str(text: &str) -> anyhow::Result<(Config, Vec<String>)> {
        let loaded = load::from_yaml_str(text)?;
        Ok((loaded.config, loaded.warnings))
    }

    /// The URL the OTLP exporter uses, or none when no endpoint is configured.
    ///
    /// An endpoint without scheme gets `http://` (`https://` when `reporting.secure`). An
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` and every gRPC endpoint are used as given; for the
    /// HTTP protocols `/v1/traces` is appended unless the URL path already ends with it.
    pub fn traces_endpoint(&self) -> Option<String> {
        let raw = self.reporting.endpoint.as_deref()?.trim();
        if raw.is_empty() {
            return None;
        }
        let url = if has_scheme(raw) {
            raw.to_string()
        } else {
            let scheme = if self.reporting.secure {
                "https"
            } else {
                "http"
            };
            format!("{scheme}://{raw}")
        };
        if self.reporting.endpoint_exact || self.reporting.protocol == Protocol::Grpc {
            return Some(url);
        }
        Some(append_traces_path(&url))
    }

    /// Where records go: an OTLP collector, the local output, or nowhere.
    pub fn export_target(&self) -> ExportTarget {
        if !self.enabled {
            return ExportTarget::Nothing;
        }
        match self.reporting.trace_reporter_type {
            TraceReporterType::None => ExportTarget::Nothing,
            TraceReporterType::Logging => ExportTarget::Local(self.sensor.output),
            TraceReporterType::Otlp | TraceReporterType::OtlpHttp => match self.traces_endpoint() {
                Some(url) => ExportTarget::Otlp {
                    url,
                    protocol: self.reporting.protocol,
                },
                None => ExportTarget::Local(self.sensor.output),
            },
        }
    }
}

impl Config {
    /// The `data_capture` settings that apply to exchanges of `service`: the global ones with
    /// the service's entry of `data_capture.service_overrides` applied over them (the result
    /// has no overrides of its own).
    pub fn data_capture_for(&self, service: &str) -> DataCapture {
        let mut config = self.clone();
        if let Some(entry) = self.data_capture.service_overrides.get(service) {
            keys::apply_override(&mut config, entry);
        }
        config.data_capture.service_overrides.clear();
        config.data_capture
    }
}

impl Config {
    /// [`Config::propagation_formats`] as formats (names were checked at load).
    pub fn propagation(&self) -> Vec<crate::enrich::context::Propagation> {
        self.propagation_formats
            .iter()
            .filter_map(|name| crate::enrich::context::Propagation::from_name(name))
            .collect()
    }
}

impl DataCapture {
    /// Whether a body with this `Content-Type` value is recorded: some allowed entry is a
    /// substring of it, ignoring case (an empty list allows everything).
    pub fn content_type_allowed(&self, content_type: &str) -> bool {
        crate::http::content_type_allowed(&self.allowed_content_types, content_type.as_bytes())
    }

    /// Whether the value of this header is redacted (names compare ignoring case).
    pub fn is_redacted_header(&self, name: &str) -> bool {
        self.redact_headers
            .iter()
            .any(|h| h.eq_ignore_ascii_case(name.trim()))
    }
}

impl SensorSettings {
    /// [`SensorSettings::response_timeout_ms`] as a duration.
    pub fn response_timeout(&self) -> Duration {
        Duration::from_millis(self.response_timeout_ms)
    }

    /// [`SensorSettings::idle_timeout_ms`] as a duration.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    /// [`SensorSettings::overload_interval_ms`] as a duration.
    pub fn overload_interval(&self) -> Duration {
        Duration::from_millis(self.overload_interval_ms)
    }

    /// [`SensorSettings::batch_timeout_ms`] as a duration.
    pub fn batch_timeout(&self) -> Duration {
        Duration::from_millis(self.batch_timeout_ms)
    }
}

impl Protocol {
    /// The OTEL spelling: `grpc`, `http/protobuf` or `http/json`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
            Protocol::HttpJson => "http/json",
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<crate::cli::OutputFormat> for OutputKind {
    fn from(format: crate::cli::OutputFormat) -> Self {
        match format {
            crate::cli::OutputFormat::Console => OutputKind::Console,
            crate::cli::OutputFormat::Jsonl => OutputKind::Jsonl,
        }
    }
}

/// Whether `s` starts with `scheme://`.
fn has_scheme(s: &str) -> bool {
    s.split_once("://").is_some_and(|(scheme, _)| {
        !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    })
}

/// Appends `/v1/traces` to the path of `url` unless its path already ends with it.
fn append_traces_path(url: &str) -> String {
    let authority_start = url.find("://").map_or(0, |i| i + 3);
    let end = url[authority_start..]
        .find(['?', '#'])
        .map_or(url.len(), |i| authority_start + i);
    let (base, suffix) = url.split_at(end);
    let path = base[authority_start..]
        .find('/')
        .map_or("", |i| &base[authority_start + i..]);
    if path.trim_end_matches('/').ends_with("/v1/traces") {
        return url.to_string();
    }
    format!("{}/v1/traces{suffix}", base.trim_end_matches('/'))
}
