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
