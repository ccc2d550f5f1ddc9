//! Delivery of one export request: a gRPC unary call over HTTP/2 or an HTTP/1.1 POST (both
//! hyper), TLS by rustls for `https://` URLs, and the classification of every answer as
//! accepted, retryable or not.
//!
//! A request goes out as the pieces its batch encoded (see `batch`), never joined: the body
//! hands them to HTTP as one buffer of many slices, and each write gathers the slices it
//! covers (`writev`), so the bytes are copied once, by the kernel. (tonic's codecs copy every
//! message into a frame buffer first: about a twelfth of the sensor's time under 16 KB
//! bodies.)

use std::{
    future::Future,
    io,
    path::Path,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use anyhow::{Context as _, bail};
use bytes::{Buf, Bytes};
use http::{
    HeaderMap, HeaderName, HeaderValue, Request, StatusCode, Uri,
    header::{CONTENT_TYPE, HOST, RETRY_AFTER, TE, USER_AGENT},
};
use http_body_util::{BodyExt as _, Limited};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message as _;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};
use tokio_rustls::{
    TlsConnector,
    rustls::{
        ClientConfig, RootCertStore,
        pki_types::{CertificateDer, ServerName, pem::PemObject as _},
    },
};
use tonic::{Code, Status};
use tracing::{debug, warn};

use super::{OtlpSettings, convert::SDK_VERSION, json};
use crate::config::Protocol;

/// Longest wait for a TCP connection to the collector.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest response body read (the rest is not needed).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Longest wait a `Retry-After` answer is honoured with.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// An export request ready to be sent (again): shared, so a retry copies no bytes.
#[derive(Clone)]
pub(super) struct Payload {
    /// What goes on the wire, in order: the encoded request's pieces (after gRPC's message
    /// prefix).
    pieces: Arc<[Bytes]>,
    /// Size of the encoded request (without the gRPC prefix).
    len: usize,
}

impl Payload {
    /// Encoded size in bytes.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// The request as an HTTP body.
    fn body(&self) -> PiecesBody {
        PiecesBody(Some(Pieces::new(self.pieces.clone())))
    }
}

/// Bytes in pieces, read in order as one buffer: what an export request's body hands to HTTP.
/// Its `chunks_vectored` gives every piece left, so a write takes as many as it can hold.
#[derive(Debug)]
pub(super) struct Pieces {
    pieces: Arc<[Bytes]>,
    /// The piece being read, and the bytes of it already read.
    index: usize,
    offset: usize,
    remaining: usize,
}

impl Pieces {
    fn new(pieces: Arc<[Bytes]>) -> Pieces {
        let remaining = pieces.iter().map(Bytes::len).sum();
        let mut this = Pieces {
            pieces,
            index: 0,
            offset: 0,
            remaining,
        };
        this.skip_read();
        this
    }

    /// Moves past pieces read to their end (and empty ones).
    fn skip_read(&mut self) {
        while self
            .pieces
            .get(self.index)
            .is_some_and(|piece| self.offset >= piece.len())
        {
            self.index += 1;
            self.offset = 0;
        }
    }
}

impl Buf for Pieces {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        self.pieces
            .get(self.index)
            .map_or(&[][..], |piece| &piece[self.offset..])
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(cnt <= self.remaining, "advanced past the end of the pieces");
        self.remaining -= cnt;
        while cnt > 0 {
            let left = self.pieces[self.index].len() - self.offset;
            let step = left.min(cnt);
            self.offset += step;
            cnt -= step;
            self.skip_read();
        }
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [io::IoSlice<'a>]) -> usize {
        let mut filled = 0;
        let mut offset = self.offset;
        for piece in self.pieces.iter().skip(self.index) {
            if filled == dst.len() {
                break;
            }
            if piece.len() > offset {
                dst[filled] = io::IoSlice::new(&piece[offset..]);
                filled += 1;
            }
            offset = 0;
        }
        filled
    }
}

/// An export request's body: its pieces as one data frame.
pub(super) struct PiecesBody(Option<Pieces>);

impl http_body::Body for PiecesBody {
    type Data = Pieces;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Pieces>, Self::Error>>> {
        Poll::Ready(
            self.0
                .take()
                .map(|pieces| Ok(http_body::Frame::data(pieces))),
        )
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_none()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.0.as_ref().map_or(0, |p| p.remaining() as u64))
    }
}

/// How the collector answered one attempt.
#[derive(Debug)]
pub(super) enum Outcome {
    /// Delivered; the collector may have rejected some spans (partial success, not retried).
    Accepted {
        /// Spans the collector said it rejected.
        rejected: u64,
        /// The collector's explanation, if any.
        message: String,
    },
    /// Not delivered, but may succeed later (unavailable, throttled, network error).
    Retry {
        /// What went wrong.
        reason: String,
        /// How long the collector asked us to wait.
        after: Option<Duration>,
    },
    /// Not delivered and never will be (the request is refused as it is).
    Fail {
        /// What went wrong.
        reason: String,
    },
}

/// A client of one collector.
pub(super) enum Transport {
    /// OTLP/gRPC.
    Grpc(Grpc),
    /// OTLP/HTTP, protobuf or JSON.
    Http(Http),
}

impl Transport {
    /// A client for the settings' URL and protocol; fails on a malformed URL, header or CA file.
    /// Connects only when the first request is sent.
    pub(super) fn new(settings: &OtlpSettings) -> anyhow::Result<Transport> {
        let uri: Uri = settings
            .url
            .parse()
            .with_context(|| format!("invalid OTLP endpoint URL {:?}", settings.url))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => bail!(
                "OTLP endpoint URL {:?} must start with http:// or https://",
                settings.url
            ),
        };
        if uri.host().is_none_or(str::is_empty) {
            bail!("OTLP endpoint URL {:?} has no host", settings.url);
        }
        let ca = match &settings.ca_file {
            Some(path) if https => Some(read_ca_file(path)?),
            _ => None,
        };
        Ok(match settings.protocol {
            Protocol::Grpc => Transport::Grpc(Grpc::new(uri, https, ca, &settings.headers)?),
            Protocol::HttpProtobuf | Protocol::HttpJson => Transport::Http(Http::new(
                uri,
                https,
                ca,
                &settings.headers,
                settings.protocol == Protocol::HttpJson,
            )?),
        })
    }

    /// The payload of a request encoded in `parts` (sent back to back).
    pub(super) fn payload(&self, parts: Vec<Bytes>) -> Payload {
        let len = parts.iter().map(Bytes::len).sum();
        let pieces = match self {
            Transport::Grpc(_) => std::iter::once(grpc_prefix(len)).chain(parts).collect(),
            Transport::Http(_) => parts.into(),
        };
        Payload { pieces, len }
    }

    /// Sends one request and classifies the answer.
    pub(super) async fn send(&mut self, payload: &Payload) -> Outcome {
        match self {
            Transport::Grpc(grpc) => grpc.send(payload).await,
            Transport::Http(http) => http.send(payload).await,
        }
    }
}

/// The CA certificates of a PEM file, checked to hold at least one.
struct CaFile {
    certs: Vec<CertificateDer<'static>>,
}

fn read_ca_file(path: &Path) -> anyhow::Result<CaFile> {
    let pem = std::fs::read(path)
        .with_context(|| format!("reading the CA certificate file {}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing the CA certificate file {}", path.display()))?;
    if certs.is_empty() {
        bail!(
            "the CA certificate file {} holds no certificate",
            path.display()
        );
    }
    Ok(CaFile { certs })
}

fn user_agent() -> String {
    format!("{}/{SDK_VERSION}", super::convert::SDK_NAME)
}

/// The OTLP trace export method.
const GRPC_EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Size of a gRPC message's prefix: a compression flag and a big-endian length.
const GRPC_PREFIX_LEN: usize = 5;

/// The prefix of an uncompressed gRPC message of `len` bytes.
fn grpc_prefix(len: usize) -> Bytes {
    let mut prefix = [0u8; GRPC_PREFIX_LEN];
    // The batch size limit keeps a request far below 4 GiB.
    prefix[1..].copy_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    Bytes::copy_from_slice(&prefix)
}

/// OTLP/gRPC: unary calls of the export method over one HTTP/2 connection, reopened when it
/// breaks.
pub(super) struct Grpc {
    link: Link<http2::SendRequest<PiecesBody>>,
    /// The export method's URL (its scheme and authority are the call's pseudo-headers).
    method: Uri,
    /// The call's headers: content type, `te: trailers`, user agent, configured metadata.
    headers: HeaderMap,
}

impl Grpc {
    fn new(
        uri: Uri,
        https: bool,
        ca: Option<CaFile>,
        extra: &std::collections::BTreeMap<String, String>,
    ) -> anyhow::Result<Grpc> {
        let method = Uri::builder()
            .scheme(uri.scheme_str().unwrap_or("http"))
            .authority(uri.authority().map_or("", |a| a.as_str()))
            .path_and_query(GRPC_EXPORT_PATH)
            .build()
            .context("invalid OTLP endpoint URL")?;
        let tls = match https {
            true => Some(tls_connector(&uri, ca, b"h2")?),
            false => None,
        };
        let mut headers = HeaderMap::new();
        for (name, value) in extra {
            let name = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
                .ok()
                // Binary metadata (`-bin`) would need base64 values.
                .filter(|n| !n.as_str().ends_with("-bin"))
                .with_context(|| format!("invalid OTLP header name {name:?}"))?;
            let value = HeaderValue::from_str(value)
                .with_context(|| format!("invalid value of OTLP header {name:?}"))?;
            headers.insert(name, value);
        }
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert(TE, HeaderValue::from_static("trailers"));
        headers.insert(USER_AGENT, HeaderValue::from_str(&user_agent())?);
        Ok(Grpc {
            link: Link::new(uri, tls),
            method,
            headers,
        })
    }

    /// Sends one `ExportTraceServiceRequest`.
    async fn send(&mut self, payload: &Payload) -> Outcome {
        let response = match self.link.post(&self.method, &self.headers, payload).await {
            Ok(response) => response,
            Err(outcome) => return outcome,
        };
        // One call's answer, whatever it is, leaves the connection usable for the next.
        self.link.keep();
        match grpc_answer(response).await {
            Ok(response) => accepted(response),
            Err(GrpcError::Transport(error)) => Outcome::Retry {
                reason: format!("gRPC call to {} failed: {error}", self.link.uri),
                after: None,
            },
            Err(GrpcError::Status(status)) => {
                let reason = format!("gRPC {:?}: {}", status.code(), status.message());
                let retryable = matches!(
                    status.code(),
                    Code::Cancelled
                        | Code::DeadlineExceeded
                        | Code::ResourceExhausted
                        | Code::Aborted
                        | Code::OutOfRange
                        | Code::Unavailable
                        | Code::DataLoss
                );
                if retryable {
                    Outcome::Retry {
                        reason,
                        after: None,
                    }
                } else {
                    Outcome::Fail { reason }
                }
            }
        }
    }
}

/// Why a gRPC call brought no response message.
enum GrpcError {
    /// The connection failed while the answer was read.
    Transport(hyper::Error),
    /// The collector (or an HTTP proxy before it) answered with this status.
    Status(Status),
}

/// The response message of a unary call, or the status it ended with.
async fn grpc_answer(
    response: http::Response<hyper::body::Incoming>,
) -> Result<ExportTraceServiceResponse, GrpcError> {
    let (head, body) = response.into_parts();
    // An error answered without a body ("trailers-only") has its status in the headers.
    let early = Status::from_header_map(&head.headers);
    if let Some(status) = early.as_ref().filter(|s| s.code() != Code::Ok) {
        return Err(GrpcError::Status(status.clone()));
    }
    if early.is_none() && head.status != StatusCode::OK {
        return Err(GrpcError::Status(status_of_http(head.status)));
    }
    let collected = match Limited::new(body, MAX_RESPONSE_BYTES).collect().await {
        Ok(collected) => collected,
        Err(error) => {
            return Err(match error.downcast::<hyper::Error>() {
                Ok(error) => GrpcError::Transport(*error),
                // Larger than any answer to an export: not a collector.
                Err(error) => {
                    GrpcError::Status(Status::internal(format!("unreadable answer: {error}")))
                }
            });
        }
    };
    match collected
        .trailers()
        .and_then(Status::from_header_map)
        .or(early)
    {
        Some(status) if status.code() == Code::Ok => {}
        Some(status) => return Err(GrpcError::Status(status)),
        // gRPC over HTTP/2 ends every call with a status; grpc-go and tonic read its absence
        // as Unknown.
        None => {
            return Err(GrpcError::Status(Status::unknown(
                "the answer carried no grpc-status",
            )));
        }
    }
    decode_grpc_message(&collected.to_bytes()).map_err(GrpcError::Status)
}

/// The status of a gRPC answer without `grpc-status`, from its HTTP status (gRPC's
/// `http-grpc-status-mapping.md`, as tonic and grpc-go apply it).
fn status_of_http(status: StatusCode) -> Status {
    let code = match status {
        StatusCode::BAD_REQUEST => Code::Internal,
        StatusCode::UNAUTHORIZED => Code::Unauthenticated,
        StatusCode::FORBIDDEN => Code::PermissionDenied,
        StatusCode::NOT_FOUND => Code::Unimplemented,
        StatusCode::TOO_MANY_REQUESTS
        | StatusCode::BAD_GATEWAY
        | StatusCode::SERVICE_UNAVAILABLE
        | StatusCode::GATEWAY_TIMEOUT => Code::Unavailable,
        _ => Code::Unknown,
    };
    Status::new(code, format!("HTTP status {status} without grpc-status"))
}

/// The response message of a unary call: one length-prefixed, uncompressed gRPC message (the
/// sensor announces no compression, so a collector may not use any). An empty body is the
/// empty message.
fn decode_grpc_message(body: &[u8]) -> Result<ExportTraceServiceResponse, Status> {
    if body.is_empty() {
        return Ok(ExportTraceServiceResponse::default());
    }
    let malformed = |what: &str| Status::internal(format!("malformed gRPC answer: {what}"));
    let Some((&[compressed, a, b, c, d], message)) = body.split_first_chunk::<GRPC_PREFIX_LEN>()
    else {
        return Err(malformed("a message shorter than its prefix"));
    };
    if compressed != 0 {
        return Err(malformed("a compressed message"));
    }
    if message.len() != u32::from_be_bytes([a, b, c, d]) as usize {
        return Err(malformed("its length prefix does not match its body"));
    }
    ExportTraceServiceResponse::decode(message)
        .map_err(|error| Status::internal(format!("decoding the response: {error}")))
}

fn accepted(response: ExportTraceServiceResponse) -> Outcome {
    match response.partial_success {
        Some(partial) => Outcome::Accepted {
            rejected: u64::try_from(partial.rejected_spans).unwrap_or(0),
            message: partial.error_message,
        },
        None => Outcome::Accepted {
            rejected: 0,
            message: String::new(),
        },
    }
}

/// The request sender of one HTTP version's client connection.
trait Sender: Sized {
    /// The HTTP version of its requests.
    const VERSION: http::Version;
    /// Starts the protocol on a new connection and spawns its driver.
    fn handshake(
        io: TokioIo<Box<dyn Connection>>,
    ) -> impl Future<Output = hyper::Result<Self>> + Send;
    /// Whether the connection is gone.
    fn is_closed(&self) -> bool;
    /// Waits until a request can be sent, then sends it.
    fn request(
        &mut self,
        request: Request<PiecesBody>,
    ) -> impl Future<Output = hyper::Result<http::Response<hyper::body::Incoming>>> + Send;
}

impl Sender for http1::SendRequest<PiecesBody> {
    const VERSION: http::Version = http::Version::HTTP_11;

    async fn handshake(io: TokioIo<Box<dyn Connection>>) -> hyper::Result<Self> {
        let (sender, connection) = http1::handshake(io).await?;
        drive(connection, "HTTP");
        Ok(sender)
    }

    fn is_closed(&self) -> bool {
        http1::SendRequest::is_closed(self)
    }

    async fn request(
        &mut self,
        request: Request<PiecesBody>,
    ) -> hyper::Result<http::Response<hyper::body::Incoming>> {
        self.ready().await?;
        self.send_request(request).await
    }
}

impl Sender for http2::SendRequest<PiecesBody> {
    const VERSION: http::Version = http::Version::HTTP_2;

    async fn handshake(io: TokioIo<Box<dyn Connection>>) -> hyper::Result<Self> {
        let (sender, connection) = http2::handshake(TokioExecutor::new(), io).await?;
        drive(connection, "gRPC");
        Ok(sender)
    }

    fn is_closed(&self) -> bool {
        http2::SendRequest::is_closed(self)
    }

    async fn request(
        &mut self,
        request: Request<PiecesBody>,
    ) -> hyper::Result<http::Response<hyper::body::Incoming>> {
        self.ready().await?;
        self.send_request(request).await
    }
}

/// Runs a client connection's driver until the connection ends.
fn drive<C>(connection: C, protocol: &'static str)
where
    C: Future<Output = hyper::Result<()>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            debug!(%error, protocol, "OTLP connection ended");
        }
    });
}

/// One connection to the collector, opened when a request needs it and reopened when it
/// breaks.
struct Link<S> {
    uri: Uri,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// The connection the last request went out on, until it is known to be reusable.
    last: Option<S>,
    /// The connection the next request goes out on.
    open: Option<S>,
}

impl<S: Sender> Link<S> {
    fn new(uri: Uri, tls: Option<(TlsConnector, ServerName<'static>)>) -> Self {
        Link {
            uri,
            tls,
            last: None,
            open: None,
        }
    }

    /// POSTs the payload to `target` on the open connection, or a new one; a request that
    /// fails on a connection that was kept open is tried once more on a new one (the collector
    /// may have closed it). A failure is a retryable outcome.
    async fn post(
        &mut self,
        target: &Uri,
        headers: &HeaderMap,
        payload: &Payload,
    ) -> Result<http::Response<hyper::body::Incoming>, Outcome> {
        let request = || {
            let mut request = Request::new(payload.body());
            *request.method_mut() = http::Method::POST;
            *request.uri_mut() = target.clone();
            *request.version_mut() = S::VERSION;
            *request.headers_mut() = headers.clone();
            request
        };
        loop {
            let (mut sender, reused) = match self.open.take().filter(|s| !s.is_closed()) {
                Some(sender) => (sender, true),
                None => match self.connect().await {
                    Ok(sender) => (sender, false),
                    Err(error) => {
                        return Err(Outcome::Retry {
                            reason: format!("connecting to {}: {error:#}", self.uri),
                            after: None,
                        });
                    }
                },
            };
            match sender.request(request()).await {
                Ok(response) => {
                    self.last = Some(sender);
                    return Ok(response);
                }
                Err(error) if reused => {
                    debug!(%error, uri = %self.uri, "open OTLP connection failed; reconnecting");
                }
                Err(error) => {
                    return Err(Outcome::Retry {
                        reason: format!("request to {} failed: {error}", self.uri),
                        after: None,
                    });
                }
            }
        }
    }

    /// Keeps the last request's connection open for the next one.
    fn keep(&mut self) {
        self.open = self.last.take();
    }

    async fn connect(&self) -> anyhow::Result<S> {
        let io = open(&self.uri, self.tls.as_ref()).await?;
        Ok(S::handshake(io).await?)
    }
}

/// A connection to the collector: TCP, or TLS over it.
trait Connection: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> Connection for T {}

/// Opens a connection to a URL's host, with TLS when `tls` is given.
async fn open(
    uri: &Uri,
    tls: Option<&(TlsConnector, ServerName<'static>)>,
) -> anyhow::Result<TokioIo<Box<dyn Connection>>> {
    let tcp = connect(uri).await?;
    let io: Box<dyn Connection> = match tls {
        Some((connector, name)) => Box::new(
            tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name.clone(), tcp))
                .await
                .context("TLS handshake timed out")?
                .context("TLS handshake failed")?,
        ),
        None => Box::new(tcp),
    };
    Ok(TokioIo::new(io))
}

/// The host of a URL without the brackets of an IPv6 literal.
fn bare_host(uri: &Uri) -> &str {
    let host = uri.host().unwrap_or_default();
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// Opens a TCP connection to a URL's host and logs its local address, so that the sensor's own
/// export traffic can be recognised.
async fn connect(uri: &Uri) -> io::Result<TcpStream> {
    let host = bare_host(uri);
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("https") {
            443
        } else {
            80
        });
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host, port)))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    let _ = stream.set_nodelay(true);
    match (stream.local_addr(), stream.peer_addr()) {
        (Ok(local), Ok(peer)) => {
            crate::export::register_own_connection(local);
            debug!(%local, %peer, "OTLP export connection opened");
        }
        _ => debug!(host, port, "OTLP export connection opened"),
    }
    Ok(stream)
}

/// OTLP/HTTP over one kept-alive HTTP/1.1 connection, reopened when it breaks.
pub(super) struct Http {
    link: Link<http1::SendRequest<PiecesBody>>,
    target: Uri,
    headers: HeaderMap,
}

impl Http {
    fn new(
        uri: Uri,
        https: bool,
        ca: Option<CaFile>,
        extra: &std::collections::BTreeMap<String, String>,
        json: bool,
    ) -> anyhow::Result<Http> {
        let target: Uri = uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse()
            .context("invalid OTLP endpoint path")?;
        let authority = uri.authority().map_or("", |a| a.as_str());
        let host = HeaderValue::from_str(authority).context("invalid OTLP endpoint host")?;
        let tls = match https {
            true => Some(tls_connector(&uri, ca, b"http/1.1")?),
            false => None,
        };
        let mut headers = HeaderMap::new();
        headers.insert(USER_AGENT, HeaderValue::from_str(&user_agent())?);
        for (name, value) in extra {
            let name = HeaderName::from_bytes(name.as_bytes())
                .with_context(|| format!("invalid OTLP header name {name:?}"))?;
            let value = HeaderValue::from_str(value)
                .with_context(|| format!("invalid value of OTLP header {name:?}"))?;
            headers.insert(name, value);
        }
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static(if json {
                "application/json"
            } else {
                "application/x-protobuf"
            }),
        );
        headers.insert(HOST, host);
        Ok(Http {
            link: Link::new(uri, tls),
            target,
            headers,
        })
    }

    async fn send(&mut self, payload: &Payload) -> Outcome {
        let response = match self.link.post(&self.target, &self.headers, payload).await {
            Ok(response) => response,
            Err(outcome) => return outcome,
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER));
        let json_body = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("json"));
        let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map(|b| b.to_bytes());
        if body.is_ok() {
            // The answer was read whole: the connection can carry the next request.
            self.link.keep();
        }
        let body = body.unwrap_or_default();
        if status.is_success() {
            return if json_body {
                match json::partial_success(&body) {
                    Some((rejected, message)) => Outcome::Accepted {
                        rejected: u64::try_from(rejected).unwrap_or(0),
                        message,
                    },
                    None => accepted(ExportTraceServiceResponse::default()),
                }
            } else {
                accepted(ExportTraceServiceResponse::decode(body).unwrap_or_default())
            };
        }
        let reason = format!("HTTP {status}{}", error_detail(&body, json_body));
        if matches!(
            status,
            StatusCode::TOO_MANY_REQUESTS
                | StatusCode::BAD_GATEWAY
                | StatusCode::SERVICE_UNAVAILABLE
                | StatusCode::GATEWAY_TIMEOUT
        ) {
            Outcome::Retry {
                reason,
                after: retry_after,
            }
        } else {
            Outcome::Fail { reason }
        }
    }
}

/// `google.rpc.Status`, the body of OTLP/HTTP error answers (only the fields read).
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

/// The collector's message from an error answer, as `": message"`, or nothing.
fn error_detail(body: &[u8], json: bool) -> String {
    let message = if json {
        serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("message")?.as_str().map(str::to_owned))
    } else {
        RpcStatus::decode(body).ok().map(|s| s.message)
    };
    let message = message
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    let message: String = message
        .chars()
        .filter(|c| !c.is_control())
        .take(300)
        .collect();
    if message.trim().is_empty() {
        String::new()
    } else {
        format!(": {}", message.trim())
    }
}

/// The TLS connector of a URL's host, offering `alpn` (HTTP/2 for gRPC, else HTTP/1.1).
fn tls_connector(
    uri: &Uri,
    ca: Option<CaFile>,
    alpn: &[u8],
) -> anyhow::Result<(TlsConnector, ServerName<'static>)> {
    let name = ServerName::try_from(bare_host(uri).to_owned())
        .context("invalid OTLP endpoint host name for TLS")?;
    let mut config = tls_config(ca)?;
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok((TlsConnector::from(Arc::new(config)), name))
}

/// rustls settings for HTTPS: the CA file's certificates, else the system's roots.
fn tls_config(ca: Option<CaFile>) -> anyhow::Result<ClientConfig> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(ca) => {
            for cert in ca.certs {
                roots
                    .add(cert)
                    .context("adding a certificate of the CA file")?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for error in &native.errors {
                warn!(%error, "loading system CA certificates");
            }
            let (added, ignored) = roots.add_parsable_certificates(native.certs);
            debug!(added, ignored, "system CA certificates loaded");
            if roots.is_empty() {
                bail!(
                    "no system CA certificates found to verify the OTLP collector: \
                     install them or configure a CA certificate file"
                );
            }
        }
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt as _;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTracePartialSuccess;

    use super::*;

    fn pieces(parts: &[&[u8]]) -> Pieces {
        Pieces::new(parts.iter().map(|p| Bytes::copy_from_slice(p)).collect())
    }

    /// Reads a buffer the way a socket write does: up to `max` slices, `take` bytes at a time.
    fn drain(mut buf: Pieces, max: usize, take: usize) -> Vec<u8> {
        let mut out = Vec::new();
        while buf.has_remaining() {
            let mut slices = vec![io::IoSlice::new(&[]); max];
            let n = buf.chunks_vectored(&mut slices);
            assert!(n > 0, "data left but no slice");
            let gathered: Vec<u8> = slices[..n].iter().flat_map(|s| s.iter().copied()).collect();
            assert!(
                gathered.starts_with(buf.chunk()),
                "the first slice is the chunk"
            );
            let step = take.min(gathered.len());
            out.extend_from_slice(&gathered[..step]);
            buf.advance(step);
        }
        assert!(buf.chunk().is_empty());
        out
    }

    #[test]
    fn pieces_read_as_one_buffer_whatever_the_write_sizes() {
        let parts: [&[u8]; 6] = [b"", b"abc", b"", b"d", b"efghij", b""];
        for max in [1, 2, 16] {
            for take in [1, 2, 3, 5, 100] {
                let buf = pieces(&parts);
                assert_eq!(buf.remaining(), 10);
                assert_eq!(
                    drain(buf, max, take),
                    b"abcdefghij",
                    "{max} slices, {take} at a time"
                );
            }
        }
        let empty = pieces(&[b"", b""]);
        assert_eq!((empty.remaining(), empty.chunk()), (0, &[][..]));
        let mut slices = [io::IoSlice::new(&[])];
        assert_eq!(empty.chunks_vectored(&mut slices), 0);
    }

    #[tokio::test]
    async fn a_grpc_payload_is_the_prefixed_message_in_its_pieces() {
        let transport = Transport::Grpc(
            Grpc::new(
                "http://127.0.0.1:4317".parse().expect("uri"),
                false,
                None,
                &Default::default(),
            )
            .expect("client"),
        );
        let parts = vec![
            Bytes::from_static(b"ab"),
            Bytes::new(),
            Bytes::from(vec![7u8; 70_000]),
        ];
        let payload = transport.payload(parts.clone());
        assert_eq!(
            payload.len(),
            70_002,
            "the message's size, without the prefix"
        );
        let body = payload.body();
        assert_eq!(http_body::Body::size_hint(&body).exact(), Some(70_007));
        let sent = body.collect().await.expect("infallible").to_bytes();
        let mut expected = vec![0, 0, 1, 0x11, 0x72];
        expected.extend_from_slice(&parts.concat());
        assert_eq!(sent.as_ref(), expected.as_slice());
    }

    #[test]
    fn grpc_answers_are_decoded_or_refused() {
        let message = ExportTraceServiceResponse {
            partial_success: Some(ExportTracePartialSuccess {
                rejected_spans: 3,
                error_message: "too old".into(),
            }),
        };
        let encoded = message.encode_to_vec();
        let mut framed = vec![0];
        framed.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
        framed.extend_from_slice(&encoded);
        assert_eq!(decode_grpc_message(&framed).expect("valid"), message);
        assert_eq!(
            decode_grpc_message(b"").expect("empty"),
            ExportTraceServiceResponse::default()
        );
        let mut compressed = framed.clone();
        compressed[0] = 1;
        for bad in [&framed[..3], &framed[..framed.len() - 1], &compressed[..]] {
            assert_eq!(
                decode_grpc_message(bad).expect_err("malformed").code(),
                Code::Internal
            );
        }
        assert_eq!(
            status_of_http(StatusCode::SERVICE_UNAVAILABLE).code(),
            Code::Unavailable
        );
        assert_eq!(
            status_of_http(StatusCode::NOT_FOUND).code(),
            Code::Unimplemented
        );
        assert_eq!(
            status_of_http(StatusCode::IM_A_TEAPOT).code(),
            Code::Unknown
        );
    }

    #[test]
    fn grpc_metadata_names_are_checked() {
        let uri: Uri = "https://collector:4317".parse().expect("uri");
        let bad = |name: &str| {
            let headers = [(name.to_owned(), "v".to_owned())].into();
            Grpc::new(uri.clone(), false, None, &headers).is_err()
        };
        assert!(bad("x-token-bin"));
        assert!(bad("bad name"));
        assert!(!bad("X-Api-Key"));
    }
}
