//! TLS (rustls, with ring as its one crypto provider): the node's certificate files
//! loaded into server and client configs, a listener wrapper whose connections shake
//! hands lazily, and the TLS step of an internode dial.
//!
//! [`TlsListener`] hands out a connection the moment the inner listener accepts it; the
//! handshake runs when the connection's own task first reads or writes, so a slow or
//! silent client never holds up the accept loop, and any serve loop can wrap it. A
//! handshake that has not finished after [`HANDSHAKE_TIMEOUT`] closes the connection.
//!
//! Internode RPC over TLS (`--rpc-tls`) is always mutual: each node presents its own
//! certificate and checks its peer's against the cluster's CA (`--tls-ca`), in both
//! directions. A node dials peers by IP, so a node's certificate must name its advertised
//! RPC IP as a subject alternative name.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::rustls::crypto::{ring, CryptoProvider};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// How long a client has to finish its handshake; then the connection is closed.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("{0}")]
    Flags(&'static str),
    #[error("reading {what} from {path}: {source}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{path} holds no certificate")]
    NoCertificate { path: PathBuf },
    #[error("the CA certificate in {path} is not usable: {source}")]
    BadCa {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("setting up TLS: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("setting up the client certificate check: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// What the node serves and dials with; the default is TLS off everywhere.
#[derive(Clone, Debug, Default)]
pub struct NodeTls {
    /// The HTTP API's server config.
    pub http: Option<Arc<ServerConfig>>,
    /// Internode RPC, mutual TLS.
    pub rpc: Option<RpcTls>,
}

/// Both ends of internode RPC over mutual TLS.
#[derive(Clone, Debug)]
pub struct RpcTls {
    /// Requires a client certificate signed by the cluster's CA.
    pub accept: Arc<ServerConfig>,
    /// Presents this node's certificate; trusts only the cluster's CA.
    pub dial: Arc<ClientConfig>,
}

/// The TLS flags of `ringkv serve`, as given.
#[derive(Clone, Copy, Debug, Default)]
pub struct TlsFlags<'a> {
    pub cert: Option<&'a Path>,
    pub key: Option<&'a Path>,
    pub ca: Option<&'a Path>,
    pub rpc: bool,
}

impl NodeTls {
    /// Checks the flags go together and loads their files.
    pub fn load(flags: TlsFlags<'_>) -> Result<NodeTls, TlsError> {
        let (cert, key) = match (flags.cert, flags.key) {
            (None, None) => {
                if flags.rpc || flags.ca.is_some() {
                    return Err(TlsError::Flags(
                        "--rpc-tls and --tls-ca need --tls-cert and --tls-key",
                    ));
                }
                return Ok(NodeTls::default());
            }
            (Some(cert), Some(key)) => (cert, key),
            _ => return Err(TlsError::Flags("--tls-cert and --tls-key go together")),
        };
        let chain = load_chain(cert)?;
        let key = load_key(key)?;
        let provider = provider();
        let mut http = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain.clone(), key.clone_key())?;
        // axum serves HTTP/1 only (its http2 feature is off).
        http.alpn_protocols = vec![b"http/1.1".to_vec()];
        let rpc = match (flags.rpc, flags.ca) {
            (false, None) => None,
            (false, Some(_)) => {
                return Err(TlsError::Flags(
                    "--tls-ca is the internode CA: it needs --rpc-tls",
                ))
            }
            (true, None) => {
                return Err(TlsError::Flags(
                    "--rpc-tls needs --tls-ca: peers check each other's certificates against \
                     the cluster's CA",
                ))
            }
            (true, Some(ca)) => Some(rpc_tls(&provider, chain, key, ca)?),
        };
        Ok(NodeTls {
            http: Some(Arc::new(http)),
            rpc,
        })
    }

    pub fn http_acceptor(&self) -> Option<TlsAcceptor> {
        self.http.clone().map(TlsAcceptor::from)
    }

    pub fn rpc_acceptor(&self) -> Option<TlsAcceptor> {
        self.rpc
            .as_ref()
            .map(|r| TlsAcceptor::from(r.accept.clone()))
    }

    pub fn rpc_dialer(&self) -> Option<TlsConnector> {
        self.rpc
            .as_ref()
            .map(|r| TlsConnector::from(r.dial.clone()))
    }
}

/// ring, named rather than left to rustls's process-wide default: reqwest brings rustls
/// too, and a second provider enabled anywhere in the build would make the default
/// ambiguous.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

fn rpc_tls(
    provider: &Arc<CryptoProvider>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    ca: &Path,
) -> Result<RpcTls, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_chain(ca)? {
        roots.add(cert).map_err(|source| TlsError::BadCa {
            path: ca.to_owned(),
            source,
        })?;
    }
    let roots = Arc::new(roots);
    let verifier =
        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone()).build()?;
    let accept = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())?;
    let dial = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    Ok(RpcTls {
        accept: Arc::new(accept),
        dial: Arc::new(dial),
    })
}

fn load_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem_err = |source| TlsError::Pem {
        what: "certificates",
        path: path.to_owned(),
        source,
    };
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(pem_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_err)?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(chain)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| TlsError::Pem {
        what: "a private key",
        path: path.to_owned(),
        source,
    })
}

/// The TLS step of an internode dial: the peer's certificate must name `addr`'s IP.
pub async fn dial<S>(
    connector: &TlsConnector,
    addr: SocketAddr,
    stream: S,
) -> io::Result<tokio_rustls::client::TlsStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let name = ServerName::IpAddress(addr.ip().into());
    connector.connect(name, stream).await
}

/// A listener whose connections speak TLS when it has an acceptor, and pass through when
/// it has none (so the node has one listener type either way).
pub struct TlsListener<L> {
    inner: L,
    acceptor: Option<TlsAcceptor>,
    handshake_timeout: Duration,
    stats: Arc<TlsStats>,
}

/// What the node's TLS listeners saw (`/metrics`).
#[derive(Debug, Default)]
pub struct TlsStats {
    /// Accepted connections whose TLS handshake failed or did not finish in time.
    pub handshake_failures: std::sync::atomic::AtomicU64,
}

impl<L> TlsListener<L> {
    pub fn new(inner: L, acceptor: Option<TlsAcceptor>) -> Self {
        TlsListener {
            inner,
            acceptor,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            stats: Arc::default(),
        }
    }

    /// Counts this listener's failed handshakes in `stats` (shared by the node's listeners).
    pub fn counting(mut self, stats: Arc<TlsStats>) -> Self {
        self.stats = stats;
        self
    }
}

impl<L> axum::serve::Listener for TlsListener<L>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    type Io = TlsIo<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = self.inner.accept().await;
        let io = match &self.acceptor {
            None => TlsIo::Plain(io),
            Some(acceptor) => TlsIo::Handshaking {
                accept: Box::pin(acceptor.accept(io)),
                deadline: Box::pin(tokio::time::sleep(self.handshake_timeout)),
                peer: format!("{addr:?}"),
                stats: self.stats.clone(),
            },
        };
        (io, addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// An accepted connection: plain, or TLS before or after its handshake.
pub enum TlsIo<T> {
    Plain(T),
    Handshaking {
        accept: Pin<Box<tokio_rustls::Accept<T>>>,
        deadline: Pin<Box<tokio::time::Sleep>>,
        /// For the log line of a failed handshake.
        peer: String,
        stats: Arc<TlsStats>,
    },
    Ready(Box<tokio_rustls::server::TlsStream<T>>),
    /// The handshake failed or timed out; the socket is closed.
    Closed,
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the TLS handshake failed")
}

impl<T: AsyncRead + AsyncWrite + Unpin> TlsIo<T> {
    /// Drives the handshake, if one is under way, to its end or its deadline.
    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let TlsIo::Handshaking {
            accept,
            deadline,
            peer,
            stats,
        } = self
        else {
            return Poll::Ready(Ok(()));
        };
        let failed = match accept.as_mut().poll(cx) {
            Poll::Ready(Ok(stream)) => {
                *self = TlsIo::Ready(Box::new(stream));
                return Poll::Ready(Ok(()));
            }
            Poll::Ready(Err(e)) => e,
            Poll::Pending => match deadline.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) => io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the TLS handshake did not finish in time",
                ),
            },
        };
        tracing::debug!(peer = %peer, error = %failed, "TLS handshake failed; closing");
        stats
            .handshake_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Dropping the handshake closes the socket.
        *self = TlsIo::Closed;
        Poll::Ready(Err(failed))
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_handshake(cx))?;
        match this {
            TlsIo::Plain(io) => Pin::new(io).poll_read(cx, buf),
            TlsIo::Ready(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
            TlsIo::Handshaking { .. } | TlsIo::Closed => Poll::Ready(Err(closed())),
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_handshake(cx))?;
        match this {
            TlsIo::Plain(io) => Pin::new(io).poll_write(cx, buf),
            TlsIo::Ready(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
            TlsIo::Handshaking { .. } | TlsIo::Closed => Poll::Ready(Err(closed())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TlsIo::Plain(io) => Pin::new(io).poll_flush(cx),
            TlsIo::Ready(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
            // Nothing of the caller's is buffered before the handshake ends.
            TlsIo::Handshaking { .. } | TlsIo::Closed => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this {
            TlsIo::Plain(io) => Pin::new(io).poll_shutdown(cx),
            TlsIo::Ready(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
            // Shutting down mid-handshake abandons it: dropping it closes the socket.
            TlsIo::Handshaking { .. } => {
                *this = TlsIo::Closed;
                Poll::Ready(Ok(()))
            }
            TlsIo::Closed => Poll::Ready(Ok(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn flags_that_do_not_go_together_are_refused() {
        let p = Path::new("/nonexistent");
        let refused = |flags: TlsFlags<'_>| matches!(NodeTls::load(flags), Err(TlsError::Flags(_)));
        assert!(refused(TlsFlags {
            cert: Some(p),
            ..TlsFlags::default()
        }));
        assert!(refused(TlsFlags {
            rpc: true,
            ..TlsFlags::default()
        }));
        assert!(refused(TlsFlags {
            ca: Some(p),
            ..TlsFlags::default()
        }));
        let none = NodeTls::load(TlsFlags::default()).unwrap();
        assert!(none.http.is_none() && none.rpc.is_none());
        assert!(matches!(
            NodeTls::load(TlsFlags {
                cert: Some(p),
                key: Some(p),
                ..TlsFlags::default()
            }),
            Err(TlsError::Pem { .. })
        ));
    }

    /// A client that connects and says nothing is closed at the deadline, while the
    /// listener goes on accepting (the handshake runs in the connection's task).
    #[tokio::test]
    async fn a_silent_client_does_not_block_accept_and_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
        let (cert_path, key_path) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert_path, cert.cert.pem()).unwrap();
        std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
        let tls = NodeTls::load(TlsFlags {
            cert: Some(&cert_path),
            key: Some(&key_path),
            ..TlsFlags::default()
        })
        .unwrap();
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let mut listener = TlsListener::new(tcp, tls.http_acceptor());
        listener.handshake_timeout = Duration::from_millis(300);

        let _silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut second = tokio::net::TcpStream::connect(addr).await.unwrap();
        let bound = Duration::from_secs(5);
        let (mut first_io, _) =
            tokio::time::timeout(bound, axum::serve::Listener::accept(&mut listener))
                .await
                .expect("first accepted");
        let (mut second_io, _) =
            tokio::time::timeout(bound, axum::serve::Listener::accept(&mut listener))
                .await
                .expect("second accepted");
        // Plain HTTP to a TLS port fails the handshake at once, not at the deadline.
        second.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 8];
        let read = tokio::time::timeout(Duration::from_millis(250), second_io.read(&mut buf))
            .await
            .expect("a plain-text client fails before the deadline");
        assert_ne!(read.unwrap_err().kind(), io::ErrorKind::TimedOut);
        // The silent client's handshake ends at its deadline, with an error.
        let read = tokio::time::timeout(Duration::from_secs(5), first_io.read(&mut buf))
            .await
            .expect("the handshake deadline ends the read");
        assert_eq!(read.unwrap_err().kind(), io::ErrorKind::TimedOut);
    }
}
