//! Capture policy: which exchanges are reported and what of them, per service, with every
//! decision counted.

use std::collections::HashMap;

use rand::{Rng as _, SeedableRng as _, rngs::StdRng};

use super::{Outcome, Redactor};
use crate::config::{CaptureToggle, Config, DataCapture};
use crate::http::HttpSettings;
use crate::record::{AttributeValue, BodyKeys, ExchangeRecord, SpanKind};

/// What the policy decided for one record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Export the (redacted) record.
    Export,
    /// Its path is excluded.
    Excluded,
    /// Sampling left it out.
    SampledOut,
}

/// Counters of the policy's decisions (kept across reloads).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyStats {
    /// Records exported.
    pub exported: u64,
    /// Records dropped by a path exclusion.
    pub excluded: u64,
    /// Records dropped by sampling.
    pub sampled_out: u64,
    /// Records kept by sampling's draw.
    pub sampled_in: u64,
    /// Error records kept whatever the sampling ratio.
    pub errors_kept: u64,
    /// Values replaced by `[REDACTED]`.
    pub redacted_values: u64,
    /// Bodies dropped because they could not be redacted (flagged `*.body.redaction_failed`).
    pub bodies_redaction_failed: u64,
    /// Bodies truncated to the body size limit after redaction.
    pub bodies_truncated: u64,
    /// Bodies removed by the capture switches or content-type list of their service.
    pub bodies_not_captured: u64,
}

/// A path exclusion: a prefix ending at a segment boundary, or a glob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathPattern(String);

impl PathPattern {
    /// A pattern as configured.
    pub fn new(pattern: &str) -> Self {
        PathPattern(pattern.trim().to_owned())
    }

    /// Whether `path` (without query) is covered.
    pub fn matches(&self, path: &str) -> bool {
        let pattern = self.0.as_str();
        if pattern.contains(['*', '?']) {
            return glob(pattern.as_bytes(), path.as_bytes());
        }
        if pattern.ends_with('/') {
            return path.starts_with(pattern) || path == pattern.trim_end_matches('/');
        }
        path == pattern
            || path
                .strip_prefix(pattern)
                .is_some_and(|rest| rest.starts_with('/'))
    }
}

/// Glob match: `**` any text, `*` any text without `/`, `?` one character other than `/`.
/// Iterative with backtracking to the last star (no recursion on input).
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    // Dynamic programming over (pattern position, text position): linear memory, no blow-up.
    let n = text.len();
    let mut current = vec![false; n + 1];
    current[0] = true;
    let mut p = 0;
    while p < pattern.len() {
        let mut next = vec![false; n + 1];
        if pattern[p] == b'*' {
            let double = pattern.get(p + 1) == Some(&b'*');
            let mut reach = false;
            for t in 0..=n {
                reach = current[t] || (reach && (double || text[t - 1] != b'/'));
                next[t] = reach;
            }
            p += if double { 2 } else { 1 };
        } else {
            for t in 1..=n {
                let c = text[t - 1];
                next[t] = current[t - 1]
                    && (if pattern[p] == b'?' {
                        c != b'/'
                    } else {
                        c == pattern[p]
                    });
            }
            p += 1;
        }
        current = next;
    }
    current[n]
}

/// One service's compiled policy.
#[derive(Clone, Debug)]
struct ServicePolicy {
    redactor: Redactor,
    headers: CaptureToggle,
    body: CaptureToggle,
    settings: DataCapture,
    exclude: Vec<PathPattern>,
    sampling_ratio: f64,
}

impl ServicePolicy {
    fn new(dc: DataCapture) -> Result<Self, String> {
        Ok(ServicePolicy {
            redactor: Redactor::from_settings(&dc)?,
            headers: dc.http_headers,
            body: dc.http_body,
            exclude: dc
                .exclude_paths
                .iter()
                .map(|p| PathPattern::new(p))
                .collect(),
            sampling_ratio: dc.sampling_ratio,
            settings: dc,
        })
    }
}

/// The capture and redaction policy of every service.
#[derive(Clone, Debug)]
pub struct Policy {
    default: ServicePolicy,
    services: HashMap<String, ServicePolicy>,
    rng: StdRng,
    /// Counters of decisions.
    pub stats: PolicyStats,
}

impl Policy {
    /// The policy of a configuration: its `data_capture` settings, and for each service of
    /// `data_capture.service_overrides` those settings with the override applied.
    pub fn from_config(config: &Config) -> Result<Self, String> {
        let default = ServicePolicy::new(config.data_capture_for(""))?;
        let mut services = HashMap::new();
        for service in config.data_capture.service_overrides.keys() {
            let policy = ServicePolicy::new(config.data_capture_for(service))
                .map_err(|e| format!("service {service:?}: {e}"))?;
            services.insert(service.clone(), policy);
        }
        Ok(Policy {
            default,
            services,
            rng: StdRng::from_os_rng(),
            stats: PolicyStats::default(),
        })
    }

    /// The same policy drawing its samples from a fixed seed (tests).
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.rng = StdRng::seed_from_u64(seed);
        self
    }

    /// Takes the rules of `new`, keeping this policy's counters and random state.
    pub fn replace_rules(&mut self, new: Policy) {
        self.default = new.default;
        self.services = new.services;
    }

    /// Decides about a record and, when it is to be exported, applies the capture switches
    /// and redaction to it.
    pub fn process(&mut self, record: &mut ExchangeRecord) -> Decision {
        let Policy {
            default,
            services,
            rng,
            stats,
        } = self;
        let service = record
            .resource
            .get("service.name")
            .and_then(AttributeValue::as_str)
            .unwrap_or_default();
        let policy = services.get(service).unwrap_or(default);
        let path = record.attr_str("url.path").unwrap_or_default();
        if policy.exclude.iter().any(|p| p.matches(path)) {
            stats.excluded += 1;
            return Decision::Excluded;
        }
        if policy.sampling_ratio < 1.0 {
            if is_error(record) {
                stats.errors_kept += 1;
            } else if rng.random::<f64>() < policy.sampling_ratio {
                stats.sampled_in += 1;
            } else {
                stats.sampled_out += 1;
                return Decision::SampledOut;
            }
        }
        for (keys, on) in [
            (BodyKeys::REQUEST, policy.body.request),
            (BodyKeys::RESPONSE, policy.body.response),
        ] {
            // A body the overload policy shed is flagged only where it would have been kept.
            let has_body = record.attributes.contains_key(keys.body);
            if !has_body && !record.attributes.contains_key(keys.shed) {
                continue;
            }
            // A message without Content-Type matches only a list allowing every type.
            let allowed = policy
                .settings
                .content_type_allowed(record.attr_str(keys.content_type).unwrap_or(""));
            if !on || !allowed {
                record.attributes.remove(keys.shed);
                if has_body {
                    record.attributes.remove(keys.body);
                    record.attributes.remove(keys.truncated);
                    stats.bodies_not_captured += 1;
                }
            }
        }
        let Outcome {
            values,
            bodies_dropped,
            bodies_truncated,
        } = policy.redactor.apply(record);
        stats.redacted_values += values;
        stats.bodies_redaction_failed += bodies_dropped;
        stats.bodies_truncated += bodies_truncated;
        for (prefix, on) in [
            ("http.request.header.", policy.headers.request),
            ("http.response.header.", policy.headers.response),
        ] {
            if !on {
                record.attributes.retain(|key, _| !key.starts_with(prefix));
            }
        }
        stats.exported += 1;
        Decision::Export
    }
}

/// Whether these settings look into bodies (and so need them whole).
fn has_body_rules(dc: &DataCapture) -> bool {
    !dc.redact_request_body.is_empty()
        || !dc.redact_response_body.is_empty()
        || !dc.redact_form_fields.is_empty()
        || dc.redact_card_numbers
        || dc.redact_emails
        || !dc.redact_patterns.is_empty()
}

/// Errors are always kept: a server's status ≥ 500, a client's ≥ 400.
fn is_error(record: &ExchangeRecord) -> bool {
    let status = record.attr_int("http.status_code").unwrap_or(0);
    match record.kind {
        SpanKind::Server => status >= 500,
        SpanKind::Client => status >= 400,
    }
}

/// The `data_capture` settings of every service: the global ones, then those of each service
/// of `data_capture.service_overrides`.
pub(super) fn every_service(config: &Config) -> Vec<DataCapture> {
    std::iter::once(config.data_capture_for(""))
        .chain(
            config
                .data_capture
                .service_overrides
                .keys()
                .map(|service| config.data_capture_for(service)),
        )
        .collect()
}

/// The HTTP parser settings a configuration needs, over `base`. When some service has body
/// redaction rules (JSONPaths, form fields, patterns), bodies are kept up to the largest
/// processing size of any service, so redaction sees whole bodies and the record stage
/// truncates them; otherwise they are kept up to the largest capture size only (the kernel
/// then skips the rest instead of copying it). Header fields are always kept (redaction reads
/// `Content-Type`; the record stage drops them when capture is off), bodies are kept when any
/// service captures them, for the content types any service allows.
pub fn parser_settings(config: &Config, mut base: HttpSettings) -> HttpSettings {
    let all = every_service(config);
    let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    let whole_bodies = all.iter().any(has_body_rules);
    base.body_max_size = all
        .iter()
        .map(|dc| {
            let processing = size(dc.body_max_processing_size_bytes);
            if whole_bodies {
                processing
            } else {
                size(dc.body_max_size_bytes).min(processing)
            }
        })
        .max()
        .unwrap_or(base.body_max_size);
    base.capture_request_headers = true;
    base.capture_response_headers = true;
    base.capture_request_body = all.iter().any(|dc| dc.http_body.request);
    base.capture_response_body = all.iter().any(|dc| dc.http_body.response);
    // The union of every service's list; a service allowing every type (an empty list) makes
    // the parser keep every type.
    let mut types: Vec<String> = Vec::new();
    if all.iter().all(|dc| !dc.allowed_content_types.is_empty()) {
        for dc in &all {
            for t in &dc.allowed_content_types {
                if !types.contains(t) {
                    types.push(t.clone());
                }
            }
        }
    }
    base.allowed_content_types = types;
    base
}

/// Whether the parser settings a reloaded configuration `need`s go beyond those it runs with
/// (`have`): larger bodies, body capture turned on, or content types it does not keep (a
/// needed entry is kept when one the parser has occurs in it: every type containing
/// `application/json` contains `json`). The parser's settings are fixed at start, so such a
/// reload takes effect only at restart.
pub fn parser_needs_restart(need: &HttpSettings, have: &HttpSettings) -> bool {
    let kept = |entry: &String| {
        crate::http::content_type_allowed(&have.allowed_content_types, entry.as_bytes())
    };
    let more_types = !have.allowed_content_types.is_empty()
        && (need.allowed_content_types.is_empty() || !need.allowed_content_types.iter().all(kept));
    need.body_max_size > have.body_max_size
        || (need.capture_request_body && !have.capture_request_body)
        || (need.capture_response_body && !have.capture_response_body)
        || more_types
}
