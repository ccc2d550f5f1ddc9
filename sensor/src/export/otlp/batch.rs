//! A batch of spans on its way to the collector: grouped by resource, bounded by the encoded
//! size of the request it becomes.
//!
//! Each record is converted and encoded as a [`PendingSpan`] on the pipeline's thread when it
//! is queued ([`crate::export::Exporter::send`]), while its strings are still in the cache, and
//! freed there at once, so the next record reuses that memory; batches keep bytes, not
//! structs. (A batch of thousands of small spans held for up to a second used to be encoded
//! string by string when it was sent, each string long out of the cache by then, and freed on
//! the exporter's thread.) A batch is sent as its groups' pieces, never joined (see
//! `transport`).
//!
//! Large bodies are not copied into the encoded span: they follow it as shared pieces (see
//! [`SPLICED_BODY_BYTES`]), so a body's bytes are not copied between the record and the
//! socket.

use std::{
    collections::{BTreeMap, HashMap},
    hash::{DefaultHasher, Hash as _, Hasher as _},
};

use bytes::{Bytes, BytesMut};
use opentelemetry_proto::tonic::{
    common::v1::InstrumentationScope, resource::v1::Resource, trace::v1::Span,
};
use prost::Message as _;

use super::{convert, json, proto};
use crate::{
    config::Protocol,
    record::{AttributeValue, Attributes, BodyKeys, ExchangeRecord},
};

/// Protobuf field numbers of the messages a request nests the spans in:
/// `ExportTraceServiceRequest.resource_spans`, `ResourceSpans.resource`,
/// `ResourceSpans.scope_spans`, `ScopeSpans.scope` and `ScopeSpans.spans`.
const RESOURCE_SPANS_FIELD: u32 = 1;
const RESOURCE_FIELD: u32 = 1;
const SCOPE_SPANS_FIELD: u32 = 2;
const SCOPE_FIELD: u32 = 1;
const SPANS_FIELD: u32 = 2;

/// `Span.attributes`, `KeyValue.key`, `KeyValue.value` and `AnyValue.string_value`: the fields
/// a spliced body is written in.
const SPAN_ATTRIBUTES_FIELD: u32 = 9;
const KEY_FIELD: u32 = 1;
const VALUE_FIELD: u32 = 2;
const STRING_VALUE_FIELD: u32 = 1;

/// Size of the buffers a group's small spans are appended to; a span of half that or more
/// keeps its own buffer (no copy).
const PART_BYTES: usize = 64 * 1024;

/// Bodies of at least this size are spliced into a protobuf span rather than encoded with it:
/// the span is encoded without them, and each follows as one more attribute (its key and
/// length prefixes, then its bytes, shared with the record rather than copied). Protobuf
/// readers take a message's fields in any order and append repeated ones as they come, so the
/// span decodes the same, with these attributes last. Under 16 KB bodies the copy into the
/// encoded span was a twentieth of the sensor's time.
const SPLICED_BODY_BYTES: usize = 4 * 1024;

/// The record attributes that are spliced when large.
const SPLICED_ATTRIBUTES: [&str; 2] = [BodyKeys::REQUEST.body, BodyKeys::RESPONSE.body];

/// A record converted into its span and encoded, on its way to a batch.
pub struct PendingSpan {
    resource: Attributes,
    /// Protobuf: the span as a `ScopeSpans.spans` field (tag, length, message), up to its first
    /// spliced body. JSON: a comma, then the span object (the comma of a group's first span is
    /// left out when sending).
    encoded: Vec<u8>,
    /// The spliced bodies, in order, each with the bytes that follow it.
    spliced: Vec<Spliced>,
}

/// A body sent as it is, inside a span encoded around it.
struct Spliced {
    body: Bytes,
    /// The next spliced attribute's head (key and length prefixes), or nothing.
    after: Vec<u8>,
}

impl PendingSpan {
    /// Converts a record into its span and encodes it for `protocol`.
    pub fn new(protocol: Protocol, mut record: ExchangeRecord) -> PendingSpan {
        match protocol {
            Protocol::Grpc | Protocol::HttpProtobuf => {
                let bodies = take_large_bodies(&mut record.attributes);
                let mut span = convert::prepare(record);
                PendingSpan::protobuf(
                    std::mem::take(&mut span.resource),
                    proto::span_len(&span),
                    |out| proto::write_span(out, &span),
                    bodies,
                )
            }
            Protocol::HttpJson => {
                let (resource, span) = convert::span(record);
                PendingSpan::json(resource, &span)
            }
        }
    }

    /// Encodes a span of the process of `resource` for `protocol`, the way prost would.
    #[cfg(test)]
    pub(super) fn of_span(protocol: Protocol, resource: Attributes, span: Span) -> PendingSpan {
        match protocol {
            Protocol::Grpc | Protocol::HttpProtobuf => PendingSpan::protobuf(
                resource,
                span.encoded_len(),
                |out| span.encode_raw(out),
                Vec::new(),
            ),
            Protocol::HttpJson => PendingSpan::json(resource, &span),
        }
    }

    /// An OTLP/JSON span of the process of `resource`.
    fn json(resource: Attributes, span: &Span) -> PendingSpan {
        // The comma that separates it from the span before it in its group.
        let mut encoded = vec![b','];
        json::encode_span(&mut encoded, span);
        PendingSpan {
            resource,
            encoded,
            spliced: Vec::new(),
        }
    }

    /// A protobuf span of `span_len` bytes that `write` writes (its fields), with `bodies`
    /// spliced in after it as attributes.
    fn protobuf(
        resource: Attributes,
        span_len: usize,
        write: impl FnOnce(&mut Vec<u8>),
        bodies: Vec<(&'static str, String)>,
    ) -> PendingSpan {
        let heads: Vec<Vec<u8>> = bodies
            .iter()
            .map(|(key, body)| spliced_attribute_head(key, body.len()))
            .collect();
        let spliced_len: usize = heads
            .iter()
            .zip(&bodies)
            .map(|(head, (_, body))| head.len() + body.len())
            .sum();
        let span_len = span_len + spliced_len;
        let mut heads = heads.into_iter();
        let first_head = heads.next().unwrap_or_default();
        let mut encoded = Vec::with_capacity(field_len(span_len) - spliced_len + first_head.len());
        field_head(&mut encoded, SPANS_FIELD, span_len);
        write(&mut encoded);
        encoded.extend_from_slice(&first_head);
        let spliced = bodies
            .into_iter()
            .map(|(_, body)| Spliced {
                body: Bytes::from(body.into_bytes()),
                after: heads.next().unwrap_or_default(),
            })
            .collect();
        PendingSpan {
            resource,
            encoded,
            spliced,
        }
    }

    /// Its share of the encoded request in bytes.
    pub fn size(&self) -> usize {
        self.encoded.len()
            + self
                .spliced
                .iter()
                .map(|s| s.body.len() + s.after.len())
                .sum::<usize>()
    }
}

/// Takes the bodies to splice (see [`SPLICED_BODY_BYTES`]) out of a record's attributes.
fn take_large_bodies(attributes: &mut Attributes) -> Vec<(&'static str, String)> {
    let mut bodies = Vec::new();
    for key in SPLICED_ATTRIBUTES {
        if let Some(AttributeValue::String(body)) = attributes.get(key)
            && body.len() >= SPLICED_BODY_BYTES
            && let Some(AttributeValue::String(body)) = attributes.remove(key)
        {
            bodies.push((key, body));
        }
    }
    bodies
}

/// What precedes a spliced body in its span: the attribute's tag and length, its key, and
/// the length prefixes of its value (a string `AnyValue`).
fn spliced_attribute_head(key: &str, body_len: usize) -> Vec<u8> {
    let any_value_len = field_len(body_len);
    let key_value_len = field_len(key.len()) + field_len(any_value_len);
    let mut head = Vec::with_capacity(16 + key.len());
    field_head(&mut head, SPAN_ATTRIBUTES_FIELD, key_value_len);
    field_head(&mut head, KEY_FIELD, key.len());
    head.extend_from_slice(key.as_bytes());
    field_head(&mut head, VALUE_FIELD, any_value_len);
    field_head(&mut head, STRING_VALUE_FIELD, body_len);
    head
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
    /// The group's encoded spans back to back: the pieces filled so far (a large span or a
    /// spliced body in one of its own, small ones together in slices of [`PART_BYTES`]
    /// buffers)...
    parts: Vec<Bytes>,
    /// ... then the buffer being filled.
    open: BytesMut,
    /// Total bytes in `parts` and `open`.
    len: usize,
}

impl Group {
    fn new(attributes: Attributes, resource: Resource) -> Group {
        Group {
            attributes,
            resource,
            parts: Vec::new(),
            open: BytesMut::new(),
            len: 0,
        }
    }

    fn push(&mut self, encoded: Vec<u8>, spliced: Vec<Spliced>) {
        self.push_bytes(encoded);
        for spliced in spliced {
            self.push_shared(spliced.body);
            self.push_bytes(spliced.after);
        }
    }

    /// Appends bytes: copied into the open buffer when small, kept as they are when large.
    fn push_bytes(&mut self, bytes: Vec<u8>) {
        if bytes.len() >= PART_BYTES / 2 {
            self.push_shared(Bytes::from(bytes));
            return;
        }
        if self.open.capacity() - self.open.len() < bytes.len() {
            self.close_open();
            self.open = BytesMut::with_capacity(PART_BYTES);
        }
        self.len += bytes.len();
        self.open.extend_from_slice(&bytes);
    }

    /// Appends bytes as a piece of their own.
    fn push_shared(&mut self, bytes: Bytes) {
        self.close_open();
        self.len += bytes.len();
        self.parts.push(bytes);
    }

    /// Ends the open buffer's current piece; what is left of its room stays open.
    fn close_open(&mut self) {
        if !self.open.is_empty() {
            self.parts.push(self.open.split().freeze());
        }
    }

    /// The group's pieces in order.
    fn into_parts(mut self) -> Vec<Bytes> {
        self.close_open();
        self.parts
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
        let PendingSpan {
            resource,
            encoded,
            spliced,
        } = pending;
        match (existing, new_group) {
            (Some(i), _) => self.groups[i].push(encoded, spliced),
            (None, Some(proto)) => {
                self.index.entry(hash).or_default().push(self.groups.len());
                let mut group = Group::new(resource, proto);
                group.push(encoded, spliced);
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
                    out.extend(group.into_parts());
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
                    for (j, part) in group.into_parts().into_iter().enumerate() {
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
