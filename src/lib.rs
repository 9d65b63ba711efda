//! # resnet-rs
//!
//! ResNet in Rust, as one dependency: this facade re-exports the workspace's crates.
//!
//! - [`tensor`]: host tensors and the CPU kernels (matmul, conv, pooling, batch norm).
//! - [`nn`]: autograd, layers, losses, optimizers.
//! - [`resnet`]: the model zoo and torchvision-compatible weights.
//! - [`data`]: ImageFolder, transforms, the loader.
//! - [`train`]: the [`train::Trainer`]: the training loop, checkpoints, metrics and reports.
//! - [`cli`]: the `resnet` command and REPL.
#![deny(missing_docs)]

pub use cli_repl as cli;
pub use data;
pub use nn;
pub use resnet;
pub use tensor;
pub use train;

/// The README's code blocks, compiled and run as doctests so the tour cannot rot.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// The book's library chapter, compiled and run as doctests.
#[doc = include_str!("../book/src/library.md")]
#[cfg(doctest)]
pub struct BookLibraryDoctests;
