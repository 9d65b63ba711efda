//! Seeded random numbers and PyTorch's initialisers.
//!
//! The generator is ChaCha8 (value-stable across versions of `rand_chacha`), so a seed gives
//! the same tensors on every machine. The numbers differ from PyTorch's Mersenne twister: tests
//! compare against PyTorch through saved fixtures, never through shared seeds.

use crate::error::{bad_shape, Result};
use crate::Tensor;
use rand::{Rng as _, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

/// A seeded random number generator.
#[derive(Debug, Clone)]
pub struct Rng(ChaCha8Rng);

impl Rng {
    /// A generator whose whole stream is determined by `seed`.
    pub fn seed(seed: u64) -> Rng {
        Rng(ChaCha8Rng::seed_from_u64(seed))
    }

    /// A uniform sample in `[0, 1)`.
    pub fn uniform(&mut self) -> f32 {
        self.0.random::<f32>()
    }

    /// A uniform sample in `[lo, hi)`.
    pub fn uniform_range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.0.random::<f64>()
    }

    /// A standard normal sample.
    pub fn normal(&mut self) -> f32 {
        StandardNormal.sample(&mut self.0)
    }

    /// A uniform integer in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        self.0.random_range(0..n.max(1))
    }

    /// A uniformly random permutation of `0..n` (Fisher-Yates).
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = self.0.random_range(0..=i);
            p.swap(i, j);
        }
        p
    }

    /// The next raw 64-bit value (to derive seeds for sub-streams).
    pub fn next_u64(&mut self) -> u64 {
        self.0.random::<u64>()
    }
}

/// Which fan a variance-scaling initialiser preserves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FanMode {
    /// Preserve the variance of the forward pass (`fan_in`).
    FanIn,
    /// Preserve the variance of the backward pass (`fan_out`).
    FanOut,
}

/// The non-linearity that follows a layer, for `torch.nn.init.calculate_gain`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Nonlinearity {
    /// Gain 1.
    Linear,
    /// Gain sqrt(2).
    Relu,
    /// Gain sqrt(2 / (1 + slope^2)).
    LeakyRelu(f64),
}

impl Nonlinearity {
    /// `torch.nn.init.calculate_gain`.
    pub fn gain(self) -> f64 {
        match self {
            Nonlinearity::Linear => 1.0,
            Nonlinearity::Relu => 2f64.sqrt(),
            Nonlinearity::LeakyRelu(a) => (2.0 / (1.0 + a * a)).sqrt(),
        }
    }
}

/// `(fan_in, fan_out)` of a weight shape, as `torch.nn.init._calculate_fan_in_and_fan_out`:
/// dimension 1 is the input, dimension 0 the output, the rest the receptive field.
pub fn fans(shape: &[usize]) -> Result<(usize, usize)> {
    if shape.len() < 2 {
        return Err(bad_shape("fans", shape, "fan in and fan out need at least 2 dimensions"));
    }
    let receptive: usize = shape[2..].iter().product();
    Ok((shape[1] * receptive, shape[0] * receptive))
}

impl Tensor {
    /// Uniform samples in `[0, 1)`, like `torch.rand`.
    pub fn rand(shape: &[usize], rng: &mut Rng) -> Tensor {
        let n: usize = shape.iter().product();
        let v = (0..n).map(|_| rng.uniform()).collect();
        Tensor::from_vec_unchecked(v, shape)
    }

    /// Standard normal samples, like `torch.randn`.
    pub fn randn(shape: &[usize], rng: &mut Rng) -> Tensor {
        let n: usize = shape.iter().product();
        let v = (0..n).map(|_| rng.normal()).collect();
        Tensor::from_vec_unchecked(v, shape)
    }

    /// Uniform samples in `[lo, hi)`, like `torch.nn.init.uniform_`.
    pub fn uniform(shape: &[usize], lo: f64, hi: f64, rng: &mut Rng) -> Tensor {
        let n: usize = shape.iter().product();
        let v = (0..n).map(|_| rng.uniform_range(lo, hi) as f32).collect();
        Tensor::from_vec_unchecked(v, shape)
    }

    /// Normal samples with the given mean and standard deviation, like `torch.nn.init.normal_`.
    pub fn normal(shape: &[usize], mean: f64, std: f64, rng: &mut Rng) -> Tensor {
        let n: usize = shape.iter().product();
        let v = (0..n).map(|_| (mean + std * rng.normal() as f64) as f32).collect();
        Tensor::from_vec_unchecked(v, shape)
    }

    /// `torch.nn.init.kaiming_uniform_`: bound = gain * sqrt(3 / fan).
    pub fn kaiming_uniform(
        shape: &[usize],
        mode: FanMode,
        nonlinearity: Nonlinearity,
        rng: &mut Rng,
    ) -> Result<Tensor> {
        let std = kaiming_std(shape, mode, nonlinearity)?;
        let bound = 3f64.sqrt() * std;
        Ok(Tensor::uniform(shape, -bound, bound, rng))
    }

    /// `torch.nn.init.kaiming_normal_`: std = gain / sqrt(fan).
    pub fn kaiming_normal(shape: &[usize], mode: FanMode, nonlinearity: Nonlinearity, rng: &mut Rng) -> Result<Tensor> {
        let std = kaiming_std(shape, mode, nonlinearity)?;
        Ok(Tensor::normal(shape, 0.0, std, rng))
    }
}

fn kaiming_std(shape: &[usize], mode: FanMode, nonlinearity: Nonlinearity) -> Result<f64> {
    let (fan_in, fan_out) = fans(shape)?;
    let fan = match mode {
        FanMode::FanIn => fan_in,
        FanMode::FanOut => fan_out,
    };
    if fan == 0 {
        return Err(bad_shape("kaiming init", shape, "a weight with a zero fan cannot be initialised"));
    }
    Ok(nonlinearity.gain() / (fan as f64).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream() {
        let a = Tensor::randn(&[100], &mut Rng::seed(7)).to_vec_f32().unwrap();
        let b = Tensor::randn(&[100], &mut Rng::seed(7)).to_vec_f32().unwrap();
        let c = Tensor::randn(&[100], &mut Rng::seed(8)).to_vec_f32().unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn kaiming_uniform_bound_matches_torch_default() {
        // torch's Conv2d default: kaiming_uniform_(a=sqrt(5)) => bound = 1/sqrt(fan_in).
        let shape = [16, 8, 3, 3];
        let t =
            Tensor::kaiming_uniform(&shape, FanMode::FanIn, Nonlinearity::LeakyRelu(5f64.sqrt()), &mut Rng::seed(1))
                .unwrap();
        let bound = 1.0 / (72f32).sqrt();
        let v = t.to_vec_f32().unwrap();
        assert!(v.iter().all(|x| x.abs() <= bound));
        assert!(v.iter().any(|x| x.abs() > 0.9 * bound));
    }

    #[test]
    fn kaiming_normal_std_is_gain_over_sqrt_fan() {
        let shape = [64, 32, 3, 3];
        let t = Tensor::kaiming_normal(&shape, FanMode::FanOut, Nonlinearity::Relu, &mut Rng::seed(3)).unwrap();
        let v = t.to_vec_f32().unwrap();
        let var = v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / v.len() as f64;
        let expected = 2.0 / (64.0 * 9.0);
        assert!((var / expected - 1.0).abs() < 0.05, "variance {var} vs {expected}");
    }

    #[test]
    fn permutation_is_a_permutation() {
        let mut p = Rng::seed(5).permutation(50);
        p.sort();
        assert_eq!(p, (0..50).collect::<Vec<_>>());
    }
}
