//! Training behaviour: a small network overfits a tiny batch, and memory does not grow across
//! steps (the graph and its activations are released by backward).

mod common;
use common::*;
use nn::*;
use tensor::{Rng, Tensor};

#[test]
fn small_network_overfits_a_tiny_batch() {
    let net = Small::new(7);
    net.train();
    let x = Var::constant(Tensor::randn(&[6, 3, 8, 8], &mut Rng::seed(1)));
    let y = Tensor::from_vec_i64(vec![0, 1, 2, 0, 1, 2], &[6]).unwrap();
    let mut opt = Optimizer::new(Method::adam(), net.trainable_parameters(), 0.02, 0.0).unwrap();
    let loss_fn = CrossEntropyLoss::default();
    let first = loss_fn.forward(&net.forward(&x).unwrap(), &y).unwrap().value().item().unwrap();
    let mut last = first;
    for _ in 0..150 {
        opt.zero_grad();
        let loss = loss_fn.forward(&net.forward(&x).unwrap(), &y).unwrap();
        last = loss.value().item().unwrap();
        loss.backward().unwrap();
        opt.step().unwrap();
    }
    assert!(last < first * 0.2, "loss fell from {first} to only {last}");
    net.eval();
    let logits = with_no_grad(|| net.forward(&x)).unwrap();
    // In eval mode the running statistics replace batch statistics; train-mode accuracy is the
    // one the overfit claim is about.
    net.train();
    let train_logits = with_no_grad(|| net.forward(&x)).unwrap();
    assert_eq!(accuracy(&train_logits.value(), &y).unwrap(), 1.0);
    assert_eq!(logits.shape(), vec![6, 3]);
}

#[test]
fn fifty_steps_do_not_grow_memory() {
    let net = Small::new(3);
    let x = Var::constant(Tensor::randn(&[16, 3, 32, 32], &mut Rng::seed(2)));
    let y = Tensor::from_vec_i64((0..16).map(|i| i % 3).collect(), &[16]).unwrap();
    let mut opt = Optimizer::new(Method::sgd(0.9), net.trainable_parameters(), 0.01, 0.0).unwrap();
    // Every loss is kept, as a careless logging loop would: backward must still free the graph
    // and the activations it saved, or memory grows by a step's activations each time.
    let mut kept = Vec::new();
    let mut step = || {
        opt.zero_grad();
        let loss = CrossEntropyLoss::default().forward(&net.forward(&x).unwrap(), &y).unwrap();
        loss.backward().unwrap();
        opt.step().unwrap();
        kept.push(loss);
    };
    for _ in 0..10 {
        step();
    }
    let Some(before) = rss_kib() else { return }; // not Linux: nothing to measure
    for _ in 0..50 {
        step();
    }
    let after = rss_kib().unwrap();
    // One step's activations are about 2.5 MB; leaking them would add over 100 MB.
    assert!(after < before + 8 * 1024, "resident memory grew from {before} KiB to {after} KiB over 50 steps");
}

/// An optimizer saved and loaded into a fresh one over the same parameters continues exactly as
/// the original would: the same weights, bit for bit, after the next step.
#[test]
fn a_saved_optimizer_resumes_bit_for_bit() {
    let x = Var::constant(Tensor::randn(&[4, 3, 8, 8], &mut Rng::seed(5)));
    let y = Tensor::from_vec_i64(vec![0, 1, 2, 1], &[4]).unwrap();
    let step = |net: &Small, opt: &mut Optimizer| {
        opt.zero_grad();
        CrossEntropyLoss::default().forward(&net.forward(&x).unwrap(), &y).unwrap().backward().unwrap();
        opt.step().unwrap();
    };
    let (a, b) = (Small::new(9), Small::new(9));
    let mut opt_a = Optimizer::new(Method::adam(), a.trainable_parameters(), 0.01, 1e-4).unwrap();
    for _ in 0..2 {
        step(&a, &mut opt_a);
    }
    let path = std::env::temp_dir().join(format!("nn-optimizer-{}.safetensors", std::process::id()));
    opt_a.save(&path).unwrap();
    b.load_state_dict(&a.state_dict(), true).unwrap();
    let mut opt_b = Optimizer::new(Method::adam(), b.trainable_parameters(), 0.5, 1e-4).unwrap();
    opt_b.load(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(opt_b.lr(), 0.01, "the learning rate is part of the state");
    step(&a, &mut opt_a);
    step(&b, &mut opt_b);
    for ((k, ta), (_, tb)) in a.state_dict().iter().zip(b.state_dict()) {
        assert_eq!(ta.to_vec_f32().ok(), tb.to_vec_f32().ok(), "{k}");
    }
    let other = Small::new(1);
    let mut wrong = Optimizer::new(Method::adam(), vec![other.trainable_parameters()[0].clone()], 0.1, 0.0).unwrap();
    let missing = std::env::temp_dir().join("nn-optimizer-missing.safetensors");
    assert!(wrong.load(&missing).unwrap_err().to_string().contains("nn-optimizer-missing"));
}
