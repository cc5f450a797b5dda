//! The one place that decides gRPC codes for domain errors (STYLE.md "Errors that say what to do").
//!
//! Each domain error type has one `*_code` function here; [`From<Error>`] for [`Status`] and the
//! image service's [`crate::server::image::status_from_image_error`] both use them, so an
//! [`ImageError`] is the same code whether PullImage or CreateContainer met it. The rule:
//! what the request asked for is InvalidArgument, what the node's state forbids for now is
//! FailedPrecondition, and failures of berth, the runtime, the disk or the store are Internal.

use crate::error::Error;
use crate::image::ImageError;
use crate::spec::SpecError;
use crate::storage::StorageError;
use std::io::ErrorKind;
use tonic::{Code, Status};

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let code = code(&e);
        if code == Code::Internal {
            tracing::error!(error = %e, "request failed");
        } else {
            tracing::debug!(error = %e, ?code, "request rejected");
        }
        Status::new(code, e.to_string())
    }
}

/// The gRPC code of a lifecycle error: its own variant's, or its source's (below).
pub fn code(e: &Error) -> Code {
    match e {
        Error::InvalidArgument { .. } => Code::InvalidArgument,
        Error::NotFound { .. } => Code::NotFound,
        Error::AlreadyExists { .. } => Code::AlreadyExists,
        Error::FailedPrecondition(_) => Code::FailedPrecondition,
        Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
        Error::Nri(_) => Code::FailedPrecondition,
        Error::Spec(s) => spec_code(s),
        Error::Image(i) => image_code(i),
        Error::Storage(s) => storage_code(s),
        Error::Network(_) | Error::Oci(_) | Error::Monitor(_) | Error::State(_) | Error::Io { .. } => Code::Internal,
    }
}

/// An OCI spec that cannot be generated: mostly what the request asked for (no command, an
/// unknown capability, a malformed mount or device), FailedPrecondition when the pod's runtime
/// handler lacks a feature (another handler could do it), Internal for berth's own failures
/// (an oci-spec builder refusing a value, an unreadable `/etc/passwd` of a mounted rootfs).
pub fn spec_code(e: &SpecError) -> Code {
    match e {
        SpecError::RuntimeLacks { .. } | SpecError::Hooks { .. } => Code::FailedPrecondition,
        SpecError::MissingProcess | SpecError::Build { .. } => Code::Internal,
        SpecError::UserFile { source, .. } => match source.kind() {
            // The image's file is a hostile symlink or not text: the image's fault.
            ErrorKind::InvalidInput | ErrorKind::InvalidData => Code::InvalidArgument,
            _ => Code::Internal,
        },
        SpecError::MountSource { source, .. } => io_request_code(source),
        SpecError::NoCommand { .. }
        | SpecError::EmptyExecCommand
        | SpecError::User { .. }
        | SpecError::InvalidMount { .. }
        | SpecError::Device { .. }
        | SpecError::UnknownCapability { .. }
        | SpecError::Seccomp { .. }
        | SpecError::GroupWithoutUser { .. }
        | SpecError::Mac { .. }
        | SpecError::Invalid { .. }
        | SpecError::InvalidField { .. }
        | SpecError::Unsupported { .. } => Code::InvalidArgument,
    }
}

/// An I/O error on a path the request named (a CRI mount's `host_path`): a path that cannot be
/// resolved (a dangling symlink, a loop, a file where a directory must be) is InvalidArgument,
/// one the node does not let berth create (read-only, permission) FailedPrecondition, the rest
/// Internal.
fn io_request_code(e: &std::io::Error) -> Code {
    match e.kind() {
        ErrorKind::NotFound | ErrorKind::NotADirectory | ErrorKind::InvalidInput | ErrorKind::InvalidFilename => Code::InvalidArgument,
        ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem => Code::FailedPrecondition,
        _ if e.raw_os_error() == Some(nix::libc::ELOOP) => Code::InvalidArgument,
        _ => Code::Internal,
    }
}

/// An image error: InvalidArgument (bad reference, unusable config), NotFound (no such manifest
/// or local image), Unauthenticated / PermissionDenied (registry auth), Unavailable (registry
/// unreachable), DataLoss (digest mismatch), InvalidArgument (a bad image archive), Unknown (other registry protocol failures),
/// Internal (unpack and local I/O, metadata store).
pub fn image_code(e: &ImageError) -> Code {
    match e {
        ImageError::InvalidReference(_) | ImageError::BadConfig { .. } | ImageError::Archive { .. } => Code::InvalidArgument,
        ImageError::NotFound { .. } => Code::NotFound,
        ImageError::Unauthenticated { .. } => Code::Unauthenticated,
        ImageError::PermissionDenied { .. } => Code::PermissionDenied,
        ImageError::Unreachable { .. } => Code::Unavailable,
        ImageError::Registry { .. } => Code::Unknown,
        ImageError::DigestMismatch { .. } => Code::DataLoss,
        ImageError::Unpack { .. } | ImageError::Io { .. } | ImageError::State(_) => Code::Internal,
    }
}

/// A mount error: [`StorageError::Invalid`] (an overlay the kernel cannot take as one mount, too
/// many layers even with short names; a path with `:`, `,` or NUL; a mount that stays after
/// repeated unmounts) is FailedPrecondition, since the same request cannot succeed until the
/// image or the node changes; failed syscalls and I/O are Internal.
pub fn storage_code(e: &StorageError) -> Code {
    match e {
        StorageError::Invalid { .. } => Code::FailedPrecondition,
        StorageError::Syscall { .. } | StorageError::Io { .. } => Code::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    fn mount_source(kind: io::Error) -> Error {
        Error::Spec(SpecError::MountSource { container: "c".into(), container_path: "/x".into(), host_path: "/h".into(), source: kind })
    }

    #[test]
    fn image_errors_inside_lifecycle_errors_keep_their_code() {
        let e = Error::Image(ImageError::NotFound { image: "busybox".into(), registry: "r".into(), message: "no".into() });
        assert_eq!(code(&e), Code::NotFound);
        let e = Error::Image(ImageError::Unreachable { image: "x".into(), registry: "r".into(), message: "refused".into() });
        assert_eq!(code(&e), Code::Unavailable);
    }

    #[test]
    fn spec_io_failures_are_not_invalid_argument() {
        assert_eq!(code(&mount_source(io::Error::from(io::ErrorKind::NotFound))), Code::InvalidArgument);
        assert_eq!(code(&mount_source(io::Error::from_raw_os_error(nix::libc::ELOOP))), Code::InvalidArgument);
        assert_eq!(code(&mount_source(io::Error::from_raw_os_error(nix::libc::EROFS))), Code::FailedPrecondition);
        assert_eq!(code(&mount_source(io::Error::from_raw_os_error(nix::libc::EIO))), Code::Internal);
        let e = Error::Spec(SpecError::UserFile {
            container: "c".into(),
            path: "/r/etc/passwd".into(),
            source: io::Error::from_raw_os_error(nix::libc::EIO),
        });
        assert_eq!(code(&e), Code::Internal);
        assert_eq!(code(&Error::Spec(SpecError::Build { field: "process", message: "x".into() })), Code::Internal);
        assert_eq!(code(&Error::Spec(SpecError::NoCommand { container: "c".into() })), Code::InvalidArgument);
    }

    #[test]
    fn storage_errors() {
        let e = Error::Storage(StorageError::Invalid { target: "/m".into(), reason: "overlay options exceed one page".into() });
        assert_eq!(code(&e), Code::FailedPrecondition);
        let e = Error::Storage(StorageError::Io { what: "mkdir", path: "/m".into(), source: io::Error::from_raw_os_error(nix::libc::EIO) });
        assert_eq!(code(&e), Code::Internal);
    }
}
