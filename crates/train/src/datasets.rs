//! The training and validation sets a [`crate::TrainConfig`] names.

use crate::{config_err, demo, Result, TrainConfig};
use data::{Dataset, ImageFolder, Subset};

/// The train and validation datasets and their classes.
pub(crate) struct Datasets {
    pub train: Box<dyn Dataset>,
    pub val: Box<dyn Dataset>,
    pub classes: Vec<String>,
    /// Whether this is the built-in demo dataset.
    pub demo: bool,
}

/// `train/` and `val/` of a folder, a folder split by `val_split`, or the demo dataset (which
/// [`demo::prepare`] must have written).
pub(crate) fn open(c: &TrainConfig) -> Result<Datasets> {
    let Some(root) = &c.data else {
        let dir = demo::dir(c.demo_dir.as_deref());
        if !data::is_demo_dataset(&dir) {
            return Err(config_err(format!(
                "{}: no demo dataset here (train::demo::prepare writes it), and no data folder was given",
                dir.display()
            )));
        }
        let train = ImageFolder::new(dir.join("train"))?;
        let val = ImageFolder::new(dir.join("val"))?;
        let classes = train.classes().to_vec();
        return Ok(Datasets { train: Box::new(train), val: Box::new(val), classes, demo: true });
    };
    let (train_dir, val_dir) = (root.join("train"), root.join("val"));
    if train_dir.is_dir() && val_dir.is_dir() {
        if c.val_split.is_some() {
            return Err(config_err(format!("{} already has train/ and val/; drop --val-split", root.display())));
        }
        let train = ImageFolder::new(&train_dir)?;
        let val = ImageFolder::new(&val_dir)?;
        if train.classes() != val.classes() {
            return Err(config_err(format!(
                "{}: train/ has classes {:?} but val/ has {:?}",
                root.display(),
                train.classes(),
                val.classes()
            )));
        }
        let classes = train.classes().to_vec();
        return Ok(Datasets { train: Box::new(train), val: Box::new(val), classes, demo: false });
    }
    let fraction = c.val_split.ok_or_else(|| {
        config_err(format!(
            "{}: no train/ and val/ sub-folders; pass --val-split (e.g. 0.2) to split it",
            root.display()
        ))
    })?;
    let folder = ImageFolder::new(root)?;
    let split = data::split::split_indices(&folder.targets(), fraction, c.seed)?;
    if split.val.is_empty() || split.train.is_empty() {
        return Err(config_err(format!(
            "{}: --val-split {fraction} leaves an empty train or validation set",
            root.display()
        )));
    }
    let classes = folder.classes().to_vec();
    let train = Subset::new(folder.clone(), split.train)?;
    let val = Subset::new(folder, split.val)?;
    Ok(Datasets { train: Box::new(train), val: Box::new(val), classes, demo: false })
}
