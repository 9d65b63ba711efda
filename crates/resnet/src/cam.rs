//! Grad-CAM (Selvaraju et al., 2017): which parts of an image made a ResNet choose a class.
//!
//! As the pytorch-grad-cam package computes it with `GradCAM(model, target_layers=[model.layer4[-1]])`:
//! the last stage's activations `A[k, i, j]` (`layer4`'s output), the weight of each channel
//! `alpha_k = mean_ij d score_c / d A[k, i, j]` (`score_c` the logit of class `c`, before
//! softmax), the map `ReLU(sum_k alpha_k A_k)`, upsampled bilinearly to the input's size
//! (`F.interpolate(..., mode="bilinear", align_corners=False)`) and scaled to `[0, 1]` per image
//! (`scale_cam_image`: minus the minimum, divided by `1e-7 +` the maximum, so a map that is zero
//! everywhere stays zero). The model runs in eval mode.
//!
//! The gradient comes from the tape: `layer4` runs without recording, its output becomes a new
//! leaf, and only the pool and the head run recorded on it — with constant copies of the head's
//! weights, so the model's own parameters receive no gradient.

use crate::{ResNet, ResnetError, Result};
use nn::{Module, ModuleExt, Var};
use std::sync::atomic::{AtomicBool, Ordering};
use tensor::{Device, Tensor};

/// What pytorch-grad-cam's `scale_cam_image` adds to the maximum before dividing.
pub const CAM_EPSILON: f32 = 1e-7;

/// The result of [`grad_cam`] for a batch of `N` images of `H x W` pixels. Every tensor is a
/// host tensor, whatever device the model is on.
#[derive(Debug, Clone)]
pub struct GradCam {
    /// The class explained for each image: the one asked for, else the predicted (arg-max) one.
    pub classes: Vec<usize>,
    /// The model's logits, `[N, num_classes]`.
    pub logits: Tensor,
    /// `ReLU(sum_k alpha_k A_k)` at `layer4`'s resolution, `[N, h, w]`, before upsampling and
    /// scaling.
    pub raw: Tensor,
    /// The heatmaps, `[N, H, W]`: `raw` upsampled to the input's size and scaled to `[0, 1]`.
    pub heatmaps: Tensor,
}

fn bad(msg: String) -> ResnetError {
    ResnetError::Cam(msg)
}

/// Grad-CAM heatmaps of `images` (`[N, 3, H, W]`, normalised as the model expects) for the
/// given classes, one per image, or for the predicted ones when `classes` is `None`.
///
/// The pass runs in eval mode (running BatchNorm statistics, as pytorch-grad-cam sets
/// `model.eval()`); the mode of every sub-module is restored afterwards. It records gradients
/// even inside [`nn::no_grad`], and leaves the model's parameters and their gradients alone.
///
/// ```
/// use resnet::{grad_cam, BlockKind, Init, ResNetConfig};
/// use tensor::{Rng, Tensor};
///
/// let cfg = ResNetConfig { base_planes: 4, ..ResNetConfig::new(BlockKind::Basic, [1, 1, 1, 1], 3) };
/// let net = cfg.build(Init::Torchvision(0))?;
/// let x = Tensor::randn(&[2, 3, 64, 48], &mut Rng::seed(1));
/// let cam = grad_cam(&net, &x, Some(&[0, 2]))?;
/// assert_eq!(cam.classes, vec![0, 2]);
/// assert_eq!(cam.raw.shape(), &[2, 2, 2]);
/// assert_eq!(cam.heatmaps.shape(), &[2, 64, 48]);
/// # Ok::<(), resnet::ResnetError>(())
/// ```
///
/// # Errors
/// [`ResnetError::Cam`] for a model without its head, an input that is not a batch of images,
/// or classes that do not fit the batch or the head; the layers' own errors for a shape the
/// model cannot take.
pub fn grad_cam(model: &ResNet, images: &Tensor, classes: Option<&[usize]>) -> Result<GradCam> {
    let fc = model
        .fc
        .as_ref()
        .ok_or_else(|| bad("the model has no classifier head (fc): Grad-CAM explains a class score".into()))?;
    let shape = images.shape();
    if shape.len() != 4 || shape[0] == 0 {
        return Err(bad(format!("expected a batch of images [N, 3, H, W], got shape {shape:?}")));
    }
    let (n, height, width) = (shape[0], shape[2], shape[3]);
    let num_classes = fc.weight.shape()[0];
    if let Some(c) = classes {
        if c.len() != n {
            return Err(bad(format!("{} classes for a batch of {n} images", c.len())));
        }
        if let Some(&bad_class) = c.iter().find(|&&c| c >= num_classes) {
            return Err(bad(format!("class {bad_class} is out of range for a head of {num_classes} classes")));
        }
    }

    let _mode = EvalForThePass::new(model);
    let _recording = nn::enable_grad();
    let activations = nn::with_no_grad(|| model.feature_map(&Var::constant(images.clone())))?.value();
    let leaf = Var::parameter(activations.clone());
    let pooled = model.avgpool.forward(&leaf)?.flatten_from(1)?;
    let weight = Var::constant(fc.weight.value());
    let bias = fc.bias.as_ref().map(|b| Var::constant(b.value()));
    let logits = nn::functional::linear(&pooled, &weight, bias.as_ref())?;

    let logits_host = logits.value().to_device(Device::Cpu)?;
    let classes = match classes {
        Some(c) => c.to_vec(),
        None => logits_host.argmax(1, false)?.to_vec_i64()?.into_iter().map(|c| c as usize).collect(),
    };
    let mut one_hot = vec![0f32; n * num_classes];
    for (i, &c) in classes.iter().enumerate() {
        one_hot[i * num_classes + c] = 1.0;
    }
    let mask = Tensor::from_vec(one_hot, &[n, num_classes])?.to_device(activations.device())?;
    logits.mul(&Var::constant(mask))?.sum_all()?.backward()?;
    let grads = leaf.grad().ok_or_else(|| bad("no gradient reached layer4's output".into()))?;

    // alpha [N, K, 1, 1]; sum_k alpha_k A_k [N, h, w]; ReLU.
    let alpha = grads.mean(&[2, 3], true)?;
    let raw = activations.mul(&alpha)?.sum(&[1], false)?.relu()?.to_device(Device::Cpu)?;
    let (h, w) = (raw.shape()[1], raw.shape()[2]);
    if h * w == 0 || height * width == 0 {
        return Err(bad(format!("layer4's output is {h}x{w} for an input of {height}x{width}: nothing to map")));
    }
    let raw_values = raw.to_vec_f32()?;
    let mut heatmaps = Vec::with_capacity(n * height * width);
    for map in raw_values.chunks(h * w) {
        let mut up = upsample_bilinear(map, h, w, height, width);
        scale_to_unit(&mut up);
        heatmaps.extend(up);
    }
    Ok(GradCam { classes, logits: logits_host, raw, heatmaps: Tensor::from_vec(heatmaps, &[n, height, width])? })
}

/// Bilinear resampling of one `ih x iw` map to `oh x ow`, as `F.interpolate(mode="bilinear",
/// align_corners=False)` (PyTorch's CPU kernel): pixel centres aligned, source positions below
/// zero clamped to zero, the last row and column repeated.
fn upsample_bilinear(src: &[f32], ih: usize, iw: usize, oh: usize, ow: usize) -> Vec<f32> {
    // For each output index: the two source indices and their weights.
    let taps = |input: usize, output: usize| -> Vec<(usize, usize, f32, f32)> {
        let scale = input as f32 / output as f32;
        (0..output)
            .map(|o| {
                let pos = (scale * (o as f32 + 0.5) - 0.5).max(0.0);
                let i0 = (pos as usize).min(input - 1);
                let i1 = if i0 < input - 1 { i0 + 1 } else { i0 };
                let l1 = pos - i0 as f32;
                (i0, i1, 1.0 - l1, l1)
            })
            .collect()
    };
    let (rows, cols) = (taps(ih, oh), taps(iw, ow));
    let mut out = Vec::with_capacity(oh * ow);
    for &(y0, y1, wy0, wy1) in &rows {
        for &(x0, x1, wx0, wx1) in &cols {
            let at = |y: usize, x: usize| src[y * iw + x];
            out.push(wy0 * (wx0 * at(y0, x0) + wx1 * at(y0, x1)) + wy1 * (wx0 * at(y1, x0) + wx1 * at(y1, x1)));
        }
    }
    out
}

/// pytorch-grad-cam's `scale_cam_image` on one map: `(x - min) / (1e-7 + max(x - min))`.
fn scale_to_unit(map: &mut [f32]) {
    let min = map.iter().copied().fold(f32::INFINITY, f32::min);
    map.iter_mut().for_each(|v| *v -= min);
    let max = map.iter().copied().fold(0f32, f32::max);
    map.iter_mut().for_each(|v| *v /= CAM_EPSILON + max);
}

/// Puts the model in eval mode and, when dropped, gives every sub-module back the mode it had.
struct EvalForThePass<'a>(Vec<(&'a AtomicBool, bool)>);

impl<'a> EvalForThePass<'a> {
    fn new(model: &'a ResNet) -> Self {
        let flags = model
            .named_modules()
            .into_iter()
            .filter_map(|(_, m)| m.training_flag().map(|f| (f, f.load(Ordering::Relaxed))))
            .collect();
        model.eval();
        EvalForThePass(flags)
    }
}

impl Drop for EvalForThePass<'_> {
    fn drop(&mut self) {
        for (flag, training) in &self.0 {
            flag.store(*training, Ordering::Relaxed);
        }
    }
}
