//! The small network, the losses, the optimizers and the schedules against PyTorch fixtures
//! written by `fixtures/gen_nn_fixtures.py` (torch 1.13).

mod common;
use common::*;
use nn::*;
use tensor::Tensor;

#[test]
fn loss_gradients_and_running_stats_match_torch() {
    let net = Small::from_fixture();
    net.train();
    let x = Var::constant(fixture("x"));
    let y = fixture("y");
    let logits = net.forward(&x).unwrap();
    assert_close("logits", &logits.value(), &fixture("logits"), 1e-5);
    let loss = CrossEntropyLoss::default().forward(&logits, &y).unwrap();
    assert_close("loss", &loss.value().reshape(&[1]).unwrap(), &fixture("loss"), 1e-5);
    loss.backward().unwrap();
    for (name, p) in net.named_parameters() {
        assert_close(&format!("grad {name}"), &p.grad().unwrap(), &fixture(&format!("grad_{name}")), 1e-4);
    }
    for (name, b) in net.named_buffers() {
        let want = fixture(&format!("after_{name}"));
        if name.ends_with("num_batches_tracked") {
            assert_eq!(b.value().to_vec_i64().unwrap(), want.to_vec_i64().unwrap(), "{name}");
        } else {
            assert_close(&name, &b.value(), &want, 1e-5);
        }
    }
}

#[test]
fn label_smoothing_and_sum_reduction_match_torch() {
    let logits = Var::parameter(fixture("logits"));
    let y = fixture("y");
    let smooth = CrossEntropyLoss { label_smoothing: 0.1, ..Default::default() };
    assert_close(
        "smoothed loss",
        &smooth.forward(&logits, &y).unwrap().value().reshape(&[1]).unwrap(),
        &fixture("loss_smooth"),
        1e-5,
    );
    let sum = CrossEntropyLoss { label_smoothing: 0.1, reduction: Reduction::Sum };
    sum.forward(&logits, &y).unwrap().backward().unwrap();
    assert_close("smoothed sum grad", &logits.grad().unwrap(), &fixture("grad_logits_smooth_sum"), 1e-5);
}

/// The optimizer's update rule in isolation: torch's own gradients go in, so the parameters
/// must agree to f32 rounding of the update formula.
fn check_update_rule(name: &str, method: Method, lr: f64, weight_decay: f64) {
    let net = Small::from_fixture();
    let params = net.named_parameters();
    let mut opt = Optimizer::new(method, net.trainable_parameters(), lr, weight_decay).unwrap();
    let (grads, want) = (fixture(&format!("opt_{name}_grads")), fixture(&format!("opt_{name}")));
    for step in 0..5 {
        let g = grads.narrow(0, step, 1).unwrap().to_vec_f32().unwrap();
        let mut at = 0;
        for (_, p) in &params {
            let shape = p.shape();
            let n: usize = shape.iter().product();
            p.set_grad(Some(Tensor::from_vec(g[at..at + n].to_vec(), &shape).unwrap()));
            at += n;
        }
        opt.step().unwrap();
        let got: Vec<f32> = params.iter().flat_map(|(_, p)| p.value().to_vec_f32().unwrap()).collect();
        let w = want.narrow(0, step, 1).unwrap().to_vec_f32().unwrap();
        for (i, (a, b)) in got.iter().zip(&w).enumerate() {
            // 1e-5 relative; a parameter smaller than one update (lr) is the difference of larger
            // numbers, so there the bound is 1e-5 of the update size.
            assert!(
                (a - b).abs() <= 1e-5 * b.abs().max(lr as f32),
                "{name} step {}: parameter {i}: {a} vs {b}",
                step + 1
            );
        }
    }
}

/// Five full training steps (forward, backward, update) against PyTorch's. Gradients differ
/// from PyTorch's in f32 rounding (summation order), which Adam's normalised updates amplify
/// for near-zero gradients, so this end-to-end check allows 1e-4 relative.
fn check_training_steps(name: &str, method: Method, lr: f64, weight_decay: f64) {
    let net = Small::from_fixture();
    net.train();
    let x = Var::constant(fixture("x"));
    let y = fixture("y");
    let want = fixture(&format!("opt_{name}"));
    let mut opt = Optimizer::new(method, net.trainable_parameters(), lr, weight_decay).unwrap();
    for step in 0..5 {
        opt.zero_grad();
        CrossEntropyLoss::default().forward(&net.forward(&x).unwrap(), &y).unwrap().backward().unwrap();
        opt.step().unwrap();
        let got: Vec<f32> = net.named_parameters().iter().flat_map(|(_, p)| p.value().to_vec_f32().unwrap()).collect();
        let w = want.narrow(0, step, 1).unwrap().to_vec_f32().unwrap();
        for (i, (a, b)) in got.iter().zip(&w).enumerate() {
            assert!(
                (a - b).abs() <= 1e-4 * b.abs().max(0.05),
                "{name} training step {}: parameter {i}: {a} vs {b}",
                step + 1
            );
        }
    }
}

const SGD_NESTEROV: Method = Method::Sgd { momentum: 0.9, dampening: 0.0, nesterov: true };
const SGD_DAMPENED: Method = Method::Sgd { momentum: 0.9, dampening: 0.1, nesterov: false };
const ADAM: Method = Method::Adam { betas: (0.9, 0.99), eps: 1e-8 };

#[test]
fn sgd_steps_match_torch() {
    check_update_rule("sgd", SGD_NESTEROV, 0.1, 1e-3);
    check_update_rule("sgd_plain", SGD_DAMPENED, 0.05, 0.0);
    check_training_steps("sgd", SGD_NESTEROV, 0.1, 1e-3);
    check_training_steps("sgd_plain", SGD_DAMPENED, 0.05, 0.0);
}

#[test]
fn adam_and_adamw_steps_match_torch() {
    check_update_rule("adam", ADAM, 0.01, 1e-3);
    check_update_rule("adamw", Method::adamw(), 0.01, 0.1);
    check_training_steps("adam", ADAM, 0.01, 1e-3);
    check_training_steps("adamw", Method::adamw(), 0.01, 0.1);
}

#[test]
fn schedules_match_torch_for_20_steps() {
    let cases = [
        ("step", LrSchedule::Step { step_size: 5, gamma: 0.5 }),
        ("multistep", LrSchedule::MultiStep { milestones: vec![3, 7, 12], gamma: 0.1 }),
        ("cosine", LrSchedule::Cosine { t_max: 8, eta_min: 0.001 }),
        ("onecycle", LrSchedule::one_cycle(0.1, 21)),
        ("linear", LrSchedule::Linear { start_factor: 0.1, end_factor: 1.0, total_iters: 5 }),
    ];
    for (name, schedule) in cases {
        let p = Var::parameter(Tensor::zeros(&[1]));
        let mut opt = Optimizer::new(Method::sgd(0.9), vec![p], 0.1, 0.0).unwrap();
        let mut sched = Scheduler::new(schedule, &mut opt).unwrap();
        let want = fixture(&format!("sched_{name}")).to_vec_f32().unwrap();
        for (t, w) in want.iter().enumerate() {
            let got = opt.lr() as f32;
            assert!((got - w).abs() <= 1e-6 * w.abs().max(1e-6), "{name} step {t}: {got} vs {w}");
            sched.step(&mut opt);
        }
    }
}
