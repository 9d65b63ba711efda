//! # data
//!
//! ImageFolder datasets, torchvision-exact transforms and a multi-threaded loader producing
//! NCHW f32 batches and i64 labels.
//!
//! **Status:** not built yet (the `data` issue). It depends on `tensor` only: batches are
//! tensors, and nothing here knows about models or autograd.
#![deny(missing_docs)]

pub use tensor;
