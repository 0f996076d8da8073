//! The HTTPS client ACME requests go through: hyper's HTTP/1.1 on
//! tokio-rustls, trusting `ca` or the bundled Mozilla roots, one
//! connection per request (an order makes a dozen requests, hours apart
//! from the next order: nothing worth keeping open).

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Uri, header};
use hyper_util::rt::TokioIo;
use instant_acme::{BodyWrapper, BytesResponse, Error, HttpClient};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::tls_client;

/// One request's limit, connect to the end of the response head: a CA
/// that stops answering must not hold an order for ever.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct Client {
    tls: TlsConnector,
}

impl Client {
    /// Fails when `ca` cannot be read or holds no certificate.
    pub fn new(ca: Option<&Path>) -> std::io::Result<Client> {
        let config = tls_client::client_config(ca, true, &[b"http/1.1"])?;
        Ok(Client {
            tls: TlsConnector::from(config),
        })
    }

    async fn send(&self, mut req: Request<BodyWrapper<Bytes>>) -> Result<BytesResponse, Error> {
        let uri = req.uri().clone();
        if uri.scheme_str() != Some("https") {
            return Err(Error::Other(format!("not an https URL: {uri}").into()));
        }
        let host = uri.host().ok_or(Error::Str("a URL without a host"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(443);
        let tcp = TcpStream::connect((host, port)).await.map_err(other)?;
        let name = tls_client::server_name(host).map_err(other)?;
        let tls = self.tls.connect(name, tcp).await.map_err(other)?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(other)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "ACME connection ended");
            }
        });
        let authority = uri.authority().map(|a| a.as_str()).unwrap_or(host);
        let host_header = HeaderValue::from_str(authority).map_err(other)?;
        req.headers_mut().insert(header::HOST, host_header);
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        *req.uri_mut() = Uri::try_from(path).map_err(other)?;
        let response = sender.send_request(req).await.map_err(other)?;
        Ok(BytesResponse::from(response))
    }
}

fn other(e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::Other(Box::new(e))
}

impl HttpClient for Client {
    fn request(
        &self,
        req: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, Error>> + Send>> {
        let client = self.clone();
        Box::pin(async move {
            tokio::time::timeout(REQUEST_TIMEOUT, client.send(req))
                .await
                .unwrap_or_else(|_| {
                    Err(Error::Other(
                        format!("no answer within {REQUEST_TIMEOUT:?}").into(),
                    ))
                })
        })
    }
}
