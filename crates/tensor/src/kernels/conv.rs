//! 2-D convolution (NCHW) as im2col + GEMM: forward, grad-input, grad-weight, grad-bias.
//!
//! Design, for speed and bounded memory:
//! - The output positions of each image are cut into tiles; one tile's im2col buffer holds
//!   `cin * kh * kw` rows of at most [`COL_BUDGET`] floats in all, so memory does not grow with
//!   the batch or the image, and the buffer stays in cache while GEMM packs it.
//! - All groups share one im2col buffer per tile (group `g` reads its own block of rows), so a
//!   32-group ResNeXt conv gathers its input once, not 32 times.
//! - A 1x1, stride-1, unpadded conv needs no im2col: the image itself is the GEMM operand.
//! - Work is split across (image, tile) items with rayon when there are enough of them;
//!   otherwise each GEMM uses all threads.
//! - The forward pass applies an epilogue (bias, residual add, ReLU) to each output tile while it
//!   is still in cache: this is the fused conv + BN + ReLU path of inference.

use super::matmul::{parallelism, product, MatRef, SyncPtr};
use super::scratch::Scratch;
use super::written_by;
use crate::backend::{backend_for, backend_of, ConvOps, Host};
use crate::error::{bad_shape, invalid, mismatch, Result};
use crate::Tensor;
use gemm::Parallelism;
use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::ops::Range;
use std::sync::OnceLock;

/// Most floats one im2col tile holds (2 MiB).
const COL_BUDGET: usize = 1 << 19;
/// Fewest columns per thread when one product's columns are shared out with its epilogue.
const MIN_BAND: usize = 64;
/// Below this many output positions per image, work items take several whole images.
const SMALL_OUTPUT: usize = 256;
/// Below this many output channels per group, grouped convs use the small-product kernels.
const SMALL_GROUP: usize = 32;

/// Stride, padding, dilation and groups of a 2-D convolution (`[height, width]` pairs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Conv2dParams {
    /// Step between output positions.
    pub stride: [usize; 2],
    /// Zeros added on each side.
    pub padding: [usize; 2],
    /// Step between kernel taps.
    pub dilation: [usize; 2],
    /// Channel groups (input and output channels are split into this many independent convs).
    pub groups: usize,
}

impl Default for Conv2dParams {
    fn default() -> Self {
        Conv2dParams { stride: [1, 1], padding: [0, 0], dilation: [1, 1], groups: 1 }
    }
}

impl Conv2dParams {
    /// Stride 1, no padding, no dilation, one group.
    pub fn new() -> Self {
        Self::default()
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
    /// The same dilation in both directions.
    pub fn dilation(mut self, d: usize) -> Self {
        self.dilation = [d, d];
        self
    }
    /// Channel groups.
    pub fn groups(mut self, g: usize) -> Self {
        self.groups = g;
        self
    }
}

/// Every size a convolution needs, validated once.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConvGeom {
    pub n: usize,
    pub cin: usize,
    pub h: usize,
    pub w: usize,
    pub cout: usize,
    pub kh: usize,
    pub kw: usize,
    pub oh: usize,
    pub ow: usize,
    pub p: Conv2dParams,
    pub cin_g: usize,
    pub cout_g: usize,
}

impl ConvGeom {
    pub(crate) fn new(op: &'static str, x: &[usize], wt: &[usize], p: Conv2dParams) -> Result<ConvGeom> {
        if x.len() != 4 {
            return Err(bad_shape(op, x, "the input must be 4-D [batch, channels, height, width]"));
        }
        if wt.len() != 4 {
            return Err(bad_shape(op, wt, "the weight must be 4-D [out, in / groups, kh, kw]"));
        }
        if p.groups == 0 || p.stride.contains(&0) || p.dilation.contains(&0) {
            return Err(invalid(op, format!("groups, stride and dilation must be positive, got {p:?}")));
        }
        let (n, cin, h, w) = (x[0], x[1], x[2], x[3]);
        let (cout, cin_g, kh, kw) = (wt[0], wt[1], wt[2], wt[3]);
        if cin % p.groups != 0 || cout % p.groups != 0 || cin_g * p.groups != cin {
            return Err(mismatch(op, x, wt));
        }
        let out_size = |size: usize, pad: usize, dil: usize, k: usize, s: usize| -> Option<usize> {
            let span = dil * (k.checked_sub(1)?) + 1;
            let padded = size + 2 * pad;
            (padded >= span).then(|| (padded - span) / s + 1)
        };
        let (Some(oh), Some(ow)) = (
            out_size(h, p.padding[0], p.dilation[0], kh, p.stride[0]),
            out_size(w, p.padding[1], p.dilation[1], kw, p.stride[1]),
        ) else {
            return Err(bad_shape(op, x, format!("the padded input is smaller than the kernel {wt:?} ({p:?})")));
        };
        Ok(ConvGeom { n, cin, h, w, cout, kh, kw, oh, ow, p, cin_g, cout_g: cout / p.groups })
    }

    /// Rows of one group's im2col matrix (= columns of its weight matrix).
    pub(crate) fn k(&self) -> usize {
        self.cin_g * self.kh * self.kw
    }
    pub(crate) fn out_hw(&self) -> usize {
        self.oh * self.ow
    }
    pub(crate) fn in_hw(&self) -> usize {
        self.h * self.w
    }
    pub(crate) fn in_shape(&self) -> [usize; 4] {
        [self.n, self.cin, self.h, self.w]
    }

    pub(crate) fn weight_shape(&self) -> [usize; 4] {
        [self.cout, self.cin_g, self.kh, self.kw]
    }

    pub(crate) fn out_shape(&self) -> [usize; 4] {
        [self.n, self.cout, self.oh, self.ow]
    }
    /// 1x1, stride 1, no padding: the input is its own im2col matrix.
    pub(crate) fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.p.stride == [1, 1] && self.p.padding == [0, 0]
    }
    /// Grouped convs with few channels per group: products too small for GEMM to pay off.
    fn small(&self) -> bool {
        self.p.groups > 1 && self.cout_g < SMALL_GROUP
    }
    /// Output positions per tile.
    fn tile(&self) -> usize {
        let rows = self.cin * self.kh * self.kw;
        let tile = (COL_BUDGET / rows.max(1)).clamp(64.min(self.out_hw()), self.out_hw()).max(1);
        // Too few (image, tile) items to share out: the tiles would run one after another,
        // each GEMM split across the threads; one tile of up to twice the budget saves a round
        // (a batch-1 stride-2 3x3 conv, 128 channels at 56x56: 2.06 -> 1.86 ms).
        let few = self.n * self.out_hw().div_ceil(tile) < 2 * rayon::current_num_threads();
        if few && rows * self.out_hw() <= 2 * COL_BUDGET {
            return self.out_hw().max(1);
        }
        tile
    }
    fn tiles(&self) -> usize {
        self.out_hw().div_ceil(self.tile())
    }
    /// Whole images per work item when one image's output is small (late stages, small
    /// pictures): their columns side by side make GEMMs wide enough to run at speed, where one
    /// image's few columns would not. 1 means one image per item, cut into tiles.
    fn images_per_block(&self) -> usize {
        let ohw = self.out_hw().max(1);
        if ohw >= SMALL_OUTPUT || self.n == 1 {
            return 1;
        }
        let rows = (self.cin * self.kh * self.kw).max(1);
        let by_budget = ((COL_BUDGET / rows).max(SMALL_OUTPUT) / ohw).max(1);
        // Leave at least two items per thread when the batch allows it.
        let for_threads = (self.n / (2 * rayon::current_num_threads())).max(1);
        by_budget.min(for_threads).min(self.n)
    }
    /// Multiply-accumulates of the forward pass.
    pub(crate) fn macs(&self) -> usize {
        self.n * self.cout * self.out_hw() * self.k()
    }

    /// For output row `oh` and kernel row `ki`, the input row (None when it falls in padding).
    #[inline]
    fn in_row(&self, oh: usize, ki: usize) -> Option<usize> {
        (oh * self.p.stride[0] + ki * self.p.dilation[0]).checked_sub(self.p.padding[0]).filter(|&r| r < self.h)
    }

    /// For kernel column `kj`, the range of output columns whose input column is inside the
    /// image, and the input column of output column 0 (which may be negative).
    #[inline]
    fn valid_cols(&self, kj: usize) -> (usize, usize, isize) {
        let (s, pad) = (self.p.stride[1] as isize, self.p.padding[1] as isize);
        let base = (kj * self.p.dilation[1]) as isize - pad;
        // iw = ow * s + base must satisfy 0 <= iw < w.
        let lo = if base >= 0 { 0 } else { ((-base) + s - 1) / s };
        let hi = if (self.w as isize) > base { ((self.w as isize - base) + s - 1) / s } else { 0 };
        let hi = hi.clamp(0, self.ow as isize) as usize;
        (lo.min(hi as isize) as usize, hi, base)
    }

    /// [`ConvGeom::valid_cols`] of every kernel column, computed once per im2col or col2im
    /// call rather than per channel and kernel row (its divisions were 2.6% of a training
    /// step on 64-pixel images, whose small maps make every other step short).
    fn valid_cols_all(&self) -> Vec<(usize, usize, isize)> {
        (0..self.kw).map(|kj| self.valid_cols(kj)).collect()
    }
}

/// Fills `col` (row-major, `channels * kh * kw` rows of `p1 - p0` columns, rows `ld` apart)
/// with the input taps of output positions `p0..p1` for the given channels of one image.
pub(super) fn im2col(
    g: &ConvGeom,
    image: &[f32],
    channels: std::ops::Range<usize>,
    p0: usize,
    p1: usize,
    col: &mut [f32],
    ld: usize,
) {
    let len = p1 - p0;
    let mut row = 0;
    let valid = g.valid_cols_all();
    for c in channels {
        let plane = &image[c * g.in_hw()..(c + 1) * g.in_hw()];
        for ki in 0..g.kh {
            for &(lo, hi, base) in &valid {
                let dst = &mut col[row * ld..row * ld + len];
                // Output rows one after another: one division per tap row, not one per run (on
                // the 4x4 and 2x2 maps of small pictures a run is a few values long).
                let (mut oh, mut ow0) = (p0 / g.ow, p0 % g.ow);
                let mut j = 0;
                while j < len {
                    let run = (g.ow - ow0).min(len - j);
                    let out = &mut dst[j..j + run];
                    match g.in_row(oh, ki) {
                        None => out.fill(0.0),
                        Some(ih) => {
                            let src = &plane[ih * g.w..(ih + 1) * g.w];
                            // Output columns [a, b) read inside the image; the rest is padding.
                            let a = lo.clamp(ow0, ow0 + run);
                            let b = hi.clamp(a, ow0 + run);
                            out[..a - ow0].fill(0.0);
                            out[b - ow0..].fill(0.0);
                            let seg = &mut out[a - ow0..b - ow0];
                            // An empty run (every tap in padding) has no first input column.
                            if !seg.is_empty() {
                                let first = (a as isize * g.p.stride[1] as isize + base) as usize;
                                if g.p.stride[1] == 1 {
                                    seg.copy_from_slice(&src[first..first + seg.len()]);
                                } else if g.p.stride[1] == 2 {
                                    every_other(seg, &src[first..first + 2 * seg.len() - 1]);
                                } else {
                                    let s = g.p.stride[1];
                                    seg.iter_mut().zip(src[first..].iter().step_by(s)).for_each(|(o, &v)| *o = v);
                                }
                            }
                        }
                    }
                    j += run;
                    oh += 1;
                    ow0 = 0;
                }
                row += 1;
            }
        }
    }
}

/// `dst[i] = src[2 i]` (`src` exactly `2 dst.len() - 1` long): a stride-2 conv's taps, as
/// pairs whose first halves the compiler gathers with vector shuffles (an iterator stepping by
/// two stayed scalar, and im2col was a fifth of the 7x7 stem's weight gradient).
#[inline]
fn every_other(dst: &mut [f32], src: &[f32]) {
    let Some((last, dst)) = dst.split_last_mut() else { return };
    for (o, pair) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *o = pair[0];
    }
    *last = src[src.len() - 1];
}

/// `dst[2 i] += src[i]` (`dst` exactly `2 src.len() - 1` long): [`every_other`]'s adjoint,
/// for col2im, in pairs without a bounds test per value.
#[inline]
fn add_every_other(dst: &mut [f32], src: &[f32]) {
    let Some((last, src)) = src.split_last() else { return };
    for (pair, &v) in dst.chunks_exact_mut(2).zip(src) {
        pair[0] += v;
    }
    dst[2 * src.len()] += last;
}

/// [`im2col`] of all channels into `col` (`ld == p1 - p0`), the channels shared out across
/// threads when `parallel` (the caller has too few work items to keep them busy otherwise).
pub(super) fn im2col_all(g: &ConvGeom, image: &[f32], p0: usize, p1: usize, col: &mut [f32], parallel: bool) {
    let len = p1 - p0;
    let per_channel = g.kh * g.kw * len;
    let threads = rayon::current_num_threads();
    if !parallel || threads < 2 || g.cin < 2 || per_channel == 0 {
        im2col(g, image, 0..g.cin, p0, p1, col, len);
        return;
    }
    let chunk = g.cin.div_ceil(2 * threads);
    col[..g.cin * per_channel].par_chunks_mut(chunk * per_channel).enumerate().for_each(|(i, part)| {
        let c0 = i * chunk;
        im2col(g, image, c0..c0 + part.len() / per_channel, p0, p1, part, len);
    });
}

/// The adjoint of [`im2col`]: adds each column entry back into the input position it came from.
fn col2im(
    g: &ConvGeom,
    col: &[f32],
    ld: usize,
    channels: std::ops::Range<usize>,
    p0: usize,
    p1: usize,
    image: &mut [f32],
) {
    let len = p1 - p0;
    let mut row = 0;
    let in_hw = g.in_hw();
    let valid = g.valid_cols_all();
    for c in channels {
        let plane = &mut image[c * in_hw..(c + 1) * in_hw];
        for ki in 0..g.kh {
            for &(lo, hi, base) in &valid {
                let src = &col[row * ld..row * ld + len];
                let (mut oh, mut ow0) = (p0 / g.ow, p0 % g.ow);
                let mut j = 0;
                while j < len {
                    let run = (g.ow - ow0).min(len - j);
                    if let Some(ih) = g.in_row(oh, ki) {
                        let dst = &mut plane[ih * g.w..(ih + 1) * g.w];
                        let a = lo.clamp(ow0, ow0 + run);
                        let b = hi.clamp(a, ow0 + run);
                        let seg = &src[j + a - ow0..j + b - ow0];
                        if !seg.is_empty() {
                            let first = (a as isize * g.p.stride[1] as isize + base) as usize;
                            if g.p.stride[1] == 1 {
                                dst[first..first + seg.len()].iter_mut().zip(seg).for_each(|(d, &v)| *d += v);
                            } else if g.p.stride[1] == 2 {
                                add_every_other(&mut dst[first..first + 2 * seg.len() - 1], seg);
                            } else {
                                let s = g.p.stride[1];
                                seg.iter().enumerate().for_each(|(t, &v)| dst[first + t * s] += v);
                            }
                        }
                    }
                    j += run;
                    oh += 1;
                    ow0 = 0;
                }
                row += 1;
            }
        }
    }
}

/// The input columns of images `i0..i0 + nb` side by side, `nb * ohw` columns per row: for a
/// pointwise conv the images' channels, otherwise their im2col taps.
fn gather_block(g: &ConvGeom, x: &[f32], i0: usize, nb: usize, col: &mut Scratch) {
    let (ohw, in_len) = (g.out_hw(), g.cin * g.in_hw());
    let cols = nb * ohw;
    col.at_least(g.cin * g.kh * g.kw * cols);
    for b in 0..nb {
        let image = &x[(i0 + b) * in_len..(i0 + b + 1) * in_len];
        if g.pointwise() {
            for c in 0..g.cin {
                col[c * cols + b * ohw..c * cols + (b + 1) * ohw].copy_from_slice(&image[c * ohw..(c + 1) * ohw]);
            }
        } else {
            im2col(g, image, 0..g.cin, 0, ohw, &mut col[b * ohw..], cols);
        }
    }
}

/// Planes `[channels, hw]` of images `i0..i0 + nb` of `src` (`[n, channels, hw]`) side by
/// side: `dst` is `[channels, nb * hw]`.
fn gather_planes(src: &[f32], channels: usize, hw: usize, i0: usize, nb: usize, dst: &mut Scratch) {
    let cols = nb * hw;
    dst.at_least(channels * cols);
    for b in 0..nb {
        for c in 0..channels {
            let from = ((i0 + b) * channels + c) * hw;
            dst[c * cols + b * hw..c * cols + (b + 1) * hw].copy_from_slice(&src[from..from + hw]);
        }
    }
}

/// Scale, bias, residual and ReLU on one output row that starts at `start` in the output
/// (channel `c`): `o * scale + (bias + residual)`, then ReLU, in one pass (three passes,
/// compiled without a vector extension, were a fifth of a batch-1 1x1 conv's time on a
/// 56x56 map).
pub(crate) fn apply_epilogue(epi: &Epilogue<'_>, row: &mut [f32], start: usize, c: usize) {
    let (s, b, len) = (epi.scale.map_or(1.0, |s| s[c]), epi.bias.map_or(0.0, |b| b[c]), row.len());
    let residual = epi.residual.map_or(&[][..], |r| &r[start..start + len]);
    // SAFETY: plain slice computations; no contract beyond the types.
    unsafe {
        match (epi.scale.is_some(), epi.residual.is_some(), b != 0.0, epi.relu) {
            (false, false, false, false) => {}
            (false, false, false, true) => finish_row::<false, false, false, true>(row, residual, s, b),
            (false, false, true, false) => finish_row::<false, false, true, false>(row, residual, s, b),
            (false, false, true, true) => finish_row::<false, false, true, true>(row, residual, s, b),
            (false, true, _, false) => finish_row::<false, true, true, false>(row, residual, s, b),
            (false, true, _, true) => finish_row::<false, true, true, true>(row, residual, s, b),
            (true, false, false, false) => finish_row::<true, false, false, false>(row, residual, s, b),
            (true, false, false, true) => finish_row::<true, false, false, true>(row, residual, s, b),
            (true, false, true, false) => finish_row::<true, false, true, false>(row, residual, s, b),
            (true, false, true, true) => finish_row::<true, false, true, true>(row, residual, s, b),
            (true, true, _, false) => finish_row::<true, true, true, false>(row, residual, s, b),
            (true, true, _, true) => finish_row::<true, true, true, true>(row, residual, s, b),
        }
    }
}

/// [`apply_epilogue`]'s loop: `o * s` (with `SCALE`), `+ (b + r)` (with `RESIDUAL`; else `+ b`
/// with `BIAS`, which a zero bias skips so that a `-0.0` stays as it was), ReLU (with `RELU`).
#[inline(always)]
fn finish_row_impl<const SCALE: bool, const RESIDUAL: bool, const BIAS: bool, const RELU: bool, const FMA: bool>(
    row: &mut [f32],
    residual: &[f32],
    s: f32,
    b: f32,
) {
    let finish = |o: f32, r: f32| {
        let o = if SCALE { o * s } else { o };
        let o = if RESIDUAL {
            o + (b + r)
        } else if BIAS {
            o + b
        } else {
            o
        };
        if RELU {
            super::relu(o)
        } else {
            o
        }
    };
    if RESIDUAL {
        let residual = &residual[..row.len()];
        row.iter_mut().zip(residual).for_each(|(o, &r)| *o = finish(*o, r));
    } else {
        row.iter_mut().for_each(|o| *o = finish(*o, 0.0));
    }
}

crate::multiversion! {
    /// [`finish_row_impl`], compiled for the CPU's vector extension ([`crate::simd`]).
    unsafe fn finish_row<const SCALE: bool, const RESIDUAL: bool, const BIAS: bool, const RELU: bool>(
        row: &mut [f32],
        residual: &[f32],
        s: f32,
        b: f32,
    ) = finish_row_impl;
}

/// Zeroes `dst` and returns it as initialised floats.
fn zeroed(dst: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    dst.fill(MaybeUninit::new(0.0));
    // SAFETY: every element was just initialised.
    unsafe { std::slice::from_raw_parts_mut(dst.as_mut_ptr().cast::<f32>(), dst.len()) }
}

/// Copies `src` into `dst` and returns it as initialised floats.
fn init_from<'a>(dst: &'a mut [MaybeUninit<f32>], src: &[f32]) -> &'a mut [f32] {
    assert_eq!(dst.len(), src.len());
    // SAFETY: same length, distinct buffers; after the copy every element is initialised.
    unsafe {
        std::ptr::copy_nonoverlapping(src.as_ptr(), dst.as_mut_ptr().cast::<f32>(), src.len());
        std::slice::from_raw_parts_mut(dst.as_mut_ptr().cast::<f32>(), dst.len())
    }
}

/// What the forward pass applies to each output tile after the GEMM.
#[derive(Clone, Copy, Default)]
pub(crate) struct Epilogue<'a> {
    /// Per output channel, applied first (a batch norm's `gamma / sqrt(var + eps)`).
    pub scale: Option<&'a [f32]>,
    pub bias: Option<&'a [f32]>,
    /// Added elementwise; the same shape as the output.
    pub residual: Option<&'a [f32]>,
    pub relu: bool,
}

/// The forward pass into `out`. Stride-1 3x3 convs with enough output take the Winograd path,
/// with the weights' transform from `winograd_cache` when the caller keeps one.
fn forward_slices(
    g: &ConvGeom,
    x: &[f32],
    w: &[f32],
    epi: Epilogue<'_>,
    out: &mut [MaybeUninit<f32>],
    cache: Option<&WeightCache>,
) {
    if super::direct::suits(g) {
        return super::direct::forward(g, x, w, epi, out, cache.map(|c| &c.grouped));
    }
    if super::dense::suits(g) {
        return super::dense::forward(g, x, w, epi, out);
    }
    if super::few_inputs::suits(g) {
        return super::few_inputs::forward(g, x, w, epi, out);
    }
    if super::winograd::suits(g, cache.is_some()) {
        use super::winograd::Weights;
        let transform = || super::winograd::transform_weights(w, g.cout, g.cin);
        let u = match cache {
            // The products of few tiles (16 at 14x14, batch 1) are where the `gemm` crate's
            // 16-row tail kernel ran most of the time.
            Some(cache) if super::packed::available() => Weights::Packed(
                cache.winograd_packed.get_or_init(|| super::winograd::pack_transformed(&transform(), g.cout, g.cin)),
            ),
            Some(cache) => Weights::Plain(cache.winograd.get_or_init(transform)),
            None => return super::winograd::forward(g, x, Weights::Plain(&transform()), epi, out),
        };
        return super::winograd::forward(g, x, u, epi, out);
    }
    if let Some(cache) = cache.filter(|_| super::packed::suits(g)) {
        let packed = cache.packed.get_or_init(|| super::packed::PackedWeights::pack(w, g.cout, g.k()));
        return super::packed::forward(g, x, packed, epi, out);
    }
    let nb = g.images_per_block();
    if nb > 1 {
        return forward_blocks(g, x, w, epi, out, nb);
    }
    let has_epilogue = epi.scale.is_some() || epi.bias.is_some() || epi.residual.is_some() || epi.relu;
    let (ohw, k, tile, tiles) = (g.out_hw(), g.k(), g.tile(), g.tiles());
    let items = g.n * tiles;
    let par = parallelism(items);
    let out_ptr = SyncPtr(out.as_mut_ptr().cast());
    let rows_all = g.cin * g.kh * g.kw;
    let run_item = |item: usize, col: &mut Scratch| {
        let (ni, ti) = (item / tiles, item % tiles);
        let (p0, p1) = (ti * tile, ((ti + 1) * tile).min(ohw));
        let len = p1 - p0;
        let image = &x[ni * g.cin * g.in_hw()..(ni + 1) * g.cin * g.in_hw()];
        if !g.pointwise() {
            col.at_least(rows_all * len);
            im2col_all(g, image, p0, p1, col, !matches!(par, Parallelism::None));
        }
        let out_base = ni * g.cout * ohw;
        let col: &[f32] = col;
        // Group gi's product over the item's columns `q` (counted from p0).
        let group_product = |gi: usize, q: Range<usize>, gemm_par: Parallelism| {
            let lhs = MatRef::of(w, gi * g.cout_g * k, g.cout_g, k, k, 1);
            let rhs = if g.pointwise() {
                MatRef::of(image, gi * g.cin_g * g.in_hw() + p0 + q.start, k, q.len(), g.in_hw(), 1)
            } else {
                MatRef::of(col, gi * k * len + q.start, k, q.len(), len, 1)
            };
            let dst = out_ptr.get().wrapping_add(out_base + gi * g.cout_g * ohw + p0 + q.start);
            // SAFETY: item (ni, ti) owns columns p0..p1 of image ni's output rows; group gi
            // its own rows of them; callers share out disjoint `q`.
            unsafe { product(dst, ohw as isize, lhs, rhs, false, gemm_par, g.small()) };
        };
        // Channel c's epilogue over the item's columns `q`.
        let channel_epilogue = |c: usize, q: Range<usize>| {
            let start = out_base + c * ohw + p0 + q.start;
            // SAFETY: the same disjoint block as the GEMM above, one row per call.
            let row = unsafe { std::slice::from_raw_parts_mut(out_ptr.get().add(start), q.len()) };
            apply_epilogue(&epi, row, start, c);
        };
        let few_items = !matches!(par, Parallelism::None);
        if few_items && g.p.groups > 1 {
            // Too few items to share out, but the groups are independent products (ResNeXt's
            // 32 small ones would otherwise run one after another on one thread).
            (0..g.p.groups).into_par_iter().for_each(|gi| {
                group_product(gi, 0..len, Parallelism::None);
                if has_epilogue {
                    (gi * g.cout_g..(gi + 1) * g.cout_g).for_each(|c| channel_epilogue(c, 0..len));
                }
            });
            return;
        }
        if few_items && has_epilogue && g.p.groups == 1 && len >= 2 * MIN_BAND {
            // Each thread's band of columns, its product and then its epilogue: the sums are
            // still in that core's cache. (As a product split across the threads followed by a
            // parallel pass over whole rows, each row was half written by the other core: the
            // batch-1 1x1 convs of ResNet-50's first stage 3-10% slower, timed alone.)
            let bands = rayon::current_num_threads().min(len / MIN_BAND);
            (0..bands).into_par_iter().for_each(|bi| {
                let q = bi * len / bands..(bi + 1) * len / bands;
                group_product(0, q.clone(), Parallelism::None);
                (0..g.cout).for_each(|c| channel_epilogue(c, q.clone()));
            });
            return;
        }
        for gi in 0..g.p.groups {
            group_product(gi, 0..len, par);
        }
        if has_epilogue && few_items {
            (0..g.cout).into_par_iter().with_min_len(8).for_each(|c| channel_epilogue(c, 0..len));
        } else if has_epilogue {
            (0..g.cout).for_each(|c| channel_epilogue(c, 0..len));
        }
    };
    if matches!(par, Parallelism::None) {
        (0..items).into_par_iter().for_each_init(Scratch::take, |col, item| run_item(item, col));
    } else {
        let mut col = Scratch::take();
        (0..items).for_each(|item| run_item(item, &mut col));
    }
}

/// The forward pass with work items of `nb` whole images: one GEMM per group over all their
/// columns into a scratch block, then each image's rows copied out with the epilogue.
fn forward_blocks(g: &ConvGeom, x: &[f32], w: &[f32], epi: Epilogue<'_>, out: &mut [MaybeUninit<f32>], nb: usize) {
    let (ohw, k) = (g.out_hw(), g.k());
    let items = g.n.div_ceil(nb);
    let par = parallelism(items);
    let run_item = |(item, out_block): (usize, &mut [MaybeUninit<f32>]), bufs: &mut (Scratch, Scratch)| {
        let (col, tmp) = bufs;
        let (i0, count) = (item * nb, out_block.len() / (g.cout * ohw));
        let cols = count * ohw;
        gather_block(g, x, i0, count, col);
        tmp.at_least(g.cout * cols);
        for gi in 0..g.p.groups {
            let lhs = MatRef::of(w, gi * g.cout_g * k, g.cout_g, k, k, 1);
            let rhs = MatRef::of(col, gi * k * cols, k, cols, cols, 1);
            let dst = tmp[gi * g.cout_g * cols..].as_mut_ptr();
            // SAFETY: group gi's rows of this item's own scratch block.
            unsafe { product(dst, cols as isize, lhs, rhs, false, par, g.small()) };
        }
        for b in 0..count {
            for c in 0..g.cout {
                let at = (b * g.cout + c) * ohw;
                let row = init_from(&mut out_block[at..at + ohw], &tmp[c * cols + b * ohw..c * cols + (b + 1) * ohw]);
                apply_epilogue(&epi, row, (i0 * g.cout) * ohw + at, c);
            }
        }
    };
    let block_len = nb * g.cout * ohw;
    if matches!(par, Parallelism::None) {
        out.par_chunks_mut(block_len)
            .enumerate()
            .for_each_init(|| (Scratch::take(), Scratch::take()), |bufs, item| run_item(item, bufs));
    } else {
        let mut bufs = (Scratch::take(), Scratch::take());
        out.chunks_mut(block_len).enumerate().for_each(|item| run_item(item, &mut bufs));
    }
}

fn check_bias(op: &'static str, bias: Option<&Tensor>, cout: usize) -> Result<()> {
    check_per_channel(op, "bias", bias, cout)
}

fn check_per_channel(op: &'static str, what: &str, t: Option<&Tensor>, cout: usize) -> Result<()> {
    match t {
        Some(t) if t.shape() != [cout] => Err(bad_shape(op, t.shape(), format!("the {what} must be [{cout}]"))),
        _ => Ok(()),
    }
}

/// `torch.nn.functional.conv2d`: input `[n, cin, h, w]`, weight `[cout, cin / groups, kh, kw]`,
/// optional bias `[cout]`.
pub fn conv2d(input: &Tensor, weight: &Tensor, bias: Option<&Tensor>, p: Conv2dParams) -> Result<Tensor> {
    conv2d_fused(input, weight, bias, p, None, false)
}

/// Convolution followed, in the same pass over each output tile, by `+ bias`, `+ residual` and
/// an optional ReLU. With a batch-norm folded into `weight` and `bias`
/// ([`crate::fold_batch_norm`]) this is inference's conv + BN (+ add) + ReLU in one kernel.
pub fn conv2d_fused(
    input: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    p: Conv2dParams,
    residual: Option<&Tensor>,
    relu: bool,
) -> Result<Tensor> {
    fused(input, weight, None, bias, p, residual, relu, None)
}

/// Convolution followed, in the same pass over each output tile, by `* scale[c] + shift[c]`
/// (per output channel), `+ residual` and an optional ReLU: an evaluation-mode batch norm
/// (`scale = gamma / sqrt(running_var + eps)`, `shift = beta - running_mean * scale`) applied
/// without folding it into the weights first, for models whose weights may change between calls.
pub fn conv2d_affine(
    input: &Tensor,
    weight: &Tensor,
    scale: &Tensor,
    shift: &Tensor,
    p: Conv2dParams,
    residual: Option<&Tensor>,
    relu: bool,
) -> Result<Tensor> {
    fused(input, weight, Some(scale), Some(shift), p, residual, relu, None)
}

#[allow(clippy::too_many_arguments)]
fn fused(
    input: &Tensor,
    weight: &Tensor,
    scale: Option<&Tensor>,
    bias: Option<&Tensor>,
    p: Conv2dParams,
    residual: Option<&Tensor>,
    relu: bool,
    cache: Option<&WeightCache>,
) -> Result<Tensor> {
    const OP: &str = "conv2d";
    let g = ConvGeom::new(OP, input.shape(), weight.shape(), p)?;
    check_bias(OP, bias, g.cout)?;
    check_per_channel(OP, "scale", scale, g.cout)?;
    if let Some(r) = residual {
        if r.shape() != g.out_shape() {
            return Err(mismatch("conv2d residual", r.shape(), &g.out_shape()));
        }
    }
    backend_for(OP, &[Some(input), Some(weight), scale, bias, residual])?.conv2d(
        &g,
        input,
        weight,
        ConvEpilogue { scale, bias, residual, relu },
        cache,
    )
}

/// What a convolution applies to its output in the same pass: `* scale[c] + bias[c]`,
/// `+ residual`, ReLU, each optional (tensors already checked against the output's shape).
#[derive(Clone, Copy, Default)]
pub(crate) struct ConvEpilogue<'a> {
    pub scale: Option<&'a Tensor>,
    pub bias: Option<&'a Tensor>,
    pub residual: Option<&'a Tensor>,
    pub relu: bool,
}

/// A convolution whose weights are fixed (inference): whatever it derives from them — the
/// Winograd transform of a 3x3 kernel, the weights packed for the AVX-512 product — is computed
/// on first use and kept, not redone per call.
#[derive(Debug)]
pub struct PreparedConv {
    weight: Tensor,
    bias: Option<Tensor>,
    params: Conv2dParams,
    cache: WeightCache,
}

/// What a prepared convolution derives from its fixed weights, each computed on first use.
#[derive(Debug, Default)]
pub(crate) struct WeightCache {
    /// The Winograd transform of a 3x3 kernel, `[36][cout][cin]`.
    winograd: OnceLock<Vec<f32>>,
    /// The same, each position's matrix packed (AVX-512; one or the other is made).
    winograd_packed: OnceLock<Vec<super::packed::PackedWeights>>,
    /// The weights as a `cout x cin·kh·kw` matrix in [`packed`](super::packed)'s panels.
    packed: OnceLock<super::packed::PackedWeights>,
    /// A grouped conv's weights packed for [`direct`](super::direct)'s AVX-512 kernel.
    grouped: OnceLock<Vec<f32>>,
}

impl PreparedConv {
    /// Wraps `weight` `[cout, cin / groups, kh, kw]` and an optional bias `[cout]`.
    pub fn new(weight: Tensor, bias: Option<Tensor>, params: Conv2dParams) -> Result<PreparedConv> {
        const OP: &str = "PreparedConv";
        if weight.rank() != 4 {
            return Err(bad_shape(OP, weight.shape(), "the weight must be 4-D [out, in / groups, kh, kw]"));
        }
        check_bias(OP, bias.as_ref(), weight.shape()[0])?;
        let weight = weight.contiguous();
        Ok(PreparedConv { weight, bias, params, cache: WeightCache::default() })
    }

    /// The weight.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// [`conv2d_fused`] with these weights.
    pub fn forward(&self, input: &Tensor, residual: Option<&Tensor>, relu: bool) -> Result<Tensor> {
        fused(input, &self.weight, None, self.bias.as_ref(), self.params, residual, relu, Some(&self.cache))
    }
}

/// The input gradient with work items of `nb` whole images: their output gradients side by
/// side, one GEMM per group (`W_gᵀ dy`), then each image's columns scattered back (col2im).
fn backward_input_blocks(g: &ConvGeom, dy: &[f32], w: &[f32], dx: &mut [MaybeUninit<f32>], nb: usize) {
    let (ohw, k, in_hw) = (g.out_hw(), g.k(), g.in_hw());
    let items = g.n.div_ceil(nb);
    let par = parallelism(items);
    let image_len = g.cin * in_hw;
    let run_item = |(item, dx_block): (usize, &mut [MaybeUninit<f32>]), bufs: &mut (Scratch, Scratch)| {
        let (dys, col) = bufs;
        let (i0, count) = (item * nb, dx_block.len() / image_len);
        let cols = count * ohw;
        gather_planes(dy, g.cout, ohw, i0, count, dys);
        col.at_least(g.cin * g.kh * g.kw * cols);
        for gi in 0..g.p.groups {
            let lhs = MatRef::of(w, gi * g.cout_g * k, k, g.cout_g, 1, k);
            let rhs = MatRef::of(dys, gi * g.cout_g * cols, g.cout_g, cols, cols, 1);
            let dst = col[gi * k * cols..].as_mut_ptr();
            // SAFETY: group gi's rows of this item's own scratch block.
            unsafe { product(dst, cols as isize, lhs, rhs, false, par, g.small()) };
        }
        for (b, dx_img) in dx_block.chunks_mut(image_len).enumerate() {
            if g.pointwise() {
                for c in 0..g.cin {
                    init_from(
                        &mut dx_img[c * in_hw..(c + 1) * in_hw],
                        &col[c * cols + b * ohw..c * cols + (b + 1) * ohw],
                    );
                }
            } else {
                col2im(g, &col[b * ohw..], cols, 0..g.cin, 0, ohw, zeroed(dx_img));
            }
        }
    };
    if matches!(par, Parallelism::None) {
        dx.par_chunks_mut(nb * image_len)
            .enumerate()
            .for_each_init(|| (Scratch::take(), Scratch::take()), |bufs, item| run_item(item, bufs));
    } else {
        let mut bufs = (Scratch::take(), Scratch::take());
        dx.chunks_mut(nb * image_len).enumerate().for_each(|item| run_item(item, &mut bufs));
    }
}

/// For a stride-1, undilated, ungrouped 3x3 conv with padding of at most 2: the conv that maps
/// its output gradient to its input gradient.
fn transposed_3x3(g: &ConvGeom) -> Option<ConvGeom> {
    let plain = g.kh == 3 && g.kw == 3 && g.p.stride == [1, 1] && g.p.dilation == [1, 1] && g.p.groups == 1;
    if !plain || g.p.padding[0] > 2 || g.p.padding[1] > 2 {
        return None;
    }
    let p = Conv2dParams { padding: [2 - g.p.padding[0], 2 - g.p.padding[1]], ..g.p };
    let t = ConvGeom::new("conv2d_backward_input", &[g.n, g.cout, g.oh, g.ow], &[g.cin, g.cout, 3, 3], p).ok()?;
    (t.oh == g.h && t.ow == g.w).then_some(t)
}

/// Gradient of [`conv2d`] with respect to its input, for an input of `input_shape`.
pub fn conv2d_backward_input(
    grad_output: &Tensor,
    weight: &Tensor,
    input_shape: &[usize],
    p: Conv2dParams,
) -> Result<Tensor> {
    const OP: &str = "conv2d_backward_input";
    let g = ConvGeom::new(OP, input_shape, weight.shape(), p)?;
    if grad_output.shape() != g.out_shape() {
        return Err(mismatch(OP, grad_output.shape(), &g.out_shape()));
    }
    backend_for(OP, &[Some(grad_output), Some(weight)])?.conv2d_backward_input(&g, grad_output, weight)
}

/// Gradient of [`conv2d`] with respect to its weight, for a weight of `weight_shape`.
pub fn conv2d_backward_weight(
    input: &Tensor,
    grad_output: &Tensor,
    weight_shape: &[usize],
    p: Conv2dParams,
) -> Result<Tensor> {
    const OP: &str = "conv2d_backward_weight";
    let g = ConvGeom::new(OP, input.shape(), weight_shape, p)?;
    if grad_output.shape() != g.out_shape() {
        return Err(mismatch(OP, grad_output.shape(), &g.out_shape()));
    }
    backend_for(OP, &[Some(input), Some(grad_output)])?.conv2d_backward_weight(&g, input, grad_output)
}

/// Gradient of [`conv2d`] with respect to its bias: `grad_output` summed over batch and space.
pub fn conv2d_backward_bias(grad_output: &Tensor) -> Result<Tensor> {
    const OP: &str = "conv2d_backward_bias";
    let s = grad_output.shape();
    if s.len() != 4 {
        return Err(bad_shape(OP, s, "the output gradient must be 4-D"));
    }
    backend_of(OP, grad_output)?.conv2d_backward_bias(grad_output)
}

/// Multiply-accumulates of a conv forward pass (`n * cout * oh * ow * cin / groups * kh * kw`).
pub fn conv2d_macs(input_shape: &[usize], weight_shape: &[usize], p: Conv2dParams) -> Result<usize> {
    Ok(ConvGeom::new("conv2d_macs", input_shape, weight_shape, p)?.macs())
}

/// The output shape of [`conv2d`] for the given input and weight shapes.
pub fn conv2d_output_shape(input_shape: &[usize], weight_shape: &[usize], p: Conv2dParams) -> Result<[usize; 4]> {
    Ok(ConvGeom::new("conv2d_output_shape", input_shape, weight_shape, p)?.out_shape())
}

impl ConvOps for Host {
    fn conv2d(
        &self,
        g: &ConvGeom,
        input: &Tensor,
        weight: &Tensor,
        epilogue: ConvEpilogue<'_>,
        cache: Option<&WeightCache>,
    ) -> Result<Tensor> {
        const OP: &str = "conv2d";
        let ConvEpilogue { scale, bias, residual, relu } = epilogue;
        let x = input.f32_data(OP)?;
        let w = weight.f32_data(OP)?;
        let sc = scale.map(|s| s.f32_data(OP)).transpose()?;
        let b = bias.map(|b| b.f32_data(OP)).transpose()?;
        let r = residual.map(|r| r.f32_data(OP)).transpose()?;
        let len = g.out_shape().iter().product();
        // Not zero-filled: every forward path writes each output once (at batch 1, zeroing the
        // outputs first was 6% of ResNet-50's inference).
        let mut out = Vec::with_capacity(len);
        let epi = Epilogue { scale: sc.as_deref(), bias: b.as_deref(), residual: r.as_deref(), relu };
        forward_slices(g, &x, &w, epi, &mut out.spare_capacity_mut()[..len], cache);
        // SAFETY: forward_slices wrote all `len` elements (each path writes every output).
        unsafe { out.set_len(len) };
        Ok(Tensor::from_vec_unchecked(out, &g.out_shape()))
    }
    fn conv2d_backward_input(&self, g: &ConvGeom, grad_output: &Tensor, weight: &Tensor) -> Result<Tensor> {
        const OP: &str = "conv2d_backward_input";
        let input_shape = &g.in_shape()[..];
        let dy = grad_output.f32_data(OP)?;
        let w = weight.f32_data(OP)?;
        let (ohw, k, in_hw) = (g.out_hw(), g.k(), g.in_hw());
        let image_len = g.cin * in_hw;
        if super::dense::suits(g) {
            // SAFETY: the dense path writes every element of the gradient.
            let dx = unsafe { written_by(g.n * image_len, |dx| super::dense::backward_input(g, &dy, &w, dx)) };
            return Ok(Tensor::from_vec_unchecked(dx, input_shape));
        }

        // A stride-1 3x3 conv's input gradient is itself such a conv: of the output gradient with
        // the kernel flipped and its channels swapped, padded by 2 - padding. That one can take
        // the Winograd path.
        if let Some(t) = transposed_3x3(g) {
            if super::winograd::suits(&t, false) {
                let mut flipped = vec![0f32; w.len()];
                for co in 0..g.cout {
                    for ci in 0..g.cin {
                        for tap in 0..9 {
                            flipped[(ci * g.cout + co) * 9 + tap] = w[(co * g.cin + ci) * 9 + 8 - tap];
                        }
                    }
                }
                let u = super::winograd::transform_weights(&flipped, t.cout, t.cin);
                let len = g.n * image_len;
                // Not zero-filled: the Winograd forward pass writes every output once.
                let mut dx = Vec::with_capacity(len);
                super::winograd::forward(
                    &t,
                    &dy,
                    super::winograd::Weights::Plain(&u),
                    Epilogue::default(),
                    &mut dx.spare_capacity_mut()[..len],
                );
                // SAFETY: it wrote all `len` elements.
                unsafe { dx.set_len(len) };
                return Ok(Tensor::from_vec_unchecked(dx, input_shape));
            }
        }
        // Not zero-filled here: the 1x1 paths write every element, and the col2im paths, which
        // add into the gradient, zero each image's part in the thread that then adds into it,
        // just before (a separate zeroing pass was 1.5% of a ResNet-50 training step, with
        // the page faults of fresh memory on top).
        let fill = |dx: &mut [MaybeUninit<f32>]| {
            let nb = g.images_per_block();
            if nb > 1 {
                backward_input_blocks(g, &dy, &w, dx, nb);
            } else if g.pointwise() {
                // dx[n, g] = W_g^T dy[n, g], one GEMM per (image, tile, group), disjoint outputs.
                let (tile, tiles) = (g.tile(), g.tiles());
                let items = g.n * tiles;
                let par = parallelism(items);
                let dx_ptr = SyncPtr(dx.as_mut_ptr().cast());
                let run = |item: usize| {
                    let (ni, ti) = (item / tiles, item % tiles);
                    let (p0, p1) = (ti * tile, ((ti + 1) * tile).min(ohw));
                    for gi in 0..g.p.groups {
                        let lhs = MatRef::of(&w, gi * g.cout_g * k, k, g.cout_g, 1, k);
                        let rhs = MatRef::of(&dy, (ni * g.cout + gi * g.cout_g) * ohw + p0, g.cout_g, p1 - p0, ohw, 1);
                        let dst = dx_ptr.get().wrapping_add(ni * image_len + gi * g.cin_g * in_hw + p0);
                        // SAFETY: (image, tile) items write disjoint column ranges.
                        unsafe { product(dst, in_hw as isize, lhs, rhs, false, par, g.small()) };
                    }
                };
                if matches!(par, Parallelism::None) {
                    (0..items).into_par_iter().for_each(run);
                } else {
                    (0..items).for_each(run);
                }
            } else {
                // Per image: dcol = W^T dy, then col2im. Tiles of one image overlap in dx, so images are
                // the unit of parallel work.
                let (tile, tiles) = (g.tile(), g.tiles());
                let par = parallelism(g.n);
                let rows_all = g.cin * g.kh * g.kw;
                let run = |(ni, dx_img): (usize, &mut [MaybeUninit<f32>]), col: &mut Scratch| {
                    let dx_img = zeroed(dx_img);
                    for ti in 0..tiles {
                        let (p0, p1) = (ti * tile, ((ti + 1) * tile).min(ohw));
                        let len = p1 - p0;
                        col.at_least(rows_all * len);
                        for gi in 0..g.p.groups {
                            let lhs = MatRef::of(&w, gi * g.cout_g * k, k, g.cout_g, 1, k);
                            let rhs = MatRef::of(&dy, (ni * g.cout + gi * g.cout_g) * ohw + p0, g.cout_g, len, ohw, 1);
                            let dst = col[gi * k * len..].as_mut_ptr();
                            // SAFETY: dst is this group's k x len block of the thread's own buffer.
                            unsafe { product(dst, len as isize, lhs, rhs, false, par, g.small()) };
                        }
                        col2im(g, col, len, 0..g.cin, p0, p1, dx_img);
                    }
                };
                if matches!(par, Parallelism::None) {
                    dx.par_chunks_mut(image_len).enumerate().for_each_init(Scratch::take, |col, item| run(item, col));
                } else {
                    let mut col = Scratch::take();
                    dx.chunks_mut(image_len).enumerate().for_each(|item| run(item, &mut col));
                }
            }
        };
        // SAFETY: every path of `fill` writes all elements (the products of the 1x1 paths cover
        // every image, channel and position; the col2im paths zero theirs first).
        let dx = unsafe { written_by(g.n * image_len, fill) };
        Ok(Tensor::from_vec_unchecked(dx, input_shape))
    }
    fn conv2d_backward_weight(&self, g: &ConvGeom, input: &Tensor, grad_output: &Tensor) -> Result<Tensor> {
        const OP: &str = "conv2d_backward_weight";
        let weight_shape = &g.weight_shape()[..];
        let x = input.f32_data(OP)?;
        let dy = grad_output.f32_data(OP)?;
        if super::dense::suits(g) {
            return Ok(Tensor::from_vec_unchecked(super::dense::backward_weight(g, &x, &dy), weight_shape));
        }
        if super::winograd::suits_weight_gradient(g) {
            return Ok(Tensor::from_vec_unchecked(super::winograd::backward_weight(g, &x, &dy), weight_shape));
        }
        let (ohw, k, in_hw) = (g.out_hw(), g.k(), g.in_hw());
        let nb = g.images_per_block();
        // Items: (image, tile) pairs, or blocks of `nb` whole images when outputs are small.
        let (tile, tiles) = (g.tile(), g.tiles());
        let items = if nb > 1 { g.n.div_ceil(nb) } else { g.n * tiles };
        let par = parallelism(items);
        let wlen = g.cout * k;
        let rows_all = g.cin * g.kh * g.kw;
        // dW_g += dy[items' columns] * col_g[items' columns]^T, accumulated into `acc`.
        // `acc` holds `wlen` floats; `first`: whether this is the part's first item, whose
        // products write the accumulator instead of adding to it (so it is not zero-filled).
        let run = |item: usize, bufs: &mut (Scratch, Scratch), acc: SyncPtr, first: bool| {
            let (col, dys) = bufs;
            if nb > 1 {
                let (i0, count) = (item * nb, nb.min(g.n - item * nb));
                let cols = count * ohw;
                gather_block(g, &x, i0, count, col);
                gather_planes(&dy, g.cout, ohw, i0, count, dys);
                for gi in 0..g.p.groups {
                    let lhs = MatRef::of(dys, gi * g.cout_g * cols, g.cout_g, cols, cols, 1);
                    let rhs = MatRef::of(col, gi * k * cols, cols, k, 1, cols);
                    let dst = acc.get().wrapping_add(gi * g.cout_g * k);
                    // SAFETY: dst is group gi's block of this worker's own accumulator.
                    unsafe { product(dst, k as isize, lhs, rhs, !first, par, g.small()) };
                }
                return;
            }
            let (ni, ti) = (item / tiles, item % tiles);
            let (p0, p1) = (ti * tile, ((ti + 1) * tile).min(ohw));
            let len = p1 - p0;
            let image = &x[ni * g.cin * in_hw..(ni + 1) * g.cin * in_hw];
            if !g.pointwise() {
                col.at_least(rows_all * len);
                im2col_all(g, image, p0, p1, col, !matches!(par, Parallelism::None));
            }
            for gi in 0..g.p.groups {
                let lhs = MatRef::of(&dy, (ni * g.cout + gi * g.cout_g) * ohw + p0, g.cout_g, len, ohw, 1);
                let rhs = if g.pointwise() {
                    MatRef::of(image, gi * g.cin_g * in_hw + p0, len, k, 1, in_hw)
                } else {
                    MatRef::of(col, gi * k * len, len, k, 1, len)
                };
                let dst = acc.get().wrapping_add(gi * g.cout_g * k);
                // SAFETY: dst is group gi's block of this worker's own accumulator.
                unsafe { product(dst, k as isize, lhs, rhs, !first, par, g.small()) };
            }
        };
        // Each thread sums a fixed, contiguous range of items, and the partial sums are added in
        // range order: the result does not depend on which thread ran what (rayon's `fold` splits
        // by work stealing, which made the sum's rounding vary from run to run).
        let parts = if matches!(par, Parallelism::None) { rayon::current_num_threads().min(items).max(1) } else { 1 };
        let partials: Vec<Vec<f32>> = (0..parts)
            .into_par_iter()
            .map(|part| {
                let range = part * items / parts..(part + 1) * items / parts;
                if range.is_empty() {
                    return vec![0f32; wlen];
                }
                let mut acc = Vec::with_capacity(wlen);
                let ptr = SyncPtr(acc.as_mut_ptr());
                let mut bufs = (Scratch::take(), Scratch::take());
                for item in range.clone() {
                    run(item, &mut bufs, ptr, item == range.start);
                }
                // SAFETY: the first item's products wrote every group's block: all `wlen`.
                unsafe { acc.set_len(wlen) };
                acc
            })
            .collect();
        let mut partials = partials.into_iter();
        let mut dw = partials.next().unwrap_or_else(|| vec![0f32; wlen]);
        for p in partials {
            dw.iter_mut().zip(&p).for_each(|(a, b)| *a += b);
        }
        Ok(Tensor::from_vec_unchecked(dw, weight_shape))
    }
    fn conv2d_backward_bias(&self, grad_output: &Tensor) -> Result<Tensor> {
        const OP: &str = "conv2d_backward_bias";
        let s = grad_output.shape();
        let (n, c, hw) = (s[0], s[1], s[2] * s[3]);
        let dy = grad_output.f32_data(OP)?;
        let db: Vec<f32> = (0..c)
            .into_par_iter()
            .map(|ci| {
                (0..n)
                    .map(|ni| dy[(ni * c + ci) * hw..(ni * c + ci + 1) * hw].iter().map(|&v| v as f64).sum::<f64>())
                    .sum::<f64>() as f32
            })
            .collect();
        Ok(Tensor::from_vec_unchecked(db, &[c]))
    }
}
