//! A batch of spans on its way to the collector: grouped by resource, bounded by the encoded
//! size of the request it becomes.

use std::{
    collections::{BTreeMap, HashMap},
    hash::{DefaultHasher, Hash as _, Hasher as _},
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::InstrumentationScope,
    resource::v1::Resource,
    trace::v1::{ResourceSpans, ScopeSpans, Span},
};
use prost::Message as _;

use super::{convert, json};
use crate::{
    config::Protocol,
    record::{AttributeValue, Attributes},
};

/// A converted span waiting for a batch, with its share of the encoded request.
pub(super) struct PendingSpan {
    resource: Attributes,
    span: Span,
    size: usize,
}

/// What adding a span to a batch did.
pub(super) enum Added {
    /// The span is in the batch.
    Yes,
    /// The batch has no room left for it: send the batch, then start the next with it.
    Full(Box<PendingSpan>),
    /// The span alone makes a request larger than the limit; it was not added.
    TooLarge,
}

struct Group {
    attributes: Attributes,
    resource: Resource,
    spans: Vec<Span>,
}

/// Measures spans and resource groups in the encoding of one protocol.
pub(super) struct Sizer {
    protocol: Protocol,
    scope: InstrumentationScope,
    extra_resource: BTreeMap<String, String>,
    scratch: Vec<u8>,
}

impl Sizer {
    /// A sizer for `protocol`; `extra_resource` goes into every resource.
    pub(super) fn new(protocol: Protocol, extra_resource: BTreeMap<String, String>) -> Self {
        Sizer {
            protocol,
            scope: convert::scope(),
            extra_resource,
            scratch: Vec::new(),
        }
    }

    /// Converts a record's span and measures it.
    pub(super) fn pending(&mut self, resource: Attributes, span: Span) -> PendingSpan {
        let size = match self.protocol {
            Protocol::Grpc | Protocol::HttpProtobuf => field_len(span.encoded_len()),
            Protocol::HttpJson => {
                self.scratch.clear();
                json::encode_span(&mut self.scratch, &span);
                // A comma separates it from the span before.
                self.scratch.len() + 1
            }
        };
        PendingSpan {
            resource,
            span,
            size,
        }
    }

    /// The bytes every request has whatever it holds.
    fn envelope(&self) -> usize {
        match self.protocol {
            Protocol::Grpc | Protocol::HttpProtobuf => 0,
            Protocol::HttpJson => json::ENVELOPE_LEN,
        }
    }

    /// The resource of a group and the bytes the group adds besides its spans.
    fn group(&mut self, resource: &Attributes) -> (Resource, usize) {
        let resource = convert::resource(resource, &self.extra_resource);
        let size = match self.protocol {
            // ResourceSpans { resource, scope_spans: [ScopeSpans { scope, spans }] }, each
            // length prefix counted at its largest (5 bytes) so the sum is an upper bound.
            Protocol::Grpc | Protocol::HttpProtobuf => {
                (1 + 5 + resource.encoded_len())
                    + (1 + 5)
                    + (1 + 5 + self.scope.encoded_len())
                    + (1 + 5)
            }
            Protocol::HttpJson => {
                self.scratch.clear();
                json::encode_empty_group(&mut self.scratch, &resource, &self.scope);
                self.scratch.len() + 1
            }
        };
        (resource, size)
    }
}

/// Spans grouped by resource, never larger (encoded) than its limit.
pub(super) struct Batch {
    max_bytes: usize,
    size: usize,
    spans: usize,
    groups: Vec<Group>,
    /// Groups by hash of their resource attributes.
    index: HashMap<u64, Vec<usize>>,
}

impl Batch {
    /// An empty batch whose request may take at most `max_bytes`.
    pub(super) fn new(sizer: &Sizer, max_bytes: usize) -> Self {
        Batch {
            max_bytes,
            size: sizer.envelope(),
            spans: 0,
            groups: Vec::new(),
            index: HashMap::new(),
        }
    }

    /// Number of spans in the batch.
    pub(super) fn len(&self) -> usize {
        self.spans
    }

    /// Whether the batch holds no span.
    pub(super) fn is_empty(&self) -> bool {
        self.spans == 0
    }

    /// Upper bound of the encoded request's size.
    pub(super) fn size(&self) -> usize {
        self.size
    }

    /// Adds a span if it fits.
    pub(super) fn add(&mut self, sizer: &mut Sizer, pending: PendingSpan) -> Added {
        let hash = resource_hash(&pending.resource);
        let existing = self.index.get(&hash).and_then(|candidates| {
            candidates
                .iter()
                .copied()
                .find(|&i| self.groups[i].attributes == pending.resource)
        });
        let (new_group, cost) = match existing {
            Some(_) => (None, pending.size),
            None => {
                let (resource, group_size) = sizer.group(&pending.resource);
                (Some(resource), group_size + pending.size)
            }
        };
        if self.size + cost > self.max_bytes {
            return if self.is_empty() {
                Added::TooLarge
            } else {
                Added::Full(Box::new(pending))
            };
        }
        self.size += cost;
        self.spans += 1;
        let PendingSpan { resource, span, .. } = pending;
        match (existing, new_group) {
            (Some(i), _) => self.groups[i].spans.push(span),
            (None, Some(proto)) => {
                self.index.entry(hash).or_default().push(self.groups.len());
                self.groups.push(Group {
                    attributes: resource,
                    resource: proto,
                    spans: vec![span],
                });
            }
            (None, None) => {}
        }
        Added::Yes
    }

    /// The export request of the batch: one ResourceSpans per resource, one ScopeSpans each.
    pub(super) fn into_request(self, sizer: &Sizer) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: self
                .groups
                .into_iter()
                .map(|group| ResourceSpans {
                    resource: Some(group.resource),
                    scope_spans: vec![ScopeSpans {
                        scope: Some(sizer.scope.clone()),
                        spans: group.spans,
                        ..ScopeSpans::default()
                    }],
                    ..ResourceSpans::default()
                })
                .collect(),
        }
    }
}

/// A hash of resource attributes (their type has no `Hash`).
fn resource_hash(attributes: &Attributes) -> u64 {
    let mut hasher = DefaultHasher::new();
    for (key, value) in attributes {
        key.hash(&mut hasher);
        match value {
            AttributeValue::Bool(b) => (0u8, b).hash(&mut hasher),
            AttributeValue::Int(i) => (1u8, i).hash(&mut hasher),
            AttributeValue::String(s) => (2u8, s).hash(&mut hasher),
        }
    }
    hasher.finish()
}

/// Encoded length of a length-delimited field holding `len` bytes (the tag, the length, the
/// bytes).
fn field_len(len: usize) -> usize {
    1 + prost::length_delimiter_len(len) + len
}
