//! The one place that decides gRPC codes for domain errors (STYLE.md "Errors that say what to do").

use crate::daemon::Error;
use tonic::{Code, Status};

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let code = match &e {
            Error::InvalidArgument { .. } => Code::InvalidArgument,
            Error::NotFound { .. } => Code::NotFound,
            Error::AlreadyExists { .. } => Code::AlreadyExists,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
            // A spec that cannot be generated comes from what the request asked for
            // (no command, an unknown user, a missing mount source).
            Error::Spec(crate::container::spec::SpecError::RuntimeLacks { .. }) => Code::FailedPrecondition,
            Error::Spec(_) => Code::InvalidArgument,
            Error::Image(_) => Code::Internal,
            Error::Network(_) | Error::Oci(_) | Error::Monitor(_) | Error::Storage(_) | Error::State(_) | Error::Io { .. } => {
                Code::Internal
            }
        };
        if code == Code::Internal {
            tracing::error!(error = %e, "request failed");
        } else {
            tracing::debug!(error = %e, ?code, "request rejected");
        }
        Status::new(code, e.to_string())
    }
}
