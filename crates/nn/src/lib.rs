//! # nn
//!
//! Reverse-mode autograd, layers, losses, optimizers, learning-rate schedules, state dicts and
//! summaries — `torch.nn` and `torch.optim` semantics over the kernels of the `tensor` crate.
//!
//! **What it is for.** Training a network the PyTorch way: build it from [`Module`]s, run
//! `forward` on a [`Var`], compute a loss, `backward()`, `optimizer.step()`. Parameter names,
//! state-dict order, initialisation, BatchNorm's running statistics and the optimizers' update
//! formulas are PyTorch's, so checkpoints and numbers carry over.
//!
//! **What it is not.** A kernel library: every forward and backward computation is a `tensor`
//! function; this crate records the graph and calls them. It does no file I/O.
//!
//! **Key design choice.** One [`Var`] type for every value in the graph, one `enum Op` with one
//! exhaustive `match` of backward rules (`autograd.rs`), and graph nodes numbered at creation so
//! that reverse creation order is the topological order.
//!
//! ```
//! use nn::{CrossEntropyLoss, Linear, Method, Module, ModuleExt, Optimizer, Var};
//! use tensor::{Rng, Tensor};
//!
//! let mut rng = Rng::seed(0);
//! let net = Linear::new(4, 3, true, &mut rng)?;
//! let mut opt = Optimizer::new(Method::sgd(0.9), net.trainable_parameters(), 0.1, 0.0)?;
//! let x = Var::constant(Tensor::randn(&[8, 4], &mut rng));
//! let y = Tensor::from_vec_i64(vec![0, 1, 2, 0, 1, 2, 0, 1], &[8])?;
//! let loss = CrossEntropyLoss::default().forward(&net.forward(&x)?, &y)?;
//! opt.zero_grad();
//! loss.backward()?;
//! opt.step()?;
//! # Ok::<(), nn::NnError>(())
//! ```
#![deny(missing_docs)]

mod autograd;
pub mod functional;
mod layers;
mod loss;
mod module;
mod optim;
mod sched;
mod summary;

pub use autograd::{
    enable_grad, is_grad_enabled, no_grad, set_sync_batch_norm, with_no_grad, NoGradGuard, ProcessGroup, Reduction, Var,
};
pub use layers::{
    AdaptiveAvgPool2d, AvgPool2d, BatchNorm2d, Conv2d, Conv2dConfig, Dropout, Flatten, Identity, Linear, MaxPool2d,
    ReLU, Sequential,
};
pub use loss::{accuracy, topk, topk_accuracy, CrossEntropyLoss, NllLoss, TopK};
pub use module::{named_modules_dyn, LoadReport, Module, ModuleExt, ShapeRecorder, SummaryRow};
pub use optim::{Method, Optimizer, ParamGroup};
pub use sched::{LrSchedule, Scheduler};
pub use summary::{summarize, summary, thousands, SummaryTotals};
pub use tensor;

/// Everything that can go wrong in `nn`.
#[derive(Debug, thiserror::Error)]
pub enum NnError {
    /// A tensor kernel refused its inputs.
    #[error(transparent)]
    Tensor(#[from] tensor::TensorError),
    /// A shape that a layer or loss cannot take.
    #[error("{0}")]
    Shape(String),
    /// An invalid hyper-parameter or layer configuration.
    #[error("{0}")]
    Config(String),
    /// Misuse of the autograd (backward on a non-scalar, twice through one graph, ...).
    #[error("autograd: {0}")]
    Autograd(String),
    /// A strict `load_state_dict` that did not match; lists every offending key.
    #[error("load_state_dict: {0}")]
    StateDict(LoadReport),
}

/// `Result` with [`NnError`].
pub type Result<T> = std::result::Result<T, NnError>;
