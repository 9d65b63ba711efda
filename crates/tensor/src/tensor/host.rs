//! The host backend of the tensor-level ops: views of ndarray storage, elementwise maps,
//! f64-accumulated reductions, softmax and the batched GEMM over strided views.

use super::{BinaryOp, Storage, Tensor, UnaryOp, PARALLEL_THRESHOLD};
use crate::backend::{ElementwiseOps, Host, MatmulOps, ReduceOps, ViewOps};
use crate::error::{bad_shape, invalid, mismatch, Result, TensorError};
use crate::shape::{broadcast_shapes, check_dim};
use crate::tensor::unravel;
use crate::DType;
use ndarray::{ArcArray, ArrayD, Axis, IxDyn, Slice, Zip};
use rayon::prelude::*;

/// Elements per block of an elementwise loop run in parallel: each block is one tight loop over
/// slices, which the compiler vectorises (a rayon `collect` went through its consumer
/// machinery value by value: ReLU, its gradient and the residual adds were ~5% of a training
/// step).
const ELEMENTWISE_BLOCK: usize = 1 << 14;

/// A new vector of `len` floats, `fill(offset, block)` writing each block (in parallel blocks
/// above the parallel threshold), without zero-filling it first.
///
/// # Safety
/// `fill` must write every element of the block it is given.
unsafe fn fill_blocks(len: usize, fill: impl Fn(usize, &mut [std::mem::MaybeUninit<f32>]) + Sync + Send) -> Vec<f32> {
    let body = |out: &mut [std::mem::MaybeUninit<f32>]| {
        if len >= PARALLEL_THRESHOLD {
            out.par_chunks_mut(ELEMENTWISE_BLOCK).enumerate().for_each(|(i, o)| fill(i * ELEMENTWISE_BLOCK, o));
        } else {
            fill(0, out);
        }
    };
    // SAFETY: the blocks cover the vector, and `fill` writes each (the caller's contract).
    unsafe { crate::kernels::written_by(len, body) }
}

/// `f` of each value of `s`, into a new vector.
fn map_slice(s: &[f32], f: impl Fn(f32) -> f32 + Sync + Send) -> Vec<f32> {
    let fill = |at: usize, out: &mut [std::mem::MaybeUninit<f32>]| {
        let s = &s[at..at + out.len()];
        for (o, &v) in out.iter_mut().zip(s) {
            o.write(f(v));
        }
    };
    // SAFETY: a block of `s.len()` values, `at` into them, is zipped with a slice as long.
    unsafe { fill_blocks(s.len(), fill) }
}

/// `f` of each pair of values of `a` and `b`, into a new vector.
fn zip_slices(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync + Send) -> Vec<f32> {
    assert_eq!(a.len(), b.len(), "zip_slices: operands of different lengths");
    let fill = |at: usize, out: &mut [std::mem::MaybeUninit<f32>]| {
        let (a, b) = (&a[at..at + out.len()], &b[at..at + out.len()]);
        for ((o, &p), &q) in out.iter_mut().zip(a).zip(b) {
            o.write(f(p, q));
        }
    };
    // SAFETY: each block is zipped with slices exactly as long (the lengths are checked).
    unsafe { fill_blocks(a.len(), fill) }
}

pub(super) fn map_f32(a: &ArcArray<f32, IxDyn>, f: impl Fn(f32) -> f32 + Sync + Send) -> Tensor {
    if let Some(s) = a.as_slice() {
        Tensor::from_vec_unchecked(map_slice(s, f), a.shape())
    } else {
        Tensor::from_f32_array(a.map(|&x| f(x)))
    }
}

fn reduce_sum(x: &Tensor, op: &'static str, dims: &[usize], keepdim: bool) -> Result<(ArrayD<f64>, usize)> {
    let a = x.f32_array(op)?;
    // Accumulate in f64: BN statistics and losses over large batches stay exact to f32.
    let mut acc: ArrayD<f64> = a.mapv(|v| v as f64);
    let mut count = 1usize;
    for &d in dims.iter().rev() {
        count *= acc.shape()[d];
        acc = acc.sum_axis(Axis(d));
        if keepdim {
            acc.insert_axis_inplace(Axis(d));
        }
    }
    Ok((acc, count))
}

fn reduce_lanes<T: Clone>(
    x: &Tensor,
    op: &'static str,
    dim: usize,
    keepdim: bool,
    f: impl Fn(ndarray::ArrayView1<'_, f32>) -> T,
) -> Result<ArrayD<T>> {
    let a = x.f32_array(op)?;
    check_dim(op, dim, x.rank())?;
    if a.shape()[dim] == 0 {
        return Err(bad_shape(op, a.shape(), format!("cannot reduce the empty dimension {dim}")));
    }
    let mut out = a.map_axis(Axis(dim), f);
    if keepdim {
        out.insert_axis_inplace(Axis(dim));
    }
    Ok(out)
}

/// Whether no value is an infinity or NaN (all exponent bits set), as a branch-free OR over
/// the bits, which the compiler vectorises: training checks every gradient once per step.
fn no_infinity_or_nan(values: &[f32]) -> bool {
    const EXPONENT: u32 = 0x7f80_0000;
    values
        .chunks(1 << 14)
        .all(|c| c.iter().fold(0u32, |bad, v| bad | u32::from(v.to_bits() & EXPONENT == EXPONENT)) == 0)
}

impl ViewOps for Host {
    fn reshape(&self, x: &Tensor, shape: &[usize]) -> Result<Tensor> {
        let t = x.contiguous();
        let storage = each_storage!(t.storage, a => a
            .into_shape_with_order(IxDyn(shape))
            .expect("contiguous data of the same size can take any shape"));
        Ok(Tensor { storage })
    }
    fn permute(&self, x: &Tensor, dims: &[usize]) -> Result<Tensor> {
        let storage = each_storage!(x.storage.clone(), a => a.permuted_axes(IxDyn(dims)));
        Ok(Tensor { storage })
    }
    fn transpose(&self, x: &Tensor, d0: usize, d1: usize) -> Result<Tensor> {
        let storage = each_storage!(x.storage.clone(), a => {
            let mut a = a;
            a.swap_axes(d0, d1);
            a
        });
        Ok(Tensor { storage })
    }
    fn narrow(&self, x: &Tensor, dim: usize, start: usize, len: usize) -> Result<Tensor> {
        let storage = each_storage!(x.storage.clone(), a => {
            let mut a = a;
            a.slice_axis_inplace(Axis(dim), Slice::from(start..start + len));
            a
        });
        Ok(Tensor { storage })
    }
    fn unsqueeze(&self, x: &Tensor, dim: usize) -> Result<Tensor> {
        let storage = each_storage!(x.storage.clone(), a => a.insert_axis(Axis(dim)));
        Ok(Tensor { storage })
    }
    fn squeeze(&self, x: &Tensor, dim: usize) -> Result<Tensor> {
        let storage = each_storage!(x.storage.clone(), a => a.index_axis_move(Axis(dim), 0));
        Ok(Tensor { storage })
    }
    fn broadcast_to(&self, x: &Tensor, shape: &[usize]) -> Result<Tensor> {
        let storage = each_storage!(&x.storage, a => a
            .broadcast(IxDyn(shape))
            .expect("shapes checked above")
            .to_owned()
            .into_shared());
        Ok(Tensor { storage })
    }
    fn cat(&self, tensors: &[&Tensor], dim: usize, _shape: &[usize]) -> Result<Tensor> {
        let first = tensors[0];
        match first.dtype() {
            DType::F32 => {
                let views = tensors.iter().map(|t| t.f32_array("cat").map(|a| a.view())).collect::<Result<Vec<_>>>()?;
                let a = ndarray::concatenate(Axis(dim), &views).map_err(|e| invalid("cat", e.to_string()))?;
                Ok(Tensor::from_f32_array(a))
            }
            DType::I64 => {
                let views = tensors.iter().map(|t| t.i64_array("cat").map(|a| a.view())).collect::<Result<Vec<_>>>()?;
                let a = ndarray::concatenate(Axis(dim), &views).map_err(|e| invalid("cat", e.to_string()))?;
                Ok(Tensor::from_i64_array(a))
            }
        }
    }
    fn index_select(&self, x: &Tensor, dim: usize, _index: &Tensor, idx: &[usize]) -> Result<Tensor> {
        let storage = each_storage!(&x.storage, a => a.select(Axis(dim), idx).into_shared());
        Ok(Tensor { storage })
    }
    fn gather(&self, x: &Tensor, dim: usize, index: &Tensor) -> Result<Tensor> {
        let ishape = index.shape();
        let idx = index.i64_array("gather")?;
        let size = x.shape()[dim];
        if let Some(&bad) = idx.iter().find(|&&i| i < 0 || i as u64 >= size as u64) {
            return Err(TensorError::IndexOutOfRange { op: "gather", index: bad, size });
        }
        let idx = idx.as_standard_layout();
        let idx = idx.as_slice().expect("standard layout");
        let src_index = |flat: usize| {
            let mut pos = unravel(flat, ishape);
            pos[dim] = idx[flat] as usize;
            IxDyn(&pos)
        };
        let storage = match &x.storage {
            Storage::F32(a) => Storage::F32(
                ArrayD::from_shape_vec(IxDyn(ishape), (0..idx.len()).map(|f| a[src_index(f)]).collect())
                    .expect("sized")
                    .into_shared(),
            ),
            Storage::I64(a) => Storage::I64(
                ArrayD::from_shape_vec(IxDyn(ishape), (0..idx.len()).map(|f| a[src_index(f)]).collect())
                    .expect("sized")
                    .into_shared(),
            ),
            #[cfg(gpu)]
            Storage::Gpu(g) => return Err(TensorError::Unsupported { op: "gather", device: g.device.to_string() }),
        };
        Ok(Tensor { storage })
    }
}

impl ElementwiseOps for Host {
    fn binary(&self, x: &Tensor, rhs: &Tensor, op: BinaryOp, shape: &[usize]) -> Result<Tensor> {
        let name = op.name();
        match (&x.storage, &rhs.storage) {
            (Storage::F32(a), Storage::F32(b)) => {
                if let (Some(x), Some(y)) = (a.as_slice(), b.as_slice()) {
                    if a.shape() == b.shape() && x.len() == y.len() {
                        // One loop per op, its variant spelled out, so the `match` folds away.
                        let v = match op {
                            BinaryOp::Add => zip_slices(x, y, |p, q| BinaryOp::Add.f32(p, q)),
                            BinaryOp::Sub => zip_slices(x, y, |p, q| BinaryOp::Sub.f32(p, q)),
                            BinaryOp::Mul => zip_slices(x, y, |p, q| BinaryOp::Mul.f32(p, q)),
                            BinaryOp::Div => zip_slices(x, y, |p, q| BinaryOp::Div.f32(p, q)),
                            BinaryOp::Maximum => zip_slices(x, y, |p, q| BinaryOp::Maximum.f32(p, q)),
                            BinaryOp::Minimum => zip_slices(x, y, |p, q| BinaryOp::Minimum.f32(p, q)),
                        };
                        return Ok(Tensor::from_vec_unchecked(v, shape));
                    }
                }
                let av = a.broadcast(IxDyn(shape)).ok_or_else(|| mismatch(name, a.shape(), shape))?;
                let bv = b.broadcast(IxDyn(shape)).ok_or_else(|| mismatch(name, b.shape(), shape))?;
                let zip = Zip::from(&av).and(&bv);
                let out = if av.len() >= PARALLEL_THRESHOLD {
                    zip.par_map_collect(|&p, &q| op.f32(p, q))
                } else {
                    zip.map_collect(|&p, &q| op.f32(p, q))
                };
                Ok(Tensor::from_f32_array(out))
            }
            (Storage::I64(a), Storage::I64(b)) => {
                let av = a.broadcast(IxDyn(shape)).ok_or_else(|| mismatch(name, a.shape(), shape))?;
                let bv = b.broadcast(IxDyn(shape)).ok_or_else(|| mismatch(name, b.shape(), shape))?;
                let mut failed = false;
                let out = Zip::from(&av).and(&bv).map_collect(|&p, &q| {
                    op.i64(p, q).unwrap_or_else(|| {
                        failed = true;
                        0
                    })
                });
                if failed {
                    return Err(invalid(name, "i64 overflow or division by zero"));
                }
                Ok(Tensor::from_i64_array(out))
            }
            _ => Err(TensorError::DType { op: name, expected: x.dtype(), got: rhs.dtype() }),
        }
    }
    fn relu_backward(&self, x: &Tensor, output: &Tensor) -> Result<Tensor> {
        const OP: &str = "relu_backward";
        let (g, y) = (x.f32_data(OP)?, output.f32_data(OP)?);
        if g.len() != y.len() {
            return Err(mismatch(OP, x.shape(), output.shape()));
        }
        let v = zip_slices(&g, &y, |g, y| if y > 0.0 { g } else { 0.0 });
        Ok(Tensor::from_vec_unchecked(v, x.shape()))
    }
    fn unary(&self, x: &Tensor, op: UnaryOp) -> Result<Tensor> {
        let a = x.f32_array(op.name())?;
        // One loop per op, each with its variant spelled out: the rule's `match` then folds
        // away and the loop vectorises (a `match` per element kept ReLU's loop scalar).
        Ok(match op {
            UnaryOp::Neg => map_f32(a, |v| UnaryOp::Neg.f32(v)),
            UnaryOp::Exp => map_f32(a, |v| UnaryOp::Exp.f32(v)),
            UnaryOp::Log => map_f32(a, |v| UnaryOp::Log.f32(v)),
            UnaryOp::Sqrt => map_f32(a, |v| UnaryOp::Sqrt.f32(v)),
            UnaryOp::Powf(p) => map_f32(a, move |v| UnaryOp::Powf(p).f32(v)),
            UnaryOp::Relu => map_f32(a, |v| UnaryOp::Relu.f32(v)),
            UnaryOp::Abs => map_f32(a, |v| UnaryOp::Abs.f32(v)),
            UnaryOp::Clamp(lo, hi) => map_f32(a, move |v| UnaryOp::Clamp(lo, hi).f32(v)),
            UnaryOp::AddScalar(c) => map_f32(a, move |v| UnaryOp::AddScalar(c).f32(v)),
            UnaryOp::MulScalar(c) => map_f32(a, move |v| UnaryOp::MulScalar(c).f32(v)),
        })
    }
    fn one_hot(&self, targets: &Tensor, classes: usize, shape: &[usize]) -> Result<Tensor> {
        const OP: &str = "one_hot";
        let mut out = vec![0f32; shape.iter().product()];
        for (row, &t) in targets.i64_data(OP)?.iter().enumerate() {
            match usize::try_from(t).ok().filter(|&t| t < classes) {
                Some(t) => out[row * classes + t] = 1.0,
                None => return Err(TensorError::IndexOutOfRange { op: OP, index: t, size: classes }),
            }
        }
        Ok(Tensor::from_vec_unchecked(out, shape))
    }
    fn all_finite(&self, tensors: &[&Tensor]) -> Result<bool> {
        let finite = tensors
            .par_iter()
            .map(|t| Ok(no_infinity_or_nan(&t.f32_data("all_finite")?)))
            .collect::<Result<Vec<bool>>>()?;
        Ok(finite.into_iter().all(|f| f))
    }
}

impl ReduceOps for Host {
    fn sum(&self, x: &Tensor, dims: &[usize], keepdim: bool) -> Result<Tensor> {
        let (acc, _) = reduce_sum(x, "sum", dims, keepdim)?;
        Ok(Tensor::from_f32_array(acc.mapv(|v| v as f32)))
    }
    fn mean(&self, x: &Tensor, dims: &[usize], keepdim: bool) -> Result<Tensor> {
        let (acc, count) = reduce_sum(x, "mean", dims, keepdim)?;
        Ok(Tensor::from_f32_array(acc.mapv(|v| (v / count as f64) as f32)))
    }
    fn var(&self, x: &Tensor, dims: &[usize], unbiased: bool, keepdim: bool) -> Result<Tensor> {
        let (sum, count) = reduce_sum(x, "var", dims, true)?;
        let a = x.f32_array("var")?;
        let mean = sum.mapv(|v| v / count as f64);
        let centred = Zip::from(a).and_broadcast(&mean).map_collect(|&x, &m| (x as f64 - m) * (x as f64 - m));
        let sq = Tensor::from_f32_array(centred.mapv(|v| v as f32));
        let (acc, _) = reduce_sum(&sq, "var", dims, keepdim)?;
        let denom = if unbiased { count.saturating_sub(1) } else { count } as f64;
        Ok(Tensor::from_f32_array(acc.mapv(|v| (v / denom) as f32)))
    }
    fn max(&self, x: &Tensor, dim: usize, keepdim: bool) -> Result<Tensor> {
        let out = reduce_lanes(x, "max", dim, keepdim, |lane| {
            lane.iter()
                .copied()
                .fold(f32::NEG_INFINITY, |m, x| if m.is_nan() || !(x.is_nan() || x > m) { m } else { x })
        })?;
        Ok(Tensor::from_f32_array(out))
    }
    fn argmax(&self, x: &Tensor, dim: usize, keepdim: bool) -> Result<Tensor> {
        let out = reduce_lanes(x, "argmax", dim, keepdim, |lane| {
            let mut best = 0usize;
            let mut best_v = f32::NEG_INFINITY;
            for (i, &x) in lane.iter().enumerate() {
                if best_v.is_nan() {
                    break;
                }
                if x.is_nan() || x > best_v || i == 0 {
                    best = i;
                    best_v = x;
                }
            }
            best as i64
        })?;
        Ok(Tensor::from_i64_array(out))
    }
    fn softmax(&self, x: &Tensor, dim: usize, log: bool) -> Result<Tensor> {
        let op = if log { "log_softmax" } else { "softmax" };
        let a = x.f32_array(op)?;
        let mut out = ArrayD::<f32>::zeros(a.raw_dim());
        Zip::from(out.lanes_mut(Axis(dim))).and(a.lanes(Axis(dim))).for_each(|mut o, x| {
            let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let m = if m.is_finite() { m } else { 0.0 };
            let sum: f64 = x.iter().map(|&v| ((v - m) as f64).exp()).sum();
            if log {
                let lse = m as f64 + sum.ln();
                o.iter_mut().zip(x).for_each(|(o, &v)| *o = (v as f64 - lse) as f32);
            } else {
                o.iter_mut().zip(x).for_each(|(o, &v)| *o = (((v - m) as f64).exp() / sum) as f32);
            }
        });
        Ok(Tensor::from_f32_array(out))
    }
}

impl MatmulOps for Host {
    fn matmul(&self, x: &Tensor, rhs: &Tensor) -> Result<Tensor> {
        let a = x.f32_array("matmul")?;
        let b = rhs.f32_array("matmul")?;
        let (ra, rb) = (a.ndim(), b.ndim());
        if ra < 2 || rb < 2 || a.shape()[ra - 1] != b.shape()[rb - 2] {
            return Err(mismatch("matmul", a.shape(), b.shape()));
        }
        let (m, k, n) = (a.shape()[ra - 2], a.shape()[ra - 1], b.shape()[rb - 1]);
        let batch = broadcast_shapes("matmul", &a.shape()[..ra - 2], &b.shape()[..rb - 2])?;
        let mut a_shape = batch.clone();
        a_shape.extend([m, k]);
        let mut b_shape = batch.clone();
        b_shape.extend([k, n]);
        let av = a.broadcast(IxDyn(&a_shape)).ok_or_else(|| mismatch("matmul", a.shape(), &a_shape))?;
        let bv = b.broadcast(IxDyn(&b_shape)).ok_or_else(|| mismatch("matmul", b.shape(), &b_shape))?;
        let nb: usize = batch.iter().product();
        let mut out = vec![0f32; nb * m * n];
        let offsets = |strides: &[isize]| -> Vec<isize> {
            (0..nb).map(|f| unravel(f, &batch).iter().zip(strides).map(|(&i, &s)| i as isize * s).sum()).collect()
        };
        let (sa, sb) = (av.strides(), bv.strides());
        let (oa, ob) = (offsets(&sa[..batch.len()]), offsets(&sb[..batch.len()]));
        let lhs = crate::kernels::matmul::MatRef::strided(av.as_ptr(), m, k, sa[batch.len()], sa[batch.len() + 1]);
        let rhs_m = crate::kernels::matmul::MatRef::strided(bv.as_ptr(), k, n, sb[batch.len()], sb[batch.len() + 1]);
        crate::kernels::matmul::batched_sgemm(&mut out, m, n, lhs, &oa, rhs_m, &ob);
        let mut shape = batch;
        shape.extend([m, n]);
        Ok(Tensor::from_vec_unchecked(out, &shape))
    }
}
