//! Image reference normalization, following docker's `reference.ParseNormalizedNamed`
//! (github.com/distribution/reference, `normalize.go`):
//!
//! - `busybox` -> `docker.io/library/busybox:latest`
//! - `foo/bar` -> `docker.io/foo/bar:latest`
//! - `127.0.0.1:5000/x:1` stays (the first component is a domain when it holds `.` or `:` or is
//!   `localhost`)
//! - `name@sha256:<64 hex>` keeps the digest and gets no tag; `name:tag@sha256:...` keeps both
//!   here, but the digest decides: a pull fetches it and does not tag the image (store.rs).
//! - `index.docker.io` is spelled `docker.io`.

use std::fmt;

/// The registry host docker assumes when a name has no domain.
pub const DEFAULT_REGISTRY: &str = "docker.io";

/// A reference that cannot be parsed; names the input and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("image reference {input:?}: {message}")]
pub struct ReferenceError {
    /// The reference as given.
    pub input: String,
    /// What was expected.
    pub message: String,
}

/// A normalized image reference: `registry/repository[:tag][@digest]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageReference {
    /// Registry host with optional port, e.g. `docker.io`, `127.0.0.1:5000`.
    pub registry: String,
    /// Repository path, e.g. `library/busybox`.
    pub repository: String,
    /// Tag; `latest` when neither tag nor digest was given.
    pub tag: Option<String>,
    /// Digest `sha256:<64 lowercase hex>`.
    pub digest: Option<String>,
}

impl ImageReference {
    /// Parses and normalizes `input` (see the module docs).
    ///
    /// Errors with [`ReferenceError`] naming the input: empty, uppercase repository, bad tag
    /// (`[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`), bad digest (only `sha256:` + 64 lowercase hex), empty
    /// path components or characters outside `[a-z0-9._-]` in the repository.
    pub fn parse(input: &str) -> Result<ImageReference, ReferenceError> {
        let err = |m: &str| ReferenceError { input: input.to_string(), message: m.to_string() };
        if input.is_empty() {
            return Err(err("must not be empty"));
        }
        if input.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(err("must not contain whitespace"));
        }
        let (name_tag, digest) = match input.split_once('@') {
            Some((n, d)) => (n, Some(d)),
            None => (input, None),
        };
        if let Some(d) = digest {
            if !is_sha256_digest(d) {
                return Err(err("digest must be sha256:<64 lowercase hex characters>"));
            }
        }
        // A tag follows the last ':' that comes after the last '/'.
        let last_slash = name_tag.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match name_tag[last_slash..].rfind(':') {
            Some(i) => (&name_tag[..last_slash + i], Some(&name_tag[last_slash + i + 1..])),
            None => (name_tag, None),
        };
        if let Some(t) = tag {
            if !is_valid_tag(t) {
                return Err(err("tag must match [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"));
            }
        }
        if name.is_empty() {
            return Err(err("must name a repository"));
        }
        let (mut registry, repository) = match name.split_once('/') {
            Some((first, rest)) if first.contains('.') || first.contains(':') || first == "localhost" => {
                (first.to_string(), rest.to_string())
            }
            _ => (DEFAULT_REGISTRY.to_string(), name.to_string()),
        };
        if registry == "index.docker.io" {
            registry = DEFAULT_REGISTRY.to_string();
        }
        if !is_valid_domain(&registry) {
            return Err(err("registry must be host[:port] with letters, digits, '.', '-'"));
        }
        let repository =
            if registry == DEFAULT_REGISTRY && !repository.contains('/') { format!("library/{repository}") } else { repository };
        if repository.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(err("repository name must be lowercase"));
        }
        if !repository.split('/').all(is_valid_path_component) {
            return Err(err("repository path components must be [a-z0-9]+ joined by '.', '_', '__' or '-'"));
        }
        if registry.len() + 1 + repository.len() > 255 {
            return Err(err("repository name must not be longer than 255 characters"));
        }
        let tag = match (tag, digest) {
            (None, None) => Some("latest".to_string()),
            (t, _) => t.map(str::to_string),
        };
        Ok(ImageReference { registry, repository, tag, digest: digest.map(str::to_string) })
    }

    /// `registry/repository`, e.g. `docker.io/library/busybox`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// `registry/repository:tag`, when there is a tag.
    pub fn tagged(&self) -> Option<String> {
        self.tag.as_ref().map(|t| format!("{}:{t}", self.name()))
    }

    /// `registry/repository@<digest>` for the given manifest digest.
    pub fn with_digest(&self, digest: &str) -> String {
        format!("{}@{digest}", self.name())
    }
}

impl fmt::Display for ImageReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// Whether `s` is `sha256:` followed by 64 lowercase hex characters.
pub fn is_sha256_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(is_hex64)
}

/// Whether `s` is exactly 64 lowercase hex characters (a bare image ID).
pub fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Whether `s` is lowercase hex, as an ID prefix is.
pub fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn is_valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

fn is_valid_domain(d: &str) -> bool {
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    let host_ok = !host.is_empty()
        && host.split('.').all(|l| {
            !l.is_empty() && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-') && !l.starts_with('-') && !l.ends_with('-')
        });
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|c| c.is_ascii_digit()));
    host_ok && port_ok
}

/// `[a-z0-9]+` runs joined by `.`, `_`, `__` or any number of `-` (distribution's path-component).
fn is_valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric() {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_lowercase() || b[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !(b[i].is_ascii_lowercase() || b[i].is_ascii_digit()) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        ImageReference::parse(s).unwrap().to_string()
    }

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn normalizes_like_docker() {
        assert_eq!(norm("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(norm("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(norm("foo/bar"), "docker.io/foo/bar:latest");
        assert_eq!(norm("index.docker.io/foo/bar:x"), "docker.io/foo/bar:x");
        assert_eq!(norm("docker.io/busybox"), "docker.io/library/busybox:latest");
        assert_eq!(norm("127.0.0.1:5000/x:1"), "127.0.0.1:5000/x:1");
        assert_eq!(norm("localhost/a/b"), "localhost/a/b:latest");
        assert_eq!(norm("registry.k8s.io/pause:3.9"), "registry.k8s.io/pause:3.9");
        assert_eq!(norm("a.b-c__d--e"), "docker.io/library/a.b-c__d--e:latest");
    }

    #[test]
    fn digests_and_tag_plus_digest() {
        let r = ImageReference::parse(&format!("busybox@{D}")).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.as_deref(), Some(D));
        assert_eq!(r.to_string(), format!("docker.io/library/busybox@{D}"));
        let r = ImageReference::parse(&format!("127.0.0.1:5000/x:1@{D}")).unwrap();
        assert_eq!(r.tagged().as_deref(), Some("127.0.0.1:5000/x:1"));
        assert_eq!(r.with_digest(D), format!("127.0.0.1:5000/x@{D}"));
    }

    #[test]
    fn rejects_bad_input_naming_it() {
        for bad in [
            "",
            "Busybox",
            "foo/Bar",
            "busybox:",
            "busybox:-x",
            "busybox@sha256:abc",
            "busybox@md5:0123",
            "foo//bar",
            "foo/bar/",
            "a b",
            "foo/-bar",
            "foo/bar..baz",
            "host:port99x/foo",
        ] {
            let e = ImageReference::parse(bad).expect_err(bad);
            assert_eq!(e.input, bad);
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn hex_helpers() {
        assert!(is_sha256_digest(D));
        assert!(is_hex64(&D[7..]));
        assert!(!is_hex64(&D[8..]));
        assert!(is_hex("abc123"));
        assert!(!is_hex("ABC"));
    }
}
