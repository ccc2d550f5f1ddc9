//! Delivery of one export request: gRPC (tonic) or HTTP/1.1 POST (hyper), TLS by rustls for
//! `https://` URLs, and the classification of every answer as accepted, retryable or not.

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
use bytes::Bytes;
use http::{
    HeaderMap, HeaderName, HeaderValue, Request, StatusCode, Uri,
    header::{CONTENT_TYPE, HOST, RETRY_AFTER, USER_AGENT},
};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message as _;
use tokio::net::TcpStream;
use tokio_rustls::{
    TlsConnector,
    rustls::{
        ClientConfig, RootCertStore,
        pki_types::{CertificateDer, ServerName, pem::PemObject as _},
    },
};
use tonic::{
    Code,
    metadata::{AsciiMetadataKey, AsciiMetadataValue, MetadataMap},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
};
use tracing::{debug, warn};

use super::{OtlpSettings, convert::SDK_VERSION, json};
use crate::config::Protocol;

/// Longest wait for a TCP connection to the collector.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest response body read (the rest is not needed).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Longest wait a `Retry-After` answer is honoured with.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// An export request ready to be sent (again).
#[derive(Clone)]
pub(super) enum Payload {
    /// gRPC: the encoded request in pieces, which the codec copies straight into tonic's frame
    /// buffer (not into one buffer and then into the frame). Shared, so a retry copies no
    /// bytes beforehand.
    Parts {
        /// The pieces, in order.
        parts: Arc<[Bytes]>,
        /// Their total size.
        len: usize,
    },
    /// HTTP: the body in one piece; a retry sends the same bytes.
    Encoded(Bytes),
}

impl Payload {
    /// Encoded size in bytes.
    pub(super) fn len(&self) -> usize {
        match self {
            Payload::Parts { len, .. } => *len,
            Payload::Encoded(bytes) => bytes.len(),
        }
    }
}

/// The pieces of a request joined in one buffer.
fn joined(parts: &[Bytes]) -> Bytes {
    match parts {
        [one] => one.clone(),
        _ => Bytes::from(parts.concat()),
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
        match self {
            Transport::Grpc(_) => Payload::Parts {
                len: parts.iter().map(Bytes::len).sum(),
                parts: parts.into(),
            },
            Transport::Http(_) => Payload::Encoded(joined(&parts)),
        }
    }

    /// Sends one request and classifies the answer.
    pub(super) async fn send(&mut self, payload: &Payload) -> Outcome {
        match (self, payload) {
            (Transport::Grpc(grpc), payload) => grpc.send(payload.clone()).await,
            (Transport::Http(http), Payload::Encoded(body)) => http.send(body).await,
            (Transport::Http(http), Payload::Parts { parts, .. }) => {
                http.send(&joined(parts)).await
            }
        }
    }
}

/// The CA certificates of a PEM file, checked to hold at least one.
struct CaFile {
    pem: Vec<u8>,
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
    Ok(CaFile { pem, certs })
}

fn user_agent() -> String {
    format!("{}/{SDK_VERSION}", super::convert::SDK_NAME)
}

/// The OTLP trace export method.
const GRPC_EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// OTLP/gRPC through tonic, on connections made by [`LoggingConnector`].
pub(super) struct Grpc {
    client: tonic::client::Grpc<Channel>,
    metadata: MetadataMap,
}

impl Grpc {
    fn new(
        uri: Uri,
        https: bool,
        ca: Option<CaFile>,
        headers: &std::collections::BTreeMap<String, String>,
    ) -> anyhow::Result<Grpc> {
        let mut endpoint = Endpoint::from(uri)
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .user_agent(user_agent())
            .context("invalid user agent")?;
        if https {
            let tls = match ca {
                Some(ca) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca.pem)),
                None => ClientTlsConfig::new().with_native_roots(),
            };
            endpoint = endpoint
                .tls_config(tls)
                .context("configuring TLS for the OTLP endpoint")?;
        }
        let channel = endpoint.connect_with_connector_lazy(LoggingConnector);
        let mut metadata = MetadataMap::new();
        for (name, value) in headers {
            let key = AsciiMetadataKey::from_bytes(name.to_ascii_lowercase().as_bytes())
                .with_context(|| format!("invalid OTLP header name {name:?}"))?;
            let value = AsciiMetadataValue::try_from(value.as_str())
                .with_context(|| format!("invalid value of OTLP header {name:?}"))?;
            metadata.insert(key, value);
        }
        Ok(Grpc {
            client: tonic::client::Grpc::new(channel),
            metadata,
        })
    }

    /// Sends one `ExportTraceServiceRequest`.
    async fn send(&mut self, message: Payload) -> Outcome {
        let mut request = tonic::Request::new(message);
        *request.metadata_mut() = self.metadata.clone();
        let answer = match self.client.ready().await {
            // A status made from the error keeps it as its source: a local, retryable failure.
            Err(error) => Err(tonic::Status::from_error(error.into())),
            Ok(()) => {
                let path = http::uri::PathAndQuery::from_static(GRPC_EXPORT_PATH);
                self.client.unary(request, path, EncodedCodec).await
            }
        };
        match answer {
            Ok(response) => accepted(response.into_inner()),
            Err(status) => {
                let reason = format!("gRPC {:?}: {}", status.code(), status.message());
                // A status made by the client from a transport error (it has a source) is a
                // network problem, whatever its code; one sent by the collector is not.
                let local = std::error::Error::source(&status).is_some();
                let retryable = matches!(
                    status.code(),
                    Code::Cancelled
                        | Code::DeadlineExceeded
                        | Code::ResourceExhausted
                        | Code::Aborted
                        | Code::OutOfRange
                        | Code::Unavailable
                        | Code::DataLoss
                ) || (local && status.code() == Code::Unknown);
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

/// The gRPC codec of OTLP export: the request is encoded into tonic's frame buffer (or goes
/// out as already encoded), the response is decoded with prost.
#[derive(Clone, Copy, Debug, Default)]
struct EncodedCodec;

impl tonic::codec::Codec for EncodedCodec {
    type Encode = Payload;
    type Decode = ExportTraceServiceResponse;
    type Encoder = EncodedCodec;
    type Decoder = EncodedCodec;

    fn encoder(&mut self) -> Self::Encoder {
        EncodedCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        EncodedCodec
    }
}

impl tonic::codec::Encoder for EncodedCodec {
    type Item = Payload;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        message: Payload,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut as _;
        match message {
            Payload::Parts { parts, len } => {
                // Grown once to the final size rather than doubling (and copying) as it fills.
                dst.reserve(len);
                for part in parts.iter() {
                    dst.put_slice(part);
                }
                Ok(())
            }
            Payload::Encoded(bytes) => {
                dst.put(bytes);
                Ok(())
            }
        }
    }
}

impl tonic::codec::Decoder for EncodedCodec {
    type Item = ExportTraceServiceResponse;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<ExportTraceServiceResponse>, tonic::Status> {
        ExportTraceServiceResponse::decode(src)
            .map(Some)
            .map_err(|error| tonic::Status::internal(format!("decoding the response: {error}")))
    }
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

/// Opens TCP connections to a URL's host and logs each one's local address, so that the
/// sensor's own export traffic can be recognised.
#[derive(Clone, Copy, Debug)]
struct LoggingConnector;

impl tower_service::Service<Uri> for LoggingConnector {
    type Response = TokioIo<TcpStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TokioIo<TcpStream>>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(async move { connect(&uri).await.map(TokioIo::new) })
    }
}

/// The host of a URL without the brackets of an IPv6 literal.
fn bare_host(uri: &Uri) -> &str {
    let host = uri.host().unwrap_or_default();
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

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
    uri: Uri,
    target: Uri,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    headers: HeaderMap,
    sender: Option<http1::SendRequest<Full<Bytes>>>,
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
        let tls = if https {
            let name = ServerName::try_from(bare_host(&uri).to_owned())
                .context("invalid OTLP endpoint host name for TLS")?;
            Some((TlsConnector::from(Arc::new(tls_config(ca)?)), name))
        } else {
            None
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
            uri,
            target,
            tls,
            headers,
            sender: None,
        })
    }

    /// The kept-alive connection if it is still open (true), else a new one (false).
    async fn connection(&mut self) -> anyhow::Result<(http1::SendRequest<Full<Bytes>>, bool)> {
        if let Some(sender) = self.sender.take()
            && !sender.is_closed()
        {
            return Ok((sender, true));
        }
        let tcp = connect(&self.uri).await?;
        let sender = match &self.tls {
            Some((connector, name)) => {
                let tls =
                    tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name.clone(), tcp))
                        .await
                        .context("TLS handshake timed out")?
                        .context("TLS handshake failed")?;
                let (sender, connection) = http1::handshake(TokioIo::new(tls)).await?;
                tokio::spawn(async move {
                    if let Err(error) = connection.await {
                        debug!(%error, "OTLP HTTPS connection ended");
                    }
                });
                sender
            }
            None => {
                let (sender, connection) = http1::handshake(TokioIo::new(tcp)).await?;
                tokio::spawn(async move {
                    if let Err(error) = connection.await {
                        debug!(%error, "OTLP HTTP connection ended");
                    }
                });
                sender
            }
        };
        Ok((sender, false))
    }

    async fn send(&mut self, body: &Bytes) -> Outcome {
        let (sender, response) = loop {
            let (mut sender, reused) = match self.connection().await {
                Ok(connection) => connection,
                Err(error) => {
                    return Outcome::Retry {
                        reason: format!("connecting to {}: {error:#}", self.uri),
                        after: None,
                    };
                }
            };
            let mut request = Request::new(Full::new(body.clone()));
            *request.method_mut() = http::Method::POST;
            *request.uri_mut() = self.target.clone();
            *request.headers_mut() = self.headers.clone();
            let sent = match sender.ready().await {
                Ok(()) => sender.send_request(request).await,
                Err(error) => Err(error),
            };
            match sent {
                Ok(response) => break (sender, response),
                // The collector closed the kept-alive connection: try once on a new one.
                Err(error) if reused => {
                    debug!(%error, "kept-alive OTLP connection failed; reconnecting");
                }
                Err(error) => {
                    return Outcome::Retry {
                        reason: format!("HTTP request to {} failed: {error}", self.uri),
                        after: None,
                    };
                }
            }
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
            self.sender = Some(sender);
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
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
