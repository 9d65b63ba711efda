//! Helpers shared by the tensor crate's integration tests.
#![allow(dead_code)]

use tensor::{Rng, Tensor};

/// Loads `tests/fixtures/torch/NAME.npy` (written by `fixtures/gen_torch_fixtures.py`).
pub fn fixture(name: &str) -> Tensor {
    let path = format!("{}/tests/fixtures/torch/{name}.npy", env!("CARGO_MANIFEST_DIR"));
    tensor::read_npy(&path).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

/// Asserts `max |got - want| <= tol * max(1, max |want|)`, naming the worst element.
pub fn assert_close(what: &str, got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length {} vs {}", got.len(), want.len());
    let scale = want.iter().fold(1f64, |m, v| m.max(v.abs()));
    let (mut worst, mut at) = (0f64, 0usize);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let e = (g as f64 - w).abs();
        if e > worst || e.is_nan() {
            worst = e;
            at = i;
        }
    }
    assert!(
        worst <= tol * scale,
        "{what}: element {at} is {} but should be {} (error {worst:.3e}, allowed {:.3e})",
        got[at],
        want[at],
        tol * scale
    );
}

/// [`assert_close`] between two tensors.
pub fn assert_tensor_close(what: &str, got: &Tensor, want: &Tensor, tol: f64) {
    assert_eq!(got.shape(), want.shape(), "{what}: shapes differ");
    let w: Vec<f64> = want.to_vec_f32().unwrap().iter().map(|&v| v as f64).collect();
    assert_close(what, &got.to_vec_f32().unwrap(), &w, tol);
}

pub fn f64s(t: &Tensor) -> Vec<f64> {
    t.to_vec_f32().unwrap().iter().map(|&v| v as f64).collect()
}

pub fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape, &mut Rng::seed(seed))
}

pub fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

/// Central finite differences of a scalar function of `x`, in f64.
pub fn finite_diff(x: &[f64], h: f64, f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let mut x = x.to_vec();
    (0..x.len())
        .map(|i| {
            let orig = x[i];
            x[i] = orig + h;
            let up = f(&x);
            x[i] = orig - h;
            let down = f(&x);
            x[i] = orig;
            (up - down) / (2.0 * h)
        })
        .collect()
}

/// Runs `f` on a rayon pool of `threads` threads (to exercise both the parallel-items and the
/// parallel-GEMM branches of the kernels).
pub fn with_threads<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(f)
}
