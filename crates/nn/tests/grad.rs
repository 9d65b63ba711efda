//! Every backward rule of the autograd against central finite differences (proptest over
//! random shapes), plus the graph mechanics: accumulation when a value is used twice,
//! broadcasting, no-grad mode, errors.

mod common;
use nn::functional as F;
use nn::*;
use proptest::prelude::*;
use tensor::{Conv2dParams, Pool2dParams, Rng, Tensor};

/// Checks d(sum(f(inputs) * r))/d(inputs) against central differences in f32 with step `h`.
fn check(what: &str, inputs: &[Tensor], h: f32, tol: f32, f: &dyn Fn(&[Var]) -> Var) {
    let vars: Vec<Var> = inputs.iter().map(|t| Var::parameter(t.clone())).collect();
    let out = f(&vars);
    let r = Tensor::randn(&out.shape(), &mut Rng::seed(99));
    let weight = Var::constant(r.clone());
    out.mul(&weight).unwrap().sum_all().unwrap().backward().unwrap();
    let loss_at = |vals: &[Tensor]| -> f64 {
        let vs: Vec<Var> = vals.iter().map(|t| Var::constant(t.clone())).collect();
        let o = with_no_grad(|| f(&vs)).value();
        o.to_vec_f32().unwrap().iter().zip(r.to_vec_f32().unwrap()).map(|(a, b)| *a as f64 * b as f64).sum()
    };
    for (k, input) in inputs.iter().enumerate() {
        let analytic = vars[k].grad().unwrap_or_else(|| Tensor::zeros(input.shape())).to_vec_f32().unwrap();
        let base = input.to_vec_f32().unwrap();
        let mut numeric = Vec::new();
        for i in 0..base.len() {
            let mut vals: Vec<Tensor> = inputs.to_vec();
            let mut up = base.clone();
            up[i] += h;
            vals[k] = Tensor::from_vec(up, input.shape()).unwrap();
            let lu = loss_at(&vals);
            let mut down = base.clone();
            down[i] -= h;
            vals[k] = Tensor::from_vec(down, input.shape()).unwrap();
            let ld = loss_at(&vals);
            numeric.push(((lu - ld) / (2.0 * h as f64)) as f32);
        }
        let scale = numeric.iter().fold(1f32, |m, v| m.max(v.abs()));
        for (i, (a, n)) in analytic.iter().zip(&numeric).enumerate() {
            assert!((a - n).abs() <= tol * scale, "{what}: input {k} element {i}: analytic {a} vs numeric {n}");
        }
    }
}

/// Normal samples pushed away from zero (so ReLU's kink is not crossed by the step).
fn away_from_zero(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape, &mut Rng::seed(seed)).map("test", |v| if v >= 0.0 { v + 0.1 } else { v - 0.1 }).unwrap()
}

/// Distinct values spaced by 0.05 in random order (so max pooling has no near-ties).
fn distinct(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let p = Rng::seed(seed).permutation(n);
    Tensor::from_vec(p.iter().map(|&i| i as f32 * 0.05 - n as f32 * 0.025).collect(), shape).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn elementwise_and_broadcasting(rows in 1usize..4, cols in 1usize..5, seed in any::<u64>()) {
        let a = away_from_zero(&[rows, cols], seed);
        let b = away_from_zero(&[cols], seed + 1).abs().unwrap().add_scalar(0.5).unwrap();
        check("add/sub/mul/div broadcast", &[a.clone(), b.clone()], 1e-2, 2e-2, &|v| {
            v[0].add(&v[1]).unwrap().mul(&v[0]).unwrap().sub(&v[1]).unwrap().div(&v[1]).unwrap()
        });
        check("relu/neg/scalars", std::slice::from_ref(&a), 1e-2, 2e-2, &|v| v[0].relu().unwrap().neg().unwrap().mul_scalar(3.0).unwrap().add_scalar(1.0).unwrap());
        check("exp/log/powf", std::slice::from_ref(&b), 1e-3, 2e-2, &|v| v[0].exp().unwrap().log().unwrap().powf(1.5).unwrap());
        check("sum/mean keepdim", std::slice::from_ref(&a), 1e-2, 2e-2, &|v| v[0].sum(&[1], true).unwrap().mul(&v[0].mean(&[0], false).unwrap().sum_all().unwrap()).unwrap());
        check("softmax/log_softmax", std::slice::from_ref(&a), 1e-2, 2e-2, &|v| v[0].softmax(1).unwrap().add(&v[0].log_softmax(1).unwrap()).unwrap());
        check("reshape/transpose/flatten", &[a], 1e-2, 2e-2, &|v| v[0].transpose(0, 1).unwrap().reshape(&[cols * rows]).unwrap().reshape(&[cols, rows, 1]).unwrap().flatten_from(1).unwrap());
    }

    #[test]
    fn matmul_and_linear(m in 1usize..4, k in 1usize..5, n in 1usize..4, seed in any::<u64>()) {
        let a = away_from_zero(&[2, m, k], seed);
        let b = away_from_zero(&[k, n], seed + 1);
        check("batched matmul", &[a, b], 1e-2, 2e-2, &|v| v[0].matmul(&v[1]).unwrap());
        let x = away_from_zero(&[m, k], seed + 2);
        let w = away_from_zero(&[n, k], seed + 3);
        let bias = away_from_zero(&[n], seed + 4);
        check("linear", &[x, w, bias], 1e-2, 2e-2, &|v| F::linear(&v[0], &v[1], Some(&v[2])).unwrap());
    }

    #[test]
    fn conv_pool_and_norm(c in 1usize..3, hw in 3usize..6, groups in 1usize..3, seed in any::<u64>()) {
        let x = away_from_zero(&[2, c * groups, hw, hw + 1], seed);
        let w = away_from_zero(&[2 * groups, c, 3, 2], seed + 1);
        let b = away_from_zero(&[2 * groups], seed + 2);
        let p = Conv2dParams { stride: [1, 2], padding: [1, 1], dilation: [1, 1], groups };
        check("conv2d", &[x.clone(), w, b], 1e-2, 2e-2, &|v| F::conv2d(&v[0], &v[1], Some(&v[2]), p).unwrap());
        let d = distinct(&[2, c, hw, hw + 1], seed);
        check("max_pool2d", &[d], 1e-2, 2e-2, &|v| F::max_pool2d(&v[0], Pool2dParams::new(2).stride(1)).unwrap());
        check("avg_pool2d", std::slice::from_ref(&x), 1e-2, 2e-2, &|v| F::avg_pool2d(&v[0], Pool2dParams::new(3).stride(2).padding(1), false).unwrap());
        check("adaptive_avg_pool2d", std::slice::from_ref(&x), 1e-2, 2e-2, &|v| F::adaptive_avg_pool2d(&v[0], [2, 2]).unwrap());
        let ch = c * groups;
        let gamma = away_from_zero(&[ch], seed + 5);
        let beta = away_from_zero(&[ch], seed + 6);
        check("batch_norm train", &[x.clone(), gamma.clone(), beta.clone()], 1e-2, 5e-2, &|v| {
            F::batch_norm_train(&v[0], Some(&v[1]), Some(&v[2]), None, 0.1, 1e-5).unwrap().0
        });
        let r = away_from_zero(&[2, ch, hw, hw + 1], seed + 7);
        check("batch_norm train + residual", &[x.clone(), gamma.clone(), beta.clone(), r], 1e-2, 5e-2, &|v| {
            F::batch_norm_train_finish(&v[0], Some(&v[1]), Some(&v[2]), None, 0.1, 1e-5, Some(&v[3]), false).unwrap().0
        });
        let (rm, rv) = (Tensor::full(&[ch], 0.3), Tensor::full(&[ch], 2.0));
        check("batch_norm eval", &[x, gamma, beta], 1e-2, 2e-2, &|v| {
            F::batch_norm_eval(&v[0], Some(&v[1]), Some(&v[2]), &rm, &rv, 1e-5).unwrap()
        });
    }

    #[test]
    fn losses(batch in 1usize..5, classes in 2usize..6, smoothing in 0.0f32..0.3, seed in any::<u64>()) {
        let logits = away_from_zero(&[batch, classes], seed);
        let targets = Tensor::from_vec_i64((0..batch).map(|i| ((i as u64 * 7 + seed) % classes as u64) as i64).collect(), &[batch]).unwrap();
        check("cross_entropy", std::slice::from_ref(&logits), 1e-2, 2e-2, &|v| F::cross_entropy(&v[0], &targets, Reduction::Mean, smoothing).unwrap());
        check("nll_loss of log_softmax", &[logits], 1e-2, 2e-2, &|v| F::nll_loss(&v[0].log_softmax(1).unwrap(), &targets, Reduction::Sum).unwrap());
    }
}

/// `relu(bn(x) + residual)` as one op has the values and gradients, bitwise, of the three
/// separate ops (the ReLU's kink rules out finite differences here).
#[test]
fn batch_norm_residual_and_relu_as_one_op_match_the_separate_ops() {
    let shape = [2, 3, 4, 5];
    let inputs = [
        Tensor::randn(&shape, &mut Rng::seed(1)),
        Tensor::randn(&[3], &mut Rng::seed(2)),
        Tensor::randn(&[3], &mut Rng::seed(3)),
        Tensor::randn(&shape, &mut Rng::seed(4)),
    ];
    let weight = Var::constant(Tensor::randn(&shape, &mut Rng::seed(5)));
    for (with_residual, relu) in [(false, true), (true, false), (true, true)] {
        let run = |fused: bool| -> Vec<Vec<f32>> {
            let v: Vec<Var> = inputs.iter().map(|t| Var::parameter(t.clone())).collect();
            let residual = with_residual.then_some(&v[3]);
            let y = if fused {
                F::batch_norm_train_finish(&v[0], Some(&v[1]), Some(&v[2]), None, 0.1, 1e-5, residual, relu).unwrap().0
            } else {
                let mut y = F::batch_norm_train(&v[0], Some(&v[1]), Some(&v[2]), None, 0.1, 1e-5).unwrap().0;
                if let Some(r) = residual {
                    y = y.add(r).unwrap();
                }
                if relu {
                    y = y.relu().unwrap();
                }
                y
            };
            y.mul(&weight).unwrap().sum_all().unwrap().backward().unwrap();
            let mut got = vec![y.value().to_vec_f32().unwrap()];
            got.extend(v.iter().map(|v| v.grad().map(|g| g.to_vec_f32().unwrap()).unwrap_or_default()));
            got
        };
        assert_eq!(run(true), run(false), "residual {with_residual}, relu {relu}");
    }
}

#[test]
fn a_value_used_twice_gets_both_gradients() {
    // y = x * x + x: dy/dx = 2x + 1; the residual pattern `relu(f(x) + x)` relies on this.
    let x = Var::parameter(Tensor::from_vec(vec![3.0, -2.0], &[2]).unwrap());
    x.mul(&x).unwrap().add(&x).unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(x.grad().unwrap().to_vec_f32().unwrap(), vec![7.0, -3.0]);
    // A second backward over a new graph accumulates, like PyTorch without zero_grad.
    x.sum_all().unwrap().backward().unwrap();
    assert_eq!(x.grad().unwrap().to_vec_f32().unwrap(), vec![8.0, -2.0]);
    x.zero_grad();
    assert!(x.grad().is_none());
}

#[test]
fn each_leaf_is_handed_over_once_with_its_final_gradient_while_the_pass_still_runs() {
    // A two-layer network whose first weight is used twice: h = relu(x w1) + x w1, loss =
    // sum(h w2) + sum(w2 * w2). The hook must see w2 (the last layer) before w1, each once,
    // each with the gradient a plain backward() leaves.
    let mut rng = Rng::seed(3);
    let x = Var::constant(Tensor::randn(&[4, 3], &mut rng));
    let (t1, t2) = (Tensor::randn(&[3, 5], &mut rng), Tensor::randn(&[5, 2], &mut rng));
    let loss_of = |w1: &Var, w2: &Var| {
        let a = x.matmul(w1).unwrap();
        let h = a.relu().unwrap().add(&a).unwrap();
        h.matmul(w2).unwrap().sum_all().unwrap().add(&w2.mul(w2).unwrap().sum_all().unwrap()).unwrap()
    };
    let (w1, w2) = (Var::parameter(t1.clone()), Var::parameter(t2.clone()));
    loss_of(&w1, &w2).backward().unwrap();

    let (h1, h2) = (Var::parameter(t1), Var::parameter(t2));
    // An earlier pass's gradient is part of what the hook sees (gradient accumulation).
    h1.set_grad(Some(Tensor::ones(&[3, 5])));
    let mut seen: Vec<(u64, Vec<f32>, bool)> = Vec::new();
    loss_of(&h1, &h2)
        .backward_with_hook(&mut |leaf| {
            let first_layer_done = h1.grad().is_some_and(|g| g.to_vec_f32().unwrap() != vec![1.0; 15]);
            seen.push((leaf.id(), leaf.grad().unwrap().to_vec_f32().unwrap(), first_layer_done));
            Ok(())
        })
        .unwrap();
    let ids: Vec<u64> = seen.iter().map(|s| s.0).collect();
    assert_eq!(ids, vec![h2.id(), h1.id()], "last layer first, each once");
    assert!(!seen[0].2, "w2 is handed over before w1's gradient exists");
    assert_eq!(seen[0].1, w2.grad().unwrap().to_vec_f32().unwrap());
    let expected_w1: Vec<f32> = w1.grad().unwrap().to_vec_f32().unwrap().iter().map(|g| g + 1.0).collect();
    assert_eq!(seen[1].1, expected_w1);
    assert_eq!(h1.grad().unwrap().to_vec_f32().unwrap(), expected_w1);

    // An error from the hook ends the pass and is returned.
    let (e1, e2) = (Var::parameter(Tensor::ones(&[3, 5])), Var::parameter(Tensor::ones(&[5, 2])));
    let e = loss_of(&e1, &e2).backward_with_hook(&mut |_| Err(NnError::Autograd("stop here".into()))).unwrap_err();
    assert!(e.to_string().contains("stop here"), "{e}");
    assert!(e1.grad().is_none(), "the pass ended at the first leaf");
}

#[test]
fn no_grad_records_nothing_and_detach_cuts() {
    let x = Var::parameter(Tensor::ones(&[2]));
    let y = with_no_grad(|| x.mul_scalar(2.0).unwrap());
    assert!(!y.requires_grad());
    assert!(y.sum_all().unwrap().backward().is_err(), "nothing recorded");
    let d = x.mul_scalar(2.0).unwrap().detach();
    assert!(!d.requires_grad() && d.is_leaf());
    let frozen = Var::parameter(Tensor::ones(&[2]));
    frozen.set_requires_grad(false);
    let z = frozen.mul(&x).unwrap().sum_all().unwrap();
    z.backward().unwrap();
    assert!(frozen.grad().is_none(), "a frozen parameter gets no gradient");
    assert!(x.grad().is_some());
}

#[test]
fn backward_misuse_is_an_error() {
    let x = Var::parameter(Tensor::ones(&[3]));
    let e = x.mul_scalar(2.0).unwrap().backward().unwrap_err();
    assert!(e.to_string().contains("scalar") && e.to_string().contains("[3]"), "{e}");
    let h = x.mul_scalar(2.0).unwrap();
    let loss = h.sum_all().unwrap();
    loss.backward().unwrap();
    // The graph was released: reusing an intermediate of it cannot backpropagate again.
    let again = h.sum_all().unwrap();
    assert!(again.backward().unwrap_err().to_string().contains("released"));
    let e = F::cross_entropy(
        &Var::constant(Tensor::zeros(&[2, 3])),
        &Tensor::from_vec_i64(vec![0, 3], &[2]).unwrap(),
        Reduction::Mean,
        0.0,
    )
    .unwrap_err();
    assert!(e.to_string().contains("target 3"), "{e}");
}
