//! Winograd's minimal filtering F(4x4, 3x3) for stride-1, undilated, ungrouped 3x3 convolutions
//! (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2015).
//!
//! Each 4x4 block of output is computed from a 6x6 patch of input: the patch is transformed
//! (`V = Bᵀ d B`), the 3x3 kernel likewise once (`U = G g Gᵀ`), the 36 transformed positions are
//! multiplied independently — summed over input channels, that is 36 GEMMs
//! `M[ξ] = U[ξ] (cout x cin) · V[ξ] (cin x tiles)` — and the product is transformed back
//! (`Y = Aᵀ M A`). That is 36 multiplies per 16 outputs instead of 144: a quarter of direct
//! convolution's arithmetic, at the price of transforms and somewhat larger rounding error
//! (measured against the f64 reference in `tests/conv.rs`, and within the ResNet parity
//! tolerances).
//!
//! Tiles of all images are cut into chunks; one chunk's transformed input and products stay
//! within a few MiB, and chunks are shared out across threads. The transforms run row by row:
//! an input (or output) row is read (written) once for a run of tiles side by side, and the
//! 1-D transforms then run over a block of tiles, one tile per vector lane.

use super::conv::{ConvGeom, Epilogue};
use super::matmul::{parallelism, product, MatRef, SyncPtr};
use super::packed::{self, PackedWeights};
use super::scratch::Scratch;
use gemm::Parallelism;
use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::ops::Range;

/// Positions of a transformed tile.
const T: usize = 36;
/// Most floats one chunk's transformed input (or output) holds (4 MiB).
const CHUNK_BUDGET: usize = 1 << 20;
/// Fewer tiles than this in all: the 36 products would be matrix-vector shaped, and streaming
/// the transformed weights (4x the size of the kernel) would cost more than it saves. Where the
/// im2col products run the `gemm` crate's AVX-512 kernels, ResNet's 7x7 maps at batch 1 (four
/// tiles) lose: `infer-resnet18-b1` took 28.1 ms with them on Winograd and 20.9 ms without, on an
/// AVX-512 Xeon (its 512-channel layers read 36 MB of transformed weights each, against 9.4 MB).
/// With AVX2 products they gained (512 channels 2.9 -> 2.4 ms on two threads, AMD EPYC Zen 3).
fn min_tiles() -> usize {
    if crate::simd::detected_simd_level() >= crate::simd::SimdLevel::Avx512 {
        8
    } else {
        4
    }
}
/// [`min_tiles`] when the weights' transform is computed on every call.
const MIN_TILES_PER_CALL: usize = 32;
/// Fewest tiles per chunk when chunks are made for the threads rather than by the budget.
const MIN_CHUNK: usize = 64;
/// Bytes of transformed weights small enough to stay in a core's L2 cache beside a chunk.
const SMALL_WEIGHTS: usize = 1 << 20;

/// Whether the convolution is one Winograd computes, and is worth it for: enough tiles that
/// the 36 products are real matrix products, and a fill of the 4x4 tiles high enough that their
/// arithmetic (36 per tile, per channel pair) stays well under direct convolution's (9 per
/// output): small feature maps waste most of each tile.
///
/// `kept`: whether the transformed weights are kept across calls ([`PreparedConv`]). When they
/// are computed per call, their cost (a 512-channel kernel's transform is 9.4 M floats) needs
/// the old, larger tile count to pay off.
///
/// [`PreparedConv`]: super::conv::PreparedConv
pub(crate) fn suits(g: &ConvGeom, kept: bool) -> bool {
    let plain = g.kh == 3 && g.kw == 3 && g.p.stride == [1, 1] && g.p.dilation == [1, 1] && g.p.groups == 1;
    let tiles = g.n * g.oh.div_ceil(4) * g.ow.div_ceil(4);
    let outputs = g.n * g.oh * g.ow;
    let min_tiles = if kept { min_tiles() } else { MIN_TILES_PER_CALL };
    plain && tiles >= min_tiles && 36 * tiles * 10 <= 9 * outputs * 6
}

/// `G g` for one column of three kernel taps (and, applied to rows, `(G g) Gᵀ`).
#[inline(always)]
fn kernel_1d(k: [f32; 3]) -> [f32; 6] {
    let (a, b, c) = (k[0], k[1], k[2]);
    let (sum, odd) = (a + c, b);
    [
        0.25 * a,
        -(sum + odd) / 6.0,
        -(sum - odd) / 6.0,
        (a + 2.0 * b + 4.0 * c) / 24.0,
        (a - 2.0 * b + 4.0 * c) / 24.0,
        c,
    ]
}

/// The transform of output channel `co`'s kernels into `local` (`[36][cin]`).
#[inline(always)]
fn transform_kernels_impl<const FMA: bool>(w: &[f32], co: usize, cin: usize, local: &mut [f32]) {
    for c0 in (0..cin).step_by(L) {
        let lanes = L.min(cin - c0);
        // g[r][c][lane]: tap (r, c) of input channel c0 + lane.
        let mut g = [[[0f32; L]; 3]; 3];
        for l in 0..lanes {
            let k = &w[(co * cin + c0 + l) * 9..(co * cin + c0 + l + 1) * 9];
            for r in 0..3 {
                for c in 0..3 {
                    g[r][c][l] = k[r * 3 + c];
                }
            }
        }
        // Columns first (G g, 6x3), then rows ((G g) Gᵀ, 6x6).
        let mut cols = [[[0f32; L]; 3]; 6];
        for c in 0..3 {
            let t = lanewise(kernel_1d, [&g[0][c], &g[1][c], &g[2][c]]);
            for i in 0..6 {
                cols[i][c] = t[i];
            }
        }
        for (i, row) in cols.iter().enumerate() {
            let t = lanewise(kernel_1d, [&row[0], &row[1], &row[2]]);
            for (j, val) in t.iter().enumerate() {
                let at = (i * 6 + j) * cin + c0;
                put_lanes(&mut local[at..], val, lanes);
            }
        }
    }
}

crate::multiversion! {
    /// [`transform_kernels_impl`], compiled for the CPU's vector extension ([`crate::simd`]).
    unsafe fn transform_kernels(w: &[f32], co: usize, cin: usize, local: &mut [f32]) = transform_kernels_impl, up to Avx2;
}

/// `U = G g Gᵀ` for every (output, input) channel pair: `[36][cout][cin]`.
pub(crate) fn transform_weights(w: &[f32], cout: usize, cin: usize) -> Vec<f32> {
    let plane = cout * cin;
    // Not zero-filled: every element is written below (for the 512-channel convs of a training
    // step the zeroing was a 38 MB pass, twice per conv: forward and input gradient).
    let mut u: Vec<f32> = Vec::with_capacity(T * plane);
    let ptr = SyncPtr(u.as_mut_ptr());
    // Parallel over output channels. Each builds its 36 rows of `cin` values locally and then
    // writes them as 36 contiguous runs (not 36 scattered floats per input channel).
    (0..cout).into_par_iter().for_each_init(Vec::new, |local: &mut Vec<f32>, co| {
        local.resize(T * cin, 0.0);
        // SAFETY: a plain slice computation; no contract beyond the types.
        unsafe { transform_kernels(w, co, cin, local) };
        for xi in 0..T {
            // SAFETY: row `co` of every position's plane is written by this iteration only.
            unsafe {
                std::ptr::copy_nonoverlapping(local[xi * cin..].as_ptr(), ptr.get().add(xi * plane + co * cin), cin)
            };
        }
    });
    // SAFETY: the loop above wrote rows `co` of all T planes for every `co < cout`: all of them.
    unsafe { u.set_len(T * plane) };
    u
}

/// `Bᵀ d` for one column of six values (and, applied to rows, `(Bᵀ d) B`).
#[inline(always)]
fn input_1d(d: [f32; 6]) -> [f32; 6] {
    [
        4.0 * d[0] - 5.0 * d[2] + d[4],
        -4.0 * (d[1] + d[2]) + d[3] + d[4],
        4.0 * (d[1] - d[2]) - d[3] + d[4],
        2.0 * (d[3] - d[1]) - d[2] + d[4],
        2.0 * (d[1] - d[3]) - d[2] + d[4],
        4.0 * d[1] - 5.0 * d[3] + d[5],
    ]
}

/// `Aᵀ m` for one column of six values.
#[inline(always)]
fn output_1d(m: [f32; 6]) -> [f32; 4] {
    let (a, b) = (m[1] + m[2], m[1] - m[2]);
    let (c, d) = (m[3] + m[4], m[3] - m[4]);
    [m[0] + a + c, b + 2.0 * d, a + 4.0 * c, b + 8.0 * d + m[5]]
}

/// Where the tiles are: per image `th x tw` tiles of 4x4 outputs.
#[derive(Clone, Copy)]
struct Tiling {
    tw: usize,
    per_image: usize,
    total: usize,
    chunk: usize,
}

impl Tiling {
    fn new(g: &ConvGeom) -> Tiling {
        let (th, tw) = (g.oh.div_ceil(4), g.ow.div_ceil(4));
        let per_image = th * tw;
        let total = g.n * per_image;
        let by_budget = (CHUNK_BUDGET / (T * g.cin.max(g.cout))).max(8);
        // Two chunks per thread keep every core busy, but each chunk streams all the transformed
        // weights: below MIN_CHUNK tiles per chunk, fewer chunks (down to one), whose 36
        // products are shared out instead.
        // Transformed weights that stay in the core's L2 cache cost little to stream per chunk:
        // there chunks of half as many tiles (ResNet's 64 -> 64 3x3 convs at batch 1, 196
        // tiles: 4 chunks run whole by the threads instead of 3 whose stages are shared out,
        // 484-536 -> 430-450 us alternately inside infer-resnet50-b1).
        let min_chunk = if T * g.cin * g.cout * 4 <= SMALL_WEIGHTS { MIN_CHUNK / 2 } else { MIN_CHUNK };
        let for_threads = (total / min_chunk).clamp(1, 2 * rayon::current_num_threads());
        let chunks = total.div_ceil(by_budget).max(for_threads).min(total);
        Tiling { tw, per_image, total, chunk: total.div_ceil(chunks) }
    }

    /// (image, tile row, tile column) of global tile `t`.
    fn locate(&self, t: usize) -> (usize, usize, usize) {
        let (ni, r) = (t / self.per_image, t % self.per_image);
        (ni, r / self.tw, r % self.tw)
    }
}

/// Floats between two transformed positions' planes of `channels x len` values. Padded by one
/// cache line so that the 36 planes, read and written together by the transforms, do not fall
/// into the same cache sets when the plane size is a multiple of 4 KiB.
fn plane_stride(channels: usize, len: usize) -> usize {
    (channels * len).div_ceil(16) * 16 + 16
}

/// Tiles transformed together, one per SIMD lane.
const L: usize = 8;
type Lanes = [f32; L];

/// A one-dimensional transform (`f`, on `I` values) applied to eight tiles or kernels at once,
/// one per lane: written lane by lane, vectorised by the compiler.
#[inline(always)]
fn lanewise<const I: usize, const O: usize>(f: impl Fn([f32; I]) -> [f32; O], x: [&Lanes; I]) -> [Lanes; O] {
    let mut o = [[0f32; L]; O];
    for k in 0..L {
        let t = f(std::array::from_fn(|i| x[i][k]));
        for (out, v) in o.iter_mut().zip(t) {
            out[k] = v;
        }
    }
    o
}

/// Copies the first `lanes` values; a whole group of eight compiles to one vector move rather
/// than a call to `memcpy`.
#[inline(always)]
fn put_lanes(dst: &mut [f32], src: &Lanes, lanes: usize) {
    if lanes == L {
        dst[..L].copy_from_slice(src);
    } else {
        dst[..lanes].copy_from_slice(&src[..lanes]);
    }
}

/// Tiles per block of the transforms: each block's intermediate rows stay in L1.
const TB: usize = 64;
/// Lanes of [`map_lanes`]' groups: two AVX2 registers.
const G: usize = 16;

/// `outs[j][t] = f(ins[0][t], ..)[j]` for every `t < outs[0].len()`, in groups of [`G`] lanes
/// with fixed trip counts (vectorised whole, where a plain loop over a block's few dozen tiles
/// would leave many of them to the compiler's scalar remainder); the rest one by one.
#[inline(always)]
fn map_lanes<const I: usize, const O: usize>(
    ins: [&[f32]; I],
    mut outs: [&mut [f32]; O],
    f: impl Fn([f32; I]) -> [f32; O],
) {
    let n = outs[0].len();
    let mut t = 0;
    while t + G <= n {
        // Fixed-size views: the loop below has no bounds tests and a fixed trip count.
        let mut x: [&[f32; G]; I] = [&[0.0; G]; I];
        for (xi, src) in x.iter_mut().zip(&ins) {
            *xi = src[t..t + G].try_into().expect("G lanes");
        }
        let mut y: [[f32; G]; O] = [[0.0; G]; O];
        for k in 0..G {
            let mut v = [0f32; I];
            for (vi, xi) in v.iter_mut().zip(&x) {
                *vi = xi[k];
            }
            for (yj, o) in y.iter_mut().zip(f(v)) {
                yj[k] = o;
            }
        }
        for (dst, yj) in outs.iter_mut().zip(&y) {
            let dst: &mut [f32; G] = (&mut dst[t..t + G]).try_into().expect("G lanes");
            *dst = *yj;
        }
        t += G;
    }
    for k in t..n {
        let mut v = [0f32; I];
        for (vi, src) in v.iter_mut().zip(&ins) {
            *vi = src[k];
        }
        for (dst, o) in outs.iter_mut().zip(f(v)) {
            dst[k] = o;
        }
    }
}

/// Tiles `t..t + count` cut at the ends of tile rows: `(offset, image, tile_row, tile_column,
/// n)` for each run of `n` tiles side by side, `offset` counted from `t`. (An iterator, not a
/// callback: a closure the compiler does not inline would lose the caller's vector extension.)
#[inline(always)]
fn row_runs(tl: &Tiling, t: usize, count: usize) -> impl Iterator<Item = (usize, usize, usize, usize, usize)> + '_ {
    let mut off = 0;
    std::iter::from_fn(move || {
        (off < count).then(|| {
            let (image, ty, tx) = tl.locate(t + off);
            let n = (tl.tw - tx).min(count - off);
            off += n;
            (off - n, image, ty, tx, n)
        })
    })
}

/// `d[q][u] = row[x0 + 4u + q]` for `q < 4`, `u < d[q].len()`, zero where the column falls
/// outside `row`: the first four taps of a row of patches side by side, 4 columns apart. Returns
/// the tiles `lo..hi` whose `taps` columns from `x0 + 4u` all lie inside the row; those take a
/// loop without bounds tests.
#[inline(always)]
fn gather_phases(row: &[f32], x0: isize, taps: usize, d: [&mut [f32]; 4]) -> (usize, usize) {
    let [d0, d1, d2, d3] = d;
    let (n, w, taps) = (d0.len(), row.len() as isize, taps as isize);
    let at = |x: isize| if x >= 0 && x < w { row[x as usize] } else { 0.0 };
    let lo = if x0 >= 0 { 0 } else { ((-x0 + 3) / 4) as usize }.min(n);
    let hi = if w - x0 >= taps { ((w - x0 - taps) / 4 + 1) as usize } else { 0 }.clamp(lo, n);
    for u in (0..lo).chain(hi..n) {
        let x = x0 + 4 * u as isize;
        (d0[u], d1[u], d2[u], d3[u]) = (at(x), at(x + 1), at(x + 2), at(x + 3));
    }
    if lo < hi {
        let inner = &row[(x0 + 4 * lo as isize) as usize..][..4 * (hi - lo)];
        let (d0, d1, d2, d3) = (&mut d0[lo..hi], &mut d1[lo..hi], &mut d2[lo..hi], &mut d3[lo..hi]);
        for (u, q) in inner.chunks_exact(4).enumerate() {
            (d0[u], d1[u], d2[u], d3[u]) = (q[0], q[1], q[2], q[3]);
        }
    }
    (lo, hi)
}

/// One row of the 6x6 input patches of a run of tiles side by side: `d[j][u] = row[x0 + 4u +
/// j]`, zero outside `row`.
#[inline(always)]
fn gather_patch_row(row: &[f32], x0: isize, d: [&mut [f32]; 6]) {
    let [d0, d1, d2, d3, d4, d5] = d;
    let (n, w) = (d0.len(), row.len() as isize);
    let (lo, hi) = gather_phases(row, x0, 6, [&mut *d0, &mut *d1, &mut *d2, &mut *d3]);
    let at = |x: isize| if x >= 0 && x < w { row[x as usize] } else { 0.0 };
    for u in (0..lo).chain(hi..n) {
        let x = x0 + 4 * u as isize;
        (d4[u], d5[u]) = (at(x + 4), at(x + 5));
    }
    if lo < hi {
        // Taps 4 and 5 of tile u are taps 0 and 1 of tile u + 1; the last inner tile's are
        // inside the row too (the choice of `hi`).
        d4[lo..hi - 1].copy_from_slice(&d0[lo + 1..hi]);
        d5[lo..hi - 1].copy_from_slice(&d1[lo + 1..hi]);
        let last = (x0 + 4 * (hi - 1) as isize) as usize;
        (d4[hi - 1], d5[hi - 1]) = (row[last + 4], row[last + 5]);
    }
}

/// The runs of `n` floats at `at` in the planes of transformed positions `6i..6i + 6` of a
/// `[36][channels][len]` buffer whose planes are `stride` apart: where row `i` of a block of
/// transformed tiles is written.
///
/// # Safety
/// The six runs must lie inside the buffer behind `base`, and no other live slice may overlap
/// them (they are disjoint from each other: `n <= stride`).
#[inline(always)]
unsafe fn position_runs<'a>(base: SyncPtr, i: usize, stride: usize, at: usize, n: usize) -> [&'a mut [f32]; 6] {
    // SAFETY: the caller's contract.
    std::array::from_fn(|j| unsafe { std::slice::from_raw_parts_mut(base.get().add((i * 6 + j) * stride + at), n) })
}

/// Fills channels `channels` of `v` (`[36][cin][len]`, `v_len` floats) with the transformed
/// input patches of tiles `t0..t0 + len`.
///
/// Row by row rather than patch by patch: each input row is read once per run of tiles side
/// by side, its taps split into the patches' six columns; then the column transform (`Bᵀ d`)
/// and the row transform (`(Bᵀ d) B`) run over all tiles of a block at once, one tile per
/// vector lane, with no patch gathered value by value into lanes.
///
/// # Safety
/// `v` must be valid for writes of `v_len` floats, and no other thread may write these
/// channels' entries.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn transform_input_impl<const FMA: bool>(
    g: &ConvGeom,
    tl: &Tiling,
    x: &[f32],
    t0: usize,
    len: usize,
    channels: Range<usize>,
    v: SyncPtr,
    v_len: usize,
) {
    let stride_xi = plane_stride(g.cin, len);
    assert!((T - 1) * stride_xi + channels.end * len <= v_len, "transformed input past its buffer");
    let (pad_h, pad_w) = (g.p.padding[0] as isize, g.p.padding[1] as isize);
    // d[r][j][t]: row r, column j of tile t's 6x6 patch; cols[i][j][t]: (Bᵀ d)[i][j].
    let mut d = [[[0f32; TB]; 6]; 6];
    let mut cols = [[[0f32; TB]; 6]; 6];
    for c in channels {
        for tb in (0..len).step_by(TB) {
            let nb = TB.min(len - tb);
            for (off, image, ty, tx, n) in row_runs(tl, t0 + tb, nb) {
                let plane = &x[(image * g.cin + c) * g.in_hw()..][..g.in_hw()];
                for (r, dr) in d.iter_mut().enumerate() {
                    let ih = (ty * 4 + r) as isize - pad_h;
                    if ih < 0 || ih >= g.h as isize {
                        dr.iter_mut().for_each(|dj| dj[off..off + n].fill(0.0));
                    } else {
                        let row = &plane[ih as usize * g.w..][..g.w];
                        gather_patch_row(row, (tx * 4) as isize - pad_w, dr.each_mut().map(|dj| &mut dj[off..off + n]));
                    }
                }
            }
            for j in 0..6 {
                let src = std::array::from_fn(|r| &d[r][j][..nb]);
                map_lanes(src, cols.each_mut().map(|ci| &mut ci[j][..nb]), input_1d);
            }
            for (i, row) in cols.iter().enumerate() {
                // SAFETY: in bounds (asserted above); channel c's entries are this call's.
                let outs = unsafe { position_runs(v, i, stride_xi, c * len + tb, nb) };
                map_lanes(std::array::from_fn(|j| &row[j][..nb]), outs, input_1d);
            }
        }
    }
}

/// One output row of a run of tiles: `dst[4u + j] = y[j][u]`, plus the residual and ReLU.
#[inline(always)]
fn write_row<const RESIDUAL: bool, const RELU: bool>(dst: &mut [f32], residual: &[f32], y: [&[f32]; 4]) {
    let finish = |o: f32, x: usize| {
        let o = if RESIDUAL { o + residual[x] } else { o };
        if RELU {
            super::relu(o)
        } else {
            o
        }
    };
    let whole = dst.len() / 4;
    let (y0, y1, y2, y3) = (&y[0][..whole], &y[1][..whole], &y[2][..whole], &y[3][..whole]);
    for (u, out) in dst.chunks_exact_mut(4).enumerate() {
        out[0] = finish(y0[u], 4 * u);
        out[1] = finish(y1[u], 4 * u + 1);
        out[2] = finish(y2[u], 4 * u + 2);
        out[3] = finish(y3[u], 4 * u + 3);
    }
    for x in 4 * whole..dst.len() {
        dst[x] = finish(y[x % 4][whole], x);
    }
}

/// Writes the outputs of tiles `t0..t0 + len` from their products `m` (`[36][cout][len]`),
/// clipped to the image, with the epilogue applied.
///
/// Block by block of tiles, one tile per vector lane: the row transform (`m A`), the column
/// transform (`Aᵀ (m A)`) with the scale and bias, then each output row written once across a
/// run of tiles side by side.
///
/// # Safety
/// `out` must point at the whole output, and no other thread may write these tiles.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn transform_output_impl<const FMA: bool>(
    g: &ConvGeom,
    tl: &Tiling,
    m: &[f32],
    t0: usize,
    len: usize,
    channels: Range<usize>,
    epi: Epilogue<'_>,
    out: SyncPtr,
) {
    let stride_xi = plane_stride(g.cout, len);
    let ohw = g.oh * g.ow;
    // rows[i][j][t] = (m A)[i][j]; block[r][j][t] = (Aᵀ m A)[r][j] * scale + bias.
    let mut rows = [[[0f32; TB]; 4]; 6];
    let mut block = [[[0f32; TB]; 4]; 4];
    for co in channels {
        let (scale, bias) = (epi.scale.map_or(1.0, |s| s[co]), epi.bias.map_or(0.0, |b| b[co]));
        for tb in (0..len).step_by(TB) {
            let nb = TB.min(len - tb);
            for (i, row) in rows.iter_mut().enumerate() {
                let src = std::array::from_fn(|k| &m[(i * 6 + k) * stride_xi + co * len + tb..][..nb]);
                map_lanes(src, row.each_mut().map(|r| &mut r[..nb]), output_1d);
            }
            for j in 0..4 {
                let src = std::array::from_fn(|i| &rows[i][j][..nb]);
                // (`* 1.0` without a scale is exact.)
                map_lanes(src, block.each_mut().map(|b| &mut b[j][..nb]), |m| output_1d(m).map(|y| y * scale + bias));
            }
            for (off, image, ty, tx, n) in row_runs(tl, t0 + tb, nb) {
                let (height, width) = (4.min(g.oh - ty * 4), (4 * n).min(g.ow - tx * 4));
                for (r, br) in block.iter().enumerate().take(height) {
                    let at = (image * g.cout + co) * ohw + (ty * 4 + r) * g.ow + tx * 4;
                    // SAFETY: this run's outputs in row r belong to this call (the caller's
                    // contract), inside the output (clipped to the map).
                    let dst = unsafe { std::slice::from_raw_parts_mut(out.get().add(at), width) };
                    let y = br.each_ref().map(|b| &b[off..off + n]);
                    match (epi.residual, epi.relu) {
                        (Some(res), true) => write_row::<true, true>(dst, &res[at..at + width], y),
                        (Some(res), false) => write_row::<true, false>(dst, &res[at..at + width], y),
                        (None, true) => write_row::<false, true>(dst, &[], y),
                        (None, false) => write_row::<false, false>(dst, &[], y),
                    }
                }
            }
        }
    }
}

crate::multiversion! {
    /// [`transform_input_impl`], compiled for the CPU's vector extension ([`crate::simd`]) up to
    /// AVX2: the AVX-512 build was slower on the Xeon it was measured on
    /// (`conv-3x3-64to64-56-fwd` 4.4 ms against 3.9 for the three transforms at AVX2).
    ///
    /// # Safety
    /// As for [`transform_input_impl`].
    unsafe fn transform_input(
        g: &ConvGeom,
        tl: &Tiling,
        x: &[f32],
        t0: usize,
        len: usize,
        channels: Range<usize>,
        v: SyncPtr,
        v_len: usize,
    ) = transform_input_impl, up to Avx2;
}

crate::multiversion! {
    /// [`transform_output_impl`], compiled for the CPU's vector extension ([`crate::simd`]).
    ///
    /// # Safety
    /// As for [`transform_output_impl`].
    unsafe fn transform_output(
        g: &ConvGeom,
        tl: &Tiling,
        m: &[f32],
        t0: usize,
        len: usize,
        channels: Range<usize>,
        epi: Epilogue<'_>,
        out: SyncPtr,
    ) = transform_output_impl, up to Avx2;
}

/// `0..channels` cut into about `parts` ranges.
fn channel_ranges(channels: usize, parts: usize) -> impl IndexedParallelIterator<Item = Range<usize>> {
    let step = channels.div_ceil(parts.max(1)).max(1);
    (0..channels.div_ceil(step)).into_par_iter().map(move |i| i * step..((i + 1) * step).min(channels))
}

/// Weights already transformed by [`transform_weights`], as they are (`[36][cout][cin]`) or
/// each position's matrix packed for the AVX-512 product ([`pack_transformed`]).
#[derive(Clone, Copy)]
pub(crate) enum Weights<'a> {
    Plain(&'a [f32]),
    Packed(&'a [PackedWeights]),
}

/// The 36 matrices of a transform, each packed for [`packed::product`].
pub(crate) fn pack_transformed(u: &[f32], cout: usize, cin: usize) -> Vec<PackedWeights> {
    (0..T).map(|xi| PackedWeights::pack(&u[xi * cout * cin..(xi + 1) * cout * cin], cout, cin)).collect()
}

/// The convolution of `x` with weights already transformed.
pub(crate) fn forward(g: &ConvGeom, x: &[f32], u: Weights<'_>, epi: Epilogue<'_>, out: &mut [MaybeUninit<f32>]) {
    let tl = Tiling::new(g);
    let items = tl.total.div_ceil(tl.chunk);
    let par = parallelism(items);
    let out_ptr = SyncPtr(out.as_mut_ptr().cast());
    let run_item = |item: usize, bufs: &mut (Scratch, Scratch)| {
        let t0 = item * tl.chunk;
        let len = tl.chunk.min(tl.total - t0);
        let (v, m) = bufs;
        let (sv, sm) = (plane_stride(g.cin, len), plane_stride(g.cout, len));
        v.at_least(T * sv);
        m.at_least(T * sm);
        // Too few items to share out: each item's three stages are shared out instead — the
        // transforms by channels, the 36 products (each streaming its own transformed
        // weights once, which dominates when tiles are few) by position.
        let fan_out = !matches!(par, Parallelism::None);
        let parts = if fan_out { 4 * rayon::current_num_threads() } else { 1 };
        let (v_ptr, v_len) = (SyncPtr(v.as_mut_ptr()), v.len());
        // SAFETY: `v` holds `v_len` floats; the ranges are disjoint channels.
        channel_ranges(g.cin, parts).for_each(|cs| unsafe { transform_input(g, &tl, x, t0, len, cs, v_ptr, v_len) });
        let v: &[f32] = v;
        let m_ptr = SyncPtr(m.as_mut_ptr());
        let position = |xi: usize| match u {
            Weights::Plain(u) => {
                let lhs = MatRef::of(u, xi * g.cout * g.cin, g.cout, g.cin, g.cin, 1);
                let rhs = MatRef::of(v, xi * sv, g.cin, len, len, 1);
                // SAFETY: `m` holds `cout x len` floats from `xi * sm`; only this call writes
                // them.
                unsafe { product(m_ptr.get().add(xi * sm), len as isize, lhs, rhs, false, Parallelism::None, false) };
            }
            // SAFETY: as above; packed weights are only made where `packed::available()`.
            Weights::Packed(u) => unsafe {
                packed::product(&u[xi], &v[xi * sv..], len, len, m_ptr.get().add(xi * sm), len)
            },
        };
        if fan_out {
            (0..T).into_par_iter().for_each(position);
        } else {
            (0..T).for_each(position);
        }
        let m: &[f32] = m;
        // SAFETY: the item's tiles are its own; the ranges are disjoint output channels.
        channel_ranges(g.cout, parts).for_each(|cs| unsafe { transform_output(g, &tl, m, t0, len, cs, epi, out_ptr) });
    };
    if matches!(par, Parallelism::None) {
        (0..items).into_par_iter().for_each_init(|| (Scratch::take(), Scratch::take()), |b, item| run_item(item, b));
    } else {
        let mut bufs = (Scratch::take(), Scratch::take());
        (0..items).for_each(|item| run_item(item, &mut bufs));
    }
}

// The weight gradient, F(3x3, 4x4): the same bilinear algorithm read the other way round.
// The forward pass's trilinear form is Σ_ξ (A w Aᵀ)_ξ (G g Gᵀ)_ξ (Bᵀ d B)_ξ for a 4x4 block of
// output weights w; its derivative in the kernel g, with w the output gradient's 4x4 block, is
// the kernel's gradient from that tile: Gᵀ [(A dy Aᵀ) ⊙ (Bᵀ d B)] G. Summed over tiles (and
// images) in the transformed domain, that is 36 GEMMs `M[ξ] += dY[ξ] (cout x tiles) ·
// V[ξ]ᵀ (tiles x cin)` — 36 multiplies per tile and channel pair instead of 144 — and one
// transform back per channel pair at the end.

/// `A h` for one column of four output-gradient values (and, applied to rows, `(A h) Aᵀ`):
/// `A` is the transpose of the forward pass's output transform ([`output_1d`]).
#[inline(always)]
fn grad_1d(h: [f32; 4]) -> [f32; 6] {
    let (even, odd) = (h[0] + h[2], h[1] + h[3]);
    let (even4, odd2) = (h[0] + 4.0 * h[2], 2.0 * h[1] + 8.0 * h[3]);
    [h[0], even + odd, even - odd, even4 + odd2, even4 - odd2, h[3]]
}

/// `Gᵀ m` for one column of six transformed values: `G`'s transpose ([`kernel_1d`]).
#[inline(always)]
fn kernel_grad_1d(m: [f64; 6]) -> [f64; 3] {
    let (s12, d12, s34, d34) = (m[1] + m[2], m[2] - m[1], m[3] + m[4], m[3] - m[4]);
    [m[0] / 4.0 - s12 / 6.0 + s34 / 24.0, d12 / 6.0 + d34 / 12.0, (s34 - s12) / 6.0 + m[5]]
}

/// Fills channels `channels` of `u` (`[36][cout][len]`, `u_len` floats) with the transformed
/// 4x4 output-gradient blocks of tiles `t0..t0 + len` (zeros past the map's edge).
///
/// Row by row, as [`transform_input_impl`]: each gradient row split into the blocks' four
/// columns, then the column transform (`A h`) and the row transform (`(A h) Aᵀ`) over all
/// tiles of a block at once.
///
/// # Safety
/// `u` must be valid for writes of `u_len` floats, and no other thread may write these
/// channels' entries.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn transform_grad_impl<const FMA: bool>(
    g: &ConvGeom,
    tl: &Tiling,
    dy: &[f32],
    t0: usize,
    len: usize,
    channels: Range<usize>,
    u: SyncPtr,
    u_len: usize,
) {
    let stride_xi = plane_stride(g.cout, len);
    assert!((T - 1) * stride_xi + channels.end * len <= u_len, "transformed gradient past its buffer");
    let ohw = g.oh * g.ow;
    // h[r][j][t]: row r, column j of tile t's 4x4 gradient block; cols[i][j][t]: (A h)[i][j].
    let mut h = [[[0f32; TB]; 4]; 4];
    let mut cols = [[[0f32; TB]; 4]; 6];
    for co in channels {
        for tb in (0..len).step_by(TB) {
            let nb = TB.min(len - tb);
            for (off, image, ty, tx, n) in row_runs(tl, t0 + tb, nb) {
                let plane = &dy[(image * g.cout + co) * ohw..][..ohw];
                for (r, hr) in h.iter_mut().enumerate() {
                    let row = ty * 4 + r;
                    let runs = hr.each_mut().map(|hj| &mut hj[off..off + n]);
                    if row >= g.oh {
                        runs.into_iter().for_each(|hj| hj.fill(0.0));
                    } else {
                        gather_phases(&plane[row * g.ow..][..g.ow], (tx * 4) as isize, 4, runs);
                    }
                }
            }
            for j in 0..4 {
                let src = std::array::from_fn(|r| &h[r][j][..nb]);
                map_lanes(src, cols.each_mut().map(|ci| &mut ci[j][..nb]), grad_1d);
            }
            for (i, row) in cols.iter().enumerate() {
                // SAFETY: in bounds (asserted above); channel co's entries are this call's.
                let outs = unsafe { position_runs(u, i, stride_xi, co * len + tb, nb) };
                map_lanes(std::array::from_fn(|j| &row[j][..nb]), outs, grad_1d);
            }
        }
    }
}

crate::multiversion! {
    /// [`transform_grad_impl`], compiled for the CPU's vector extension ([`crate::simd`]).
    ///
    /// # Safety
    /// As for [`transform_grad_impl`].
    unsafe fn transform_grad(
        g: &ConvGeom,
        tl: &Tiling,
        dy: &[f32],
        t0: usize,
        len: usize,
        channels: Range<usize>,
        u: SyncPtr,
        u_len: usize,
    ) = transform_grad_impl, up to Avx2;
}

/// Whether the weight gradient of this convolution takes [`backward_weight`]: a conv the
/// forward pass would run by Winograd, with enough tiles per thread that each of the 36
/// products is deep (it accumulates a `cout x cin` block from `tiles` terms).
pub(crate) fn suits_weight_gradient(g: &ConvGeom) -> bool {
    let tiles = g.n * g.oh.div_ceil(4) * g.ow.div_ceil(4);
    suits(g, false) && tiles >= MIN_WEIGHT_GRAD_TILES * rayon::current_num_threads()
}

/// Fewest tiles per thread for [`backward_weight`].
const MIN_WEIGHT_GRAD_TILES: usize = 128;

/// The kernel gradient `[cout, cin, 3, 3]` of a stride-1 3x3 conv of `x` whose output gradient
/// is `dy`. Each thread sums the products of a fixed, contiguous range of tile chunks in the
/// transformed domain, and the partial sums are added in range order (deterministic, as the
/// im2col path).
pub(crate) fn backward_weight(g: &ConvGeom, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let tl = Tiling::new(g);
    let by_budget = (CHUNK_BUDGET / (T * g.cin.max(g.cout))).max(MIN_CHUNK);
    let threads = rayon::current_num_threads().max(1);
    let parts = threads.min(tl.total).max(1);
    let plane = g.cout * g.cin;
    let partials: Vec<Vec<f32>> = (0..parts)
        .into_par_iter()
        .map(|part| {
            let (first, last) = (part * tl.total / parts, (part + 1) * tl.total / parts);
            if first == last {
                return vec![0f32; T * plane];
            }
            // Not zero-filled: the first chunk's products write it, the rest add to it.
            let mut acc: Vec<f32> = Vec::with_capacity(T * plane);
            let (mut v, mut u) = (Scratch::take(), Scratch::take());
            let mut t0 = first;
            while t0 < last {
                let len = by_budget.min(last - t0);
                let (sv, su) = (plane_stride(g.cin, len), plane_stride(g.cout, len));
                v.at_least(T * sv);
                u.at_least(T * su);
                let (v_ptr, v_len) = (SyncPtr(v.as_mut_ptr()), v.len());
                let (u_ptr, u_len) = (SyncPtr(u.as_mut_ptr()), u.len());
                // SAFETY: the buffers hold `v_len` and `u_len` floats; this thread owns them.
                unsafe {
                    transform_input(g, &tl, x, t0, len, 0..g.cin, v_ptr, v_len);
                    transform_grad(g, &tl, dy, t0, len, 0..g.cout, u_ptr, u_len);
                }
                for xi in 0..T {
                    let lhs = MatRef::of(&u, xi * su, g.cout, len, len, 1);
                    let rhs = MatRef::of(&v, xi * sv, len, g.cin, 1, len);
                    // SAFETY: `acc` has room for the 36 `cout x cin` blocks; this thread owns it.
                    unsafe {
                        product(
                            acc.as_mut_ptr().add(xi * plane),
                            g.cin as isize,
                            lhs,
                            rhs,
                            t0 > first,
                            Parallelism::None,
                            false,
                        )
                    };
                }
                t0 += len;
            }
            // SAFETY: the first chunk's 36 products wrote all 36 blocks.
            unsafe { acc.set_len(T * plane) };
            acc
        })
        .collect();
    let mut partials = partials.into_iter();
    let mut m = partials.next().unwrap_or_else(|| vec![0f32; T * plane]);
    for p in partials {
        m.iter_mut().zip(&p).for_each(|(a, b)| *a += b);
    }
    // Back from the transformed domain, one channel pair at a time: dW = Gᵀ M G (in f64: the
    // sums are done, and G's sixths and twenty-fourths round less there).
    let mut dw = vec![0f32; plane * 9];
    dw.par_chunks_mut(9).enumerate().for_each(|(pair, out)| {
        let at = |xi: usize| m[xi * plane + pair] as f64;
        let mut rows = [[0f64; 3]; 6];
        for (i, row) in rows.iter_mut().enumerate() {
            *row = kernel_grad_1d(std::array::from_fn(|j| at(i * 6 + j)));
        }
        for b in 0..3 {
            let col = kernel_grad_1d(std::array::from_fn(|i| rows[i][b]));
            for a in 0..3 {
                out[a * 3 + b] = col[a] as f32;
            }
        }
    });
    dw
}
