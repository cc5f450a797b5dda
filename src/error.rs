//! The one error type of the pod sandbox and container lifecycles, at the bottom of the house:
//! it imports only the lower modules whose errors it wraps, and `server::status` maps each
//! variant to one gRPC code.

use std::path::Path;

/// Errors of pod sandbox and container operations. `server/` maps each variant to one gRPC code
/// (see `server::status`); messages name the object, the field and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field is missing or malformed (gRPC InvalidArgument).
    #[error("{field}: {message}")]
    InvalidArgument { field: String, message: String },
    /// The named object does not exist (gRPC NotFound).
    #[error("{kind} {id:?} not found")]
    NotFound { kind: &'static str, id: String },
    /// The name is already reserved by another object (gRPC AlreadyExists).
    #[error("{kind} name {name:?} is already reserved by {id}")]
    AlreadyExists { kind: &'static str, name: String, id: String },
    /// The object is not in a state that allows the operation (gRPC FailedPrecondition).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The operation ran out of time (gRPC DeadlineExceeded).
    #[error("{0}")]
    DeadlineExceeded(String),
    /// CNI failed.
    #[error(transparent)]
    Network(#[from] crate::network::NetworkError),
    /// The OCI runtime failed.
    #[error(transparent)]
    Oci(#[from] crate::oci::OciError),
    /// The monitor could not start the container or reported an error.
    #[error(transparent)]
    Monitor(#[from] crate::monitor::MonitorError),
    /// The OCI spec could not be generated from the request.
    #[error(transparent)]
    Spec(#[from] crate::spec::SpecError),
    /// A mount failed.
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    /// The image store failed.
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
    /// An NRI plugin refused RunPodSandbox or CreateContainer (gRPC FailedPrecondition).
    #[error(transparent)]
    Nri(#[from] crate::nri::NriError),
    /// The metadata store failed.
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    /// A filesystem operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Wraps an I/O error with what was being done and to what.
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }

    /// Removes an object's directory ([`crate::util::remove_dir_all_idempotent`]): a mount left
    /// below it is FailedPrecondition saying which and what to do, anything else Io.
    pub fn remove_dir(dir: &Path) -> Result<()> {
        crate::util::remove_dir_all_idempotent(dir).map_err(|e| {
            if e.kind() == std::io::ErrorKind::ResourceBusy {
                Error::FailedPrecondition(format!("{e}: unmount it and retry the removal"))
            } else {
                Error::io(format!("removing {}", dir.display()))(e)
            }
        })
    }

    /// Shorthand for [`Error::InvalidArgument`].
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Error {
        Error::InvalidArgument { field: field.into(), message: message.into() }
    }
}

/// Result of lifecycle operations.
pub type Result<T> = std::result::Result<T, Error>;

/// Turns NotFound into `Ok(None)`: Stop and Remove of something already gone succeed, since
/// kubelet retries them.
pub fn ok_if_missing<T>(r: Result<T>) -> Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}
