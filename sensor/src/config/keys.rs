//! The table of configuration keys: documentation and, for each key, how a value is parsed and
//! stored. Every source (file, `HT_*`, `OTEL_*`) sets values through this table.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde_yaml::Value;

use super::{Config, MetricReporterType, OutputKind, Protocol, ServiceOverride, TraceReporterType};

/// One configuration key: its path in the file, default, variables and meaning.
#[derive(Debug, Clone, Copy)]
pub struct KeyDoc {
    /// Path in the file, snake_case, sections joined by `.` (camelCase is accepted too).
    pub key: &'static str,
    /// Default value as text; empty when the key is unset by default.
    pub default: &'static str,
    /// The `HT_*` environment variable (HT_ + the path in upper snake case).
    pub env: &'static str,
    /// Standard `OTEL_*` variables that also set the key (lower precedence than `env`).
    pub otel: &'static [&'static str],
    /// Command-line flag that sets the key, if any.
    pub flag: Option<&'static str>,
    /// What the key does.
    pub description: &'static str,
    setter: Setter,
}

/// How a key's value is parsed and where it is stored.
#[derive(Debug, Clone, Copy)]
enum Setter {
    Bool(fn(&mut Config) -> &mut bool),
    U64(fn(&mut Config) -> &mut u64, u64),
    Usize(fn(&mut Config) -> &mut usize, usize),
    Text(fn(&mut Config) -> &mut Option<String>),
    Endpoint,
    Path(fn(&mut Config) -> &mut Option<PathBuf>),
    List(fn(&mut Config) -> &mut Vec<String>),
    Map(fn(&mut Config) -> &mut BTreeMap<String, String>),
    Mode,
    MetricReporter,
    Output,
    Addr(fn(&mut Config) -> &mut Option<SocketAddr>),
    /// A number from 0 to 1.
    Ratio(fn(&mut Config) -> &mut f64),
    /// A finite number of at least 0 (fractions allowed).
    Amount(fn(&mut Config) -> &mut f64),
    /// Milliseconds, at least the given number.
    Interval(fn(&mut Config) -> &mut u64, u64),
    /// A size in bytes for the kernel's ring buffer: a power of two, a multiple of the page
    /// size, from 64 KiB to 1 GiB.
    RingBytes(fn(&mut Config) -> &mut u64),
    /// A list kept as written (case and all), each entry checked by the function; text is
    /// split at commas when the flag says so (else it is one entry), or is a JSON list.
    ExactList(
        fn(&mut Config) -> &mut Vec<String>,
        fn(&str) -> Result<(), String>,
        bool,
    ),
    /// `data_capture.service_overrides`.
    ServiceOverrides,
}

/// Every configuration key, in the order values of one source are applied.
pub const KEYS: &[KeyDoc] = &[
    KeyDoc {
        key: "enabled",
        default: "true",
        env: "HT_ENABLED",
        otel: &[],
        flag: None,
        description: "When false the sensor captures and exports nothing.",
        setter: Setter::Bool(|c| &mut c.enabled),
    },
    KeyDoc {
        key: "service_name",
        default: "",
        env: "HT_SERVICE_NAME",
        otel: &["OTEL_SERVICE_NAME"],
        flag: None,
        description: "Names this sensor instance; used as the service name of captured traffic only when no better name is found.",
        setter: Setter::Text(|c| &mut c.service_name),
    },
    KeyDoc {
        key: "resource_attributes",
        default: "",
        env: "HT_RESOURCE_ATTRIBUTES",
        otel: &["OTEL_RESOURCE_ATTRIBUTES"],
        flag: None,
        description: "Static resource attributes added to every export: a mapping, or `k=v,k2=v2` (URL-decoded) in variables. Sources merge key by key.",
        setter: Setter::Map(|c| &mut c.resource_attributes),
    },
    KeyDoc {
        key: "propagation_formats",
        default: "TRACECONTEXT,B3",
        env: "HT_PROPAGATION_FORMATS",
        otel: &[],
        flag: None,
        description: "Trace-context headers a captured request joins a trace by, in order of preference: `TRACECONTEXT` (W3C `traceparent`), `B3` (`b3`, or `X-B3-TraceId` and `X-B3-SpanId`). A list, or comma-separated. The sensor reads them, never writes them.",
        setter: Setter::ExactList(|c| &mut c.propagation_formats, check_propagation, true),
    },
    KeyDoc {
        key: "reporting.endpoint",
        default: "",
        env: "HT_REPORTING_ENDPOINT",
        otel: &[
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ],
        flag: None,
        description: "Collector address (URL or host:port). Without scheme it gets `http://`, or `https://` when secure. HTTP protocols get `/v1/traces` appended unless the path ends with it; gRPC endpoints and `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` are used as given. Unset: records go to the local output.",
        setter: Setter::Endpoint,
    },
    KeyDoc {
        key: "reporting.trace_reporter_type",
        default: "OTLP",
        env: "HT_REPORTING_TRACE_REPORTER_TYPE",
        otel: &[],
        flag: None,
        description: "OTLP (gRPC), OTLP_HTTP (http/protobuf), LOGGING (local output instead of a collector) or NONE (no export). Also accepts the protocol values; a protocol value alone never turns LOGGING or NONE back into export.",
        setter: Setter::Mode,
    },
    KeyDoc {
        key: "reporting.protocol",
        default: "grpc",
        env: "HT_REPORTING_PROTOCOL",
        otel: &[
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        ],
        flag: None,
        description: "OTLP protocol: grpc, http/protobuf or http/json; also accepts the trace_reporter_type values. Applied after trace_reporter_type of the same source.",
        setter: Setter::Mode,
    },
    KeyDoc {
        key: "reporting.secure",
        default: "false",
        env: "HT_REPORTING_SECURE",
        otel: &[
            "OTEL_EXPORTER_OTLP_INSECURE",
            "OTEL_EXPORTER_OTLP_TRACES_INSECURE",
        ],
        flag: None,
        description: "Use TLS for an endpoint given without scheme (`OTEL_EXPORTER_OTLP_INSECURE=true` means `false`).",
        setter: Setter::Bool(|c| &mut c.reporting.secure),
    },
    KeyDoc {
        key: "reporting.cert_file",
        default: "",
        env: "HT_REPORTING_CERT_FILE",
        otel: &[
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
            "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
        ],
        flag: None,
        description: "CA certificate file (PEM) that verifies the collector's certificate.",
        setter: Setter::Path(|c| &mut c.reporting.cert_file),
    },
    KeyDoc {
        key: "reporting.headers",
        default: "",
        env: "HT_REPORTING_HEADERS",
        otel: &[
            "OTEL_EXPORTER_OTLP_HEADERS",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        ],
        flag: None,
        description: "Extra headers on every export request (e.g. tokens): a mapping, or `k=v,k2=v2` (URL-decoded) in variables. Sources merge key by key.",
        setter: Setter::Map(|c| &mut c.reporting.headers),
    },
    KeyDoc {
        key: "reporting.token",
        default: "",
        env: "HT_REPORTING_TOKEN",
        otel: &[],
        flag: None,
        description: "agent-config user token for the backend.",
        setter: Setter::Text(|c| &mut c.reporting.token),
    },
    KeyDoc {
        key: "reporting.metric_reporter_type",
        default: "NONE",
        env: "HT_REPORTING_METRIC_REPORTER_TYPE",
        otel: &[],
        flag: None,
        description: "OTLP, PROMETHEUS, LOGGING or NONE (METRIC_REPORTER_TYPE_ prefix optional). The sensor only serves Prometheus metrics, on sensor.metrics_addr.",
        setter: Setter::MetricReporter,
    },
    KeyDoc {
        key: "data_capture.body_max_size_bytes",
        default: "131072",
        env: "HT_DATA_CAPTURE_BODY_MAX_SIZE_BYTES",
        otel: &[],
        flag: None,
        description: "Largest number of body bytes recorded per request or response (after redaction); longer bodies are truncated and flagged.",
        setter: Setter::U64(|c| &mut c.data_capture.body_max_size_bytes, 0),
    },
    KeyDoc {
        key: "data_capture.body_max_processing_size_bytes",
        default: "1048576",
        env: "HT_DATA_CAPTURE_BODY_MAX_PROCESSING_SIZE_BYTES",
        otel: &[],
        flag: None,
        description: "Largest number of decoded body bytes buffered per message for processing (decompression, redaction). When body redaction rules are configured, bodies are redacted whole up to this size, then truncated to body_max_size_bytes; a longer body is dropped and flagged (`*.body.redaction_failed`).",
        setter: Setter::U64(|c| &mut c.data_capture.body_max_processing_size_bytes, 0),
    },
    KeyDoc {
        key: "data_capture.http_headers.request",
        default: "true",
        env: "HT_DATA_CAPTURE_HTTP_HEADERS_REQUEST",
        otel: &[],
        flag: None,
        description: "Record request headers.",
        setter: Setter::Bool(|c| &mut c.data_capture.http_headers.request),
    },
    KeyDoc {
        key: "data_capture.http_headers.response",
        default: "true",
        env: "HT_DATA_CAPTURE_HTTP_HEADERS_RESPONSE",
        otel: &[],
        flag: None,
        description: "Record response headers.",
        setter: Setter::Bool(|c| &mut c.data_capture.http_headers.response),
    },
    KeyDoc {
        key: "data_capture.http_body.request",
        default: "true",
        env: "HT_DATA_CAPTURE_HTTP_BODY_REQUEST",
        otel: &[],
        flag: None,
        description: "Record request bodies.",
        setter: Setter::Bool(|c| &mut c.data_capture.http_body.request),
    },
    KeyDoc {
        key: "data_capture.http_body.response",
        default: "true",
        env: "HT_DATA_CAPTURE_HTTP_BODY_RESPONSE",
        otel: &[],
        flag: None,
        description: "Record response bodies.",
        setter: Setter::Bool(|c| &mut c.data_capture.http_body.response),
    },
    KeyDoc {
        key: "data_capture.allowed_content_types",
        default: "json,application/xml,text/xml,+xml,application/x-www-form-urlencoded,application/graphql",
        env: "HT_DATA_CAPTURE_ALLOWED_CONTENT_TYPES",
        otel: &[],
        flag: None,
        description: "Bodies are recorded only when one of these substrings occurs in the Content-Type (ignoring case: `json` admits `application/vnd.api+json`); a list, or comma-separated. Empty allows every type, and bodies without a Content-Type.",
        setter: Setter::List(|c| &mut c.data_capture.allowed_content_types),
    },
    KeyDoc {
        key: "data_capture.redact_headers",
        default: "authorization,proxy-authorization,cookie,set-cookie,x-api-key",
        env: "HT_DATA_CAPTURE_REDACT_HEADERS",
        otel: &[],
        flag: None,
        description: "Headers whose values are redacted before export (names ignore case); a list, or comma-separated.",
        setter: Setter::List(|c| &mut c.data_capture.redact_headers),
    },
    KeyDoc {
        key: "data_capture.redact_request_body",
        default: "",
        env: "HT_DATA_CAPTURE_REDACT_REQUEST_BODY",
        otel: &[],
        flag: None,
        description: "JSONPaths (RFC 9535, e.g. `$.user.email`, `$.users[*].credit_card`) of request-body values replaced by `[REDACTED]`; a matched object or array is replaced whole. A request body that is not valid JSON, or too large to parse, is then dropped and flagged (`http.request.body.redaction_failed`). A list, or comma-separated (a variable starting with `[` is read as a YAML/JSON list).",
        setter: Setter::ExactList(
            |c| &mut c.data_capture.redact_request_body,
            check_json_path,
            true,
        ),
    },
    KeyDoc {
        key: "data_capture.redact_response_body",
        default: "",
        env: "HT_DATA_CAPTURE_REDACT_RESPONSE_BODY",
        otel: &[],
        flag: None,
        description: "JSONPaths of response-body values replaced by `[REDACTED]`, as for requests.",
        setter: Setter::ExactList(
            |c| &mut c.data_capture.redact_response_body,
            check_json_path,
            true,
        ),
    },
    KeyDoc {
        key: "data_capture.redact_query_params",
        default: "",
        env: "HT_DATA_CAPTURE_REDACT_QUERY_PARAMS",
        otel: &[],
        flag: None,
        description: "Query-string parameters (names ignore case) whose values are redacted in `http.target`, `url.query`, `http.url` and `url.full`.",
        setter: Setter::List(|c| &mut c.data_capture.redact_query_params),
    },
    KeyDoc {
        key: "data_capture.redact_form_fields",
        default: "",
        env: "HT_DATA_CAPTURE_REDACT_FORM_FIELDS",
        otel: &[],
        flag: None,
        description: "Fields of `application/x-www-form-urlencoded` bodies (names ignore case) whose values are redacted.",
        setter: Setter::List(|c| &mut c.data_capture.redact_form_fields),
    },
    KeyDoc {
        key: "data_capture.redact_card_numbers",
        default: "false",
        env: "HT_DATA_CAPTURE_REDACT_CARD_NUMBERS",
        otel: &[],
        flag: None,
        description: "Redact payment card numbers (13 to 19 digits, optionally grouped by spaces or dashes, passing the Luhn check) in bodies and query strings.",
        setter: Setter::Bool(|c| &mut c.data_capture.redact_card_numbers),
    },
    KeyDoc {
        key: "data_capture.redact_emails",
        default: "false",
        env: "HT_DATA_CAPTURE_REDACT_EMAILS",
        otel: &[],
        flag: None,
        description: "Redact e-mail addresses in bodies and query strings.",
        setter: Setter::Bool(|c| &mut c.data_capture.redact_emails),
    },
    KeyDoc {
        key: "data_capture.redact_patterns",
        default: "",
        env: "HT_DATA_CAPTURE_REDACT_PATTERNS",
        otel: &[],
        flag: None,
        description: "Regular expressions (Rust `regex` syntax) whose matches in bodies and query strings are redacted. A list; a variable is one expression, or a YAML/JSON list when it starts with `[`.",
        setter: Setter::ExactList(|c| &mut c.data_capture.redact_patterns, check_regex, false),
    },
    KeyDoc {
        key: "data_capture.exclude_paths",
        default: "",
        env: "HT_DATA_CAPTURE_EXCLUDE_PATHS",
        otel: &[],
        flag: None,
        description: "Request paths whose exchanges are not reported (counted): a prefix ending at a segment boundary (`/health` covers `/health/live`, not `/healthz`), or a glob (`*` within a segment, `**` across segments, `?` one character).",
        setter: Setter::ExactList(
            |c| &mut c.data_capture.exclude_paths,
            check_path_pattern,
            true,
        ),
    },
    KeyDoc {
        key: "data_capture.sampling_ratio",
        default: "1",
        env: "HT_DATA_CAPTURE_SAMPLING_RATIO",
        otel: &[],
        flag: None,
        description: "Share of exchanges reported, 0 to 1 (counted); errors (server status >= 500, client status >= 400) are always reported.",
        setter: Setter::Ratio(|c| &mut c.data_capture.sampling_ratio),
    },
    KeyDoc {
        key: "data_capture.service_overrides",
        default: "",
        env: "HT_DATA_CAPTURE_SERVICE_OVERRIDES",
        otel: &[],
        flag: None,
        description: "Per-service settings: a mapping from `service.name` to `data_capture` keys (e.g. `orders: {sampling_ratio: 0.1, http_body: {response: false}}`) applied over the global ones for that service; a variable holds the mapping as YAML/JSON text. Sources merge service by service.",
        setter: Setter::ServiceOverrides,
    },
    KeyDoc {
        key: "sensor.output",
        default: "console",
        env: "HT_SENSOR_OUTPUT",
        otel: &[],
        flag: Some("--output"),
        description: "Local output when no collector is used: console (readable lines) or jsonl (one JSON record per line).",
        setter: Setter::Output,
    },
    KeyDoc {
        key: "sensor.response_timeout_ms",
        default: "120000",
        env: "HT_SENSOR_RESPONSE_TIMEOUT_MS",
        otel: &[],
        flag: None,
        description: "How long a request waits for its response, on a connection that stays open, before it is reported without one (a closed connection ends the wait at once). Longer than the 60 s that load balancers and proxies allow by default, so that long polls keep their response.",
        setter: Setter::U64(|c| &mut c.sensor.response_timeout_ms, 1),
    },
    KeyDoc {
        key: "sensor.max_connections",
        default: "65536",
        env: "HT_SENSOR_MAX_CONNECTIONS",
        otel: &[],
        flag: None,
        description: "Most connections tracked at once.",
        setter: Setter::Usize(|c| &mut c.sensor.max_connections, 1),
    },
    KeyDoc {
        key: "sensor.idle_timeout_ms",
        default: "300000",
        env: "HT_SENSOR_IDLE_TIMEOUT_MS",
        otel: &[],
        flag: None,
        description: "How long an idle connection is kept before it is forgotten.",
        setter: Setter::U64(|c| &mut c.sensor.idle_timeout_ms, 1),
    },
    KeyDoc {
        key: "sensor.metrics_addr",
        default: "",
        env: "HT_SENSOR_METRICS_ADDR",
        otel: &[],
        flag: Some("--metrics-addr"),
        description: "Serve Prometheus metrics (`/metrics`) and a health check (`/healthz`: 200 while the daemon loop answers, 503 when it has not within 5 s) on this address (e.g. 127.0.0.1:9464); unset serves none. Values are read when scraped.",
        setter: Setter::Addr(|c| &mut c.sensor.metrics_addr),
    },
    KeyDoc {
        key: "sensor.export_queue_size",
        default: "2048",
        env: "HT_SENSOR_EXPORT_QUEUE_SIZE",
        otel: &[],
        flag: None,
        description: "Most spans waiting for export; beyond it new spans are dropped.",
        setter: Setter::Usize(|c| &mut c.sensor.export_queue_size, 1),
    },
    KeyDoc {
        key: "sensor.export_queue_bytes",
        default: "67108864",
        env: "HT_SENSOR_EXPORT_QUEUE_BYTES",
        otel: &[],
        flag: None,
        description: "Most bytes of spans (bodies included) waiting for export; beyond it new spans are dropped. An empty queue still takes one larger span.",
        setter: Setter::Usize(|c| &mut c.sensor.export_queue_bytes, 1),
    },
    KeyDoc {
        key: "sensor.batch_max_bytes",
        default: "3145728",
        env: "HT_SENSOR_BATCH_MAX_BYTES",
        otel: &[],
        flag: None,
        description: "Largest export request body in bytes (3 MiB).",
        setter: Setter::Usize(|c| &mut c.sensor.batch_max_bytes, 1),
    },
    KeyDoc {
        key: "sensor.batch_timeout_ms",
        default: "1000",
        env: "HT_SENSOR_BATCH_TIMEOUT_MS",
        otel: &[],
        flag: None,
        description: "Longest time a span waits before its batch is sent.",
        setter: Setter::U64(|c| &mut c.sensor.batch_timeout_ms, 1),
    },
    KeyDoc {
        key: "sensor.cpu_budget_cores",
        default: "1",
        env: "HT_SENSOR_CPU_BUDGET_CORES",
        otel: &[],
        flag: None,
        description: "CPU the sensor may use, in cores (fractions allowed, e.g. 0.25); 0 is unlimited. Beyond it the overload policy sheds bodies, then whole exchanges (see Overload policy).",
        setter: Setter::Amount(|c| &mut c.sensor.cpu_budget_cores),
    },
    KeyDoc {
        key: "sensor.memory_budget_bytes",
        default: "536870912",
        env: "HT_SENSOR_MEMORY_BUDGET_BYTES",
        otel: &[],
        flag: None,
        description: "Resident memory the sensor may use, in bytes (512 MiB); 0 is unlimited. Beyond it the overload policy sheds bodies, then whole exchanges.",
        setter: Setter::U64(|c| &mut c.sensor.memory_budget_bytes, 0),
    },
    KeyDoc {
        key: "sensor.overload_interval_ms",
        default: "2000",
        env: "HT_SENSOR_OVERLOAD_INTERVAL_MS",
        otel: &[],
        flag: None,
        description: "Tuning knob: how often the overload policy measures the sensor's CPU and memory (at least 10). Levels change after 1 to 4 measurements, so this sets how fast the policy reacts.",
        setter: Setter::Interval(|c| &mut c.sensor.overload_interval_ms, 10),
    },
    KeyDoc {
        key: "sensor.ring_buffer_bytes",
        default: "16777216",
        env: "HT_SENSOR_RING_BUFFER_BYTES",
        otel: &[],
        flag: None,
        description: "Size of the kernel ring buffer that carries captured bytes to the sensor (16 MiB): a power of two and a multiple of the page size, from 65536 (64 KiB) to 1073741824 (1 GiB). When it is full, new records are dropped (counted in `kernel_ringbuf_full`, warned in the log); the application is never slowed.",
        setter: Setter::RingBytes(|c| &mut c.sensor.ring_buffer_bytes),
    },
    KeyDoc {
        key: "sensor.syscall_arguments_at_entry",
        default: "false",
        env: "HT_SENSOR_SYSCALL_ARGUMENTS_AT_ENTRY",
        otel: &[],
        flag: None,
        description: "Troubleshooting knob: remember the arguments of the payload syscalls (read, write, recv*, send*…) with a program at their entry, as on kernels without BTF, instead of reading them at exit from the thread's saved registers. Costs each call a second program, and misses a read already blocked when capture starts.",
        setter: Setter::Bool(|c| &mut c.sensor.syscall_arguments_at_entry),
    },
    KeyDoc {
        key: "sensor.include.executables",
        default: "",
        env: "HT_SENSOR_INCLUDE_EXECUTABLES",
        otel: &[],
        flag: None,
        description: "Watch only discovered processes matching one of these executables: a name (`python3.11`) or a full path (`/opt/venv/bin/python3`). Not applied to `--pid`.",
        setter: Setter::ExactList(
            |c| &mut c.sensor.selectors.include.executables,
            check_any,
            true,
        ),
    },
    KeyDoc {
        key: "sensor.include.command_lines",
        default: "",
        env: "HT_SENSOR_INCLUDE_COMMAND_LINES",
        otel: &[],
        flag: None,
        description: "Watch only discovered processes matching one of these regular expressions (Rust `regex` syntax), searched in the space-separated command line. A list; a variable is one expression, or a YAML/JSON list when it starts with `[`.",
        setter: Setter::ExactList(
            |c| &mut c.sensor.selectors.include.command_lines,
            check_regex,
            false,
        ),
    },
    KeyDoc {
        key: "sensor.include.container_ids",
        default: "",
        env: "HT_SENSOR_INCLUDE_CONTAINER_IDS",
        otel: &[],
        flag: None,
        description: "Watch only discovered processes matching one of these container ids (from the process's cgroup), whole or a prefix of at least 12 hex digits.",
        setter: Setter::ExactList(
            |c| &mut c.sensor.selectors.include.container_ids,
            check_container_id,
            true,
        ),
    },
    KeyDoc {
        key: "sensor.include.namespaces",
        default: "",
        env: "HT_SENSOR_INCLUDE_NAMESPACES",
        otel: &[],
        flag: None,
        description: "Watch only discovered processes whose Kubernetes pod is in one of these namespaces (needs pod metadata: the `kubernetes` build feature, in a cluster).",
        setter: Setter::ExactList(
            |c| &mut c.sensor.selectors.include.namespaces,
            check_namespace,
            true,
        ),
    },
    KeyDoc {
        key: "sensor.include.pod_labels",
        default: "",
        env: "HT_SENSOR_INCLUDE_POD_LABELS",
        otel: &[],
        flag: None,
        description: "Watch only discovered processes whose Kubernetes pod has one of these labels, each `key=value` (e.g. `app.kubernetes.io/name=orders`).",
        setter: Setter::ExactList(
            |c| &mut c.sensor.selectors.include.pod_labels,
            check_pod_label,
            true,
        ),
    },
    KeyDoc {
        key: "sensor.exclude.executables",
        default: "",
        env: "HT_SENSOR_EXCLUDE_EXECUTABLES",
        otel: &[],
        flag: None,
        description: "Never watch discovered processes matching one of these executables: a name (`python3.11`) or a full path (`/opt/venv/bin/python3`). Not applied to `--pid`.",
        setter: Setter::ExactList(
            |c| &mut c.sensor.selectors.exclude.executables,
            check_any,
            true,
        ),
    },
    KeyDoc {
        key: "sensor.exclude.command_lines",
        default: "",
        env: "HT_SENSOR_EXCLUDE_COMMAND_LINES",
        otel: &[],
        flag: None,
        description: "Never watch discovered processes matching one of these regular expressions (Rust `regex` syntax), searched in the space-separated command line. A list; a variable is one expression, or a YAML/JSON list when it starts with `[`.",
        setter: Setter::ExactList(
            |c| &mut c.sensor.selectors.exclude.command_lines,
            check_regex,
            false,
        ),
    },
    KeyDoc {
        key: "sensor.exclude.container_ids",
        default: "",
        env: "HT_SENSOR_EXCLUDE_CONTAINER_IDS",
        otel: &[],
        flag: None,
        description: "Never watch discovered processes matching one of these container ids (from the process's cgroup), whole or a prefix of at least 12 hex digits.",
        setter: Setter::ExactList(
            |c| &mut c.sensor.selectors.exclude.container_ids,
            check_container_id,
            true,
        ),
    },
    KeyDoc {
        key: "sensor.exclude.namespaces",
        default: "",
        env: "HT_SENSOR_EXCLUDE_NAMESPACES",
        otel: &[],
        flag: None,
        description: "Never watch discovered processes whose Kubernetes pod is in one of these namespaces (needs pod metadata: the `kubernetes` build feature, in a cluster).",
        setter: Setter::ExactList(
            |c| &mut c.sensor.selectors.exclude.namespaces,
            check_namespace,
            true,
        ),
    },
    KeyDoc {
        key: "sensor.exclude.pod_labels",
        default: "",
        env: "HT_SENSOR_EXCLUDE_POD_LABELS",
        otel: &[],
        flag: None,
        description: "Never watch discovered processes whose Kubernetes pod has one of these labels, each `key=value` (e.g. `app.kubernetes.io/name=orders`).",
        setter: Setter::ExactList(
            |c| &mut c.sensor.selectors.exclude.pod_labels,
            check_pod_label,
            true,
        ),
    },
];

/// Renders [`KEYS`] as a Markdown table (key, default, environment variables, flag, meaning).
pub fn keys_markdown() -> String {
    let mut out = String::from(
        "| Key | Default | Environment | Flag | Description |\n|---|---|---|---|---|\n",
    );
    for doc in KEYS {
        let default = if doc.default.is_empty() {
            "—".to_string()
        } else {
            format!("`{}`", doc.default.replace(',', ", "))
        };
        let env = std::iter::once(doc.env)
            .chain(doc.otel.iter().copied())
            .map(|v| format!("`{v}`"))
            .collect::<Vec<_>>()
            .join("<br>");
        let flag = doc.flag.map_or("—".to_string(), |f| format!("`{f}`"));
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} | {} |",
            doc.key,
            default,
            env,
            flag,
            doc.description.replace('|', "\\|")
        );
    }
    out
}

/// The entry of `key` (a canonical snake_case path).
pub(super) fn find(key: &str) -> Option<&'static KeyDoc> {
    KEYS.iter().find(|doc| doc.key == key)
}

/// A value as a source gives it: text from a variable or flag, or a YAML node from the file.
#[derive(Debug, Clone, Copy)]
pub(super) enum Raw<'a> {
    /// Text (environment variables).
    Text(&'a str),
    /// A YAML node (the file).
    Yaml(&'a Value),
}

/// How the `protocol` / `trace_reporter_type` keys change the reporting mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// A wire protocol; keeps LOGGING / NONE.
    Wire(Protocol),
    /// A reporter type; OTLP implies gRPC, OTLP_HTTP an HTTP protocol.
    Reporter(TraceReporterType),
}

impl KeyDoc {
    /// Whether the key holds a mapping of user data (its sub-keys are not schema keys).
    pub(super) fn is_map(&self) -> bool {
        matches!(self.setter, Setter::Map(_))
    }

    /// Parses `raw` and stores it in `config`; the error is the reason, without the key path.
    /// YAML `null` leaves the value as it was.
    pub(super) fn apply(&self, raw: Raw<'_>, config: &mut Config) -> Result<(), String> {
        if let Raw::Yaml(Value::Null) = raw {
            return Ok(());
        }
        match self.setter {
            Setter::Bool(field) => *field(config) = parse_scalar(raw, parse_bool)?,
            Setter::U64(field, min) => *field(config) = parse_scalar(raw, |s| parse_int(s, min))?,
            Setter::Usize(field, min) => {
                let min = min as u64;
                let n = parse_scalar(raw, |s| parse_int(s, min))?;
                *field(config) =
                    usize::try_from(n).map_err(|_| format!("{n} is too large for this machine"))?;
            }
            Setter::Text(field) => *field(config) = parse_scalar(raw, |s| Ok(non_empty(s)))?,
            Setter::Endpoint => {
                let endpoint = parse_scalar(raw, parse_endpoint)?;
                config.reporting.endpoint = endpoint;
                config.reporting.endpoint_exact = false;
            }
            Setter::Path(field) => {
                *field(config) = parse_scalar(raw, |s| Ok(non_empty(s).map(PathBuf::from)))?
            }
            Setter::List(field) => *field(config) = parse_list(raw)?,
            Setter::Map(field) => field(config).extend(parse_map(raw)?),
            Setter::Mode => apply_mode(config, parse_scalar(raw, parse_mode)?),
            Setter::MetricReporter => {
                config.reporting.metric_reporter_type = parse_scalar(raw, parse_metric_reporter)?
            }
            Setter::Output => config.sensor.output = parse_scalar(raw, parse_output)?,
            Setter::Addr(field) => *field(config) = parse_scalar(raw, parse_addr)?,
            Setter::Ratio(field) => *field(config) = parse_scalar(raw, parse_ratio)?,
            Setter::Amount(field) => *field(config) = parse_scalar(raw, parse_amount)?,
            Setter::Interval(field, min) => {
                let n = parse_scalar(raw, |s| parse_int(s, 0))?;
                if n < min {
                    return Err(format!("expected at least {min} (milliseconds), got {n}"));
                }
                *field(config) = n;
            }
            Setter::RingBytes(field) => *field(config) = parse_scalar(raw, parse_ring_bytes)?,
            Setter::ExactList(field, check, split) => {
                let items = parse_exact_list(raw, split)?;
                for (i, item) in items.iter().enumerate() {
                    check(item).map_err(|e| format!("item {} ({item:?}): {e}", i + 1))?;
                }
                *field(config) = items;
            }
            Setter::ServiceOverrides => config
                .data_capture
                .service_overrides
                .extend(parse_service_overrides(raw)?),
        }
        Ok(())
    }
}

/// Applies one service's override over `config` (values were checked when loaded; one that
/// fails now is skipped).
pub(super) fn apply_override(config: &mut Config, entry: &ServiceOverride) {
    for (key, value) in &entry.settings {
        if let Some(doc) = find(key) {
            let _ = doc.apply(Raw::Yaml(value), config);
        }
    }
}

/// Parses `data_capture.service_overrides`: a mapping from service names to mappings of
/// `data_capture` keys (either key style), each value checked like the key's own.
fn parse_service_overrides(raw: Raw<'_>) -> Result<BTreeMap<String, ServiceOverride>, String> {
    let owned;
    let value = match raw {
        Raw::Yaml(v) => v,
        Raw::Text(s) => {
            owned = serde_yaml::from_str::<Value>(s).map_err(|e| {
                format!("expected a mapping of service names to settings (YAML or JSON text): {e}")
            })?;
            &owned
        }
    };
    let map = match value {
        Value::Null => return Ok(BTreeMap::new()),
        Value::Mapping(map) => map,
        other => {
            return Err(format!(
                "expected a mapping of service names to settings, got {}",
                describe_yaml(other)
            ));
        }
    };
    let mut out = BTreeMap::new();
    for (service, settings) in map {
        let service = yaml_scalar_text(service)
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| format!("service name {} is not a string", describe_yaml(service)))?;
        let mut entry = ServiceOverride::default();
        collect_override(settings, "data_capture", &service, &mut entry)?;
        out.insert(service.trim().to_string(), entry);
    }
    Ok(out)
}

/// Collects the keys under `prefix` of one service's override mapping.
fn collect_override(
    value: &Value,
    prefix: &str,
    service: &str,
    entry: &mut ServiceOverride,
) -> Result<(), String> {
    let map = match value {
        Value::Null => return Ok(()),
        Value::Mapping(map) => map,
        other => {
            return Err(format!(
                "{service}: expected a mapping of data_capture keys at {prefix}, got {}",
                describe_yaml(other)
            ));
        }
    };
    for (k, v) in map {
        let Some(name) = k.as_str() else {
            return Err(format!(
                "{service}: key {} is not a string",
                describe_yaml(k)
            ));
        };
        let path = format!("{prefix}.{}", super::load::normalise_key(name));
        let shown = path.strip_prefix("data_capture.").unwrap_or(&path);
        match find(&path) {
            Some(doc) if doc.key == "data_capture.service_overrides" => {
                return Err(format!("{service}: overrides cannot be nested"));
            }
            Some(doc) => {
                let mut scratch = Config::default();
                doc.apply(Raw::Yaml(v), &mut scratch)
                    .map_err(|e| format!("{service}.{shown}: {e}"))?;
                entry.settings.push((doc.key, v.clone()));
            }
            None if KEYS
                .iter()
                .any(|doc| doc.key.starts_with(&format!("{path}."))) =>
            {
                collect_override(v, &path, service, entry)?;
            }
            None => return Err(format!("{service}: unknown data_capture key {shown}")),
        }
    }
    Ok(())
}

/// Parses a share from 0 to 1.
fn parse_ratio(s: &str) -> Result<f64, &'static str> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err("a number from 0 to 1"),
    }
}

/// Parses a non-negative finite number (`0.25`, `2`, `1e-3`).
fn parse_amount(s: &str) -> Result<f64, &'static str> {
    match s.replace('_', "").parse::<f64>() {
        Ok(n) if n.is_finite() && n >= 0.0 => Ok(n),
        _ => Err("a number of at least 0 (0 is unlimited)"),
    }
}

/// Parses a ring buffer size: a power of two, a multiple of the page size, 64 KiB to 1 GiB.
fn parse_ring_bytes(s: &str) -> Result<u64, &'static str> {
    const EXPECTED: &str =
        "a power of two from 65536 (64 KiB) to 1073741824 (1 GiB), a multiple of the page size";
    let n = parse_int(s, 1).map_err(|_| EXPECTED)?;
    // SAFETY: sysconf has no preconditions.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let fits = n.is_power_of_two() && (64 << 10..=1 << 30).contains(&n) && n % page.max(1) == 0;
    if fits { Ok(n) } else { Err(EXPECTED) }
}

/// Parses a list whose entries keep their case: a YAML sequence of scalars, text starting with
/// `["` (a JSON list), or text split at commas when `split` (else one entry). Entries are
/// trimmed and de-duplicated; empty entries are dropped.
fn parse_exact_list(raw: Raw<'_>, split: bool) -> Result<Vec<String>, String> {
    let text = match raw {
        Raw::Text(s) => Some(s),
        Raw::Yaml(Value::String(s)) => Some(s.as_str()),
        Raw::Yaml(_) => None,
    };
    let owned;
    let raw = match text {
        Some(s) if s.trim_start().starts_with("[\"") => {
            owned = serde_yaml::from_str::<Value>(s)
                .map_err(|e| format!("expected a JSON list of strings: {e}"))?;
            Raw::Yaml(&owned)
        }
        _ => raw,
    };
    let text_items = |s: &str| -> Vec<String> {
        if split {
            s.split(',').map(str::to_string).collect()
        } else {
            vec![s.to_string()]
        }
    };
    collect_items(raw, text_items, |item| item.to_string())
}

/// Checks a JSONPath.
fn check_json_path(s: &str) -> Result<(), String> {
    crate::redact::check_json_path(s)
}

/// Checks a trace-context format name.
fn check_propagation(s: &str) -> Result<(), String> {
    crate::enrich::context::Propagation::from_name(s)
        .map(|_| ())
        .ok_or_else(|| "expected TRACECONTEXT or B3".into())
}

/// Accepts any entry.
fn check_any(_: &str) -> Result<(), String> {
    Ok(())
}

/// Checks a container id or prefix: 12 to 64 hex digits.
fn check_container_id(s: &str) -> Result<(), String> {
    if (12..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err("expected 12 to 64 hex digits".into())
    }
}

/// Checks a Kubernetes namespace name (an RFC 1123 label: up to 63 lower-case letters,
/// digits and `-`, starting and ending with a letter or digit).
fn check_namespace(s: &str) -> Result<(), String> {
    if is_dns_label(s) {
        Ok(())
    } else {
        Err("expected a namespace name (lower-case letters, digits and -, at most 63)".into())
    }
}

fn is_dns_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Checks a `key=value` pod label: the key an optional DNS-subdomain prefix and `/`, then a
/// name of letters, digits, `-`, `_` and `.`; the value the same characters, possibly empty.
fn check_pod_label(s: &str) -> Result<(), String> {
    let expected = || "expected key=value with a Kubernetes label key and value".to_string();
    let (key, value) = s.split_once('=').ok_or_else(expected)?;
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let label_text = |t: &str, max: usize| {
        t.len() <= max
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && t.bytes().next().is_none_or(|b| b.is_ascii_alphanumeric())
            && t.bytes().last().is_none_or(|b| b.is_ascii_alphanumeric())
    };
    let prefix_ok = prefix.is_none_or(|p| p.len() <= 253 && p.split('.').all(is_dns_label));
    if prefix_ok && !name.is_empty() && label_text(name, 63) && label_text(value, 63) {
        Ok(())
    } else {
        Err(expected())
    }
}

/// Checks a regular expression.
fn check_regex(s: &str) -> Result<(), String> {
    crate::redact::check_regex(s)
}

/// Checks a path prefix or glob.
fn check_path_pattern(s: &str) -> Result<(), String> {
    if s.starts_with('/') || s.starts_with('*') {
        Ok(())
    } else {
        Err("expected a path starting with / (or a glob starting with *)".to_string())
    }
}

/// Changes the reporter type and protocol together, keeping them consistent.
pub(super) fn apply_mode(config: &mut Config, mode: Mode) {
    let reporting = &mut config.reporting;
    match mode {
        Mode::Wire(protocol) => {
            reporting.protocol = protocol;
            if matches!(
                reporting.trace_reporter_type,
                TraceReporterType::Otlp | TraceReporterType::OtlpHttp
            ) {
                reporting.trace_reporter_type = if protocol == Protocol::Grpc {
                    TraceReporterType::Otlp
                } else {
                    TraceReporterType::OtlpHttp
                };
            }
        }
        Mode::Reporter(TraceReporterType::Otlp) => {
            reporting.trace_reporter_type = TraceReporterType::Otlp;
            reporting.protocol = Protocol::Grpc;
        }
        Mode::Reporter(TraceReporterType::OtlpHttp) => {
            reporting.trace_reporter_type = TraceReporterType::OtlpHttp;
            if reporting.protocol == Protocol::Grpc {
                reporting.protocol = Protocol::HttpProtobuf;
            }
        }
        Mode::Reporter(other) => reporting.trace_reporter_type = other,
    }
}

/// Describes a value for an error message: strings quoted, numbers and booleans as written.
pub(super) fn describe(raw: Raw<'_>) -> String {
    match raw {
        Raw::Text(s) => format!("{s:?}"),
        Raw::Yaml(v) => describe_yaml(v),
    }
}

/// Describes a YAML node for an error message.
pub(super) fn describe_yaml(v: &Value) -> String {
    match v {
        Value::Null => "null".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Sequence(_) => "a list".to_string(),
        Value::Mapping(_) => "a mapping".to_string(),
        Value::Tagged(t) => format!("a value tagged {}", t.tag),
    }
}

/// The text of a scalar YAML node (strings, numbers, booleans).
fn yaml_scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Parses a scalar value with `parse`, which returns what was expected on failure.
fn parse_scalar<T>(
    raw: Raw<'_>,
    parse: impl Fn(&str) -> Result<T, &'static str>,
) -> Result<T, String> {
    let text = match raw {
        Raw::Text(s) => Some(s.to_string()),
        Raw::Yaml(v) => yaml_scalar_text(v),
    };
    let fail = |expected: &str| format!("expected {expected}, got {}", describe(raw));
    match text {
        Some(text) => parse(text.trim()).map_err(fail),
        // A list or mapping: name what the parser wants (it rejects empty text when it wants
        // something specific, and accepts it when any text does).
        None => Err(fail(parse("").err().unwrap_or("a string"))),
    }
}

/// Parses `true`/`false` (any case) or `1`/`0`.
pub(super) fn parse_bool(s: &str) -> Result<bool, &'static str> {
    if s.eq_ignore_ascii_case("true") || s == "1" {
        Ok(true)
    } else if s.eq_ignore_ascii_case("false") || s == "0" {
        Ok(false)
    } else {
        Err("true or false")
    }
}

/// Parses an integer of at least `min` (0 or 1).
fn parse_int(s: &str, min: u64) -> Result<u64, &'static str> {
    let expected = if min == 0 {
        "a non-negative integer"
    } else {
        "a positive integer"
    };
    let s = s.strip_prefix('+').unwrap_or(s);
    match s.replace('_', "").parse::<u64>() {
        Ok(n) if n >= min && !s.is_empty() && s.as_bytes()[0].is_ascii_digit() => Ok(n),
        _ => Err(expected),
    }
}

/// `None` for empty text.
fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// An endpoint: empty (unset), `host:port`, or an `http://` / `https://` URL.
fn parse_endpoint(s: &str) -> Result<Option<String>, &'static str> {
    if s.is_empty() {
        return Ok(None);
    }
    if let Some((scheme, _)) = s.split_once("://")
        && !scheme.eq_ignore_ascii_case("http")
        && !scheme.eq_ignore_ascii_case("https")
    {
        return Err("an http:// or https:// URL or host:port");
    }
    Ok(Some(s.to_string()))
}

/// Parses a protocol or a reporter type.
pub(super) fn parse_mode(s: &str) -> Result<Mode, &'static str> {
    const EXPECTED: &str = "one of grpc, http/protobuf, http/json, OTLP, OTLP_HTTP, LOGGING, NONE";
    let lower = s.to_ascii_lowercase().replace('-', "_");
    Ok(match lower.as_str() {
        "grpc" => Mode::Wire(Protocol::Grpc),
        "http/protobuf" | "http" => Mode::Wire(Protocol::HttpProtobuf),
        "http/json" => Mode::Wire(Protocol::HttpJson),
        "otlp" | "unspecified" => Mode::Reporter(TraceReporterType::Otlp),
        "otlp_http" => Mode::Reporter(TraceReporterType::OtlpHttp),
        "logging" => Mode::Reporter(TraceReporterType::Logging),
        "none" => Mode::Reporter(TraceReporterType::None),
        "zipkin" => {
            return Err("OTLP, OTLP_HTTP, LOGGING or NONE (the sensor does not export Zipkin)");
        }
        _ => return Err(EXPECTED),
    })
}

/// Parses a metric reporter type, with or without the `METRIC_REPORTER_TYPE_` prefix.
fn parse_metric_reporter(s: &str) -> Result<MetricReporterType, &'static str> {
    let upper = s.to_ascii_uppercase();
    let name = upper
        .strip_prefix("METRIC_REPORTER_TYPE_")
        .unwrap_or(&upper);
    Ok(match name {
        "OTLP" => MetricReporterType::Otlp,
        "PROMETHEUS" => MetricReporterType::Prometheus,
        "LOGGING" => MetricReporterType::Logging,
        "NONE" | "UNSPECIFIED" => MetricReporterType::None,
        _ => return Err("one of OTLP, PROMETHEUS, LOGGING, NONE"),
    })
}

/// Parses `console` or `jsonl`.
fn parse_output(s: &str) -> Result<OutputKind, &'static str> {
    if s.eq_ignore_ascii_case("console") {
        Ok(OutputKind::Console)
    } else if s.eq_ignore_ascii_case("jsonl") {
        Ok(OutputKind::Jsonl)
    } else {
        Err("console or jsonl")
    }
}

/// Parses a socket address; empty text means none.
fn parse_addr(s: &str) -> Result<Option<SocketAddr>, &'static str> {
    if s.is_empty() {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .map_err(|_| "a socket address such as 127.0.0.1:9464")
}

/// Parses a list: a YAML sequence of scalars, or comma-separated text. Entries are trimmed,
/// lower-cased and de-duplicated; empty entries are dropped.
fn parse_list(raw: Raw<'_>) -> Result<Vec<String>, String> {
    collect_items(
        raw,
        |s| s.split(',').map(str::to_string).collect(),
        str::to_ascii_lowercase,
    )
}

/// The entries of a list value: a YAML sequence of scalars, or text cut by `text_items`; each
/// entry trimmed and passed through `normalise`, empty ones dropped, duplicates removed.
fn collect_items(
    raw: Raw<'_>,
    text_items: impl Fn(&str) -> Vec<String>,
    normalise: impl Fn(&str) -> String,
) -> Result<Vec<String>, String> {
    let items: Vec<String> = match raw {
        Raw::Text(s) => text_items(s),
        Raw::Yaml(Value::String(s)) => text_items(s),
        Raw::Yaml(Value::Sequence(seq)) => seq
            .iter()
            .enumerate()
            .filter(|(_, v)| !v.is_null())
            .map(|(i, v)| {
                yaml_scalar_text(v).ok_or_else(|| {
                    format!("item {} is {}, expected a string", i + 1, describe_yaml(v))
                })
            })
            .collect::<Result<_, _>>()?,
        Raw::Yaml(v) => {
            return Err(format!(
                "expected a list or a comma-separated string, got {}",
                describe_yaml(v)
            ));
        }
    };
    let mut out: Vec<String> = Vec::new();
    for item in items {
        let item = normalise(item.trim());
        if !item.is_empty() && !out.contains(&item) {
            out.push(item);
        }
    }
    Ok(out)
}

/// Parses a mapping of strings: a YAML mapping of scalars, or `k=v,k2=v2` text.
fn parse_map(raw: Raw<'_>) -> Result<BTreeMap<String, String>, String> {
    match raw {
        Raw::Text(s) => parse_pairs(s),
        Raw::Yaml(Value::String(s)) => parse_pairs(s),
        Raw::Yaml(Value::Mapping(map)) => {
            let mut out = BTreeMap::new();
            for (k, v) in map {
                let key = yaml_scalar_text(k)
                    .ok_or_else(|| format!("key {} is not a string", describe_yaml(k)))?;
                let value = if v.is_null() {
                    String::new()
                } else {
                    yaml_scalar_text(v).ok_or_else(|| {
                        format!(
                            "value of {key:?} is {}, expected a string",
                            describe_yaml(v)
                        )
                    })?
                };
                out.insert(key, value);
            }
            Ok(out)
        }
        Raw::Yaml(v) => Err(format!(
            "expected a mapping or k=v,k2=v2 text, got {}",
            describe_yaml(v)
        )),
    }
}

/// Parses the OTEL list format `k=v,k2=v2`: keys and values trimmed and URL-decoded. Errors
/// do not quote the text, which may hold credentials.
pub(super) fn parse_pairs(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for (i, entry) in s.split(',').enumerate() {
        if entry.trim().is_empty() {
            continue;
        }
        let Some((k, v)) = entry.split_once('=') else {
            return Err(format!(
                "entry {} is not key=value (its text is not shown: it may hold a secret)",
                i + 1
            ));
        };
        let key = percent_decode(k.trim());
        if key.is_empty() {
            return Err(format!("entry {} has an empty key", i + 1));
        }
        out.insert(key, percent_decode(v.trim()));
    }
    Ok(out)
}

/// Decodes `%XX` escapes; malformed escapes are kept as written.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = bytes.get(i + 1..i + 3)
            && let Ok(hex) = std::str::from_utf8(hex)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
