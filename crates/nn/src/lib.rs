//! # nn
//!
//! Reverse-mode autograd, layers, losses, optimizers, learning-rate schedules and state dicts,
//! built on the kernels of the `tensor` crate.
//!
//! **Status:** not built yet (the `nn` issue). The crate exists so the workspace has its final
//! shape; it re-exports `tensor` so that code written against `nn::tensor` keeps compiling.
//!
//! **What it will not be:** a second kernel library. Forward and backward kernels live in
//! `tensor`; this crate records the graph and calls them.
#![deny(missing_docs)]

pub use tensor;
