//! Unit tests of the configuration schema and loader.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::keys::parse_pairs;
use super::load::{normalise_key, unknown_env_vars};
use super::*;

/// The `config.yaml` of the integration guide's Kubernetes ConfigMap, verbatim.
const GUIDE_CONFIGMAP_YAML: &str = "\
service_name: appsentinels-watcher
enabled: true
reporting:
  endpoint: http://<Controller IP or FQDN>:<Port Number>
  protocol: grpc
  metricReporterType: None
dataCapture:
  bodyMaxSizeBytes: 131072
  httpHeaders: { request: true, response: true }
  httpBody: { request: true, response: true }
  allowedContentTypes:
    - application/json
    - application/xml
    - text/json
    - text/xml
    - application/x-www-form-urlencoded
    - application/graphql
";

/// The snake_case sample agent config of the Hypertrace Python agent.
const AGENT_CONFIG_SAMPLE: &str = "\
reporting:
  endpoint: \"http://localhost:9411/api/v2/spans\"
  secure: false
data_capture:
  http_headers:
    request: true
    response: true
  http_body:
    request: true
    response: true
  rpc_metadata:
    request: true
    response: true
  rpc_body:
    request: true
    response: true
";

/// An environment made of the given pairs.
fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: BTreeMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name: &str| map.get(name).cloned()
}

/// Writes `text` to a fresh file in the temporary directory.
fn temp_file(text: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!(
        "sensor-config-test-{}-{n}.yaml",
        std::process::id()
    ));
    std::fs::write(&path, text).expect("write temp config");
    path
}

/// Loads `file_text` (if any) as `--config` with the environment `pairs`.
fn load_with(
    file_text: Option<&str>,
    pairs: &[(&str, &str)],
    overrides: Overrides,
) -> anyhow::Result<Loaded> {
    let path = file_text.map(temp_file);
    let overrides = Overrides {
        config_file: overrides.config_file.or(path.clone()),
        ..overrides
    };
    let result = load(&overrides, &env_of(pairs));
    if let Some(path) = path {
        let _ = std::fs::remove_file(path);
    }
    result
}

/// Loads an error's message.
fn load_err(file_text: Option<&str>, pairs: &[(&str, &str)]) -> String {
    match load_with(file_text, pairs, Overrides::default()) {
        Ok(loaded) => panic!("expected an error, got {loaded:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn guide_configmap_yaml_parses_without_warnings() {
    let (config, warnings) = Config::from_yaml_str(GUIDE_CONFIGMAP_YAML).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert!(config.enabled);
    assert_eq!(config.service_name.as_deref(), Some("appsentinels-watcher"));
    assert_eq!(
        config.reporting.endpoint.as_deref(),
        Some("http://<Controller IP or FQDN>:<Port Number>")
    );
    assert_eq!(config.reporting.protocol, Protocol::Grpc);
    assert_eq!(
        config.reporting.trace_reporter_type,
        TraceReporterType::Otlp
    );
    assert_eq!(
        config.reporting.metric_reporter_type,
        MetricReporterType::None
    );
    assert_eq!(config.data_capture.body_max_size_bytes, 131_072);
    assert_eq!(
        config.data_capture.http_headers,
        CaptureToggle {
            request: true,
            response: true
        }
    );
    assert_eq!(
        config.data_capture.http_body,
        CaptureToggle {
            request: true,
            response: true
        }
    );
    assert_eq!(
        config.data_capture.allowed_content_types,
        [
            "application/json",
            "application/xml",
            "text/json",
            "text/xml",
            "application/x-www-form-urlencoded",
            "application/graphql",
        ]
    );
    assert_eq!(
        config.traces_endpoint().as_deref(),
        Some("http://<Controller IP or FQDN>:<Port Number>")
    );
}

#[test]
fn agent_config_snake_case_sample_parses() {
    let loaded = load_with(Some(AGENT_CONFIG_SAMPLE), &[], Overrides::default()).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let c = &loaded.config;
    assert_eq!(
        c.reporting.endpoint.as_deref(),
        Some("http://localhost:9411/api/v2/spans")
    );
    assert!(!c.reporting.secure);
    assert!(c.data_capture.http_body.request && c.data_capture.http_body.response);
    assert_eq!(
        loaded.sources.get("reporting.endpoint"),
        Some(&Source::File)
    );
    assert_eq!(
        loaded.sources.get("data_capture.http_headers.request"),
        Some(&Source::File)
    );
    assert!(loaded.config_file.is_some());
}

#[test]
fn camel_and_snake_case_mix_in_one_file() {
    let yaml = "\
serviceName: svc
reporting:
  traceReporterType: OTLP_HTTP
  certFile: /etc/ca.pem
  cert_file: /etc/ca2.pem
data_capture:
  bodyMaxProcessingSizeBytes: 2048
  body_max_size_bytes: 1024
  httpBody: { request: false }
  redactHeaders: [X-Token, Authorization]
sensor:
  responseTimeoutMs: 5000
  maxConnections: 10
  exportQueueSize: 16
  export_queue_bytes: 1000000
  batchMaxBytes: 4096
  batchTimeoutMs: 250
  idleTimeoutMs: 60000
  metricsAddr: 127.0.0.1:9464
  output: jsonl
";
    let (c, warnings) = Config::from_yaml_str(yaml).unwrap();
    assert_eq!(c.service_name.as_deref(), Some("svc"));
    assert_eq!(c.reporting.trace_reporter_type, TraceReporterType::OtlpHttp);
    assert_eq!(c.reporting.protocol, Protocol::HttpProtobuf);
    assert_eq!(c.reporting.cert_file, Some(PathBuf::from("/etc/ca2.pem")));
    assert_eq!(c.data_capture.body_max_size_bytes, 1024);
    assert_eq!(c.data_capture.body_max_processing_size_bytes, 2048);
    assert!(!c.data_capture.http_body.request);
    assert!(c.data_capture.http_body.response);
    assert_eq!(c.data_capture.redact_headers, ["x-token", "authorization"]);
    assert_eq!(c.sensor.response_timeout_ms, 5000);
    assert_eq!(c.sensor.max_connections, 10);
    assert_eq!(c.sensor.export_queue_size, 16);
    assert_eq!(c.sensor.export_queue_bytes, 1_000_000);
    assert_eq!(c.sensor.batch_max_bytes, 4096);
    assert_eq!(
        c.sensor.batch_timeout(),
        std::time::Duration::from_millis(250)
    );
    assert_eq!(c.sensor.idle_timeout_ms, 60_000);
    assert_eq!(
        c.sensor.metrics_addr,
        Some("127.0.0.1:9464".parse().unwrap())
    );
    assert_eq!(c.sensor.output, OutputKind::Jsonl);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("reporting.cert_file is given twice"),
        "{warnings:?}"
    );
    assert!(warnings[0].contains("reporting.certFile"), "{warnings:?}");
}

#[test]
fn defaults_when_nothing_is_configured() {
    let loaded = load_with(None, &[], Overrides::default()).unwrap();
    assert_eq!(loaded.config, Config::default());
    assert!(loaded.warnings.is_empty());
    assert!(loaded.sources.is_empty());
    let d = &loaded.config;
    assert!(d.enabled);
    assert_eq!(d.data_capture.body_max_size_bytes, 131_072);
    assert_eq!(d.data_capture.body_max_processing_size_bytes, 1_048_576);
    assert_eq!(d.data_capture.redact_headers, DEFAULT_REDACT_HEADERS);
    assert_eq!(d.sensor.output, OutputKind::Console);
    assert_eq!(d.sensor.response_timeout_ms, 120_000);
    assert_eq!(d.sensor.max_connections, 65_536);
    assert_eq!(d.sensor.idle_timeout_ms, 300_000);
    assert_eq!(d.sensor.export_queue_size, 2048);
    assert_eq!(d.sensor.export_queue_bytes, 64 * 1024 * 1024);
    assert_eq!(d.sensor.batch_max_bytes, 3 * 1024 * 1024);
    assert_eq!(d.sensor.batch_timeout_ms, 1000);
    assert_eq!(d.export_target(), ExportTarget::Local(OutputKind::Console));
}

#[test]
fn precedence_flag_over_ht_over_otel_over_file_over_default() {
    let file = "reporting:\n  endpoint: file-host:4317\nsensor:\n  metrics_addr: 127.0.0.1:1\n  output: jsonl\n";
    let otel = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel-host:4317");
    let ht = ("HT_REPORTING_ENDPOINT", "http://ht-host:4317");
    let ht_addr = ("HT_SENSOR_METRICS_ADDR", "127.0.0.1:2");
    let flags = Overrides {
        metrics_addr: Some("127.0.0.1:3".parse().unwrap()),
        output: Some(OutputKind::Console),
        ..Overrides::default()
    };

    let endpoint = |file: Option<&str>, env: &[(&str, &str)]| {
        load_with(file, env, Overrides::default())
            .unwrap()
            .config
            .reporting
            .endpoint
    };
    assert_eq!(endpoint(None, &[]), None);
    assert_eq!(endpoint(Some(file), &[]).as_deref(), Some("file-host:4317"));
    assert_eq!(
        endpoint(Some(file), &[otel]).as_deref(),
        Some("http://otel-host:4317")
    );
    assert_eq!(
        endpoint(Some(file), &[otel, ht]).as_deref(),
        Some("http://ht-host:4317")
    );

    let loaded = load_with(Some(file), &[otel, ht, ht_addr], Overrides::default()).unwrap();
    assert_eq!(
        loaded.config.sensor.metrics_addr,
        Some("127.0.0.1:2".parse().unwrap())
    );
    assert_eq!(loaded.config.sensor.output, OutputKind::Jsonl);
    assert_eq!(
        loaded.sources["reporting.endpoint"],
        Source::Env("HT_REPORTING_ENDPOINT")
    );
    assert_eq!(
        loaded.sources["sensor.metrics_addr"],
        Source::Env("HT_SENSOR_METRICS_ADDR")
    );
    assert_eq!(loaded.sources["sensor.output"], Source::File);

    let loaded = load_with(Some(file), &[otel, ht, ht_addr], flags).unwrap();
    assert_eq!(
        loaded.config.sensor.metrics_addr,
        Some("127.0.0.1:3".parse().unwrap())
    );
    assert_eq!(loaded.config.sensor.output, OutputKind::Console);
    assert_eq!(
        loaded.sources["sensor.metrics_addr"],
        Source::Flag("--metrics-addr")
    );
    assert_eq!(loaded.sources["sensor.output"], Source::Flag("--output"));
}

#[test]
fn precedence_of_protocol_and_headers_layers() {
    let file = "reporting:\n  protocol: grpc\n  headers:\n    x-a: file\n    x-b: file\n";
    let loaded = load_with(
        Some(file),
        &[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-b=otel,x-c=otel"),
            ("HT_REPORTING_HEADERS", "x-c=ht"),
        ],
        Overrides::default(),
    )
    .unwrap();
    let r = &loaded.config.reporting;
    assert_eq!(r.protocol, Protocol::HttpJson);
    assert_eq!(r.trace_reporter_type, TraceReporterType::OtlpHttp);
    let expected: BTreeMap<String, String> = [("x-a", "file"), ("x-b", "otel"), ("x-c", "ht")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(r.headers, expected);

    let loaded = load_with(
        Some(file),
        &[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("HT_REPORTING_PROTOCOL", "grpc"),
        ],
        Overrides::default(),
    )
    .unwrap();
    assert_eq!(loaded.config.reporting.protocol, Protocol::Grpc);
    assert_eq!(
        loaded.sources["reporting.protocol"],
        Source::Env("HT_REPORTING_PROTOCOL")
    );
}

#[test]
fn config_file_from_flag_else_ht_config_file() {
    let from_env = temp_file("service_name: from-env-file\n");
    let from_flag = temp_file("service_name: from-flag-file\n");
    let env_path = from_env.to_string_lossy().into_owned();
    let env = env_of(&[("HT_CONFIG_FILE", env_path.as_str())]);

    let loaded = load(&Overrides::default(), &env).unwrap();
    assert_eq!(loaded.config.service_name.as_deref(), Some("from-env-file"));
    assert_eq!(loaded.config_file.as_deref(), Some(from_env.as_path()));

    let flags = Overrides {
        config_file: Some(from_flag.clone()),
        ..Overrides::default()
    };
    let loaded = load(&flags, &env).unwrap();
    assert_eq!(
        loaded.config.service_name.as_deref(),
        Some("from-flag-file")
    );

    let _ = std::fs::remove_file(from_env);
    let _ = std::fs::remove_file(from_flag);

    let missing = Overrides {
        config_file: Some(PathBuf::from("/nonexistent/sensor/config.yaml")),
        ..Overrides::default()
    };
    let err = load(&missing, &env_of(&[])).unwrap_err().to_string();
    assert!(
        err.contains("cannot read config file /nonexistent/sensor/config.yaml"),
        "{err}"
    );
}

#[test]
fn ht_variables_set_every_section() {
    let loaded = load_with(
        None,
        &[
            ("HT_SERVICE_NAME", "svc"),
            ("HT_REPORTING_ENDPOINT", "collector:4318"),
            ("HT_REPORTING_SECURE", "TRUE"),
            ("HT_REPORTING_TRACE_REPORTER_TYPE", "OTLP_HTTP"),
            ("HT_REPORTING_CERT_FILE", "/etc/ca.pem"),
            ("HT_REPORTING_TOKEN", "tok"),
            ("HT_DATA_CAPTURE_BODY_MAX_SIZE_BYTES", "64"),
            ("HT_DATA_CAPTURE_HTTP_BODY_REQUEST", "false"),
            ("HT_DATA_CAPTURE_HTTP_HEADERS_RESPONSE", "false"),
            ("HT_RESOURCE_ATTRIBUTES", "deployment.environment=prod"),
            ("HT_SENSOR_OUTPUT", "jsonl"),
            ("HT_UNRELATED_EMPTY", ""),
        ],
        Overrides::default(),
    )
    .unwrap();
    let c = &loaded.config;
    assert_eq!(c.service_name.as_deref(), Some("svc"));
    assert!(c.reporting.secure);
    assert_eq!(c.reporting.protocol, Protocol::HttpProtobuf);
    assert_eq!(c.reporting.cert_file, Some(PathBuf::from("/etc/ca.pem")));
    assert_eq!(c.reporting.token.as_deref(), Some("tok"));
    assert_eq!(c.data_capture.body_max_size_bytes, 64);
    assert!(!c.data_capture.http_body.request);
    assert!(!c.data_capture.http_headers.response);
    assert_eq!(c.resource_attributes["deployment.environment"], "prod");
    assert_eq!(c.sensor.output, OutputKind::Jsonl);
    assert_eq!(
        c.export_target(),
        ExportTarget::Otlp {
            url: "https://collector:4318/v1/traces".to_string(),
            protocol: Protocol::HttpProtobuf
        }
    );
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
}

#[test]
fn ht_allowed_content_types_is_a_comma_list() {
    let loaded = load_with(
        Some("dataCapture:\n  allowedContentTypes: [text/plain]\n"),
        &[(
            "HT_DATA_CAPTURE_ALLOWED_CONTENT_TYPES",
            "application/json, Text/Plain,,json ",
        )],
        Overrides::default(),
    )
    .unwrap();
    let dc = &loaded.config.data_capture;
    assert_eq!(
        dc.allowed_content_types,
        ["application/json", "text/plain", "json"]
    );
    assert!(dc.content_type_allowed("application/vnd.api+json; charset=utf-8"));
    assert!(!dc.content_type_allowed("image/png"));

    let (c, _) =
        Config::from_yaml_str("data_capture:\n  allowed_content_types: \"json, xml\"\n").unwrap();
    assert_eq!(c.data_capture.allowed_content_types, ["json", "xml"]);
    let (c, _) = Config::from_yaml_str("data_capture:\n  allowed_content_types: []\n").unwrap();
    assert!(c.data_capture.content_type_allowed("image/png"));
}

#[test]
fn ht_enabled_false_disables() {
    let loaded = load_with(
        Some("enabled: true\n"),
        &[("HT_ENABLED", "false")],
        Overrides::default(),
    )
    .unwrap();
    assert!(!loaded.config.enabled);
    assert_eq!(loaded.config.export_target(), ExportTarget::Nothing);
    let loaded = load_with(None, &[("HT_ENABLED", "False")], Overrides::default()).unwrap();
    assert!(!loaded.config.enabled);
    let (c, _) = Config::from_yaml_str("enabled: false\n").unwrap();
    assert!(!c.enabled);
    let err = load_err(None, &[("HT_ENABLED", "maybe")]);
    assert_eq!(
        err,
        "enabled: expected true or false, got \"maybe\" (from HT_ENABLED)"
    );
}

#[test]
fn unknown_keys_warn_with_their_full_path() {
    let yaml = "\
service_name: x
colour: blue
dataCapture:
  bodyMaxSizeBytes: 10
  fooBar: 1
  httpBody:
    request: true
    bogus: false
reporting:
  opa:
    endpoint: http://opa:8181
  token: t
propagation_formats: [B3]
";
    let loaded = load_with(Some(yaml), &[], Overrides::default()).unwrap();
    let w = &loaded.warnings;
    assert_eq!(w.len(), 3, "{w:?}");
    assert!(
        w[0].starts_with("unknown key colour in config file"),
        "{w:?}"
    );
    assert!(
        w[1].starts_with("unknown key dataCapture.fooBar in config file"),
        "{w:?}"
    );
    assert!(
        w[2].starts_with("unknown key dataCapture.httpBody.bogus in config file"),
        "{w:?}"
    );
    assert_eq!(loaded.config.data_capture.body_max_size_bytes, 10);
    assert_eq!(loaded.config.reporting.token.as_deref(), Some("t"));
}

#[test]
fn unknown_ht_variables_warn() {
    let warnings = unknown_env_vars([
        "HT_ENABLED",
        "HT_CONFIG_FILE",
        "HT_LOG_LEVEL",
        "HT_DATA_CAPTURE_RPC_BODY_REQUEST",
        "HT_DATA_CAPTURE_BODY_MAX_SIZE",
        "PATH",
    ]);
    assert_eq!(
        warnings,
        ["unknown environment variable HT_DATA_CAPTURE_BODY_MAX_SIZE ignored"]
    );
}

#[test]
fn invalid_values_name_their_key_path() {
    let cases: &[(&str, &str)] = &[
        (
            "data_capture:\n  body_max_size_bytes: abc\n",
            "data_capture.body_max_size_bytes: expected a non-negative integer, got \"abc\"",
        ),
        (
            "dataCapture:\n  bodyMaxSizeBytes: -5\n",
            "data_capture.body_max_size_bytes: expected a non-negative integer, got -5",
        ),
        (
            "reporting:\n  protocol: carrier-pigeon\n",
            "reporting.protocol: expected one of grpc, http/protobuf, http/json, OTLP, OTLP_HTTP, LOGGING, NONE, got \"carrier-pigeon\"",
        ),
        (
            "reporting:\n  trace_reporter_type: ZIPKIN\n",
            "reporting.trace_reporter_type: expected OTLP, OTLP_HTTP, LOGGING or NONE (the sensor does not export Zipkin), got \"ZIPKIN\"",
        ),
        (
            "dataCapture:\n  httpHeaders: { request: sometimes }\n",
            "data_capture.http_headers.request: expected true or false, got \"sometimes\"",
        ),
        ("reporting: 5\n", "reporting: expected a mapping, got 5"),
        (
            "sensor:\n  max_connections: 0\n",
            "sensor.max_connections: expected a positive integer, got 0",
        ),
        (
            "sensor:\n  metrics_addr: localhost\n",
            "sensor.metrics_addr: expected a socket address such as 127.0.0.1:9464, got \"localhost\"",
        ),
        (
            "sensor:\n  output: [console]\n",
            "sensor.output: expected console or jsonl, got a list",
        ),
        (
            "service_name: { a: 1 }\n",
            "service_name: expected a string, got a mapping",
        ),
        (
            "reporting:\n  endpoint: grpc://collector:4317\n",
            "reporting.endpoint: expected an http:// or https:// URL or host:port, got \"grpc://collector:4317\"",
        ),
        (
            "data_capture:\n  allowed_content_types: [json, [xml]]\n",
            "data_capture.allowed_content_types: item 2 is a list, expected a string",
        ),
    ];
    for (yaml, expected) in cases {
        let err = load_err(Some(yaml), &[]);
        assert!(
            err.starts_with(expected),
            "{yaml:?}: got {err:?}, expected {expected:?}"
        );
        assert!(err.contains("config file"), "{err}");
    }
    let err = Config::from_yaml_str("dataCapture:\n  bodyMaxSizeBytes: abc\n").unwrap_err();
    assert!(
        err.to_string()
            .contains("written dataCapture.bodyMaxSizeBytes"),
        "{err}"
    );

    let err = load_err(None, &[("HT_DATA_CAPTURE_BODY_MAX_SIZE_BYTES", "-1")]);
    assert_eq!(
        err,
        "data_capture.body_max_size_bytes: expected a non-negative integer, got \"-1\" (from HT_DATA_CAPTURE_BODY_MAX_SIZE_BYTES)"
    );
    let err = load_err(None, &[("OTEL_EXPORTER_OTLP_PROTOCOL", "OTLP")]);
    assert!(
        err.starts_with("reporting.protocol: expected one of grpc, http/protobuf, http/json"),
        "{err}"
    );
    assert!(err.ends_with("(from OTEL_EXPORTER_OTLP_PROTOCOL)"), "{err}");

    let err = Config::from_yaml_str("reporting: [\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("is not valid YAML"), "{err}");
    let err = Config::from_yaml_str("- a\n- b\n").unwrap_err().to_string();
    assert!(
        err.contains("expected a mapping of keys at the top level, got a list"),
        "{err}"
    );
}

#[test]
fn empty_file_and_null_values_keep_defaults() {
    let (c, w) = Config::from_yaml_str("").unwrap();
    assert_eq!(c, Config::default());
    assert!(w.is_empty());
    let (c, w) = Config::from_yaml_str(
        "reporting:\n  endpoint:\ndataCapture:\n  bodyMaxSizeBytes: ~\nsensor:\n",
    )
    .unwrap();
    assert_eq!(c, Config::default());
    assert!(w.is_empty());
}

#[test]
fn endpoint_rules() {
    let with = |endpoint: &str, protocol: Protocol, exact: bool, secure: bool| {
        let mut c = Config::default();
        c.reporting.endpoint = Some(endpoint.to_string());
        c.reporting.protocol = protocol;
        c.reporting.endpoint_exact = exact;
        c.reporting.secure = secure;
        c.traces_endpoint()
    };
    let http = Protocol::HttpProtobuf;
    let cases: &[(&str, Protocol, bool, bool, &str)] = &[
        (
            "http://h:4318",
            http,
            false,
            false,
            "http://h:4318/v1/traces",
        ),
        (
            "http://h:4318/",
            http,
            false,
            false,
            "http://h:4318/v1/traces",
        ),
        (
            "http://h:4318/v1/traces",
            http,
            false,
            false,
            "http://h:4318/v1/traces",
        ),
        (
            "http://h:4318/v1/traces/",
            http,
            false,
            false,
            "http://h:4318/v1/traces/",
        ),
        (
            "https://h/otlp",
            Protocol::HttpJson,
            false,
            false,
            "https://h/otlp/v1/traces",
        ),
        (
            "http://h:4318?x=1",
            http,
            false,
            false,
            "http://h:4318/v1/traces?x=1",
        ),
        (
            "http://v1/traces",
            http,
            false,
            false,
            "http://v1/traces/v1/traces",
        ),
        ("h:4318", http, false, false, "http://h:4318/v1/traces"),
        ("h:4318", http, false, true, "https://h:4318/v1/traces"),
        (
            "https://apm/20200101/opentelemetry/private",
            http,
            true,
            false,
            "https://apm/20200101/opentelemetry/private",
        ),
        (
            "http://h:4317",
            Protocol::Grpc,
            false,
            false,
            "http://h:4317",
        ),
        (
            "http://h:9009/v1/traces",
            Protocol::Grpc,
            false,
            false,
            "http://h:9009/v1/traces",
        ),
        ("h:4317", Protocol::Grpc, false, true, "https://h:4317"),
        ("h:4317", Protocol::Grpc, false, false, "http://h:4317"),
    ];
    for (endpoint, protocol, exact, secure, expected) in cases {
        assert_eq!(
            with(endpoint, *protocol, *exact, *secure).as_deref(),
            Some(*expected),
            "{endpoint} {protocol} exact={exact} secure={secure}"
        );
    }
    assert_eq!(Config::default().traces_endpoint(), None);
}

#[test]
fn otel_traces_endpoint_is_used_exactly() {
    let exact = "https://apm.example/20200101/opentelemetry/private/v1/custom";
    let loaded = load_with(
        None,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://general:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", exact),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ],
        Overrides::default(),
    )
    .unwrap();
    assert!(loaded.config.reporting.endpoint_exact);
    assert_eq!(loaded.config.traces_endpoint().as_deref(), Some(exact));
    assert_eq!(
        loaded.sources["reporting.endpoint"],
        Source::Env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    );

    let loaded = load_with(
        None,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://general:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ],
        Overrides::default(),
    )
    .unwrap();
    assert_eq!(
        loaded.config.traces_endpoint().as_deref(),
        Some("http://general:4318/v1/traces")
    );

    let loaded = load_with(
        None,
        &[
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", exact),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("HT_REPORTING_ENDPOINT", "http://ht:4318"),
        ],
        Overrides::default(),
    )
    .unwrap();
    assert!(!loaded.config.reporting.endpoint_exact);
    assert_eq!(
        loaded.config.traces_endpoint().as_deref(),
        Some("http://ht:4318/v1/traces")
    );
}

#[test]
fn otel_headers_parsing() {
    let pairs =
        parse_pairs("api-key=abc%20def, x-tenant = t1 ,Authorization=dataKey%3Dxyz,,").unwrap();
    assert_eq!(pairs["api-key"], "abc def");
    assert_eq!(pairs["x-tenant"], "t1");
    assert_eq!(pairs["Authorization"], "dataKey=xyz");
    assert_eq!(pairs.len(), 3);
    assert_eq!(parse_pairs("k=a=b").unwrap()["k"], "a=b");
    assert_eq!(parse_pairs("k=%zz%4").unwrap()["k"], "%zz%4");
    assert!(
        parse_pairs("novalue")
            .unwrap_err()
            .contains("entry 1 is not key=value")
    );
    assert!(parse_pairs("=v").unwrap_err().contains("empty key"));

    let loaded = load_with(
        None,
        &[
            ("OTEL_EXPORTER_OTLP_HEADERS", "general=1"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
                "Authorization=Bearer%20t0k",
            ),
        ],
        Overrides::default(),
    )
    .unwrap();
    let headers = &loaded.config.reporting.headers;
    assert_eq!(headers.len(), 1);
    assert_eq!(headers["Authorization"], "Bearer t0k");
    assert_eq!(
        loaded.sources["reporting.headers"],
        Source::Env("OTEL_EXPORTER_OTLP_TRACES_HEADERS")
    );

    let err = load_err(None, &[("OTEL_EXPORTER_OTLP_HEADERS", "a=1,broken")]);
    assert_eq!(
        err,
        "reporting.headers: entry 2 is not key=value (its text is not shown: it may hold a secret) (from OTEL_EXPORTER_OTLP_HEADERS)"
    );
}

#[test]
fn otel_certificate_insecure_service_name_and_resources() {
    let loaded = load_with(
        Some("reporting:\n  secure: true\n"),
        &[
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/etc/otel-ca.pem"),
            ("OTEL_EXPORTER_OTLP_INSECURE", "true"),
            ("OTEL_SERVICE_NAME", "otel-name"),
            ("OTEL_RESOURCE_ATTRIBUTES", "team=api,region=eu%2Dwest"),
        ],
        Overrides::default(),
    )
    .unwrap();
    let c = &loaded.config;
    assert_eq!(
        c.reporting.cert_file,
        Some(PathBuf::from("/etc/otel-ca.pem"))
    );
    assert!(!c.reporting.secure);
    assert_eq!(c.service_name.as_deref(), Some("otel-name"));
    assert_eq!(c.resource_attributes["region"], "eu-west");

    let loaded = load_with(
        None,
        &[
            ("OTEL_SERVICE_NAME", "otel-name"),
            ("HT_SERVICE_NAME", "ht-name"),
        ],
        Overrides::default(),
    )
    .unwrap();
    assert_eq!(loaded.config.service_name.as_deref(), Some("ht-name"));
}

#[test]
fn reporter_types_map_to_protocols_and_targets() {
    let target = |yaml: &str| Config::from_yaml_str(yaml).unwrap().0;

    let c = target("reporting:\n  endpoint: h:4318\n  trace_reporter_type: OTLP_HTTP\n");
    assert_eq!(c.reporting.protocol, Protocol::HttpProtobuf);
    assert_eq!(
        c.export_target(),
        ExportTarget::Otlp {
            url: "http://h:4318/v1/traces".into(),
            protocol: Protocol::HttpProtobuf
        }
    );

    let c = target("reporting:\n  trace_reporter_type: OTLP_HTTP\n  protocol: http/json\n");
    assert_eq!(c.reporting.protocol, Protocol::HttpJson);
    assert_eq!(c.reporting.trace_reporter_type, TraceReporterType::OtlpHttp);

    let c = target("reporting:\n  protocol: http/protobuf\n  traceReporterType: otlp\n");
    assert_eq!(
        c.reporting.protocol,
        Protocol::HttpProtobuf,
        "protocol applies after the reporter type"
    );

    let c =
        target("reporting:\n  endpoint: h:4317\n  protocol: LOGGING\nsensor:\n  output: jsonl\n");
    assert_eq!(c.reporting.trace_reporter_type, TraceReporterType::Logging);
    assert_eq!(c.export_target(), ExportTarget::Local(OutputKind::Jsonl));

    let c =
        target("reporting:\n  endpoint: h:4317\n  trace_reporter_type: NONE\n  protocol: grpc\n");
    assert_eq!(c.reporting.trace_reporter_type, TraceReporterType::None);
    assert_eq!(c.export_target(), ExportTarget::Nothing);

    let c = target("reporting:\n  endpoint: h:4317\n");
    assert_eq!(
        c.export_target(),
        ExportTarget::Otlp {
            url: "http://h:4317".into(),
            protocol: Protocol::Grpc
        }
    );

    let c = target("reporting:\n  metric_reporter_type: METRIC_REPORTER_TYPE_PROMETHEUS\n");
    assert_eq!(
        c.reporting.metric_reporter_type,
        MetricReporterType::Prometheus
    );
}

#[test]
fn inconsistent_settings_warn() {
    let (_, w) = Config::from_yaml_str(
        "reporting:\n  endpoint: http://h:4317\n  secure: true\n  cert_file: /ca.pem\n",
    )
    .unwrap();
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(
        w[0].starts_with("reporting.secure is true but reporting.endpoint starts with http://")
    );
    assert!(w[1].starts_with("reporting.cert_file (/ca.pem) is set"));
    let (_, w) = Config::from_yaml_str(
        "reporting:\n  endpoint: https://h:4317\n  secure: true\n  cert_file: /ca.pem\n",
    )
    .unwrap();
    assert!(w.is_empty(), "{w:?}");
    let (_, w) = Config::from_yaml_str("reporting:\n  metricReporterType: PROMETHEUS\n").unwrap();
    assert_eq!(w.len(), 1, "{w:?}");
    let (_, w) = Config::from_yaml_str(
        "data_capture:\n  body_max_size_bytes: 10\n  body_max_processing_size_bytes: 5\n",
    )
    .unwrap();
    assert_eq!(w.len(), 1, "{w:?}");
}

#[test]
fn key_normalisation() {
    for (written, canonical) in [
        ("bodyMaxSizeBytes", "body_max_size_bytes"),
        ("body_max_size_bytes", "body_max_size_bytes"),
        ("dataCapture", "data_capture"),
        ("HTTPHeaders", "http_headers"),
        ("metricReporterType", "metric_reporter_type"),
        ("cert-file", "cert_file"),
        ("serviceName", "service_name"),
        ("ServiceName", "service_name"),
        ("service_Name", "service_name"),
    ] {
        assert_eq!(normalise_key(written), canonical, "{written}");
    }
}

#[test]
fn redacted_headers_ignore_case() {
    let dc = DataCapture::default();
    assert!(dc.is_redacted_header("Authorization"));
    assert!(dc.is_redacted_header("X-API-Key"));
    assert!(!dc.is_redacted_header("content-type"));
}

#[test]
fn ring_buffer_size_is_a_power_of_two_page_multiple_from_64_kib_to_1_gib() {
    let size = |pairs: &[(&str, &str)]| {
        load_with(None, pairs, Overrides::default())
            .unwrap()
            .config
            .sensor
            .ring_buffer_bytes
    };
    assert_eq!(size(&[]), 16 << 20);
    for ok in ["65536", "1048576", "1073741824"] {
        assert_eq!(size(&[("HT_SENSOR_RING_BUFFER_BYTES", ok)]).to_string(), ok);
    }
    let (config, _) = Config::from_yaml_str("sensor:\n  ringBufferBytes: 262144\n").unwrap();
    assert_eq!(config.sensor.ring_buffer_bytes, 262_144);
    for bad in [
        "0",
        "4096",
        "32768",
        "100000",
        "2147483648",
        "16M",
        "-65536",
    ] {
        let err = load_err(None, &[("HT_SENSOR_RING_BUFFER_BYTES", bad)]);
        assert_eq!(
            err,
            format!(
                "sensor.ring_buffer_bytes: expected a power of two from 65536 (64 KiB) to 1073741824 (1 GiB), a multiple of the page size, got \"{bad}\" (from HT_SENSOR_RING_BUFFER_BYTES)"
            )
        );
    }
}

#[test]
fn key_table_matches_the_schema() {
    for doc in KEYS {
        let expected_env = format!("HT_{}", doc.key.replace('.', "_").to_ascii_uppercase());
        assert_eq!(doc.env, expected_env, "{}", doc.key);
        assert!(!doc.description.is_empty(), "{}", doc.key);
        if !doc.default.is_empty() {
            let mut c = Config::default();
            doc.apply(keys::Raw::Text(doc.default), &mut c).unwrap();
            assert_eq!(
                c,
                Config::default(),
                "the documented default of {} is not the default",
                doc.key
            );
        }
    }
    let table = keys_markdown();
    assert_eq!(table.lines().count(), KEYS.len() + 2);
    assert!(table.contains("| `data_capture.body_max_size_bytes` | `131072` | `HT_DATA_CAPTURE_BODY_MAX_SIZE_BYTES` | — |"));

    let mut seen = std::collections::BTreeSet::new();
    for doc in KEYS {
        assert!(seen.insert(doc.key), "duplicate key {}", doc.key);
    }
}

#[test]
fn redaction_and_policy_keys_parse_from_file_and_variables() {
    let yaml = "\
dataCapture:
  redactRequestBody: ['$.user.email', '$.users[*].credit_card']
  redact_response_body: $.token
  redactQueryParams: [Token, api_key]
  redactFormFields: password
  redactCardNumbers: true
  redactEmails: true
  redactPatterns: ['\\d{3,4}-X']
  excludePaths: [/health, '/internal/**']
  samplingRatio: 0.5
  serviceOverrides:
    orders:
      samplingRatio: 0.1
      httpBody: {response: false}
      redactHeaders: [x-order-secret]
";
    let (c, warnings) = Config::from_yaml_str(yaml).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let d = &c.data_capture;
    assert_eq!(
        d.redact_request_body,
        ["$.user.email", "$.users[*].credit_card"]
    );
    assert_eq!(d.redact_response_body, ["$.token"]);
    assert_eq!(d.redact_query_params, ["token", "api_key"]);
    assert_eq!(d.redact_form_fields, ["password"]);
    assert!(d.redact_card_numbers && d.redact_emails);
    assert_eq!(d.redact_patterns, ["\\d{3,4}-X"]);
    assert_eq!(d.exclude_paths, ["/health", "/internal/**"]);
    assert_eq!(d.sampling_ratio, 0.5);
    let orders = c.data_capture_for("orders");
    assert_eq!(orders.sampling_ratio, 0.1);
    assert!(!orders.http_body.response && orders.http_body.request);
    assert_eq!(orders.redact_headers, ["x-order-secret"]);
    assert_eq!(orders.redact_request_body, d.redact_request_body);
    assert!(orders.service_overrides.is_empty());
    let other = c.data_capture_for("billing");
    assert_eq!(other.sampling_ratio, 0.5);

    // Variables: comma lists, a JSON list, one regex with commas, overrides as YAML text;
    // a global variable does not undo a service's override.
    let loaded = load_with(
        Some(yaml),
        &[
            (
                "HT_DATA_CAPTURE_REDACT_REQUEST_BODY",
                r#"["$['a','b']", "$.c"]"#,
            ),
            ("HT_DATA_CAPTURE_REDACT_RESPONSE_BODY", "$.x,$.y[*].z"),
            ("HT_DATA_CAPTURE_REDACT_PATTERNS", "[0-9]{2,3}"),
            ("HT_DATA_CAPTURE_REDACT_HEADERS", "authorization"),
            ("HT_DATA_CAPTURE_SAMPLING_RATIO", "1"),
            ("HT_DATA_CAPTURE_EXCLUDE_PATHS", "/metrics"),
            ("HT_DATA_CAPTURE_REDACT_EMAILS", "false"),
            (
                "HT_DATA_CAPTURE_SERVICE_OVERRIDES",
                r#"{"billing": {"sampling_ratio": 0.2, "exclude_paths": ["/ping"]}}"#,
            ),
        ],
        Overrides::default(),
    )
    .unwrap();
    let c = &loaded.config;
    let d = &c.data_capture;
    assert_eq!(d.redact_request_body, ["$['a','b']", "$.c"]);
    assert_eq!(d.redact_response_body, ["$.x", "$.y[*].z"]);
    assert_eq!(d.redact_patterns, ["[0-9]{2,3}"]);
    assert_eq!(d.exclude_paths, ["/metrics"]);
    assert!(!d.redact_emails);
    assert_eq!(d.sampling_ratio, 1.0);
    assert_eq!(c.data_capture_for("orders").sampling_ratio, 0.1);
    assert_eq!(
        c.data_capture_for("orders").redact_headers,
        ["x-order-secret"]
    );
    let billing = c.data_capture_for("billing");
    assert_eq!(billing.sampling_ratio, 0.2);
    assert_eq!(billing.exclude_paths, ["/ping"]);
    assert_eq!(billing.redact_headers, ["authorization"]);
    assert_eq!(
        loaded.sources.get("data_capture.service_overrides"),
        Some(&Source::Env("HT_DATA_CAPTURE_SERVICE_OVERRIDES"))
    );
}

#[test]
fn invalid_redaction_and_policy_values_name_their_key() {
    let cases: &[(&str, &str)] = &[
        (
            "data_capture:\n  redact_request_body: ['$.user[']\n",
            "data_capture.redact_request_body: item 1 (\"$.user[\")",
        ),
        (
            "data_capture:\n  redact_patterns: ['(unclosed']\n",
            "data_capture.redact_patterns: item 1",
        ),
        (
            "data_capture:\n  sampling_ratio: 1.5\n",
            "data_capture.sampling_ratio: expected a number from 0 to 1, got 1.5",
        ),
        (
            "data_capture:\n  exclude_paths: [health]\n",
            "data_capture.exclude_paths: item 1 (\"health\")",
        ),
        (
            "data_capture:\n  service_overrides:\n    orders: {no_such_key: 1}\n",
            "data_capture.service_overrides: orders: unknown data_capture key no_such_key",
        ),
        (
            "data_capture:\n  service_overrides:\n    orders: {sampling_ratio: -1}\n",
            "data_capture.service_overrides: orders.sampling_ratio: expected a number from 0 to 1",
        ),
        (
            "data_capture:\n  service_overrides:\n    orders: {service_overrides: {}}\n",
            "orders: overrides cannot be nested",
        ),
        (
            "data_capture:\n  service_overrides: [a]\n",
            "data_capture.service_overrides: expected a mapping",
        ),
    ];
    for (yaml, expected) in cases {
        let error = load_err(Some(yaml), &[]);
        assert!(error.contains(expected), "{yaml}: {error}");
    }
    let error = load_err(
        None,
        &[("HT_DATA_CAPTURE_REDACT_RESPONSE_BODY", "user.email")],
    );
    assert!(
        error.contains("data_capture.redact_response_body")
            && error.contains("HT_DATA_CAPTURE_REDACT_RESPONSE_BODY"),
        "{error}"
    );
}

#[test]
fn discovery_selectors_from_file_and_variables() {
    let file = "\
sensor:
  include:
    executables: [python3.11, /opt/venv/bin/python3]
    commandLines: ['gunicorn .*app:app', 'uvicorn, with a comma']
  exclude:
    container_ids: [3f5e5c0b1d2a]
";
    let loaded = load_with(
        Some(file),
        &[("HT_SENSOR_EXCLUDE_COMMAND_LINES", "celery worker")],
        Overrides::default(),
    )
    .unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let selectors = &loaded.config.sensor.selectors;
    assert_eq!(
        selectors.include.executables,
        ["python3.11", "/opt/venv/bin/python3"]
    );
    assert_eq!(
        selectors.include.command_lines,
        ["gunicorn .*app:app", "uvicorn, with a comma"]
    );
    assert_eq!(selectors.exclude.command_lines, ["celery worker"]);
    assert_eq!(selectors.exclude.container_ids, ["3f5e5c0b1d2a"]);
    assert!(selectors.include.container_ids.is_empty());
    assert!(Config::default().sensor.selectors.include.is_empty());

    let bad_regex = load_err(None, &[("HT_SENSOR_INCLUDE_COMMAND_LINES", "(")]);
    assert!(
        bad_regex.contains("HT_SENSOR_INCLUDE_COMMAND_LINES"),
        "{bad_regex}"
    );
    let bad_id = load_err(Some("sensor:\n  exclude:\n    container_ids: [abc]\n"), &[]);
    assert!(bad_id.contains("sensor.exclude.container_ids"), "{bad_id}");
    assert!(bad_id.contains("12 to 64 hex digits"), "{bad_id}");
}

#[test]
fn kubernetes_selectors_from_file_and_variables() {
    let file = "\
sensor:
  include:
    namespaces: [shop, payments]
    podLabels: ['app.kubernetes.io/name=orders', 'pysensor.io/capture=true']
";
    let loaded = load_with(
        Some(file),
        &[
            ("HT_SENSOR_EXCLUDE_NAMESPACES", "kube-system, monitoring"),
            ("HT_SENSOR_EXCLUDE_POD_LABELS", "tier=batch,skip="),
        ],
        Overrides::default(),
    )
    .unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let selectors = &loaded.config.sensor.selectors;
    assert_eq!(selectors.include.namespaces, ["shop", "payments"]);
    assert_eq!(
        selectors.include.pod_labels,
        ["app.kubernetes.io/name=orders", "pysensor.io/capture=true"]
    );
    assert_eq!(selectors.exclude.namespaces, ["kube-system", "monitoring"]);
    assert_eq!(selectors.exclude.pod_labels, ["tier=batch", "skip="]);
    assert!(selectors.include.uses_pods() && selectors.exclude.uses_pods());
    assert!(!Config::default().sensor.selectors.include.uses_pods());

    for (variable, value) in [
        ("HT_SENSOR_INCLUDE_NAMESPACES", "Shop"),
        ("HT_SENSOR_INCLUDE_NAMESPACES", "-shop"),
        ("HT_SENSOR_INCLUDE_POD_LABELS", "app"),
        ("HT_SENSOR_INCLUDE_POD_LABELS", "=orders"),
        ("HT_SENSOR_INCLUDE_POD_LABELS", "app=-orders"),
        ("HT_SENSOR_EXCLUDE_POD_LABELS", "Example.com/app=x"),
    ] {
        let error = load_err(None, &[(variable, value)]);
        assert!(error.contains(variable), "{value}: {error}");
    }
}

/// The README's configuration table is the generated one: every key, default and variable.
#[test]
fn readme_lists_every_key_as_generated() {
    // cargo test sets CARGO_MANIFEST_DIR at run time too: the checkout under test, which the
    // compiled-in path is not when another checkout sharing the target directory built this.
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    let readme = std::fs::read_to_string(format!("{manifest_dir}/../README.md"))
        .expect("README.md next to the workspace");
    let generated = super::keys_markdown();
    let table_start = generated.find("| Key").expect("a table");
    let table = generated[table_start..].trim_end();
    let table = table.split("\n\n").next().unwrap_or(table);
    assert!(
        readme.contains(table),
        "README.md's configuration table is out of date; paste keys_markdown()'s table"
    );
}

#[test]
fn overload_budgets_parse_and_validate() {
    let c = Config::default();
    assert_eq!(c.sensor.cpu_budget_cores, 1.0);
    assert_eq!(c.sensor.memory_budget_bytes, 536_870_912);
    assert_eq!(c.sensor.overload_interval_ms, 2000);

    let yaml =
        "sensor:\n  cpuBudgetCores: 0.25\n  memory_budget_bytes: 0\n  overloadIntervalMs: 250\n";
    let (c, warnings) = Config::from_yaml_str(yaml).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(c.sensor.cpu_budget_cores, 0.25);
    assert_eq!(c.sensor.memory_budget_bytes, 0);
    assert_eq!(c.sensor.overload_interval_ms, 250);

    let loaded = load_with(
        Some(yaml),
        &[
            ("HT_SENSOR_CPU_BUDGET_CORES", "2"),
            ("HT_SENSOR_MEMORY_BUDGET_BYTES", "1048576"),
        ],
        Overrides::default(),
    )
    .unwrap();
    assert_eq!(loaded.config.sensor.cpu_budget_cores, 2.0);
    assert_eq!(loaded.config.sensor.memory_budget_bytes, 1_048_576);

    for (variable, value, expected) in [
        ("HT_SENSOR_CPU_BUDGET_CORES", "-1", "a number of at least 0"),
        (
            "HT_SENSOR_CPU_BUDGET_CORES",
            "one",
            "a number of at least 0",
        ),
        (
            "HT_SENSOR_CPU_BUDGET_CORES",
            "inf",
            "a number of at least 0",
        ),
        (
            "HT_SENSOR_CPU_BUDGET_CORES",
            "NaN",
            "a number of at least 0",
        ),
        (
            "HT_SENSOR_MEMORY_BUDGET_BYTES",
            "-5",
            "a non-negative integer",
        ),
        (
            "HT_SENSOR_MEMORY_BUDGET_BYTES",
            "512MB",
            "a non-negative integer",
        ),
        ("HT_SENSOR_OVERLOAD_INTERVAL_MS", "5", "at least 10"),
    ] {
        let error = load_err(None, &[(variable, value)]);
        assert!(
            error.contains(variable) && error.contains(expected),
            "{variable}={value}: {error}"
        );
    }
    let error = load_err(Some("sensor:\n  cpu_budget_cores: [1]\n"), &[]);
    assert!(error.contains("sensor.cpu_budget_cores"), "{error}");
}

#[test]
fn propagation_formats_are_read_checked_and_ordered() {
    let c = Config::default();
    assert_eq!(
        c.propagation(),
        [
            crate::enrich::context::Propagation::TraceContext,
            crate::enrich::context::Propagation::B3
        ]
    );
    let loaded = load_with(
        Some("propagation_formats: [TRACECONTEXT]\n"),
        &[("HT_PROPAGATION_FORMATS", "b3, tracecontext")],
        Overrides::default(),
    )
    .unwrap();
    assert_eq!(
        loaded.config.propagation(),
        [
            crate::enrich::context::Propagation::B3,
            crate::enrich::context::Propagation::TraceContext
        ]
    );
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let error = load_with(
        Some("propagation_formats: [JAEGER]\n"),
        &[],
        Overrides::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("TRACECONTEXT or B3"), "{error}");
}
