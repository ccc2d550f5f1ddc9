//! A batch of spans on its way to the collector: grouped by resource, bounded by the encoded
//! size of the request it becomes.
//!
//! Each record is converted and encoded as a [`PendingSpan`] on the pipeline's thread when it
//! is queued ([`crate::export::Exporter::send`]), while its strings are still in the cache, and
//! freed there at once, so the next record reuses that memory; batches keep bytes, not
//! structs. (A batch of thousands of small spans held for up to a second used to be encoded
//! string by string when it was sent, each string long out of the cache by then, and freed on
//! the exporter's thread.) Sending copies each group's bytes once into the request.

use std::{
    collections::{BTreeMap, HashMap},
    hash::{DefaultHasher, Hash as _, Hasher as _},
};

use bytes::Bytes;
use opentelemetry_proto::tonic::{
    common::v1::InstrumentationScope, resource::v1::Resource, trace::v1::Span,
};
use prost::Message as _;

use super::{convert, json};
use crate::{
    config::Protocol,
    record::{AttributeValue, Attributes, ExchangeRecord},
};

/// Protobuf field numbers of the messages a request nests the spans in:
/// `ExportTraceServiceRequest.resource_spans`, `ResourceSpans.resource`,
/// `ResourceSpans.scope_spans`, `ScopeSpans.scope` and `ScopeSpans.spans`.
const RESOURCE_SPANS_FIELD: u32 = 1;
const RESOURCE_FIELD: u32 = 1;
const SCOPE_SPANS_FIELD: u32 = 2;
const SCOPE_FIELD: u32 = 1;
const SPANS_FIELD: u32 = 2;

/// Size of the buffers a group's small spans are appended to; a span of half that or more
/// keeps its own buffer (no copy).
const PART_BYTES: usize = 64 * 1024;

/// A record converted into its span and encoded, on its way to a batch.
pub struct PendingSpan {
    resource: Attributes,
    /// Protobuf: the span as a `ScopeSpans.spans` field (tag, length, message). JSON: a comma,
    /// then the span object (the comma of a group's first span is left out when sending).
    encoded: Vec<u8>,
}

impl PendingSpan {
    /// Converts a record into its span and encodes it for `protocol`.
    pub fn new(protocol: Protocol, record: ExchangeRecord) -> PendingSpan {
        let (resource, span) = convert::span(record);
        PendingSpan::of_span(protocol, resource, span)
    }

    /// Encodes a span of the process of `resource` for `protocol`.
    pub(super) fn of_span(protocol: Protocol, resource: Attributes, span: Span) -> PendingSpan {
        let encoded = match protocol {
            Protocol::Grpc | Protocol::HttpProtobuf => {
                let mut encoded = Vec::with_capacity(field_len(span.encoded_len()));
                prost::encoding::message::encode(SPANS_FIELD, &span, &mut encoded);
                encoded
            }
            Protocol::HttpJson => {
                // The comma that separates it from the span before it in its group.
                let mut encoded = vec![b','];
                json::encode_span(&mut encoded, &span);
                encoded
            }
        };
        PendingSpan { resource, encoded }
    }

    /// Its share of the encoded request in bytes.
    fn size(&self) -> usize {
        self.encoded.len()
    }
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
    /// The group's encoded spans back to back, in buffers of [`PART_BYTES`] (a large span in
    /// one of its own).
    parts: Vec<Vec<u8>>,
    /// Total bytes in `parts`.
    len: usize,
}

impl Group {
    fn push(&mut self, encoded: Vec<u8>) {
        self.len += encoded.len();
        match self.parts.last_mut() {
            Some(last) if last.len() + encoded.len() <= last.capacity() => {
                last.extend_from_slice(&encoded);
            }
            _ if encoded.len() >= PART_BYTES / 2 => self.parts.push(encoded),
            _ => {
                let mut part = Vec::with_capacity(PART_BYTES);
                part.extend_from_slice(&encoded);
                self.parts.push(part);
            }
        }
    }
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
            Some(_) => (None, pending.size()),
            None => {
                let (resource, group_size) = sizer.group(&pending.resource);
                (Some(resource), group_size + pending.size())
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
        let PendingSpan { resource, encoded } = pending;
        match (existing, new_group) {
            (Some(i), _) => self.groups[i].push(encoded),
            (None, Some(proto)) => {
                self.index.entry(hash).or_default().push(self.groups.len());
                let mut group = Group {
                    attributes: resource,
                    resource: proto,
                    parts: Vec::new(),
                    len: 0,
                };
                group.push(encoded);
                self.groups.push(group);
            }
            (None, None) => {}
        }
        Added::Yes
    }

    /// The export request of the batch, in pieces to be sent back to back: one ResourceSpans
    /// per resource, one ScopeSpans each, the same bytes as prost (or [`json`]) would write
    /// for the request made of those messages.
    pub(super) fn into_parts(self, sizer: &Sizer) -> Vec<Bytes> {
        let mut out = Vec::with_capacity(2 + 2 * self.groups.len());
        match sizer.protocol {
            Protocol::Grpc | Protocol::HttpProtobuf => {
                let scope = sizer.scope.encode_to_vec();
                for group in self.groups {
                    let resource = group.resource.encode_to_vec();
                    let scope_spans = field_len(scope.len()) + group.len;
                    let resource_spans = field_len(resource.len()) + field_len(scope_spans);
                    let mut head = Vec::with_capacity(32 + resource.len() + scope.len());
                    field_head(&mut head, RESOURCE_SPANS_FIELD, resource_spans);
                    field_head(&mut head, RESOURCE_FIELD, resource.len());
                    head.extend_from_slice(&resource);
                    field_head(&mut head, SCOPE_SPANS_FIELD, scope_spans);
                    field_head(&mut head, SCOPE_FIELD, scope.len());
                    head.extend_from_slice(&scope);
                    out.push(Bytes::from(head));
                    out.extend(group.parts.into_iter().map(Bytes::from));
                }
            }
            Protocol::HttpJson => {
                if self.groups.is_empty() {
                    return vec![Bytes::from_static(b"{}")];
                }
                out.push(Bytes::from_static(json::REQUEST_START));
                for (i, group) in self.groups.into_iter().enumerate() {
                    let mut head = Vec::new();
                    if i > 0 {
                        head.push(b',');
                    }
                    json::group_start(&mut head, &group.resource, &sizer.scope);
                    out.push(Bytes::from(head));
                    for (j, part) in group.parts.into_iter().enumerate() {
                        let part = Bytes::from(part);
                        // The group's first span has no span before it.
                        out.push(if j == 0 { part.slice(1..) } else { part });
                    }
                    out.push(Bytes::from_static(json::GROUP_END));
                }
                out.push(Bytes::from_static(json::REQUEST_END));
            }
        }
        out
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

/// Appends the tag and length of a length-delimited field holding `len` bytes.
fn field_head(out: &mut Vec<u8>, field: u32, len: usize) {
    prost::encoding::encode_key(field, prost::encoding::WireType::LengthDelimited, out);
    prost::encoding::encode_varint(len as u64, out);
}

/// Encoded length of a length-delimited field holding `len` bytes (the tag, the length, the
/// bytes).
fn field_len(len: usize) -> usize {
    1 + prost::length_delimiter_len(len) + len
}
