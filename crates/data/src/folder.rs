//! Datasets: the [`Dataset`] trait, torchvision's [`ImageFolder`], and [`Subset`].

use crate::error::{DataError, Result};
use crate::image::{RgbImage, DEFAULT_MAX_PIXELS};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// torchvision's `IMG_EXTENSIONS`, matched case-insensitively at the end of the file name.
pub const IMG_EXTENSIONS: [&str; 9] = [".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"];

/// One decoded sample: the image, its class index and where it came from.
#[derive(Debug, Clone)]
pub struct Example {
    /// The image, converted to RGB.
    pub image: RgbImage,
    /// Its class index.
    pub label: usize,
    /// Its file (named in batches and error messages).
    pub path: PathBuf,
}

/// A map-style dataset (`torch.utils.data.Dataset`): a length and random access to samples.
/// `get` runs on the loader's worker threads, so it must be thread-safe.
pub trait Dataset: Send + Sync {
    /// Number of samples.
    fn len(&self) -> usize;

    /// Whether there are no samples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Loads sample `index` (`< len()`); an undecodable file is an error naming it.
    fn get(&self, index: usize) -> Result<Example>;
}

impl<D: Dataset + ?Sized> Dataset for Arc<D> {
    fn len(&self) -> usize {
        (**self).len()
    }
    fn get(&self, index: usize) -> Result<Example> {
        (**self).get(index)
    }
}

impl<D: Dataset + ?Sized> Dataset for Box<D> {
    fn len(&self) -> usize {
        (**self).len()
    }
    fn get(&self, index: usize) -> Result<Example> {
        (**self).get(index)
    }
}

/// torchvision's `datasets.ImageFolder`: `root/<class>/**/<image>`.
///
/// The rules are torchvision's, exactly: classes are the sorted names of `root`'s
/// sub-folders (symbolic links followed, hidden folders included), indexed in that order; each
/// class folder is walked recursively, folders visited in sorted order of their path and files
/// sorted by name; a file is a sample when its name ends, ignoring case, with one of
/// [`IMG_EXTENSIONS`]; a class folder without any is an error. Files are listed, not decoded:
/// a corrupt image is found when it is loaded.
#[derive(Debug, Clone)]
pub struct ImageFolder {
    root: PathBuf,
    classes: Vec<String>,
    samples: Vec<(PathBuf, usize)>,
    max_pixels: u64,
}

fn is_dir_following_links(path: &Path) -> bool {
    std::fs::metadata(path).map(|m| m.is_dir()).unwrap_or(false)
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<(OsString, PathBuf)>> {
    let mut entries = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let e = e.map_err(|e| DataError::io(dir, e))?;
        entries.push((e.file_name(), e.path()));
    }
    // Python sorts str by code point; UTF-8 byte order is the same order.
    entries.sort_by(|a, b| a.0.as_encoded_bytes().cmp(b.0.as_encoded_bytes()));
    Ok(entries)
}

/// Whether `name` ends with one of [`IMG_EXTENSIONS`], ignoring ASCII case (as
/// `filename.lower().endswith(IMG_EXTENSIONS)`).
pub fn has_image_extension(name: &str) -> bool {
    let lower = name.to_lowercase();
    IMG_EXTENSIONS.iter().any(|ext| lower.ends_with(ext))
}

/// One folder of a walk: its path as bytes (the sort key), the path, and its files.
type WalkedDir = (Vec<u8>, PathBuf, Vec<(OsString, PathBuf)>);

/// `sorted(os.walk(class_dir, followlinks=True))`: every folder under `dir` (itself included)
/// with its files, folders ordered by their path string.
fn walk(dir: &Path, out: &mut Vec<WalkedDir>, depth: usize) -> Result<()> {
    // A symlink cycle would recurse forever (os.walk does not detect it either, but stops at
    // the OS's path length limit); refuse it clearly.
    if depth > 64 {
        return Err(DataError::io(
            dir,
            std::io::Error::other("folder nesting deeper than 64 (a symbolic link cycle?)"),
        ));
    }
    let mut files = Vec::new();
    let mut subdirs = Vec::new();
    for (name, path) in read_dir_sorted(dir)? {
        if is_dir_following_links(&path) {
            subdirs.push(path);
        } else {
            files.push((name, path));
        }
    }
    out.push((dir.as_os_str().as_encoded_bytes().to_vec(), dir.to_path_buf(), files));
    for d in subdirs {
        walk(&d, out, depth + 1)?;
    }
    Ok(())
}

impl ImageFolder {
    /// Lists `root` by torchvision's rules.
    pub fn new(root: impl AsRef<Path>) -> Result<ImageFolder> {
        let root = root.as_ref().to_path_buf();
        let mut classes = Vec::new();
        for (name, path) in read_dir_sorted(&root)? {
            if is_dir_following_links(&path) {
                let name = name.into_string().map_err(|_| DataError::NonUtf8Name { path: path.clone() })?;
                classes.push(name);
            }
        }
        if classes.is_empty() {
            return Err(DataError::NoClassFolders { root });
        }
        let mut samples = Vec::new();
        let mut empty = Vec::new();
        for (idx, class) in classes.iter().enumerate() {
            let mut dirs = Vec::new();
            walk(&root.join(class), &mut dirs, 0)?;
            dirs.sort_by(|a, b| a.0.cmp(&b.0));
            let before = samples.len();
            for (_, _, files) in dirs {
                for (name, path) in files {
                    if has_image_extension(&name.to_string_lossy()) {
                        samples.push((path, idx));
                    }
                }
            }
            if samples.len() == before {
                empty.push(class.clone());
            }
        }
        if !empty.is_empty() {
            return Err(DataError::EmptyClasses { root, classes: empty });
        }
        Ok(ImageFolder { root, classes, samples, max_pixels: DEFAULT_MAX_PIXELS })
    }

    /// The pixel limit above which an image is refused from its header (default
    /// [`DEFAULT_MAX_PIXELS`]).
    pub fn with_max_pixels(mut self, max_pixels: u64) -> ImageFolder {
        self.max_pixels = max_pixels;
        self
    }

    /// The folder that was listed.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Class names, sorted; a class's index is its position.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// `class_to_idx`: each class name with its index.
    pub fn class_to_idx(&self) -> BTreeMap<String, usize> {
        self.classes.iter().enumerate().map(|(i, c)| (c.clone(), i)).collect()
    }

    /// `(path, class index)` of every sample, in torchvision's order.
    pub fn samples(&self) -> &[(PathBuf, usize)] {
        &self.samples
    }

    /// The class index of every sample (`targets`).
    pub fn targets(&self) -> Vec<usize> {
        self.samples.iter().map(|s| s.1).collect()
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether there are no samples (never true for a listed folder).
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

impl Dataset for ImageFolder {
    fn len(&self) -> usize {
        self.samples.len()
    }

    fn get(&self, index: usize) -> Result<Example> {
        let (path, label) = self.samples.get(index).ok_or_else(|| {
            DataError::invalid("ImageFolder::get", format!("index {index} is out of range for {} samples", self.len()))
        })?;
        let image = RgbImage::open(path, self.max_pixels)?;
        Ok(Example { image, label: *label, path: path.clone() })
    }
}

/// The samples of a dataset at the given indices (`torch.utils.data.Subset`).
#[derive(Debug, Clone)]
pub struct Subset<D> {
    dataset: D,
    indices: Vec<usize>,
}

impl<D: Dataset> Subset<D> {
    /// A view of `dataset` restricted to `indices` (each `< dataset.len()`).
    pub fn new(dataset: D, indices: Vec<usize>) -> Result<Subset<D>> {
        if let Some(&bad) = indices.iter().find(|&&i| i >= dataset.len()) {
            return Err(DataError::invalid(
                "Subset::new",
                format!("index {bad} is out of range for a dataset of {} samples", dataset.len()),
            ));
        }
        Ok(Subset { dataset, indices })
    }

    /// The indices into the underlying dataset.
    pub fn indices(&self) -> &[usize] {
        &self.indices
    }

    /// The underlying dataset.
    pub fn dataset(&self) -> &D {
        &self.dataset
    }
}

impl<D: Dataset> Dataset for Subset<D> {
    fn len(&self) -> usize {
        self.indices.len()
    }

    fn get(&self, index: usize) -> Result<Example> {
        let i = *self.indices.get(index).ok_or_else(|| {
            DataError::invalid("Subset::get", format!("index {index} is out of range for {} samples", self.len()))
        })?;
        self.dataset.get(i)
    }
}

/// Loads every sample of `dataset` on `threads` threads and returns the errors of those that
/// cannot be read (undecodable, too large, unreadable), in index order; other errors are
/// returned as the `Err`. A run that met one bad file calls this to name all of them at once,
/// rather than stopping again at the next one.
pub fn find_bad_images(dataset: &dyn Dataset, threads: usize) -> Result<Vec<(usize, DataError)>> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let found = std::sync::Mutex::new(Vec::new());
    let fatal = std::sync::Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= dataset.len() {
                    break;
                }
                match dataset.get(i) {
                    Ok(_) => {}
                    Err(e) if e.is_bad_image() => found.lock().unwrap_or_else(|p| p.into_inner()).push((i, e)),
                    Err(e) => {
                        *fatal.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                        break;
                    }
                }
            });
        }
    });
    if let Some(e) = fatal.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    let mut found = found.into_inner().unwrap_or_else(|p| p.into_inner());
    found.sort_by_key(|(i, _)| *i);
    Ok(found)
}
