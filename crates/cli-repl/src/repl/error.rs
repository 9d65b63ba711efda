//! The REPL's one error type. Errors never end the session: `Session::execute` turns each into
//! an `Output::Error`, with a "did you mean" suggestion where one is known.

/// Everything a line typed at the REPL can fail with.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReplError {
    /// The line is not in the language.
    #[error("syntax error: {0}")]
    Syntax(String),
    /// A name that is neither a variable nor a builtin.
    #[error("name `{name}` is not defined")]
    UnknownName { name: String, suggestion: Option<String> },
    /// An attribute the value does not have.
    #[error("{owner} has no attribute `{attr}`")]
    UnknownAttribute { owner: String, attr: String, suggestion: Option<String> },
    /// A keyword argument the function does not take.
    #[error("{func}() got an unexpected keyword argument `{keyword}`; usage: {usage}")]
    UnknownKeyword { func: String, keyword: String, usage: String, suggestion: Option<String> },
    /// A `:command` that does not exist.
    #[error("unknown command `:{command}`; type :help for the commands")]
    UnknownCommand { command: String, suggestion: Option<String> },
    /// A value of the wrong type, or the wrong number of arguments.
    #[error("{0}")]
    Type(String),
    /// A value of the right type but out of range.
    #[error("{0}")]
    Value(String),
    /// Division (or modulo) of numbers by zero.
    #[error("division by zero")]
    ZeroDivision,
    /// A request above the REPL's size limits (it would exhaust memory).
    #[error("{0}")]
    Limit(String),
    /// A tensor kernel refused its inputs.
    #[error(transparent)]
    Tensor(#[from] tensor::TensorError),
    /// A layer, autograd or state-dict error.
    #[error(transparent)]
    Nn(#[from] nn::NnError),
    /// A model or weight-file error.
    #[error(transparent)]
    Resnet(#[from] resnet::ResnetError),
    /// An image or class-index file error.
    #[error(transparent)]
    Data(#[from] data::DataError),
}

impl ReplError {
    /// The "did you mean" candidate, if the error has one.
    pub(crate) fn suggestion(&self) -> Option<&str> {
        match self {
            ReplError::UnknownName { suggestion, .. }
            | ReplError::UnknownAttribute { suggestion, .. }
            | ReplError::UnknownKeyword { suggestion, .. }
            | ReplError::UnknownCommand { suggestion, .. } => suggestion.as_deref(),
            _ => None,
        }
    }
}

/// `Result` with [`ReplError`].
pub(crate) type Result<T> = std::result::Result<T, ReplError>;

/// A type error built from a message.
pub(crate) fn type_err(msg: impl Into<String>) -> ReplError {
    ReplError::Type(msg.into())
}

/// A value error built from a message.
pub(crate) fn value_err(msg: impl Into<String>) -> ReplError {
    ReplError::Value(msg.into())
}
