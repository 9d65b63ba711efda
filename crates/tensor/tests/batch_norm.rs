//! Batch norm against the oracle and finite differences; folding into a conv.

mod common;
use common::*;
use proptest::prelude::*;
use tensor::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn train_forward_and_backward_match_reference(n in 1usize..=3, c in 1usize..=3, h in 1usize..=4, w in 1usize..=4, seed in any::<u64>()) {
        prop_assume!(n * h * w > 1);
        let shape = [n, c, h, w];
        let x = randn(&shape, seed);
        let gamma = randn(&[c], seed + 1);
        let beta = randn(&[c], seed + 2);
        let (gf, bf) = (f64s(&gamma), f64s(&beta));
        let out = batch_norm_train(&x, Some(&gamma), Some(&beta), None, 0.1, 1e-5).unwrap();
        let want = reference::batch_norm_train(&f64s(&x), &shape, &gf, &bf, 1e-5);
        assert_close("bn forward", &out.output.to_vec_f32().unwrap(), &want, 1e-4);
        let gy = randn(&shape, seed + 3);
        let gyf = f64s(&gy);
        let grads = batch_norm_train_backward(&gy, &x, Some(&gamma), &out.mean, &out.invstd).unwrap();
        let loss = |xv: &[f64], g: &[f64], b: &[f64]| reference::batch_norm_train(xv, &shape, g, b, 1e-5).iter().zip(&gyf).map(|(a, b)| a * b).sum::<f64>();
        let xf = f64s(&x);
        assert_close("bn grad x", &grads.input.to_vec_f32().unwrap(), &finite_diff(&xf, 1e-4, |v| loss(v, &gf, &bf)), 2e-3);
        assert_close("bn grad gamma", &grads.weight.to_vec_f32().unwrap(), &finite_diff(&gf, 1e-4, |v| loss(&xf, v, &bf)), 1e-3);
        assert_close("bn grad beta", &grads.bias.to_vec_f32().unwrap(), &finite_diff(&bf, 1e-4, |v| loss(&xf, &gf, v)), 1e-3);
    }
}

#[test]
fn running_stats_use_unbiased_variance() {
    let x = Tensor::from_vec(vec![1.0, 2.0, 3.0, 6.0], &[4, 1]).unwrap();
    let out = batch_norm_train(&x, None, None, Some((&Tensor::zeros(&[1]), &Tensor::ones(&[1]))), 0.1, 1e-5).unwrap();
    // mean 3, unbiased variance 14/3.
    assert!((out.running_mean.unwrap().item().unwrap() - 0.3).abs() < 1e-6);
    assert!((out.running_var.unwrap().item().unwrap() - (0.9 + 0.1 * 14.0 / 3.0)).abs() < 1e-6);
}

#[test]
fn one_value_per_channel_is_an_error_in_training() {
    let e = batch_norm_train(&Tensor::zeros(&[1, 3, 1, 1]), None, None, None, 0.1, 1e-5).unwrap_err();
    assert!(e.to_string().contains("more than one value"), "{e}");
    assert!(batch_norm_eval(
        &Tensor::zeros(&[2, 3]),
        Some(&Tensor::ones(&[2])),
        None,
        &Tensor::zeros(&[3]),
        &Tensor::ones(&[3]),
        1e-5
    )
    .is_err());
}

#[test]
fn folded_conv_bn_relu_equals_the_three_ops() {
    let x = randn(&[2, 8, 9, 9], 1);
    let w = randn(&[6, 4, 3, 3], 2);
    let p = Conv2dParams::new().padding(1).stride(2).groups(2);
    let (gamma, beta, mean) = (randn(&[6], 3), randn(&[6], 4), randn(&[6], 5));
    let var = randn(&[6], 6).abs().unwrap().add_scalar(0.5).unwrap();
    let conv = conv2d(&x, &w, None, p).unwrap();
    let residual = randn(conv.shape(), 7);
    let want = batch_norm_eval(&conv, Some(&gamma), Some(&beta), &mean, &var, 1e-5)
        .unwrap()
        .add(&residual)
        .unwrap()
        .relu()
        .unwrap();
    let (fw, fb) = fold_batch_norm(&w, None, Some(&gamma), Some(&beta), &mean, &var, 1e-5).unwrap();
    let got = conv2d_fused(&x, &fw, Some(&fb), p, Some(&residual), true).unwrap();
    assert_tensor_close("fused conv+bn+add+relu", &got, &want, 1e-5);
    // The same batch norm as the conv's epilogue, unfolded.
    let (scale, shift) = batch_norm_eval_scale_shift(Some(&gamma), Some(&beta), &mean, &var, 1e-5).unwrap();
    let got = conv2d_affine(&x, &w, &scale, &shift, p, Some(&residual), true).unwrap();
    assert_tensor_close("conv with the bn as its epilogue, + add, relu", &got, &want, 1e-5);
    assert!(batch_norm_eval_scale_shift(None, None, &Tensor::zeros(&[2, 3]), &var, 1e-5).is_err());
    assert!(batch_norm_eval_scale_shift(None, None, &mean, &Tensor::zeros(&[5]), 1e-5).is_err());
}

/// Batch norm's gradients in f64, from the closed form: with `x̂` the normalised input,
/// `dx = gamma invstd (dy - mean(dy) - x̂ mean(dy x̂))`, `dgamma = Σ dy x̂`, `dbeta = Σ dy`.
fn batch_norm_grads_f64(x: &[f64], dy: &[f64], shape: &[usize], gamma: &[f64], eps: f64) -> [Vec<f64>; 3] {
    let (n, c, s) = (shape[0], shape[1], shape[2..].iter().product::<usize>());
    let (mut dx, mut dg, mut db) = (vec![0.0; x.len()], vec![0.0; c], vec![0.0; c]);
    for ci in 0..c {
        let idx: Vec<usize> = (0..n).flat_map(|ni| (0..s).map(move |k| (ni * c + ci) * s + k)).collect();
        let m = idx.iter().map(|&i| x[i]).sum::<f64>() / idx.len() as f64;
        let var = idx.iter().map(|&i| (x[i] - m).powi(2)).sum::<f64>() / idx.len() as f64;
        let invstd = 1.0 / (var + eps).sqrt();
        let xhat = |i: usize| (x[i] - m) * invstd;
        db[ci] = idx.iter().map(|&i| dy[i]).sum();
        dg[ci] = idx.iter().map(|&i| dy[i] * xhat(i)).sum();
        let (a, b) = (db[ci] / idx.len() as f64, dg[ci] / idx.len() as f64);
        for &i in &idx {
            dx[i] = gamma[ci] * invstd * (dy[i] - a - xhat(i) * b);
        }
    }
    [dx, dg, db]
}

/// The vectorised per-channel kernels (one-pass statistics, the affine output, the backward
/// sums and input gradient) at every vector extension this machine has — so an AVX-512
/// machine also tests the AVX2 and portable code — on planes long enough for their 16-lane
/// loops and with tails, and on values far from zero (which the one-pass variance must survive).
#[test]
fn every_simd_level_matches_the_oracle() {
    use tensor::simd::{available_simd_levels, set_simd_level};
    for level in available_simd_levels() {
        set_simd_level(Some(level));
        for (i, (shape, offset)) in [([3, 4, 13, 11], 0.0), ([2, 3, 37, 5], 1000.0)].into_iter().enumerate() {
            let seed = 90 + 10 * i as u64;
            let x = randn(&shape, seed).add_scalar(offset).unwrap();
            let (gamma, beta, dy) =
                (randn(&[shape[1]], seed + 1), randn(&[shape[1]], seed + 2), randn(&shape, seed + 3));
            let (xf, gf) = (f64s(&x), f64s(&gamma));
            let what = format!("{shape:?} + {offset} at {level}");
            let out = batch_norm_train(&x, Some(&gamma), Some(&beta), None, 0.1, 1e-5).unwrap();
            let want = reference::batch_norm_train(&xf, &shape, &gf, &f64s(&beta), 1e-5);
            assert_close(&format!("forward, {what}"), &out.output.to_vec_f32().unwrap(), &want, 1e-4);
            let grads = batch_norm_train_backward(&dy, &x, Some(&gamma), &out.mean, &out.invstd).unwrap();
            let [dx, dg, db] = batch_norm_grads_f64(&xf, &f64s(&dy), &shape, &gf, 1e-5);
            assert_close(&format!("grad x, {what}"), &grads.input.to_vec_f32().unwrap(), &dx, 1e-4);
            assert_close(&format!("grad gamma, {what}"), &grads.weight.to_vec_f32().unwrap(), &dg, 1e-4);
            assert_close(&format!("grad beta, {what}"), &grads.bias.to_vec_f32().unwrap(), &db, 1e-4);
        }
    }
    set_simd_level(None);
}

/// `batch_norm_train_finish` (batch norm, residual add and ReLU in one pass) and its ReLU
/// backward give bitwise what the separate ops give, at every vector extension this machine has.
#[test]
fn finish_equals_the_separate_ops_bitwise() {
    use tensor::simd::{available_simd_levels, set_simd_level};
    for level in available_simd_levels() {
        set_simd_level(Some(level));
        let shape = [3, 4, 9, 7];
        let x = randn(&shape, 7);
        let (gamma, beta) = (randn(&[4], 8), randn(&[4], 9));
        let (residual, dy) = (randn(&shape, 10), randn(&shape, 11));
        for (with_residual, relu) in [(false, false), (false, true), (true, false), (true, true)] {
            let what = format!("residual {with_residual}, relu {relu}, at {level}");
            let r = with_residual.then_some(&residual);
            let fused = batch_norm_train_finish(&x, Some(&gamma), Some(&beta), None, 0.1, 1e-5, r, relu).unwrap();
            let plain = batch_norm_train(&x, Some(&gamma), Some(&beta), None, 0.1, 1e-5).unwrap();
            let mut want = plain.output.clone();
            if let Some(r) = r {
                want = want.add(r).unwrap();
            }
            if relu {
                want = want.relu().unwrap();
            }
            assert_eq!(fused.output.to_vec_f32().unwrap(), want.to_vec_f32().unwrap(), "forward, {what}");
            let (g, to_residual) = batch_norm_train_finish_backward(
                &dy,
                &x,
                Some(&gamma),
                Some(&beta),
                &fused.mean,
                &fused.invstd,
                &fused.output,
                with_residual,
                relu,
            )
            .unwrap();
            let masked = if relu { dy.relu_backward(&want).unwrap() } else { dy.clone() };
            let w = batch_norm_train_backward(&masked, &x, Some(&gamma), &plain.mean, &plain.invstd).unwrap();
            for (name, a, b) in [("x", &g.input, &w.input), ("gamma", &g.weight, &w.weight), ("beta", &g.bias, &w.bias)]
            {
                assert_eq!(a.to_vec_f32().unwrap(), b.to_vec_f32().unwrap(), "grad {name}, {what}");
            }
            let to_residual = to_residual.map(|t| t.to_vec_f32().unwrap());
            assert_eq!(to_residual, with_residual.then(|| masked.to_vec_f32().unwrap()), "grad residual, {what}");
        }
    }
    set_simd_level(None);
}

#[test]
fn finish_rejects_a_residual_of_another_shape() {
    let x = randn(&[2, 3, 4, 4], 1);
    let r = randn(&[2, 3, 4, 5], 2);
    let err = batch_norm_train_finish(&x, None, None, None, 0.1, 1e-5, Some(&r), true).unwrap_err().to_string();
    assert!(err.contains("residual") && err.contains("[2, 3, 4, 5]"), "{err}");
}
