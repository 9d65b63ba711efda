//! # data
//!
//! Getting images into a ResNet the way a PyTorch + torchvision user does: an
//! [`ImageFolder`] of class sub-folders, torchvision's transforms, and a multi-threaded
//! [`Loader`] producing NCHW `f32` batches with `i64` labels.
//!
//! ```no_run
//! use data::{presets, ImageFolder, Loader, LoaderConfig};
//!
//! let train = ImageFolder::new("flower_data/train")?;
//! data::write_class_indices("class_indices.json", train.classes())?;
//! let loader = Loader::new(
//!     train,
//!     presets::imagenet_train(224)?,
//!     LoaderConfig::new(16).shuffle(true).num_workers(2).seed(0),
//! )?;
//! for epoch in 0..3 {
//!     for batch in loader.iter_epoch(epoch) {
//!         let batch = batch?; // batch.images: [16, 3, 224, 224] f32, batch.labels: [16] i64
//!         # let _ = batch;
//!     }
//! }
//! # Ok::<(), data::DataError>(())
//! ```
//!
//! What is copied exactly from torchvision (and tested against fixtures it produced): the
//! folder rules of `ImageFolder`; `Resize` (Pillow's antialiased bilinear resampling, to the
//! bit), `CenterCrop` (its padding and rounding), `RandomResizedCrop`'s sampling algorithm,
//! flips, `ColorJitter`'s four adjustments (Pillow's arithmetic), `ToTensor`, `Normalize`.
//! What is not: the random stream (ChaCha8 here, see [`transforms`]) and the JPEG decoder
//! (`jpeg-decoder`, where PIL uses libjpeg-turbo; they differ by a grey level or two on a few
//! percent of pixels).
//!
//! Reproducibility: a sample's augmentation depends only on `(seed, epoch, sample index)`, and
//! an epoch's order only on `(seed, epoch)`, so batches are identical for any number of worker
//! threads and on any machine.
//!
//! Also here: reading and writing the tutorial's `class_indices.json` ([`class_indices`]),
//! stratified train/validation splits ([`split`]), a procedural demo dataset ([`demo`]), and
//! heatmaps drawn over pictures ([`heatmap`], for Grad-CAM).
//!
//! Not here: models, autograd, GPU transfer (batches are host tensors), video, or any
//! downloading (the demo dataset is generated locally).
#![deny(missing_docs)]

pub mod class_indices;
mod color;
pub mod demo;
mod error;
pub mod folder;
pub mod heatmap;
mod image;
pub mod loader;
pub mod presets;
mod resize;
pub mod split;
pub mod transforms;

pub use class_indices::{read_class_indices, write_class_indices};
pub use color::{adjust_brightness, adjust_contrast, adjust_hue, adjust_saturation};
pub use demo::{is_demo_dataset, write_demo_dataset, DemoConfig, DemoDataset};
pub use error::{DataError, Result};
pub use folder::{find_bad_images, Dataset, Example, ImageFolder, Subset, IMG_EXTENSIONS};
pub use heatmap::overlay_heatmap;
pub use image::{FloatImage, RgbImage, DEFAULT_MAX_PIXELS};
pub use loader::{Batch, EpochIter, Loader, LoaderConfig, Shard};
pub use presets::{load_image_tensor, load_image_tensor_and_view, IMAGENET_MEAN, IMAGENET_STD};
pub use split::{split_indices, write_split, Split};
pub use tensor;
pub use transforms::{
    CenterCrop, ColorJitter, Compose, Normalize, RandomHorizontalFlip, RandomResizedCrop, RandomVerticalFlip, Resize,
    Sample, ToTensor, Transform,
};
