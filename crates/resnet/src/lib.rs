//! # resnet
//!
//! torchvision's ResNet family in Rust: BasicBlock, Bottleneck, the model zoo (resnet18 ...
//! wide_resnet101_2) with torchvision's parameter names and initialisation, weight files
//! (`.pth` zip and legacy through a restricted unpickler; safetensors), and a fused inference
//! path with BatchNorm folded into the convs, and Grad-CAM heatmaps ([`grad_cam`]).
//!
//! **What it is not.** No kernels (those are `tensor`'s) and no training loop (the command in
//! `cli-repl` drives `nn`). File I/O here is limited to reading and writing weight files.
//!
//! **Key design choice.** A `.pth` is a pickle, and a pickle is a program. This crate runs it on
//! a tiny machine that knows only the opcodes and the seven kinds of globals a state dict needs,
//! reproduces their effect itself, and refuses any other global with an error naming it — so a
//! hostile file can at worst be rejected.
//!
//! ```
//! use nn::{Module, ModuleExt, Var};
//! use resnet::{Arch, FusedResNet};
//! use tensor::{Rng, Tensor};
//!
//! let net = Arch::Resnet18.build(5, 0)?;
//! assert_eq!(net.state_dict()[0].0, "conv1.weight");
//! net.eval();
//! let x = Tensor::randn(&[1, 3, 64, 64], &mut Rng::seed(0));
//! let y = nn::with_no_grad(|| net.forward(&Var::constant(x.clone())))?;
//! let fused = FusedResNet::new(&net)?.forward(&x)?;
//! assert_eq!(fused.shape(), &[1, 5]);
//! assert_eq!(y.shape(), vec![1, 5]);
//! # Ok::<(), resnet::ResnetError>(())
//! ```
#![deny(missing_docs)]

mod cam;
mod fused;
mod model;
pub mod onnx;
pub mod weights;
mod zoo;

pub use cam::{grad_cam, GradCam, CAM_EPSILON};
pub use fused::FusedResNet;
pub use model::{BasicBlock, Block, BlockKind, Bottleneck, Downsample, Init, ResNet, ResNetConfig, Stage};
pub use nn;
pub use onnx::{export_onnx, onnx_bytes, OnnxBatch, OnnxInput};
pub use weights::{
    load_pretrained, load_strict, read_weights, read_weights_bytes, write_pth, write_safetensors, StateDict,
};
pub use zoo::*;

use std::path::PathBuf;

/// Everything that can go wrong in `resnet`.
#[derive(Debug, thiserror::Error)]
pub enum ResnetError {
    /// A layer, autograd or state-dict error.
    #[error(transparent)]
    Nn(#[from] nn::NnError),
    /// A tensor kernel error.
    #[error(transparent)]
    Tensor(#[from] tensor::TensorError),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A weight file that is malformed or of an unsupported kind.
    #[error("{path}: {msg}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A weight file refused for safety (it would have run code).
    #[error("{path}: {msg}")]
    Refused {
        /// The file.
        path: PathBuf,
        /// What it asked for.
        msg: String,
    },
    /// An architecture name that is not in the zoo.
    #[error("unknown architecture `{name}`; the architectures are: {valid}")]
    UnknownArch {
        /// What was asked for.
        name: String,
        /// The valid names.
        valid: String,
    },
    /// An invalid model configuration.
    #[error("{0}")]
    Config(String),
    /// A Grad-CAM request the model or the batch cannot answer.
    #[error("Grad-CAM: {0}")]
    Cam(String),
}

/// `Result` with [`ResnetError`].
pub type Result<T> = std::result::Result<T, ResnetError>;
