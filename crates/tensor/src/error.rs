//! The one error type of the crate: every shape, dtype, argument or file problem is an `Err`
//! naming the operation and the shapes involved, never a panic.

use crate::DType;
use std::path::PathBuf;

/// Everything that can go wrong in a tensor operation.
#[derive(Debug, thiserror::Error)]
pub enum TensorError {
    /// Two operands whose shapes do not fit together.
    #[error("{op}: shape mismatch between {lhs:?} and {rhs:?}")]
    ShapeMismatch {
        /// The operation that refused the shapes.
        op: &'static str,
        /// Shape of the first operand.
        lhs: Vec<usize>,
        /// Shape of the second operand.
        rhs: Vec<usize>,
    },
    /// One operand whose shape the operation cannot take.
    #[error("{op}: {msg} (got shape {shape:?})")]
    InvalidShape {
        /// The operation that refused the shape.
        op: &'static str,
        /// The offending shape.
        shape: Vec<usize>,
        /// What was expected.
        msg: String,
    },
    /// An operand of the wrong element type.
    #[error("{op}: expected a {expected} tensor, got {got}")]
    DType {
        /// The operation that refused the dtype.
        op: &'static str,
        /// The dtype the operation needs.
        expected: DType,
        /// The dtype it got.
        got: DType,
    },
    /// A dimension index past the tensor's rank.
    #[error("{op}: dimension {dim} is out of range for a tensor of rank {rank}")]
    DimOutOfRange {
        /// The operation.
        op: &'static str,
        /// The requested dimension.
        dim: usize,
        /// The tensor's rank.
        rank: usize,
    },
    /// An index past the end of a dimension.
    #[error("{op}: index {index} is out of range for a dimension of size {size}")]
    IndexOutOfRange {
        /// The operation.
        op: &'static str,
        /// The requested index.
        index: i64,
        /// The size of the dimension.
        size: usize,
    },
    /// Any other invalid argument (a zero stride, a negative size, ...).
    #[error("{op}: {msg}")]
    InvalidArgument {
        /// The operation.
        op: &'static str,
        /// What is wrong.
        msg: String,
    },
    /// A tensor on a device the operation cannot use.
    #[error("{op}: device {device} is not available")]
    DeviceUnavailable {
        /// The operation.
        op: &'static str,
        /// The device that was asked for.
        device: String,
    },
    /// Operands on different devices (move them with `to_device` first, as in PyTorch).
    #[error("{op}: the operands are on different devices ({devices}); move them to one device with to_device")]
    DeviceMismatch {
        /// The operation.
        op: &'static str,
        /// The devices involved, in operand order.
        devices: String,
    },
    /// An operation that has no kernel on the tensor's device.
    #[error("{op}: not supported for a tensor on {device}; move it with to_device(Device::Cpu) first")]
    Unsupported {
        /// The operation.
        op: &'static str,
        /// The device the tensor is on.
        device: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A `.npy` file (or buffer) that cannot be read.
    #[error("{path}: not a readable .npy file: {msg}")]
    Npy {
        /// The file, or `<memory>` for a buffer.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// A tensor file (safetensors) that is malformed, or tensors that cannot be written as one.
    #[error("{path}: {msg}")]
    Format {
        /// The file, or `<memory>` for a buffer.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
}

/// `Result` with [`TensorError`].
pub type Result<T> = std::result::Result<T, TensorError>;

pub(crate) fn invalid(op: &'static str, msg: impl Into<String>) -> TensorError {
    TensorError::InvalidArgument { op, msg: msg.into() }
}

pub(crate) fn bad_shape(op: &'static str, shape: &[usize], msg: impl Into<String>) -> TensorError {
    TensorError::InvalidShape { op, shape: shape.to_vec(), msg: msg.into() }
}

pub(crate) fn mismatch(op: &'static str, lhs: &[usize], rhs: &[usize]) -> TensorError {
    TensorError::ShapeMismatch { op, lhs: lhs.to_vec(), rhs: rhs.to_vec() }
}
