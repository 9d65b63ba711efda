//! The pipelines of the classic transfer-learning tutorial, and ImageNet's statistics.
//!
//! ```text
//! train: RandomResizedCrop(224), RandomHorizontalFlip(), ToTensor(), Normalize(mean, std)
//! eval:  Resize(256), CenterCrop(224), ToTensor(), Normalize(mean, std)
//! ```

use crate::error::Result;
use crate::image::{FloatImage, RgbImage, DEFAULT_MAX_PIXELS};
use crate::transforms::{
    CenterCrop, Compose, Normalize, RandomHorizontalFlip, RandomResizedCrop, Resize, Rng, Sample, ToTensor, Transform,
};
use std::path::Path;

/// ImageNet's per-channel mean (RGB), the values torchvision's pretrained weights expect.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet's per-channel standard deviation (RGB).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// `RandomResizedCrop(size), RandomHorizontalFlip(), ToTensor(), Normalize(IMAGENET_MEAN, IMAGENET_STD)`.
pub fn imagenet_train(size: usize) -> Result<Compose> {
    train(size, (0.08, 1.0))
}

/// The training pipeline with the crop's area range (`RandomResizedCrop(size, scale=scale)`).
pub fn train(size: usize, scale: (f64, f64)) -> Result<Compose> {
    Ok(Compose::default()
        .push(RandomResizedCrop::new(size)?.scale(scale.0, scale.1)?)
        .push(RandomHorizontalFlip::default())
        .push(ToTensor)
        .push(Normalize::new(&IMAGENET_MEAN, &IMAGENET_STD)?))
}

/// `Resize(resize), CenterCrop(crop), ToTensor(), Normalize(IMAGENET_MEAN, IMAGENET_STD)`; the
/// tutorial uses `imagenet_eval(256, 224)`.
pub fn imagenet_eval(resize: usize, crop: usize) -> Result<Compose> {
    eval(resize, crop, &IMAGENET_MEAN, &IMAGENET_STD)
}

/// The evaluation pipeline with its own normalisation statistics.
pub fn eval(resize: usize, crop: usize, mean: &[f32], std: &[f32]) -> Result<Compose> {
    Ok(Compose::default()
        .push(Resize::new(resize)?)
        .push(CenterCrop::new(crop)?)
        .push(ToTensor)
        .push(Normalize::new(mean, std)?))
}

/// Applies a (deterministic) transform to one image, returning its float output: what
/// `predict` needs (`transform(Image.open(path).convert("RGB"))`). Randomness, if the transform
/// has any, comes from a generator seeded with 0.
pub fn transform_image(img: RgbImage, transform: &dyn Transform) -> Result<FloatImage> {
    let mut rng = Rng::seed(0);
    transform.apply(Sample::Image(img), &mut rng)?.into_tensor("the transform's output")
}

/// Loads one image file and applies `transform`, returning a `[C, H, W]` tensor (add the batch
/// dimension with `unsqueeze(0)`). Refuses images of more than [`DEFAULT_MAX_PIXELS`] pixels.
pub fn load_image_tensor(path: impl AsRef<Path>, transform: &dyn Transform) -> Result<tensor::Tensor> {
    let img = RgbImage::open(path, DEFAULT_MAX_PIXELS)?;
    transform_image(img, transform)?.into_tensor()
}

/// As [`load_image_tensor`], also returning the picture as the model sees it: the last 8-bit
/// image of the pipeline, before `ToTensor` (for the eval pipelines, after `Resize` and
/// `CenterCrop`), to draw on — its pixels are those of the tensor before normalisation.
pub fn load_image_tensor_and_view(path: impl AsRef<Path>, transform: &Compose) -> Result<(tensor::Tensor, RgbImage)> {
    let path = path.as_ref();
    let mut rng = Rng::seed(0);
    let mut sample = Sample::Image(RgbImage::open(path, DEFAULT_MAX_PIXELS)?);
    let mut view = None;
    for step in transform.steps() {
        if let Sample::Image(img) = &sample {
            view = Some(img.clone());
        }
        sample = step.apply(sample, &mut rng)?;
    }
    let tensor = sample.into_tensor("the transform's output")?.into_tensor()?;
    let view = view.ok_or_else(|| {
        crate::DataError::invalid("load_image_tensor_and_view", "the transform has no step before ToTensor")
    })?;
    Ok((tensor, view))
}
