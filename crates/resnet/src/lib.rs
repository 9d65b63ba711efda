//! # resnet
//!
//! BasicBlock, Bottleneck, the torchvision model zoo (ResNet, ResNeXt, Wide ResNet) and
//! torchvision-compatible weights (`.pth` through a restricted unpickler, safetensors).
//!
//! **Status:** not built yet (the `resnet` issue); this crate only fixes its place in the
//! dependency order (`tensor` -> `nn` -> `resnet`).
#![deny(missing_docs)]

pub use nn;
