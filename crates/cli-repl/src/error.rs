//! The command's one error type: every failure becomes one paragraph naming the file, key or
//! shape involved, and a non-zero exit code.

use std::path::PathBuf;

/// Everything a command can fail with.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Model, weights or architecture problems.
    #[error(transparent)]
    Resnet(#[from] resnet::ResnetError),
    /// Layer or autograd problems.
    #[error(transparent)]
    Nn(#[from] nn::NnError),
    /// Tensor shape or file problems.
    #[error(transparent)]
    Tensor(#[from] tensor::TensorError),
    /// Reading or writing a file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A bad combination of arguments.
    #[error("{0}")]
    Usage(String),
}

/// `Result` with [`CliError`].
pub type Result<T> = std::result::Result<T, CliError>;
