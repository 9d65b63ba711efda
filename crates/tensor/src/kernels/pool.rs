//! Max, average and adaptive-average 2-D pooling (NCHW), forward and backward, with PyTorch's
//! window arithmetic (ceil mode, padding counted or not, adaptive start/end rounding).
//! Each (image, channel) plane is independent, so planes are the unit of parallel work.

use crate::backend::{backend_for, backend_of, Host, PoolOps};
use crate::error::{bad_shape, invalid, mismatch, Result};
use crate::Tensor;
use rayon::prelude::*;

/// Kernel, stride and padding of a pooling window (`[height, width]` pairs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pool2dParams {
    /// Window size.
    pub kernel: [usize; 2],
    /// Step between windows (PyTorch's default is the kernel size).
    pub stride: [usize; 2],
    /// Implicit padding on each side (at most half the kernel).
    pub padding: [usize; 2],
    /// Round the output size up instead of down.
    pub ceil_mode: bool,
}

impl Pool2dParams {
    /// A square window whose stride is its size, without padding.
    pub fn new(kernel: usize) -> Self {
        Pool2dParams { kernel: [kernel, kernel], stride: [kernel, kernel], padding: [0, 0], ceil_mode: false }
    }
    /// The same stride in both directions.
    pub fn stride(mut self, s: usize) -> Self {
        self.stride = [s, s];
        self
    }
    /// The same padding on every side.
    pub fn padding(mut self, p: usize) -> Self {
        self.padding = [p, p];
        self
    }
    /// Round output sizes up.
    pub fn ceil_mode(mut self, c: bool) -> Self {
        self.ceil_mode = c;
        self
    }
}

/// PyTorch's `pooling_output_shape`.
fn pooled_size(op: &'static str, size: usize, k: usize, s: usize, pad: usize, ceil: bool) -> Result<usize> {
    if k == 0 || s == 0 {
        return Err(invalid(op, "kernel and stride must be positive"));
    }
    if pad > k / 2 {
        return Err(invalid(op, format!("padding {pad} should be at most half of the kernel size {k}")));
    }
    let span = (size + 2 * pad) as isize - k as isize;
    if span < 0 {
        return Err(invalid(op, format!("the padded input ({size} + 2 * {pad}) is smaller than the kernel {k}")));
    }
    let mut out = (span + if ceil { s as isize - 1 } else { 0 }) / s as isize + 1;
    if ceil && (out - 1) * s as isize >= (size + pad) as isize {
        out -= 1;
    }
    Ok(out as usize)
}

/// A pooling's checked sizes: the input `[n, c, h, w]` and the output plane `oh x ow`.
pub(crate) struct PoolGeom {
    pub(crate) input: [usize; 4],
    pub(crate) planes: usize,
    pub(crate) h: usize,
    pub(crate) w: usize,
    pub(crate) oh: usize,
    pub(crate) ow: usize,
}

impl PoolGeom {
    fn new(input: &[usize], oh: usize, ow: usize) -> PoolGeom {
        let input = [input[0], input[1], input[2], input[3]];
        PoolGeom { input, planes: input[0] * input[1], h: input[2], w: input[3], oh, ow }
    }

    /// `[n, c, oh, ow]`.
    pub(crate) fn out_shape(&self) -> [usize; 4] {
        [self.input[0], self.input[1], self.oh, self.ow]
    }
}

fn geometry(op: &'static str, shape: &[usize], p: &Pool2dParams) -> Result<PoolGeom> {
    if shape.len() != 4 {
        return Err(bad_shape(op, shape, "the input must be 4-D [batch, channels, height, width]"));
    }
    let oh = pooled_size(op, shape[2], p.kernel[0], p.stride[0], p.padding[0], p.ceil_mode)?;
    let ow = pooled_size(op, shape[3], p.kernel[1], p.stride[1], p.padding[1], p.ceil_mode)?;
    Ok(PoolGeom::new(shape, oh, ow))
}

/// `torch.nn.functional.max_pool2d(..., return_indices=True)`: the pooled values and, for each,
/// the flat index `h * W + w` of the chosen input element within its plane (i64).
pub fn max_pool2d(input: &Tensor, p: Pool2dParams) -> Result<(Tensor, Tensor)> {
    const OP: &str = "max_pool2d";
    let g = geometry(OP, input.shape(), &p)?;
    backend_of(OP, input)?.max_pool2d(input, &p, &g)
}

/// `torch.nn.functional.max_pool2d` without indices, for inference: the pooled values of
/// [`max_pool2d`] (NaN propagating as in PyTorch) by a separable pass, the maximum over each
/// window's rows first (whole contiguous rows, vectorised) and then across its columns. Without
/// the index search and the i64 index tensor it is several times faster on ResNet's stem.
pub fn max_pool2d_values(input: &Tensor, p: Pool2dParams) -> Result<Tensor> {
    const OP: &str = "max_pool2d_values";
    let g = geometry(OP, input.shape(), &p)?;
    backend_of(OP, input)?.max_pool2d_values(input, &p, &g)
}

/// The input range `[start, end)` of output position `o`'s window along one axis, clipped to
/// the input (never empty: padding is at most half the kernel).
#[inline]
fn window(o: usize, stride: usize, padding: usize, kernel: usize, size: usize) -> (usize, usize) {
    let start = (o * stride) as isize - padding as isize;
    let end = (start + kernel as isize).min(size as isize) as usize;
    (start.max(0) as usize, end)
}

/// The larger of two values, the first on ties, NaN if either is (PyTorch's max pooling).
#[inline(always)]
fn nan_max(a: f32, b: f32) -> f32 {
    if a >= b || a.is_nan() {
        a
    } else {
        b
    }
}

/// One plane of max pooling's values. Per output row: the element-wise max of the window's input
/// rows, then, for the windows that lie inside the row, the max of each run of `kernel` adjacent
/// columns for every start column in one contiguous pass (`spans`; a strided pick of them is the
/// output), so that both passes are plain vector loops; the clipped windows at either end are
/// folded directly.
#[inline(always)]
fn max_pool_plane_impl<const FMA: bool>(
    plane: &[f32],
    o: &mut [f32],
    rows_max: &mut [f32],
    spans: &mut [f32],
    g: &PoolGeom,
    p: &Pool2dParams,
) {
    let (s, k, pad) = (p.stride[1], p.kernel[1], p.padding[1]);
    let first = pad.div_ceil(s).min(g.ow);
    let last = if g.w + pad >= k { ((g.w + pad - k) / s + 1).clamp(first, g.ow) } else { first };
    for oh in 0..g.oh {
        let (h0, h1) = window(oh, p.stride[0], p.padding[0], p.kernel[0], g.h);
        rows_max.copy_from_slice(&plane[h0 * g.w..(h0 + 1) * g.w]);
        for ih in h0 + 1..h1 {
            let row = &plane[ih * g.w..(ih + 1) * g.w];
            rows_max.iter_mut().zip(row).for_each(|(m, &v)| *m = nan_max(*m, v));
        }
        let o = &mut o[oh * g.ow..(oh + 1) * g.ow];
        if first < last {
            // Window `ow` starts at column `ow * s - pad`; `spans[j]` is the max of the window
            // starting at column `start + j`.
            let start = first * s - pad;
            let count = (last - 1 - first) * s + 1;
            let spans = &mut spans[..count];
            spans.copy_from_slice(&rows_max[start..start + count]);
            for tap in 1..k {
                let src = &rows_max[start + tap..start + tap + count];
                spans.iter_mut().zip(src).for_each(|(m, &v)| *m = nan_max(*m, v));
            }
            o[first..last].iter_mut().zip(spans.iter().step_by(s)).for_each(|(d, &v)| *d = v);
        }
        for ow in (0..first).chain(last..g.ow) {
            let (w0, w1) = window(ow, s, pad, k, g.w);
            o[ow] = rows_max[w0 + 1..w1].iter().fold(rows_max[w0], |m, &v| nan_max(m, v));
        }
    }
}

crate::multiversion! {
    /// [`max_pool_plane_impl`], compiled for the CPU's vector extension ([`crate::simd`]).
    ///
    /// # Safety
    /// None beyond the slices' bounds (`rows_max` and `spans` hold the input's width, `o` the
    /// output plane).
    unsafe fn max_pool_plane(
        plane: &[f32],
        o: &mut [f32],
        rows_max: &mut [f32],
        spans: &mut [f32],
        g: &PoolGeom,
        p: &Pool2dParams,
    ) = max_pool_plane_impl;
}

/// Gradient of [`max_pool2d`]: each output gradient goes to the input element it came from.
/// Indices outside the plane are an error on the host; on a GPU (where reading them back would
/// stall every training step) they are skipped — only hand-made indices can be out of range.
pub fn max_pool2d_backward(grad_output: &Tensor, indices: &Tensor, input_shape: &[usize]) -> Result<Tensor> {
    const OP: &str = "max_pool2d_backward";
    if input_shape.len() != 4 {
        return Err(bad_shape(OP, input_shape, "the input must be 4-D"));
    }
    let gs = grad_output.shape();
    if gs != indices.shape() || gs.len() != 4 || gs[..2] != input_shape[..2] {
        return Err(mismatch(OP, gs, indices.shape()));
    }
    backend_for(OP, &[Some(grad_output), Some(indices)])?.max_pool2d_backward(grad_output, indices, input_shape)
}

/// For each output position: the clipped window `[h0, h1) x [w0, w1)` and its divisor, as
/// PyTorch's `avg_pool2d` computes them.
fn avg_windows(g: &PoolGeom, p: &Pool2dParams, count_include_pad: bool) -> Vec<(usize, usize, usize, usize, f32)> {
    let mut v = Vec::with_capacity(g.oh * g.ow);
    for oh in 0..g.oh {
        for ow in 0..g.ow {
            let h0 = (oh * p.stride[0]) as isize - p.padding[0] as isize;
            let w0 = (ow * p.stride[1]) as isize - p.padding[1] as isize;
            let h1 = (h0 + p.kernel[0] as isize).min((g.h + p.padding[0]) as isize);
            let w1 = (w0 + p.kernel[1] as isize).min((g.w + p.padding[1]) as isize);
            let pool_size = (h1 - h0) * (w1 - w0);
            let (h0, w0) = (h0.max(0) as usize, w0.max(0) as usize);
            let (h1, w1) = (h1.min(g.h as isize) as usize, w1.min(g.w as isize) as usize);
            let divisor =
                if count_include_pad { pool_size as usize } else { (h1.saturating_sub(h0)) * (w1.saturating_sub(w0)) };
            v.push((h0, h1, w0, w1, divisor.max(1) as f32));
        }
    }
    v
}

/// `torch.nn.functional.avg_pool2d` (`count_include_pad` as in PyTorch, default `true`).
pub fn avg_pool2d(input: &Tensor, p: Pool2dParams, count_include_pad: bool) -> Result<Tensor> {
    const OP: &str = "avg_pool2d";
    let g = geometry(OP, input.shape(), &p)?;
    backend_of(OP, input)?.avg_pool2d(input, &p, &g, count_include_pad)
}

/// Gradient of [`avg_pool2d`].
pub fn avg_pool2d_backward(
    grad_output: &Tensor,
    input_shape: &[usize],
    p: Pool2dParams,
    count_include_pad: bool,
) -> Result<Tensor> {
    const OP: &str = "avg_pool2d_backward";
    let g = geometry(OP, input_shape, &p)?;
    let expect = [input_shape[0], input_shape[1], g.oh, g.ow];
    if grad_output.shape() != expect {
        return Err(mismatch(OP, grad_output.shape(), &expect));
    }
    backend_of(OP, grad_output)?.avg_pool2d_backward(grad_output, &p, &g, count_include_pad)
}

/// PyTorch's adaptive window for output index `i` of `out` over an input of `size`:
/// `[floor(i * size / out), ceil((i + 1) * size / out))`.
fn adaptive_range(i: usize, out: usize, size: usize) -> (usize, usize) {
    (i * size / out, ((i + 1) * size).div_ceil(out))
}

fn adaptive_check(op: &'static str, shape: &[usize], output: [usize; 2]) -> Result<()> {
    if shape.len() != 4 {
        return Err(bad_shape(op, shape, "the input must be 4-D [batch, channels, height, width]"));
    }
    if output.contains(&0) || shape[2] == 0 || shape[3] == 0 {
        return Err(bad_shape(op, shape, format!("cannot pool to an output of {output:?}")));
    }
    Ok(())
}

/// `torch.nn.functional.adaptive_avg_pool2d` to an output of `[oh, ow]`.
pub fn adaptive_avg_pool2d(input: &Tensor, output: [usize; 2]) -> Result<Tensor> {
    const OP: &str = "adaptive_avg_pool2d";
    adaptive_check(OP, input.shape(), output)?;
    let g = PoolGeom::new(input.shape(), output[0], output[1]);
    backend_of(OP, input)?.adaptive_avg_pool2d(input, &g)
}

/// Gradient of [`adaptive_avg_pool2d`].
pub fn adaptive_avg_pool2d_backward(grad_output: &Tensor, input_shape: &[usize]) -> Result<Tensor> {
    const OP: &str = "adaptive_avg_pool2d_backward";
    let gs = grad_output.shape();
    if gs.len() != 4 || input_shape.len() != 4 || gs[..2] != input_shape[..2] {
        return Err(mismatch(OP, gs, input_shape));
    }
    adaptive_check(OP, input_shape, [gs[2], gs[3]])?;
    let g = PoolGeom::new(input_shape, gs[2], gs[3]);
    backend_of(OP, grad_output)?.adaptive_avg_pool2d_backward(grad_output, &g)
}

/// Output shape of a pooling window over an input shape (for shape inference).
pub fn pool2d_output_shape(input_shape: &[usize], p: Pool2dParams) -> Result<[usize; 4]> {
    let g = geometry("pool2d_output_shape", input_shape, &p)?;
    Ok([input_shape[0], input_shape[1], g.oh, g.ow])
}

impl PoolOps for Host {
    fn max_pool2d(&self, input: &Tensor, p: &Pool2dParams, g: &PoolGeom) -> Result<(Tensor, Tensor)> {
        const OP: &str = "max_pool2d";
        let shape = g.out_shape();
        let x = input.f32_data(OP)?;
        let (ohw, ihw) = (g.oh * g.ow, g.h * g.w);
        let len = g.planes * ohw;
        // Not zero-filled: every output and index is written once below.
        let (mut out, mut idx) = (Vec::<f32>::with_capacity(len), Vec::<i64>::with_capacity(len));
        let slots = (&mut out.spare_capacity_mut()[..len], &mut idx.spare_capacity_mut()[..len]);
        slots.0.par_chunks_mut(ohw.max(1)).zip(slots.1.par_chunks_mut(ohw.max(1))).enumerate().for_each(
            |(pl, (o, ix))| {
                let plane = &x[pl * ihw..(pl + 1) * ihw];
                for oh in 0..g.oh {
                    let (h0, h1) = window(oh, p.stride[0], p.padding[0], p.kernel[0], g.h);
                    for ow in 0..g.ow {
                        let (w0, w1) = window(ow, p.stride[1], p.padding[1], p.kernel[1], g.w);
                        // Branch-free selects in the common case; a NaN (which PyTorch propagates,
                        // with the index of the first one) is looked for only when there is one.
                        let mut best = f32::NEG_INFINITY;
                        let mut best_i = h0 * g.w + w0;
                        let mut nan = false;
                        for ih in h0..h1 {
                            let row = &plane[ih * g.w..ih * g.w + w1];
                            for (iw, &v) in row.iter().enumerate().skip(w0) {
                                let greater = v > best;
                                best = if greater { v } else { best };
                                best_i = if greater { ih * g.w + iw } else { best_i };
                                nan |= v.is_nan();
                            }
                        }
                        if nan {
                            'find: for ih in h0..h1 {
                                for iw in w0..w1 {
                                    if plane[ih * g.w + iw].is_nan() {
                                        best = f32::NAN;
                                        best_i = ih * g.w + iw;
                                        break 'find;
                                    }
                                }
                            }
                        }
                        o[oh * g.ow + ow].write(best);
                        ix[oh * g.ow + ow].write(best_i as i64);
                    }
                }
            },
        );
        // SAFETY: the planes' chunks cover both buffers, and every (oh, ow) of each was written.
        unsafe {
            out.set_len(len);
            idx.set_len(len);
        }
        Ok((Tensor::from_vec_unchecked(out, &shape), Tensor::from_i64_vec_unchecked(idx, &shape)))
    }
    fn max_pool2d_values(&self, input: &Tensor, p: &Pool2dParams, g: &PoolGeom) -> Result<Tensor> {
        const OP: &str = "max_pool2d_values";
        let shape = [input.shape()[0], input.shape()[1], g.oh, g.ow];
        let x = input.f32_data(OP)?;
        let (ohw, ihw) = (g.oh * g.ow, g.h * g.w);
        let mut out = vec![0f32; g.planes * ohw];
        out.par_chunks_mut(ohw.max(1)).enumerate().for_each_init(Vec::new, |rows, (pl, o)| {
            rows.resize(2 * g.w, 0.0);
            let (rows_max, spans) = rows.split_at_mut(g.w);
            // SAFETY: no contract beyond the slices' own bounds.
            unsafe { max_pool_plane(&x[pl * ihw..(pl + 1) * ihw], o, rows_max, spans, g, p) };
        });
        Ok(Tensor::from_vec_unchecked(out, &shape))
    }
    fn max_pool2d_backward(&self, grad_output: &Tensor, indices: &Tensor, input_shape: &[usize]) -> Result<Tensor> {
        const OP: &str = "max_pool2d_backward";
        let gs = grad_output.shape();
        let dy = grad_output.f32_data(OP)?;
        let ix = indices.i64_data(OP)?;
        let (ihw, ohw) = (input_shape[2] * input_shape[3], gs[2] * gs[3]);
        if let Some(&bad) = ix.iter().find(|&&i| i < 0 || i as usize >= ihw) {
            return Err(crate::TensorError::IndexOutOfRange { op: OP, index: bad, size: ihw });
        }
        let mut dx = vec![0f32; input_shape.iter().product()];
        dx.par_chunks_mut(ihw.max(1)).enumerate().for_each(|(pl, d)| {
            for j in 0..ohw {
                d[ix[pl * ohw + j] as usize] += dy[pl * ohw + j];
            }
        });
        Ok(Tensor::from_vec_unchecked(dx, input_shape))
    }
    fn avg_pool2d(&self, input: &Tensor, p: &Pool2dParams, g: &PoolGeom, count_include_pad: bool) -> Result<Tensor> {
        const OP: &str = "avg_pool2d";
        let x = input.f32_data(OP)?;
        let windows = avg_windows(g, p, count_include_pad);
        let (ohw, ihw) = (g.oh * g.ow, g.h * g.w);
        let mut out = vec![0f32; g.planes * ohw];
        out.par_chunks_mut(ohw.max(1)).enumerate().for_each(|(pl, o)| {
            let plane = &x[pl * ihw..(pl + 1) * ihw];
            for (j, &(h0, h1, w0, w1, div)) in windows.iter().enumerate() {
                let mut s = 0f32;
                for ih in h0..h1 {
                    s += plane[ih * g.w + w0..ih * g.w + w1.max(w0)].iter().sum::<f32>();
                }
                o[j] = s / div;
            }
        });
        Ok(Tensor::from_vec_unchecked(out, &[input.shape()[0], input.shape()[1], g.oh, g.ow]))
    }
    fn avg_pool2d_backward(
        &self,
        grad_output: &Tensor,
        p: &Pool2dParams,
        g: &PoolGeom,
        count_include_pad: bool,
    ) -> Result<Tensor> {
        const OP: &str = "avg_pool2d_backward";
        let input_shape = &g.input[..];
        let dy = grad_output.f32_data(OP)?;
        let windows = avg_windows(g, p, count_include_pad);
        let (ohw, ihw) = (g.oh * g.ow, g.h * g.w);
        let mut dx = vec![0f32; g.planes * ihw];
        dx.par_chunks_mut(ihw.max(1)).enumerate().for_each(|(pl, d)| {
            for (j, &(h0, h1, w0, w1, div)) in windows.iter().enumerate() {
                let v = dy[pl * ohw + j] / div;
                for ih in h0..h1 {
                    for iw in w0..w1 {
                        d[ih * g.w + iw] += v;
                    }
                }
            }
        });
        Ok(Tensor::from_vec_unchecked(dx, input_shape))
    }
    fn adaptive_avg_pool2d(&self, input: &Tensor, g: &PoolGeom) -> Result<Tensor> {
        const OP: &str = "adaptive_avg_pool2d";
        let s = input.shape();
        let (h, w, oh, ow) = (g.h, g.w, g.oh, g.ow);
        let x = input.f32_data(OP)?;
        let mut out = vec![0f32; s[0] * s[1] * oh * ow];
        out.par_chunks_mut(oh * ow).enumerate().for_each(|(pl, o)| {
            let plane = &x[pl * h * w..(pl + 1) * h * w];
            for i in 0..oh {
                let (h0, h1) = adaptive_range(i, oh, h);
                for j in 0..ow {
                    let (w0, w1) = adaptive_range(j, ow, w);
                    let mut sum = 0f32;
                    for ih in h0..h1 {
                        sum += plane[ih * w + w0..ih * w + w1].iter().sum::<f32>();
                    }
                    o[i * ow + j] = sum / ((h1 - h0) * (w1 - w0)) as f32;
                }
            }
        });
        Ok(Tensor::from_vec_unchecked(out, &[s[0], s[1], oh, ow]))
    }
    fn adaptive_avg_pool2d_backward(&self, grad_output: &Tensor, g: &PoolGeom) -> Result<Tensor> {
        const OP: &str = "adaptive_avg_pool2d_backward";
        let input_shape = &g.input[..];
        let (h, w, oh, ow) = (g.h, g.w, g.oh, g.ow);
        let dy = grad_output.f32_data(OP)?;
        let mut dx = vec![0f32; input_shape.iter().product()];
        dx.par_chunks_mut(h * w).enumerate().for_each(|(pl, d)| {
            for i in 0..oh {
                let (h0, h1) = adaptive_range(i, oh, h);
                for j in 0..ow {
                    let (w0, w1) = adaptive_range(j, ow, w);
                    let v = dy[(pl * oh + i) * ow + j] / ((h1 - h0) * (w1 - w0)) as f32;
                    for ih in h0..h1 {
                        d[ih * w + w0..ih * w + w1].iter_mut().for_each(|x| *x += v);
                    }
                }
            }
        });
        Ok(Tensor::from_vec_unchecked(dx, input_shape))
    }
}
