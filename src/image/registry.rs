//! The registry side of a pull, over `oci-client` (OCI distribution-spec):
//!
//! - credentials from CRI `AuthConfig` ([`RegistryAuth`]): basic from `username`/`password` or
//!   the base64 `auth` field, `registry_token` as a bearer token; oci-client answers bearer
//!   token challenges itself.
//! - plain HTTP only for `image.insecure_registries` and `http://` mirrors
//!   (`ClientProtocol::HttpsExcept`).
//! - sources in order: each mirror of `image.registries."HOST".mirrors` (the same repository
//!   path on the mirror host, as containerd's hosts.toml does), then the registry itself unless
//!   `mirrors_only`. Mirrors are tried anonymously: CRI credentials belong to the upstream.
//! - image indexes / manifest lists resolve to the host platform (linux/amd64 here);
//!   docker schema2 and OCI manifests are both accepted.

use super::reference::ImageReference;
use super::ImageError;
use crate::config::ImageConfig;
use crate::util::ChannelReader;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth as OciAuth;
use oci_client::{Client, Reference};
use std::sync::Arc;

/// Credentials for a registry, as CRI `AuthConfig` carries them. Empty fields are unset.
#[derive(Clone, Default)]
pub struct RegistryAuth {
    /// `username`, used with `password` for basic auth.
    pub username: String,
    /// `password`.
    pub password: String,
    /// `auth`: base64 of `username:password` (docker config.json style).
    pub auth: String,
    /// `server_address`: informational.
    pub server_address: String,
    /// `identity_token`: an OAuth2 refresh token. oci-client cannot exchange it; ignored with a
    /// warning.
    pub identity_token: String,
    /// `registry_token`: a bearer token sent as is.
    pub registry_token: String,
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("username", &self.username)
            .field("server_address", &self.server_address)
            .finish_non_exhaustive()
    }
}

impl RegistryAuth {
    /// The oci-client credentials: bearer for `registry_token`, basic for `username`/`password`
    /// or a decodable `auth`, anonymous otherwise. Errors (a message) when `auth` is not base64
    /// of `user:password`.
    pub fn to_oci(&self) -> Result<OciAuth, String> {
        if !self.registry_token.is_empty() {
            return Ok(OciAuth::Bearer(self.registry_token.clone()));
        }
        if !self.username.is_empty() || !self.password.is_empty() {
            return Ok(OciAuth::Basic(self.username.clone(), self.password.clone()));
        }
        if !self.auth.is_empty() {
            let raw = base64_decode(self.auth.trim()).ok_or("auth: not valid base64")?;
            let text = String::from_utf8(raw).map_err(|_| "auth: decoded value is not UTF-8")?;
            let (u, p) = text.split_once(':').ok_or("auth: decoded value must be username:password")?;
            return Ok(OciAuth::Basic(u.to_string(), p.to_string()));
        }
        if !self.identity_token.is_empty() {
            tracing::warn!("identity_token (OAuth2 refresh token) is not supported; pulling anonymously");
        }
        Ok(OciAuth::Anonymous)
    }
}

/// Standard base64 (RFC 4648 section 4), padding optional; `None` on a bad character.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        } as u32)
    };
    let bytes = s.trim_end_matches('=').as_bytes();
    if bytes.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= val(c)? << (18 - 6 * i);
        }
        let n = chunk.len() - 1;
        for i in 0..n {
            out.push((acc >> (16 - 8 * i)) as u8);
        }
    }
    Some(out)
}

/// One place to pull from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// `host[:port]` the requests go to.
    pub host: String,
    /// Whether this is a configured mirror (anonymous, fall through on failure).
    pub mirror: bool,
}

/// A resolved manifest.
#[derive(Debug, Clone)]
pub struct ResolvedManifest {
    /// The platform image manifest.
    pub manifest: OciImageManifest,
    /// Digest of the top-level manifest (the index when there was one): the repo digest.
    pub repo_digest: String,
    /// Media type of the platform manifest.
    pub media_type: String,
}

/// The registry side of an [`super::ImageStore`]: the mirror/insecure configuration and a
/// shared client for anonymous pulls.
pub struct Puller {
    anonymous: Arc<Client>,
    http_hosts: Vec<String>,
    cfg: ImageConfig,
}

/// A client bound to one set of credentials. oci-client keeps the first credentials it sees per
/// registry (and the tokens they bought), so credentialed pulls get a client of their own and
/// never share tokens with other pulls.
pub struct Session {
    client: Arc<Client>,
    auth: OciAuth,
}

fn build_client(http_hosts: Vec<String>) -> Client {
    Client::new(ClientConfig {
        protocol: ClientProtocol::HttpsExcept(http_hosts),
        platform_resolver: Some(Box::new(oci_client::client::current_platform_resolver)),
        connect_timeout: Some(std::time::Duration::from_secs(30)),
        read_timeout: Some(std::time::Duration::from_secs(120)),
        ..Default::default()
    })
}

impl Puller {
    /// A puller for `cfg`: plain HTTP for insecure registries and `http://` mirrors.
    pub fn new(cfg: ImageConfig) -> Puller {
        let mut http_hosts = cfg.insecure_registries.clone();
        for r in cfg.registries.values() {
            for m in &r.mirrors {
                if let Some(rest) = m.strip_prefix("http://") {
                    http_hosts.push(mirror_host(rest));
                }
            }
        }
        Puller { anonymous: Arc::new(build_client(http_hosts.clone())), http_hosts, cfg }
    }

    /// A session for `auth`: the shared client when anonymous, a fresh one otherwise.
    pub fn session(&self, auth: &OciAuth) -> Session {
        let client = match auth {
            OciAuth::Anonymous => self.anonymous.clone(),
            _ => Arc::new(build_client(self.http_hosts.clone())),
        };
        Session { client, auth: auth.clone() }
    }

    /// The sources for `r`, in the order they are tried (see the module docs).
    pub fn sources(&self, r: &ImageReference) -> Vec<Source> {
        let mut out = Vec::new();
        let mut mirrors_only = false;
        if let Some(rc) = self.cfg.registries.get(&r.registry) {
            mirrors_only = rc.mirrors_only;
            for m in &rc.mirrors {
                let rest = m.strip_prefix("http://").or_else(|| m.strip_prefix("https://")).unwrap_or(m);
                let host = mirror_host(rest);
                if rest.trim_end_matches('/').len() > host.len() {
                    tracing::warn!(mirror = %m, "mirror URL path is ignored: requests go to {host}/v2/...");
                }
                out.push(Source { host, mirror: true });
            }
        }
        if !mirrors_only || out.is_empty() {
            out.push(Source { host: r.registry.clone(), mirror: false });
        }
        out
    }
}

fn oci_ref(src: &Source, r: &ImageReference) -> Reference {
    match (&r.digest, &r.tag) {
        (Some(d), _) => Reference::with_digest(src.host.clone(), r.repository.clone(), d.clone()),
        (None, Some(t)) => Reference::with_tag(src.host.clone(), r.repository.clone(), t.clone()),
        (None, None) => Reference::with_tag(src.host.clone(), r.repository.clone(), "latest".into()),
    }
}

impl Session {
    /// Fetches the manifest of `r` from `src`, resolving an index to the host platform.
    pub async fn resolve(&self, src: &Source, r: &ImageReference) -> Result<ResolvedManifest, ImageError> {
        let oref = oci_ref(src, r);
        let (manifest, digest, list_digest) = self
            .client
            .pull_image_manifest_and_list_digest(&oref, &self.auth)
            .await
            .map_err(|e| map_error(&r.to_string(), &src.host, e))?;
        let media_type = manifest.media_type.clone().unwrap_or_else(|| oci_client::manifest::OCI_IMAGE_MEDIA_TYPE.to_string());
        Ok(ResolvedManifest { manifest, repo_digest: list_digest.unwrap_or(digest), media_type })
    }

    /// Reads the blob `desc` of `r` from `src` into memory (for the config), verified by digest.
    pub async fn blob_to_vec(&self, src: &Source, r: &ImageReference, desc: &OciDescriptor) -> Result<Vec<u8>, ImageError> {
        let mut out = Vec::new();
        let oref = oci_ref(src, r);
        self.client.store_auth_if_needed(oref.resolve_registry(), &self.auth).await;
        self.client.pull_blob(&oref, desc, &mut out).await.map_err(|e| map_error(&r.to_string(), &src.host, e))?;
        Ok(out)
    }

    /// Streams the blob `desc` of `r` from `src` through `consume`, a blocking function of a
    /// [`std::io::Read`] over the blob's bytes, run on a blocking thread while the bytes
    /// arrive: a layer is unpacked as it downloads, and nothing is written but what `consume`
    /// writes.
    ///
    /// oci-client checks the blob's digest as it streams; a mismatch or a broken transfer
    /// reaches `consume` as a read error and is returned in its place
    /// ([`ImageError::Registry`], or what [`map_error`] makes of a refused request). When
    /// `consume` stops reading early, the transfer stops and its result is returned.
    pub async fn stream_blob<T, F>(&self, src: &Source, r: &ImageReference, desc: &OciDescriptor, consume: F) -> Result<T, ImageError>
    where
        T: Send + 'static,
        F: FnOnce(ChannelReader) -> Result<T, ImageError> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::mpsc::channel(BLOB_CHUNKS);
        let consumer = tokio::task::spawn_blocking(move || consume(ChannelReader::new(rx)));
        let produced = self.send_blob(src, r, desc, tx).await;
        let consumed = consumer.await.map_err(|e| ImageError::Unpack {
            layer: desc.digest.clone(),
            entry: String::new(),
            message: format!("unpack task failed: {e}"),
        })?;
        produced?;
        consumed
    }

    /// The producer half of [`Session::stream_blob`]: the blob's chunks into `tx`, an error
    /// both sent (so the reader fails) and returned. Ok when the reader hung up.
    async fn send_blob(
        &self,
        src: &Source,
        r: &ImageReference,
        desc: &OciDescriptor,
        tx: tokio::sync::mpsc::Sender<std::io::Result<bytes::Bytes>>,
    ) -> Result<(), ImageError> {
        use futures_util::StreamExt;
        let oref = oci_ref(src, r);
        self.client.store_auth_if_needed(oref.resolve_registry(), &self.auth).await;
        let mut stream = match self.client.pull_blob_stream(&oref, desc).await {
            Ok(s) => s.stream,
            Err(e) => {
                let err = map_error(&r.to_string(), &src.host, e);
                let _ = tx.send(Err(std::io::Error::other(err.to_string()))).await;
                return Err(err);
            }
        };
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(bytes) => {
                    if tx.send(Ok(bytes)).await.is_err() {
                        return Ok(());
                    }
                }
                Err(e) => {
                    let err = ImageError::Registry {
                        image: r.to_string(),
                        registry: src.host.clone(),
                        message: format!("blob {}: {e}", desc.digest),
                    };
                    let _ = tx.send(Err(std::io::Error::other(err.to_string()))).await;
                    return Err(err);
                }
            }
        }
        Ok(())
    }
}

/// Chunks in flight between a blob's download and its reader (each as the HTTP body gave it,
/// typically 8 to 16 KiB).
const BLOB_CHUNKS: usize = 64;

/// `host[:port]` of a mirror URL with the scheme already stripped.
fn mirror_host(rest: &str) -> String {
    rest.split('/').next().unwrap_or(rest).to_string()
}

/// Maps an oci-client error to an [`ImageError`] naming `image` and `registry`.
pub fn map_error(image: &str, registry: &str, e: OciDistributionError) -> ImageError {
    let (image, registry) = (image.to_string(), registry.to_string());
    let message = e.to_string();
    match &e {
        OciDistributionError::ImageManifestNotFoundError(_) => ImageError::NotFound { image, registry, message },
        OciDistributionError::UnauthorizedError { .. } | OciDistributionError::AuthenticationFailure(_) => {
            ImageError::Unauthenticated { image, registry, message }
        }
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|x| &x.code).collect();
            if codes.iter().any(|c| matches!(c, OciErrorCode::Unauthorized)) {
                ImageError::Unauthenticated { image, registry, message }
            } else if codes.iter().any(|c| matches!(c, OciErrorCode::Denied)) {
                ImageError::PermissionDenied { image, registry, message }
            } else if codes.iter().any(|c| {
                matches!(c, OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown | OciErrorCode::BlobUnknown | OciErrorCode::NotFound)
            }) {
                ImageError::NotFound { image, registry, message }
            } else {
                ImageError::Registry { image, registry, message }
            }
        }
        OciDistributionError::ServerError { code, .. } => match code {
            401 => ImageError::Unauthenticated { image, registry, message },
            403 => ImageError::PermissionDenied { image, registry, message },
            404 => ImageError::NotFound { image, registry, message },
            _ => ImageError::Registry { image, registry, message },
        },
        OciDistributionError::RequestError(re) if re.is_connect() || re.is_timeout() || re.is_request() => {
            let mut message = message;
            let mut src = std::error::Error::source(re);
            while let Some(s) = src {
                message = format!("{message}: {s}");
                src = s.source();
            }
            ImageError::Unreachable { image, registry, message }
        }
        _ => ImageError::Registry { image, registry, message },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RegistryConfig;

    #[test]
    fn auth_conversions() {
        let a = RegistryAuth { auth: "dXNlcjpwYXNz".into(), ..Default::default() };
        assert!(matches!(a.to_oci().unwrap(), OciAuth::Basic(u, p) if u == "user" && p == "pass"));
        let a = RegistryAuth { username: "u".into(), password: "p".into(), ..Default::default() };
        assert!(matches!(a.to_oci().unwrap(), OciAuth::Basic(u, p) if u == "u" && p == "p"));
        let a = RegistryAuth { registry_token: "t".into(), ..Default::default() };
        assert!(matches!(a.to_oci().unwrap(), OciAuth::Bearer(t) if t == "t"));
        assert!(matches!(RegistryAuth::default().to_oci().unwrap(), OciAuth::Anonymous));
        assert!(RegistryAuth { auth: "!!".into(), ..Default::default() }.to_oci().is_err());
        assert!(RegistryAuth { auth: "bm9jb2xvbg==".into(), ..Default::default() }.to_oci().is_err());
        assert!(!format!("{:?}", RegistryAuth { password: "secret".into(), ..Default::default() }).contains("secret"));
    }

    #[test]
    fn base64_known_vectors() {
        for (enc, dec) in [("", ""), ("Zg==", "f"), ("Zm8=", "fo"), ("Zm9v", "foo"), ("Zm9vYmFy", "foobar"), ("Zm9vYg", "foob")] {
            assert_eq!(base64_decode(enc).unwrap(), dec.as_bytes(), "{enc}");
        }
        assert!(base64_decode("Z").is_none());
    }

    #[test]
    fn sources_follow_mirror_config() {
        let mut cfg = ImageConfig::default();
        cfg.registries.insert(
            "registry.k8s.io".into(),
            RegistryConfig { mirrors: vec!["http://127.0.0.1:5000".into(), "https://m.example/prefix".into()], mirrors_only: false },
        );
        cfg.registries.insert("only.example".into(), RegistryConfig { mirrors: vec!["http://127.0.0.1:5001/".into()], mirrors_only: true });
        let p = Puller::new(cfg);
        let r = ImageReference::parse("registry.k8s.io/pause:3.9").unwrap();
        let hosts: Vec<(String, bool)> = p.sources(&r).into_iter().map(|s| (s.host, s.mirror)).collect();
        assert_eq!(hosts, vec![("127.0.0.1:5000".into(), true), ("m.example".into(), true), ("registry.k8s.io".into(), false)]);
        let r = ImageReference::parse("only.example/x").unwrap();
        assert_eq!(p.sources(&r), vec![Source { host: "127.0.0.1:5001".into(), mirror: true }]);
        let r = ImageReference::parse("busybox").unwrap();
        assert_eq!(p.sources(&r), vec![Source { host: "docker.io".into(), mirror: false }]);
    }
}
