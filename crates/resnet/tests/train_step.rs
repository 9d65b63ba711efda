//! Gradient-level parity of ResNet training steps against PyTorch, for a BasicBlock model and a
//! grouped-Bottleneck (ResNeXt) model with downsample branches: the loss, every parameter's
//! gradient and the batch-norm buffers of a train-mode step, SGD with momentum and weight decay
//! on torch's own gradients, and two whole training steps.
//!
//! Fixtures: `/usr/bin/python3 crates/resnet/tests/fixtures/gen_resnet_fixtures.py --train-grads`
//! (`train_step_grads` there; it also prints how far torch's float32 run is from its float64 run,
//! the floor under the tolerances here).

mod common;
use common::*;
use nn::{Method, Module, ModuleExt, Optimizer, Var};
use resnet::*;
use tensor::{DType, Tensor};

/// The models of the generator's `TRAIN_GRADS`.
const MODELS: [&str; 2] = ["trainstep_basic", "trainstep_resnext"];

/// Losses, gradients, running statistics and parameters are compared within this error relative
/// to the largest magnitude of each reference tensor.
const TOL: f32 = 1e-4;

/// The generator's `TRAIN_LR`, `TRAIN_MOMENTUM`, `TRAIN_WD`.
const LR: f64 = 0.1;
const MOMENTUM: f64 = 0.9;
const WEIGHT_DECAY: f64 = 1e-2;

fn config(tag: &str) -> ResNetConfig {
    match tag {
        "trainstep_basic" => ResNetConfig { base_planes: 3, ..ResNetConfig::new(BlockKind::Basic, [1, 1, 1, 1], 10) },
        "trainstep_resnext" => ResNetConfig {
            base_planes: 2,
            groups: 4,
            width_per_group: 32,
            ..ResNetConfig::new(BlockKind::Bottleneck, [1, 2, 1, 1], 10)
        },
        other => panic!("no train-step model {other}"),
    }
}

/// The model at its initial weights, in training mode, and the reference record.
fn load(tag: &str) -> (ResNet, StateDict) {
    let model = config(tag).build(Init::Zeros).unwrap();
    load_strict(&model, &read_weights(fixture_path(&format!("{tag}_init.safetensors"))).unwrap()).unwrap();
    model.train();
    let record = read_weights(fixture_path(&format!("{tag}.safetensors"))).unwrap();
    (model, record)
}

fn sgd(model: &ResNet) -> Optimizer {
    Optimizer::new(Method::sgd(MOMENTUM), model.trainable_parameters(), LR, WEIGHT_DECAY).unwrap()
}

/// Train-mode forward and cross-entropy on batch `step` (1 or 2), then backward; the loss.
fn forward_backward(model: &ResNet, step: usize) -> Tensor {
    let x = Var::constant(npy(&format!("trainstep_x{step}")));
    let y = npy(&format!("trainstep_y{step}"));
    let loss = nn::CrossEntropyLoss::default().forward(&model.forward(&x).unwrap(), &y).unwrap();
    loss.backward().unwrap();
    loss.value().reshape(&[1]).unwrap()
}

/// `max |got - want| / max |want|`: the error relative to the reference's own scale (no floor of
/// 1, unlike `assert_close`: gradients are mostly far below 1).
fn rel_err(what: &str, got: &Tensor, want: &Tensor) -> f32 {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    let (g, w) = (got.to_vec_f32().unwrap(), want.to_vec_f32().unwrap());
    assert!(g.iter().all(|v| v.is_finite()), "{what}: non-finite values");
    let scale = w.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(scale > 0.0 && scale.is_finite(), "{what}: the reference is all zeros or not finite");
    g.iter().zip(&w).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale
}

fn entry<'a>(record: &'a StateDict, tag: &str, key: &str) -> &'a Tensor {
    record.get(key).unwrap_or_else(|| panic!("{tag}: no {key} in the fixture"))
}

/// How many entries of the record are under `<prefix>.`.
fn keys_under(record: &StateDict, prefix: &str) -> usize {
    record.entries.iter().filter(|(k, _)| k.starts_with(&format!("{prefix}."))).count()
}

/// The comparisons of one model: the largest relative error of each kind, and how many tensors.
struct Tally<'a> {
    tag: &'a str,
    record: &'a StateDict,
    kinds: Vec<(String, f32, usize)>,
}

impl<'a> Tally<'a> {
    fn new(tag: &'a str, record: &'a StateDict) -> Self {
        Tally { tag, record, kinds: Vec::new() }
    }

    /// Checks `got` against the record's `key` within `tol` relative to the reference's scale.
    fn check(&mut self, kind: &str, key: &str, got: &Tensor, tol: f32) {
        self.check_against(kind, key, got, entry(self.record, self.tag, key), tol);
    }

    fn check_against(&mut self, kind: &str, what: &str, got: &Tensor, want: &Tensor, tol: f32) {
        let err = rel_err(&format!("{} {what}", self.tag), got, want);
        assert!(err <= tol, "{} {what}: relative error {err:e} > {tol:e}", self.tag);
        match self.kinds.iter_mut().find(|(k, ..)| k == kind) {
            Some((_, max, n)) => (*max, *n) = (max.max(err), *n + 1),
            None => self.kinds.push((kind.to_string(), err, 1)),
        }
    }

    /// Compares every parameter's gradient with `<prefix>.<name>`; returns how many.
    fn gradients(&mut self, model: &ResNet, prefix: &str, tol: f32) -> usize {
        let params = model.named_parameters();
        for (name, var) in &params {
            let got = var.grad().unwrap_or_else(|| panic!("{}: {name} got no gradient", self.tag));
            self.check(&format!("{prefix} (gradients)"), &format!("{prefix}.{name}"), &got, tol);
        }
        assert_eq!(params.len(), keys_under(self.record, prefix), "{}: {prefix} compared", self.tag);
        params.len()
    }

    /// Compares every buffer with `<prefix>.<name>` (running statistics within `TOL`, counters
    /// exactly); returns how many.
    fn buffers(&mut self, model: &ResNet, prefix: &str) -> usize {
        let buffers = model.named_buffers();
        for (name, var) in &buffers {
            let key = format!("{prefix}.{name}");
            let got = var.value();
            match got.dtype() {
                DType::I64 => {
                    let want = entry(self.record, self.tag, &key).to_vec_i64().unwrap();
                    assert_eq!(got.to_vec_i64().unwrap(), want, "{} {key}", self.tag);
                }
                DType::F32 => self.check(&format!("{prefix} (running stats)"), &key, &got, TOL),
            }
        }
        assert_eq!(buffers.len(), keys_under(self.record, prefix), "{}: {prefix} compared", self.tag);
        buffers.len()
    }

    /// Compares every parameter with `after.<name>` within `TOL`, and its change from `initial`
    /// within `update_tol` of the reference change; returns how many.
    fn after(&mut self, model: &ResNet, initial: &[(String, Tensor)], kind: &str, tol: f32, update_tol: f32) -> usize {
        let params = model.named_parameters();
        for (name, var) in &params {
            let key = format!("after.{name}");
            let got = var.value();
            self.check(&format!("{kind}: parameters"), &key, &got, tol);
            let init = &initial.iter().find(|(k, _)| k == name).unwrap().1;
            let want = entry(self.record, self.tag, &key);
            let (got_delta, want_delta) = (got.sub(init).unwrap(), want.sub(init).unwrap());
            self.check_against(
                &format!("{kind}: updates"),
                &format!("{key} - initial"),
                &got_delta,
                &want_delta,
                update_tol,
            );
        }
        assert_eq!(params.len(), keys_under(self.record, "after"), "{}: parameters compared", self.tag);
        params.len()
    }

    fn report(&self) {
        for (kind, max, n) in &self.kinds {
            eprintln!("{}: {kind}: {n} tensors, max relative error {max:.1e}", self.tag);
        }
    }
}

/// One train-mode step (fixture: `gen_resnet_fixtures.py --train-grads`): the loss; the gradient
/// of every parameter (stem, block convs, downsample convs, every batch norm's weight and bias,
/// fc) within 1e-4 of each reference tensor's largest magnitude (torch's own float32-vs-float64
/// difference is below 1e-5 here); and every batch norm's running statistics and
/// `num_batches_tracked` after the forward.
#[test]
fn every_parameter_gradient_matches_torch() {
    for tag in MODELS {
        let (model, record) = load(tag);
        let mut tally = Tally::new(tag, &record);
        let loss = forward_backward(&model, 1);
        tally.check("loss", "loss1", &loss, TOL);
        assert_eq!(model.trainable_parameters().len(), model.named_parameters().len(), "{tag}: all train");
        let params = tally.gradients(&model, "grad1", TOL);
        let buffers = tally.buffers(&model, "state1");
        assert_eq!(params + buffers, model.state_dict().len(), "{tag}: the whole state dict was compared");
        assert!(params > 30, "{tag}: {params} parameters");
        tally.report();
    }
}

/// SGD with momentum 0.9 and weight decay 1e-2 (torch's coupled L2, added to the gradient before
/// the momentum buffer) at lr 0.1, fed torch's own gradients of the two batches (fixture:
/// `gen_resnet_fixtures.py --train-grads`): every parameter ends where torch's does to float32
/// rounding, and so does its change over the two steps (the second of which is mostly momentum).
#[test]
fn sgd_with_momentum_matches_torch_on_its_gradients() {
    for tag in MODELS {
        let (model, record) = load(tag);
        let mut tally = Tally::new(tag, &record);
        let initial = model.state_dict();
        let mut opt = sgd(&model);
        for step in 1..=2 {
            for (name, var) in model.named_parameters() {
                var.set_grad(Some(entry(&record, tag, &format!("grad{step}.{name}")).clone()));
            }
            opt.step().unwrap();
        }
        tally.after(&model, &initial, "torch's gradients", 1e-6, 1e-5);
        tally.report();
    }
}

/// Two whole training steps on two batches with SGD (momentum 0.9, weight decay 1e-2, lr 0.1;
/// fixture: `gen_resnet_fixtures.py --train-grads`): both losses and the batch-norm buffers after
/// each forward within 1e-4, and every parameter after the two steps within 1e-4 of its scale.
/// The second step's gradients (taken at our own weights after step 1) and the change of each
/// parameter are compared within 1e-3: a step of lr 0.1 on such small models amplifies rounding,
/// and torch's own float32 run is up to 6e-5 from its float64 run there.
#[test]
fn two_sgd_momentum_training_steps_match_torch() {
    for tag in MODELS {
        let (model, record) = load(tag);
        let mut tally = Tally::new(tag, &record);
        let initial = model.state_dict();
        let mut opt = sgd(&model);
        for step in 1..=2 {
            opt.zero_grad();
            let loss = forward_backward(&model, step);
            tally.check("loss", &format!("loss{step}"), &loss, TOL);
            tally.buffers(&model, &format!("state{step}"));
            if step == 2 {
                tally.gradients(&model, "grad2", 1e-3);
            }
            opt.step().unwrap();
        }
        tally.after(&model, &initial, "two steps", TOL, 1e-3);
        tally.report();
    }
}
