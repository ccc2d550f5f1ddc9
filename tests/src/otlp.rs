//! A test OTLP collector: a gRPC TraceService and an OTLP/HTTP endpoint (`POST /v1/traces`,
//! protobuf or JSON) on loopback, in a background thread with its own tokio runtime, keeping
//! every export request it accepts.
//!
//! The JSON decoder is strict where the OTLP spec is (lowerCamelCase keys, hex ids, integer
//! enums; unknown keys ignored), so that an exporter deviating from it fails the tests. The
//! sensor's unit tests include this file too.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU8, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{
    Request, Response, StatusCode, body::Incoming, server::conn::http1, service::service_fn,
};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList, any_value},
    resource::v1::Resource,
    trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span},
};
use prost::Message as _;
use serde_json::Value;

const ACCEPT: u8 = 0;
const UNAVAILABLE: u8 = 1;
const REJECT: u8 = 2;
const INTERNAL_ERROR: u8 = 3;

/// How an export request arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// OTLP/gRPC.
    Grpc,
    /// OTLP/HTTP with a protobuf body.
    HttpProtobuf,
    /// OTLP/HTTP with a JSON body.
    HttpJson,
}

/// One accepted export request.
#[derive(Clone, Debug)]
pub struct ReceivedRequest {
    /// How it arrived.
    pub encoding: Encoding,
    /// Its `Content-Type` (`application/grpc…` for gRPC).
    pub content_type: String,
    /// Its headers (gRPC metadata), names in lower case.
    pub headers: BTreeMap<String, String>,
    /// Size of the encoded request (the HTTP body; the protobuf message for gRPC).
    pub body_len: usize,
    /// The JSON body as sent, for OTLP/HTTP JSON.
    pub json: Option<Value>,
    /// The decoded request.
    pub request: ExportTraceServiceRequest,
}

/// One received span, flattened with its resource.
#[derive(Clone, Debug, PartialEq)]
pub struct ReceivedSpan {
    /// Attributes of the span's resource.
    pub resource: BTreeMap<String, Value>,
    /// Name of the instrumentation scope.
    pub scope_name: String,
    /// Version of the instrumentation scope.
    pub scope_version: String,
    /// Span name.
    pub name: String,
    /// `unspecified`, `internal`, `server`, `client`, `producer` or `consumer`.
    pub kind: String,
    /// Trace id, lower-case hex.
    pub trace_id: String,
    /// Span id, lower-case hex.
    pub span_id: String,
    /// Parent span id, lower-case hex; none for a root span.
    pub parent_span_id: Option<String>,
    /// `unset`, `ok` or `error`.
    pub status_code: String,
    /// Status message.
    pub status_message: String,
    /// Start time, ns since the epoch.
    pub start_time_unix_nano: u64,
    /// End time, ns since the epoch.
    pub end_time_unix_nano: u64,
    /// Span attributes: strings, integers (as JSON numbers), booleans, doubles, arrays, maps.
    pub attributes: BTreeMap<String, Value>,
}

impl ReceivedSpan {
    /// An attribute, if present.
    pub fn attr(&self, key: &str) -> Option<&Value> {
        self.attributes.get(key)
    }
}

struct State {
    mode: AtomicU8,
    /// Milliseconds every request waits before it is answered (a slow collector).
    delay_ms: AtomicU64,
    /// Whether accepted requests are kept (else only counted).
    keep: bool,
    requests: Mutex<Vec<ReceivedRequest>>,
    refused: AtomicU64,
    spans: AtomicU64,
    server_spans: AtomicU64,
}

impl State {
    fn mode(&self) -> u8 {
        self.mode.load(Ordering::SeqCst)
    }

    /// Waits as long as [`Receiver::set_delay`] says, before a request is answered.
    async fn delay(&self) {
        let ms = self.delay_ms.load(Ordering::SeqCst);
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    }

    fn push(&self, request: ReceivedRequest) {
        self.spans
            .fetch_add(span_count(&request.request) as u64, Ordering::SeqCst);
        let servers = request
            .request
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| &ss.spans)
            .filter(|span| span.kind == span::SpanKind::Server as i32)
            .count();
        self.server_spans
            .fetch_add(servers as u64, Ordering::SeqCst);
        if !self.keep {
            return;
        }
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(request);
    }
}

/// A running test collector.
pub struct Receiver {
    state: Arc<State>,
    scheme: &'static str,
    grpc: SocketAddr,
    http: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

/// Moves the calling thread to the idle scheduling class (`SCHED_IDLE`), so that it runs only
/// when its core has nothing else to run.
fn run_when_idle() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param for SCHED_IDLE.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
        eprintln!(
            "OTLP test receiver: SCHED_IDLE refused ({}); it runs at normal priority",
            std::io::Error::last_os_error()
        );
    }
}

impl Receiver {
    /// Starts the gRPC and HTTP servers on 127.0.0.1 (ports chosen by the system).
    pub fn start() -> Receiver {
        Self::start_with(None, None)
    }

    /// As [`Receiver::start`], keeping no request: only [`Receiver::span_total`] counts them
    /// (for loads whose spans would not fit in memory, e.g. the benchmarks). Its thread runs in
    /// the idle scheduling class (`SCHED_IDLE`): it stands in for a collector on another host,
    /// so on the core it shares with a load generator it must only use time that is spare.
    pub fn start_counting() -> Receiver {
        Self::start_with_keep(None, None, false)
    }

    /// As [`Receiver::start`], on the given addresses (e.g. those of a receiver stopped
    /// earlier, to bring "the same" collector back).
    pub fn start_at(grpc: SocketAddr, http: SocketAddr) -> Receiver {
        Self::start_with(None, Some((grpc, http)))
    }

    /// The gRPC and HTTP servers' addresses.
    pub fn addresses(&self) -> (SocketAddr, SocketAddr) {
        (self.grpc, self.http)
    }

    /// As [`Receiver::start`], both servers speaking TLS with this certificate chain and
    /// private key (PEM); the endpoints are then `https://127.0.0.1:PORT`.
    pub fn start_tls(cert_pem: &[u8], key_pem: &[u8]) -> Receiver {
        Self::start_with(Some((cert_pem.to_vec(), key_pem.to_vec())), None)
    }

    fn start_with(
        tls: Option<(Vec<u8>, Vec<u8>)>,
        at: Option<(SocketAddr, SocketAddr)>,
    ) -> Receiver {
        Self::start_with_keep(tls, at, true)
    }

    fn start_with_keep(
        tls: Option<(Vec<u8>, Vec<u8>)>,
        at: Option<(SocketAddr, SocketAddr)>,
        keep: bool,
    ) -> Receiver {
        let (grpc, http) = at.unwrap_or_else(|| {
            let any = SocketAddr::from(([127, 0, 0, 1], 0));
            (any, any)
        });
        let grpc = std::net::TcpListener::bind(grpc).expect("bind the gRPC receiver");
        let http = std::net::TcpListener::bind(http).expect("bind the HTTP receiver");
        grpc.set_nonblocking(true).expect("non-blocking listener");
        http.set_nonblocking(true).expect("non-blocking listener");
        let grpc_addr = grpc.local_addr().expect("gRPC receiver address");
        let http_addr = http.local_addr().expect("HTTP receiver address");
        let state = Arc::new(State {
            mode: AtomicU8::new(ACCEPT),
            delay_ms: AtomicU64::new(0),
            keep,
            requests: Mutex::new(Vec::new()),
            refused: AtomicU64::new(0),
            spans: AtomicU64::new(0),
            server_spans: AtomicU64::new(0),
        });
        let mut grpc_builder = tonic::transport::Server::builder();
        let mut acceptor = None;
        if let Some((cert, key)) = &tls {
            grpc_builder = grpc_builder
                .tls_config(
                    tonic::transport::ServerTlsConfig::new()
                        .identity(tonic::transport::Identity::from_pem(cert, key)),
                )
                .expect("gRPC receiver TLS");
            acceptor = Some(tls_acceptor(cert, key));
        }
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server_state = state.clone();
        let thread = thread::Builder::new()
            .name("otlp-receiver".into())
            .spawn(move || {
                if !keep {
                    run_when_idle();
                }
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("receiver runtime");
                runtime.block_on(async move {
                    let grpc = tokio::net::TcpListener::from_std(grpc).expect("gRPC listener");
                    let http = tokio::net::TcpListener::from_std(http).expect("HTTP listener");
                    let service = TraceServiceServer::new(GrpcService {
                        state: server_state.clone(),
                    })
                    .max_decoding_message_size(256 * 1024 * 1024);
                    let grpc_server = grpc_builder.serve_with_incoming(
                        service,
                        tonic::transport::server::TcpIncoming::from(grpc),
                    );
                    tokio::select! {
                        _ = stopped => {}
                        result = grpc_server => {
                            if let Err(error) = result {
                                eprintln!("OTLP test receiver: gRPC server failed: {error}");
                            }
                        }
                        () = serve_http(http, acceptor, server_state) => {}
                    }
                });
                runtime.shutdown_background();
            })
            .expect("start the receiver thread");
        Receiver {
            state,
            scheme: if tls.is_some() { "https" } else { "http" },
            grpc: grpc_addr,
            http: http_addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The gRPC endpoint, `http://127.0.0.1:PORT` (`https://` with TLS).
    pub fn grpc_endpoint(&self) -> String {
        format!("{}://{}", self.scheme, self.grpc)
    }

    /// The OTLP/HTTP base endpoint, `http://127.0.0.1:PORT` (`https://` with TLS), without
    /// `/v1/traces`.
    pub fn http_endpoint(&self) -> String {
        format!("{}://{}", self.scheme, self.http)
    }

    /// The OTLP/HTTP traces URL, `http://127.0.0.1:PORT/v1/traces` (`https://` with TLS).
    pub fn http_traces_url(&self) -> String {
        format!("{}/v1/traces", self.http_endpoint())
    }

    /// Every accepted request with how it arrived.
    pub fn received(&self) -> Vec<ReceivedRequest> {
        self.state
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Every accepted export request.
    pub fn requests(&self) -> Vec<ExportTraceServiceRequest> {
        self.received().into_iter().map(|r| r.request).collect()
    }

    /// Every accepted span, in arrival order.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.requests().iter().flat_map(flatten).collect()
    }

    /// The `Content-Type` of every accepted request, in arrival order.
    pub fn content_types(&self) -> Vec<String> {
        self.received()
            .into_iter()
            .map(|r| r.content_type)
            .collect()
    }

    /// While true, every request is answered UNAVAILABLE (gRPC) or 503 (HTTP) and not kept.
    pub fn set_unavailable(&self, unavailable: bool) {
        self.state.mode.store(
            if unavailable { UNAVAILABLE } else { ACCEPT },
            Ordering::SeqCst,
        );
    }

    /// While true, every request is answered INVALID_ARGUMENT (gRPC) or 400 (HTTP) and not
    /// kept.
    pub fn set_rejecting(&self, rejecting: bool) {
        self.state
            .mode
            .store(if rejecting { REJECT } else { ACCEPT }, Ordering::SeqCst);
    }

    /// While true, every request is answered INTERNAL (gRPC) or 500 (HTTP) and not kept: a
    /// collector failing on its side.
    pub fn set_internal_error(&self, failing: bool) {
        self.state.mode.store(
            if failing { INTERNAL_ERROR } else { ACCEPT },
            Ordering::SeqCst,
        );
    }

    /// Every request (gRPC or HTTP) is answered only after `delay` (zero: at once): a slow
    /// collector. A request already waiting keeps the delay it started with.
    pub fn set_delay(&self, delay: Duration) {
        self.state.delay_ms.store(
            u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            Ordering::SeqCst,
        );
    }

    /// Number of requests answered with an error (unavailable, rejecting, internal error or
    /// undecodable).
    pub fn refused(&self) -> u64 {
        self.state.refused.load(Ordering::SeqCst)
    }

    /// Number of spans accepted so far (kept or, with [`Receiver::start_counting`], only
    /// counted).
    pub fn span_total(&self) -> u64 {
        self.state.spans.load(Ordering::SeqCst)
    }

    /// Number of spans of kind server accepted so far (kept or only counted).
    pub fn server_span_total(&self) -> u64 {
        self.state.server_spans.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` spans were accepted; false if `timeout` passes first.
    pub fn wait_for_spans(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let count: usize = self
                .state
                .requests
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|r| span_count(&r.request))
                .sum();
            if count >= n {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops both servers (open connections are closed).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Number of spans in a request.
pub fn span_count(request: &ExportTraceServiceRequest) -> usize {
    request
        .resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .map(|ss| ss.spans.len())
        .sum()
}

/// The spans of a request, flattened with their resource and scope.
pub fn flatten(request: &ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut spans = Vec::new();
    for rs in &request.resource_spans {
        let resource = rs
            .resource
            .as_ref()
            .map(|r| attributes(&r.attributes))
            .unwrap_or_default();
        for ss in &rs.scope_spans {
            let (scope_name, scope_version) = ss
                .scope
                .as_ref()
                .map(|s| (s.name.clone(), s.version.clone()))
                .unwrap_or_default();
            for s in &ss.spans {
                let status = s.status.clone().unwrap_or_default();
                spans.push(ReceivedSpan {
                    resource: resource.clone(),
                    scope_name: scope_name.clone(),
                    scope_version: scope_version.clone(),
                    name: s.name.clone(),
                    kind: match s.kind {
                        1 => "internal",
                        2 => "server",
                        3 => "client",
                        4 => "producer",
                        5 => "consumer",
                        _ => "unspecified",
                    }
                    .to_owned(),
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent_span_id: (!s.parent_span_id.is_empty()).then(|| hex(&s.parent_span_id)),
                    status_code: match status.code {
                        1 => "ok",
                        2 => "error",
                        _ => "unset",
                    }
                    .to_owned(),
                    status_message: status.message,
                    start_time_unix_nano: s.start_time_unix_nano,
                    end_time_unix_nano: s.end_time_unix_nano,
                    attributes: attributes(&s.attributes),
                });
            }
        }
    }
    spans
}

/// Attributes as JSON values (integers become JSON numbers).
pub fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, Value> {
    kvs.iter()
        .map(|kv| {
            (
                kv.key.clone(),
                kv.value.as_ref().map(any_to_json).unwrap_or(Value::Null),
            )
        })
        .collect()
}

fn any_to_json(value: &AnyValue) -> Value {
    match &value.value {
        None => Value::Null,
        Some(any_value::Value::StringValue(s)) => Value::String(s.clone()),
        Some(any_value::Value::BoolValue(b)) => Value::Bool(*b),
        Some(any_value::Value::IntValue(i)) => Value::from(*i),
        Some(any_value::Value::DoubleValue(d)) => Value::from(*d),
        Some(any_value::Value::ArrayValue(a)) => {
            Value::Array(a.values.iter().map(any_to_json).collect())
        }
        Some(any_value::Value::KvlistValue(kv)) => {
            Value::Object(attributes(&kv.values).into_iter().collect())
        }
        Some(any_value::Value::BytesValue(b)) => Value::String(hex(b)),
        Some(any_value::Value::StringValueStrindex(i)) => Value::from(*i),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

struct GrpcService {
    state: Arc<State>,
}

#[tonic::async_trait]
impl TraceService for GrpcService {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.state.delay().await;
        match self.state.mode() {
            UNAVAILABLE => {
                self.state.refused.fetch_add(1, Ordering::SeqCst);
                return Err(tonic::Status::unavailable("test receiver set unavailable"));
            }
            REJECT => {
                self.state.refused.fetch_add(1, Ordering::SeqCst);
                return Err(tonic::Status::invalid_argument(
                    "test receiver set rejecting",
                ));
            }
            INTERNAL_ERROR => {
                self.state.refused.fetch_add(1, Ordering::SeqCst);
                return Err(tonic::Status::internal(
                    "test receiver set to fail internally",
                ));
            }
            _ => {}
        }
        let headers = header_map(request.metadata().clone().into_headers());
        let content_type = headers.get("content-type").cloned().unwrap_or_default();
        let request = request.into_inner();
        self.state.push(ReceivedRequest {
            encoding: Encoding::Grpc,
            content_type,
            headers,
            body_len: request.encoded_len(),
            json: None,
            request,
        });
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn header_map(headers: http::HeaderMap) -> BTreeMap<String, String> {
    headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// A TLS acceptor for the HTTP server (HTTP/1.1 only).
fn tls_acceptor(cert_pem: &[u8], key_pem: &[u8]) -> tokio_rustls::TlsAcceptor {
    use tokio_rustls::rustls::{
        ServerConfig,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
    };
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .expect("receiver certificate PEM");
    let key = PrivateKeyDer::from_pem_slice(key_pem).expect("receiver key PEM");
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("receiver certificate and key");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

async fn serve_http(
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    state: Arc<State>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| handle_http(state.clone(), request));
            match tls {
                Some(acceptor) => {
                    let Ok(stream) = acceptor.accept(stream).await else {
                        return;
                    };
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }
                None => {
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }
            }
        });
    }
}

fn answer(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = http::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(http::header::CONTENT_TYPE, value);
    }
    response
}

async fn handle_http(
    state: Arc<State>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.method() != http::Method::POST || request.uri().path() != "/v1/traces" {
        return Ok(answer(
            StatusCode::NOT_FOUND,
            "text/plain",
            b"not found".to_vec(),
        ));
    }
    let headers = header_map(request.headers().clone());
    let content_type = headers.get("content-type").cloned().unwrap_or_default();
    let media_type = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            state.refused.fetch_add(1, Ordering::SeqCst);
            return Ok(answer(
                StatusCode::BAD_REQUEST,
                "text/plain",
                b"unreadable body".to_vec(),
            ));
        }
    };
    state.delay().await;
    match state.mode() {
        UNAVAILABLE => {
            state.refused.fetch_add(1, Ordering::SeqCst);
            return Ok(answer(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                b"test receiver set unavailable".to_vec(),
            ));
        }
        REJECT => {
            state.refused.fetch_add(1, Ordering::SeqCst);
            return Ok(answer(
                StatusCode::BAD_REQUEST,
                "text/plain",
                b"test receiver set rejecting".to_vec(),
            ));
        }
        INTERNAL_ERROR => {
            state.refused.fetch_add(1, Ordering::SeqCst);
            return Ok(answer(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                b"test receiver set to fail internally".to_vec(),
            ));
        }
        _ => {}
    }
    let decoded = match media_type.as_str() {
        "application/x-protobuf" => ExportTraceServiceRequest::decode(body.clone())
            .map(|r| (Encoding::HttpProtobuf, r, None))
            .map_err(|e| e.to_string()),
        "application/json" => serde_json::from_slice::<Value>(&body)
            .map_err(|e| e.to_string())
            .and_then(|json| {
                decode_json_request(&json).map(|r| (Encoding::HttpJson, r, Some(json)))
            }),
        other => Err(format!("unsupported content type {other:?}")),
    };
    let (encoding, decoded, json) = match decoded {
        Ok(decoded) => decoded,
        Err(error) => {
            state.refused.fetch_add(1, Ordering::SeqCst);
            return Ok(answer(
                StatusCode::BAD_REQUEST,
                "text/plain",
                error.into_bytes(),
            ));
        }
    };
    state.push(ReceivedRequest {
        encoding,
        content_type,
        headers,
        body_len: body.len(),
        json,
        request: decoded,
    });
    Ok(match encoding {
        Encoding::HttpJson => answer(StatusCode::OK, "application/json", b"{}".to_vec()),
        _ => answer(
            StatusCode::OK,
            "application/x-protobuf",
            ExportTraceServiceResponse::default().encode_to_vec(),
        ),
    })
}

/// Decodes an OTLP/JSON `ExportTraceServiceRequest` into the protobuf types.
pub fn decode_json_request(json: &Value) -> Result<ExportTraceServiceRequest, String> {
    let o = object(json, "request")?;
    Ok(ExportTraceServiceRequest {
        resource_spans: list(o, "resourceSpans", resource_spans)?,
    })
}

type Obj = serde_json::Map<String, Value>;

fn object<'a>(value: &'a Value, what: &str) -> Result<&'a Obj, String> {
    value
        .as_object()
        .ok_or_else(|| format!("{what} is not a JSON object: {value}"))
}

fn list<T>(o: &Obj, key: &str, item: fn(&Value) -> Result<T, String>) -> Result<Vec<T>, String> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items.iter().map(item).collect(),
        Some(other) => Err(format!("{key} is not an array: {other}")),
    }
}

fn message<T>(
    o: &Obj,
    key: &str,
    item: fn(&Value) -> Result<T, String>,
) -> Result<Option<T>, String> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => item(value).map(Some),
    }
}

fn string(o: &Obj, key: &str) -> Result<String, String> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(format!("{key} is not a string: {other}")),
    }
}

/// A 64-bit integer: a decimal string or a number (proto3 JSON accepts both).
fn int64<T: std::str::FromStr + TryFrom<i64> + TryFrom<u64> + Default>(
    o: &Obj,
    key: &str,
) -> Result<T, String> {
    let bad = || format!("{key} is not a 64-bit integer: {:?}", o.get(key));
    match o.get(key) {
        None | Some(Value::Null) => Ok(T::default()),
        Some(Value::String(s)) => s.parse().map_err(|_| bad()),
        Some(Value::Number(n)) => {
            if let Some(u) = n.as_u64() {
                T::try_from(u).map_err(|_| bad())
            } else if let Some(i) = n.as_i64() {
                T::try_from(i).map_err(|_| bad())
            } else {
                Err(bad())
            }
        }
        Some(_) => Err(bad()),
    }
}

/// A 32-bit integer or enum: a JSON number only (OTLP forbids enum names).
fn int32<T: TryFrom<i64> + Default>(o: &Obj, key: &str) -> Result<T, String> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(T::default()),
        Some(Value::Number(n)) => n
            .as_i64()
            .and_then(|i| T::try_from(i).ok())
            .ok_or_else(|| format!("{key} is out of range: {n}")),
        Some(other) => Err(format!("{key} is not an integer: {other}")),
    }
}

/// Trace and span ids: hex strings (either case) in OTLP/JSON.
fn hex_id(o: &Obj, key: &str) -> Result<Vec<u8>, String> {
    let text = string(o, key)?;
    if text.len() % 2 != 0 {
        return Err(format!("{key} is not hex: {text:?}"));
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(|| format!("{key} is not hex: {text:?}"))
        })
        .collect()
}

fn resource_spans(v: &Value) -> Result<ResourceSpans, String> {
    let o = object(v, "resourceSpans item")?;
    Ok(ResourceSpans {
        resource: message(o, "resource", resource)?,
        scope_spans: list(o, "scopeSpans", scope_spans)?,
        schema_url: string(o, "schemaUrl")?,
    })
}

fn resource(v: &Value) -> Result<Resource, String> {
    let o = object(v, "resource")?;
    Ok(Resource {
        attributes: list(o, "attributes", key_value)?,
        dropped_attributes_count: int32(o, "droppedAttributesCount")?,
        ..Resource::default()
    })
}

fn scope_spans(v: &Value) -> Result<ScopeSpans, String> {
    let o = object(v, "scopeSpans item")?;
    Ok(ScopeSpans {
        scope: message(o, "scope", scope)?,
        spans: list(o, "spans", span)?,
        schema_url: string(o, "schemaUrl")?,
    })
}

fn scope(v: &Value) -> Result<InstrumentationScope, String> {
    let o = object(v, "scope")?;
    Ok(InstrumentationScope {
        name: string(o, "name")?,
        version: string(o, "version")?,
        attributes: list(o, "attributes", key_value)?,
        dropped_attributes_count: int32(o, "droppedAttributesCount")?,
    })
}

fn span(v: &Value) -> Result<Span, String> {
    let o = object(v, "span")?;
    Ok(Span {
        trace_id: hex_id(o, "traceId")?,
        span_id: hex_id(o, "spanId")?,
        trace_state: string(o, "traceState")?,
        parent_span_id: hex_id(o, "parentSpanId")?,
        flags: int32(o, "flags")?,
        name: string(o, "name")?,
        kind: int32(o, "kind")?,
        start_time_unix_nano: int64(o, "startTimeUnixNano")?,
        end_time_unix_nano: int64(o, "endTimeUnixNano")?,
        attributes: list(o, "attributes", key_value)?,
        dropped_attributes_count: int32(o, "droppedAttributesCount")?,
        events: list(o, "events", event)?,
        dropped_events_count: int32(o, "droppedEventsCount")?,
        links: list(o, "links", link)?,
        dropped_links_count: int32(o, "droppedLinksCount")?,
        status: message(o, "status", status)?,
    })
}

fn event(v: &Value) -> Result<span::Event, String> {
    let o = object(v, "event")?;
    Ok(span::Event {
        time_unix_nano: int64(o, "timeUnixNano")?,
        name: string(o, "name")?,
        attributes: list(o, "attributes", key_value)?,
        dropped_attributes_count: int32(o, "droppedAttributesCount")?,
    })
}

fn link(v: &Value) -> Result<span::Link, String> {
    let o = object(v, "link")?;
    Ok(span::Link {
        trace_id: hex_id(o, "traceId")?,
        span_id: hex_id(o, "spanId")?,
        trace_state: string(o, "traceState")?,
        attributes: list(o, "attributes", key_value)?,
        dropped_attributes_count: int32(o, "droppedAttributesCount")?,
        flags: int32(o, "flags")?,
    })
}

fn status(v: &Value) -> Result<Status, String> {
    let o = object(v, "status")?;
    Ok(Status {
        message: string(o, "message")?,
        code: int32(o, "code")?,
    })
}

fn key_value(v: &Value) -> Result<KeyValue, String> {
    let o = object(v, "attribute")?;
    Ok(KeyValue {
        key: string(o, "key")?,
        value: message(o, "value", any)?,
        key_strindex: int32(o, "keyStrindex")?,
    })
}

fn any(v: &Value) -> Result<AnyValue, String> {
    let o = object(v, "value")?;
    let value = if let Some(s) = o.get("stringValue") {
        let s = s
            .as_str()
            .ok_or_else(|| format!("stringValue is not a string: {s}"))?;
        Some(any_value::Value::StringValue(s.to_owned()))
    } else if let Some(b) = o.get("boolValue") {
        let b = b
            .as_bool()
            .ok_or_else(|| format!("boolValue is not a boolean: {b}"))?;
        Some(any_value::Value::BoolValue(b))
    } else if o.contains_key("intValue") {
        Some(any_value::Value::IntValue(int64(o, "intValue")?))
    } else if let Some(d) = o.get("doubleValue") {
        let d = match d {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => match s.as_str() {
                "NaN" => Some(f64::NAN),
                "Infinity" => Some(f64::INFINITY),
                "-Infinity" => Some(f64::NEG_INFINITY),
                other => other.parse().ok(),
            },
            _ => None,
        }
        .ok_or_else(|| format!("doubleValue is not a number: {d}"))?;
        Some(any_value::Value::DoubleValue(d))
    } else if let Some(a) = o.get("arrayValue") {
        let a = object(a, "arrayValue")?;
        Some(any_value::Value::ArrayValue(ArrayValue {
            values: list(a, "values", any)?,
        }))
    } else if let Some(kv) = o.get("kvlistValue") {
        let kv = object(kv, "kvlistValue")?;
        Some(any_value::Value::KvlistValue(KeyValueList {
            values: list(kv, "values", key_value)?,
        }))
    } else if let Some(b) = o.get("bytesValue") {
        let b = b
            .as_str()
            .ok_or_else(|| format!("bytesValue is not a string: {b}"))?;
        Some(any_value::Value::BytesValue(base64_decode(b)?))
    } else {
        None
    };
    Ok(AnyValue { value })
}

fn base64_decode(text: &str) -> Result<Vec<u8>, String> {
    let mut bits: u32 = 0;
    let mut count = 0;
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    for c in text.bytes().filter(|c| *c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return Err(format!("bytesValue is not base64: {text:?}")),
        };
        bits = (bits << 6) | u32::from(v);
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
        }
    }
    Ok(out)
}
