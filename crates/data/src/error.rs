//! The crate's one error type: every problem names the file, folder, key or shapes involved.

use std::path::PathBuf;

/// The result type of this crate.
pub type Result<T, E = DataError> = std::result::Result<T, E>;

/// Everything that can go wrong while listing, decoding, transforming or loading images.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file or folder could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// An ImageFolder root without any class sub-folder.
    #[error("couldn't find any class folder in {}", root.display())]
    NoClassFolders {
        /// The root that was listed.
        root: PathBuf,
    },
    /// Class folders without a single file of a supported extension (torchvision refuses these).
    #[error(
        "found no valid file for the classes {} in {}; supported extensions are: {}",
        classes.join(", "), root.display(), crate::folder::IMG_EXTENSIONS.join(", ")
    )]
    EmptyClasses {
        /// The ImageFolder root.
        root: PathBuf,
        /// The class folders without any image.
        classes: Vec<String>,
    },
    /// A file or folder name that is not valid UTF-8 where a string is needed (a class name).
    #[error("{}: the name is not valid UTF-8", path.display())]
    NonUtf8Name {
        /// The offending path.
        path: PathBuf,
    },
    /// A file that is not a decodable image.
    #[error("{}: cannot decode image: {msg}", path.display())]
    Decode {
        /// The image file.
        path: PathBuf,
        /// The decoder's message.
        msg: String,
    },
    /// An image whose header announces more pixels than the configured limit (refused before
    /// any pixel memory is allocated).
    #[error("{}: image of {width}x{height} pixels exceeds the limit of {limit} pixels", path.display())]
    ImageTooLarge {
        /// The image file.
        path: PathBuf,
        /// Width announced by the header.
        width: u32,
        /// Height announced by the header.
        height: u32,
        /// The pixel limit in force.
        limit: u64,
    },
    /// A `class_indices.json` (or other JSON file) that does not hold what it should.
    #[error("{}: {msg}", path.display())]
    BadJson {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the key where there is one.
        msg: String,
    },
    /// An argument outside its valid range (a zero size, a probability above 1, ...).
    #[error("{what}: {msg}")]
    InvalidArgument {
        /// The function, transform or option concerned.
        what: &'static str,
        /// What is wrong with it.
        msg: String,
    },
    /// A transform given an input it cannot take (e.g. `Resize` after `ToTensor`).
    #[error("{transform}: {msg}")]
    Transform {
        /// The transform.
        transform: &'static str,
        /// What it got and what it expects.
        msg: String,
    },
    /// Samples of one batch whose transformed shapes differ (the transform must produce one size).
    #[error(
        "cannot batch {first} with shape {first_shape:?} and {other} with shape {other_shape:?}: \
             the transform must produce one size (add a Resize/CenterCrop or RandomResizedCrop)"
    )]
    BatchShapeMismatch {
        /// The first sample of the batch.
        first: PathBuf,
        /// Its shape `[C, H, W]`.
        first_shape: Vec<usize>,
        /// The sample whose shape differs.
        other: PathBuf,
        /// Its shape.
        other_shape: Vec<usize>,
    },
    /// A loader worker thread failed without producing its batch (a panic in user code).
    #[error("loader worker failed on batch {batch}: {msg}")]
    Worker {
        /// The batch the worker was building.
        batch: usize,
        /// The panic message.
        msg: String,
    },
    /// An error from the tensor crate (building the batch tensors).
    #[error(transparent)]
    Tensor(#[from] tensor::TensorError),
}

impl DataError {
    /// Whether this error is about one bad image file (undecodable or too large): such samples
    /// can be skipped by the loader when asked, every other error stops it.
    pub fn is_bad_image(&self) -> bool {
        matches!(self, DataError::Decode { .. } | DataError::ImageTooLarge { .. } | DataError::Io { .. })
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> DataError {
        DataError::Io { path: path.into(), source }
    }

    pub(crate) fn invalid(what: &'static str, msg: impl Into<String>) -> DataError {
        DataError::InvalidArgument { what, msg: msg.into() }
    }
}
