//! Why the worker could not run, as a kind with an exit code (like routinator's `ExitError`):
//! library code returns these, only `main` prints them and exits.

/// A failure that ends the worker before (or instead of) a normal stop.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A setting is invalid; the message names it and says how to fix it. Exit code 2.
    #[error("{0}")]
    Config(String),
    /// The worker cannot start: work directory, Python runtime, NATS. Exit code 1.
    #[error("{0}")]
    Start(String),
}

impl WorkerError {
    /// The process exit code for this kind (documented in `pyoco-worker --help`).
    pub fn exit_code(&self) -> i32 {
        match self {
            WorkerError::Config(_) => 2,
            WorkerError::Start(_) => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_by_kind() {
        assert_eq!(WorkerError::Config("x".into()).exit_code(), 2);
        assert_eq!(WorkerError::Start("x".into()).exit_code(), 1);
    }
}
