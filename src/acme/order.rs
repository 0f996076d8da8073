//! One ACME order (RFC 8555 §7.4): account, challenges, finalization with
//! a fresh key, the chain downloaded and stored.

use std::sync::Arc;
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use rcgen::{CertificateParams, CustomExtension, DistinguishedName, KeyPair};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

use super::client::Client;
use super::store::write_private;
use super::{Answering, Certificate, Issued};
use crate::config::AcmeChallenge;

#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    #[error("{0}")]
    Acme(#[from] instant_acme::Error),
    #[error("the order became invalid: {0}")]
    Invalid(String),
    #[error("cannot make the key or the certificate request: {0}")]
    Key(#[from] rcgen::Error),
    #[error("cannot store {0}: {1}")]
    Store(String, std::io::Error),
    #[error("the CA's certificate is unusable: {0}")]
    Unusable(String),
    #[error("not done within {0:?}")]
    Timeout(Duration),
}

/// How long the CA may take to validate, then to issue.
fn polling() -> RetryPolicy {
    RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .timeout(Duration::from_secs(120))
}

/// Orders a certificate for `cert`'s names, stores it and returns it.
pub async fn obtain(cert: &Certificate, client: &Client) -> Result<Issued, OrderError> {
    let config = &cert.config;
    let account = account(cert, client).await?;
    let identifiers: Vec<Identifier> = config
        .names
        .iter()
        .map(|n| Identifier::Dns(n.clone()))
        .collect();
    let mut order = match account.new_order(&NewOrder::new(&identifiers)).await {
        Ok(order) => order,
        Err(instant_acme::Error::Api(problem))
            if problem
                .r#type
                .as_deref()
                .is_some_and(|t| t.ends_with(":accountDoesNotExist")) =>
        {
            // The CA forgot the account (a test CA restarted): the next
            // try creates another.
            let _ = std::fs::remove_file(cert.store.account());
            return Err(instant_acme::Error::Api(problem).into());
        }
        Err(e) => return Err(e.into()),
    };
    let mut answering = Answering::default();
    let mut authorizations = order.authorizations();
    while let Some(authorization) = authorizations.next().await {
        let mut authorization = authorization?;
        match authorization.status {
            AuthorizationStatus::Pending => {}
            // Reused from an earlier order (RFC 8555 §7.1.3).
            AuthorizationStatus::Valid => continue,
            other => {
                let name = authorization.identifier().to_string();
                return Err(OrderError::Invalid(format!(
                    "authorization for {name} is {other:?}"
                )));
            }
        }
        let name = authorization.identifier().to_string();
        let kind = match config.challenge {
            AcmeChallenge::Http01 => ChallengeType::Http01,
            AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
        };
        let mut challenge = authorization.challenge(kind.clone()).ok_or_else(|| {
            OrderError::Invalid(format!(
                "the CA offers no {} challenge for {name}",
                config.challenge.as_str()
            ))
        })?;
        let key_authorization = challenge.key_authorization();
        match config.challenge {
            AcmeChallenge::Http01 => answering.http01(&challenge.token, key_authorization.as_str()),
            AcmeChallenge::TlsAlpn01 => {
                let proof = challenge_certificate(&name, key_authorization.digest().as_ref())?;
                answering.tls_alpn01(&name, proof);
            }
        }
        challenge.set_ready().await?;
    }
    let status = order.poll_ready(&polling()).await?;
    if status != OrderStatus::Ready {
        let why = order
            .state()
            .error
            .as_ref()
            .map_or_else(|| format!("{status:?}"), |p| p.to_string());
        return Err(OrderError::Invalid(why));
    }
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(config.names.clone())?;
    params.distinguished_name = DistinguishedName::new();
    let request = params.serialize_request(&key)?;
    order.finalize_csr(request.der()).await?;
    let chain = order.poll_certificate(&polling()).await?;
    drop(answering);
    let key_pem = key.serialize_pem();
    let issued =
        Issued::from_pem(chain.as_bytes(), key_pem.as_bytes()).map_err(OrderError::Unusable)?;
    cert.store
        .write_cert(chain.as_bytes(), key_pem.as_bytes())
        .map_err(|e| OrderError::Store(cert.store.cert.display().to_string(), e))?;
    Ok(issued)
}

/// The stored account of this CA, else a new one, stored (0600).
async fn account(cert: &Certificate, client: &Client) -> Result<Account, OrderError> {
    let path = cert.store.account();
    let builder = || Account::builder_with_http(Box::new(client.clone()));
    if let Ok(bytes) = std::fs::read(&path) {
        match serde_json::from_slice::<AccountCredentials>(&bytes) {
            Ok(credentials) => return Ok(builder().from_credentials(credentials).await?),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "ACME: stored account unreadable; creating another")
            }
        }
    }
    let contact: Vec<&str> = cert.config.contact.iter().map(String::as_str).collect();
    let new = NewAccount {
        contact: &contact,
        terms_of_service_agreed: true,
        only_return_existing: false,
    };
    let (account, credentials) = builder()
        .create(&new, cert.config.directory.clone(), None)
        .await?;
    let json = serde_json::to_vec(&credentials)
        .map_err(|e| OrderError::Store(path.display().to_string(), e.into()))?;
    write_private(&path, &json).map_err(|e| OrderError::Store(path.display().to_string(), e))?;
    tracing::info!(directory = %cert.config.directory, id = account.id(), "ACME: account created");
    Ok(account)
}

/// The self-signed certificate a TLS-ALPN-01 validation of `name` expects
/// (RFC 8737 §3): `name` as its only SAN and the SHA-256 of the key
/// authorization in a critical acmeIdentifier extension.
fn challenge_certificate(name: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, OrderError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![name.to_owned()])?;
    params.distinguished_name = DistinguishedName::new();
    params.custom_extensions = vec![CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key)?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| OrderError::Unusable(e.to_string()))?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signing,
    )))
}
