//! Model-level cases: inference (eval, batch norm folded), one training step (`train::Trainer::step`:
//! forward, cross-entropy, backward, Adam), and loading resnet50's weights.

use crate::{Case, Prepared};
use nn::{Method, Module, ModuleExt, Optimizer, Var};
use resnet::{Arch, FusedResNet, Init};
use tensor::{Rng, Tensor};

/// Waits for a GPU's queue by reading `t` back (logits or a loss: a few kilobytes at most).
fn finish(t: &Tensor) {
    if t.device().is_gpu() {
        std::hint::black_box(t.to_vec_f32().expect("read back"));
    } else {
        std::hint::black_box(t);
    }
}

fn infer(arch: Arch, batch: usize, fused: bool) -> Prepared {
    let device = crate::device();
    let model = arch.build(1000, 0).expect("zoo model");
    model.eval();
    model.to_device(device).expect("to device");
    let x = Tensor::randn(&[batch, 3, 224, 224], &mut Rng::seed(1)).to_device(device).expect("to device");
    let (_, macs) = model.output_shape(&[batch, 3, 224, 224]).expect("shape");
    let run: Box<dyn FnMut()> = if fused {
        let f = FusedResNet::new(&model).expect("fold");
        Box::new(move || finish(&f.forward(&x).expect("forward")))
    } else {
        let xv = Var::constant(x);
        Box::new(move || finish(&nn::with_no_grad(|| model.forward(&xv)).expect("forward").value()))
    };
    Prepared { run, flops: Some(2.0 * macs as f64), images: Some(batch) }
}

fn train(arch: Arch, batch: usize, size: usize, classes: usize) -> Prepared {
    let device = crate::device();
    let model = arch.build(classes, 0).expect("zoo model");
    model.train();
    model.to_device(device).expect("to device");
    let mut rng = Rng::seed(2);
    let x = Tensor::randn(&[batch, 3, size, size], &mut rng).to_device(device).expect("to device");
    let y = Tensor::from_vec_i64((0..batch as i64).map(|i| i % classes as i64).collect(), &[batch]).expect("sized");
    let (_, macs) = model.output_shape(&[batch, 3, size, size]).expect("shape");
    let opt = Optimizer::new(Method::adam(), model.trainable_parameters(), 1e-3, 0.0).expect("optimizer");
    // The step users run: `Trainer::step` (forward, cross-entropy, backward, the finiteness
    // check of the gradients, Adam; it reads the loss back, a GPU sync).
    let mut trainer = train::Trainer::from_parts(model, opt, train::TrainConfig::default()).expect("trainer");
    Prepared {
        run: Box::new(move || {
            let outcome = trainer.step(&x, &y).expect("step");
            assert!(matches!(outcome, train::StepOutcome::Updated { .. }), "{outcome:?}");
        }),
        // Forward + backward is about three times the forward's multiply-adds.
        flops: Some(3.0 * 2.0 * macs as f64),
        images: Some(batch),
    }
}

fn load(format: &'static str) -> Prepared {
    let dir = RemovedOnDrop(std::env::temp_dir().join(format!("bench-load-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).expect("temp dir");
    let path = dir.0.join(format!("resnet50.{format}"));
    let model = Arch::Resnet50.config(1000).build(Init::Torchvision(0)).expect("zoo model");
    let sd = model.state_dict();
    match format {
        "pth" => resnet::write_pth(&path, &sd).expect("write"),
        _ => resnet::write_safetensors(&path, &sd, &Default::default()).expect("write"),
    }
    Prepared {
        run: Box::new(move || {
            let _keep = &dir;
            let sd = resnet::read_weights(&path).expect("read");
            resnet::load_strict(&model, &sd).expect("load");
        }),
        flops: None,
        images: None,
    }
}

/// A folder removed, with the ~100 MB of weights in it, when the case that owns it is dropped.
struct RemovedOnDrop(std::path::PathBuf);

impl Drop for RemovedOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The inputs of `predict-cold-resnet50` (which the xtask times as whole processes, ours and
/// Python's): `resnet50.safetensors` (torchvision's initialisation, torchvision's key names, so
/// `safetensors.torch` loads it into torchvision's model) and `photo.jpg`, written into `dir`.
pub(crate) fn write_predict_inputs(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).expect("creating the predict-cold folder");
    let model = Arch::Resnet50.config(1000).build(Init::Torchvision(0)).expect("zoo model");
    resnet::write_safetensors(dir.join("resnet50.safetensors"), &model.state_dict(), &Default::default())
        .expect("writing the weights");
    std::fs::copy(crate::data_cases::a_picture(), dir.join("photo.jpg")).expect("copying the photo");
}

pub(crate) fn cases() -> Vec<Case> {
    let mut v: Vec<Case> = Vec::new();
    let mut add = |name: &str, f: Box<dyn Fn() -> Prepared>| v.push(Case { name: name.into(), prepare: f });
    add("infer-resnet18-b1", Box::new(|| infer(Arch::Resnet18, 1, true)));
    add("infer-resnet50-b1", Box::new(|| infer(Arch::Resnet50, 1, true)));
    add("infer-resnet50-b8", Box::new(|| infer(Arch::Resnet50, 8, true)));
    add("infer-resnext50-b1", Box::new(|| infer(Arch::Resnext50_32x4d, 1, true)));
    add("infer-resnet50-b1-unfused", Box::new(|| infer(Arch::Resnet50, 1, false)));
    add("train-resnet18-b16", Box::new(|| train(Arch::Resnet18, 16, 224, 1000)));
    add("train-resnet50-b8", Box::new(|| train(Arch::Resnet50, 8, 224, 1000)));
    add("train-resnet18-b64-64px", Box::new(|| train(Arch::Resnet18, 64, 64, 10)));
    if crate::device().is_gpu() {
        // The GPU issue's cases: batch 64 at 224, too large to be worth running on two cores.
        add("infer-resnet18-b64", Box::new(|| infer(Arch::Resnet18, 64, true)));
        add("infer-resnet50-b64", Box::new(|| infer(Arch::Resnet50, 64, true)));
        add("train-resnet18-b64", Box::new(|| train(Arch::Resnet18, 64, 224, 1000)));
        add("train-resnet50-b64", Box::new(|| train(Arch::Resnet50, 64, 224, 1000)));
    } else {
        add("load-resnet50", Box::new(|| load("safetensors")));
        add("load-resnet50-pth", Box::new(|| load("pth")));
    }
    v
}
