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
//! within a few MiB, and chunks are shared out across threads.

use super::conv::{ConvGeom, Epilogue};
use super::matmul::{parallelism, product, MatRef, SyncPtr};
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
        let for_threads = (total / MIN_CHUNK).clamp(1, 2 * rayon::current_num_threads());
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

/// Where one tile reads its input patch: the image, the patch's top-left corner (negative in
/// the padding), and whether the whole patch lies inside the image.
#[derive(Clone, Copy, Default)]
struct Patch {
    image: usize,
    row: isize,
    col: isize,
    inside: bool,
}

fn patch(g: &ConvGeom, tl: &Tiling, t: usize) -> Patch {
    let (image, ty, tx) = tl.locate(t);
    let row = (ty * 4) as isize - g.p.padding[0] as isize;
    let col = (tx * 4) as isize - g.p.padding[1] as isize;
    let inside = row >= 0 && col >= 0 && row + 6 <= g.h as isize && col + 6 <= g.w as isize;
    Patch { image, row, col, inside }
}

/// Calls `f(i, j, position)` for the outputs `(i, j)` of the 4x4 tile at tile row `ty`, column
/// `tx` that lie inside the map (the last row and column of tiles may overhang it), with
/// `position` the output's index in its plane.
#[inline(always)]
fn tile_outputs(g: &ConvGeom, ty: usize, tx: usize, mut f: impl FnMut(usize, usize, usize)) {
    let (rows, cols) = (4.min(g.oh - ty * 4), 4.min(g.ow - tx * 4));
    let first = ty * 4 * g.ow + tx * 4;
    if rows == 4 && cols == 4 {
        // Whole tiles (almost all of them): fixed trip counts the compiler unrolls.
        for i in 0..4 {
            for j in 0..4 {
                f(i, j, first + i * g.ow + j);
            }
        }
    } else {
        for i in 0..rows {
            for j in 0..cols {
                f(i, j, first + i * g.ow + j);
            }
        }
    }
}

/// Fills channels `channels` of `v` (`[36][cin][len]`, `v_len` floats) with the transformed
/// input patches of tiles `t0..t0 + len`.
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
    let (h, w) = (g.h as isize, g.w as isize);
    let stride_xi = plane_stride(g.cin, len);
    for l0 in (0..len).step_by(L) {
        let lanes = L.min(len - l0);
        let mut patches = [Patch::default(); L];
        for (k, p) in patches.iter_mut().enumerate().take(lanes) {
            *p = patch(g, tl, t0 + l0 + k);
        }
        // Eight whole patches inside the image overwrite every entry of `d`; otherwise the
        // entries in the padding (and of absent lanes) must read as zeros.
        let dense = lanes == L && patches.iter().all(|p| p.inside);
        // d[i][j][lane]: the 6x6 patch of each tile.
        let mut d = [[[0f32; L]; 6]; 6];
        let first = channels.start;
        for c in channels.clone() {
            if !dense && c > first {
                d = [[[0f32; L]; 6]; 6];
            }
            for (k, p) in patches.iter().enumerate().take(lanes) {
                let plane = &x[(p.image * g.cin + c) * g.in_hw()..(p.image * g.cin + c + 1) * g.in_hw()];
                if p.inside {
                    for (i, row) in d.iter_mut().enumerate() {
                        let s = (p.row as usize + i) * g.w + p.col as usize;
                        for (j, e) in plane[s..s + 6].iter().enumerate() {
                            row[j][k] = *e;
                        }
                    }
                } else {
                    for (i, row) in d.iter_mut().enumerate() {
                        let r = p.row + i as isize;
                        if r < 0 || r >= h {
                            continue;
                        }
                        for (j, e) in row.iter_mut().enumerate() {
                            let col = p.col + j as isize;
                            if col >= 0 && col < w {
                                e[k] = plane[r as usize * g.w + col as usize];
                            }
                        }
                    }
                }
            }
            // Columns first (Bᵀ d), then rows ((Bᵀ d) B).
            let mut cols = [[[0f32; L]; 6]; 6];
            for j in 0..6 {
                let t = lanewise(input_1d, [&d[0][j], &d[1][j], &d[2][j], &d[3][j], &d[4][j], &d[5][j]]);
                for i in 0..6 {
                    cols[i][j] = t[i];
                }
            }
            let base = c * len + l0;
            for (i, row) in cols.iter().enumerate() {
                let t = lanewise(input_1d, [&row[0], &row[1], &row[2], &row[3], &row[4], &row[5]]);
                for (j, val) in t.iter().enumerate() {
                    let at = (i * 6 + j) * stride_xi + base;
                    assert!(at + lanes <= v_len, "transformed input past its buffer");
                    // SAFETY: in bounds (checked); channel c's entries are this call's.
                    put_lanes(std::slice::from_raw_parts_mut(v.get().add(at), lanes), val, lanes);
                }
            }
        }
    }
}

/// Writes the outputs of tiles `t0..t0 + len` from their products `m` (`[36][cout][len]`),
/// clipped to the image, with the epilogue applied.
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
    for l0 in (0..len).step_by(L) {
        let lanes = L.min(len - l0);
        let mut tiles = [(0usize, 0usize, 0usize); L];
        for (k, t) in tiles.iter_mut().enumerate().take(lanes) {
            *t = tl.locate(t0 + l0 + k);
        }
        // Lanes past `lanes` keep stale values; their results are never written out.
        let mut mm = [[0f32; L]; T];
        for co in channels.clone() {
            let (scale, bias) = (epi.scale.map_or(1.0, |s| s[co]), epi.bias.map_or(0.0, |b| b[co]));
            for (xi, lanes_xi) in mm.iter_mut().enumerate() {
                let at = xi * stride_xi + co * len + l0;
                if lanes == L {
                    lanes_xi.copy_from_slice(&m[at..at + L]);
                } else {
                    lanes_xi[..lanes].copy_from_slice(&m[at..at + lanes]);
                }
            }
            // rows[i][j] = (m A)[i][j], then column j of Aᵀ (m A) is column j of the block.
            let mut rows = [[[0f32; L]; 4]; 6];
            for (i, row) in rows.iter_mut().enumerate() {
                let r = &mm[i * 6..i * 6 + 6];
                *row = lanewise(output_1d, [&r[0], &r[1], &r[2], &r[3], &r[4], &r[5]]);
            }
            let mut block = [[[0f32; L]; 4]; 4];
            for j in 0..4 {
                let y =
                    lanewise(output_1d, [&rows[0][j], &rows[1][j], &rows[2][j], &rows[3][j], &rows[4][j], &rows[5][j]]);
                for i in 0..4 {
                    for k in 0..L {
                        // (`* 1.0` without a scale is exact.)
                        block[i][j][k] = y[i][k] * scale + bias;
                    }
                }
            }
            for (k, &(ni, ty, tx)) in tiles.iter().enumerate().take(lanes) {
                let plane = (ni * g.cout + co) * ohw;
                tile_outputs(g, ty, tx, |i, j, pos| {
                    let at = plane + pos;
                    let mut o = block[i][j][k];
                    if let Some(r) = epi.residual {
                        o += r[at];
                    }
                    if epi.relu {
                        o = super::relu(o);
                    }
                    // SAFETY: this tile's outputs belong to this call (the caller's contract).
                    unsafe { *out.get().add(at) = o };
                });
            }
        }
    }
}

crate::multiversion! {
    /// [`transform_input_impl`], compiled for the CPU's vector extension ([`crate::simd`]).
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

/// The convolution of `x` with weights already transformed by [`transform_weights`].
pub(crate) fn forward(g: &ConvGeom, x: &[f32], u: &[f32], epi: Epilogue<'_>, out: &mut [MaybeUninit<f32>]) {
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
        let position = |xi: usize| {
            let lhs = MatRef::of(u, xi * g.cout * g.cin, g.cout, g.cin, g.cin, 1);
            let rhs = MatRef::of(v, xi * sv, g.cin, len, len, 1);
            // SAFETY: `m` holds `cout x len` floats from `xi * sm`; only this call writes them.
            unsafe { product(m_ptr.get().add(xi * sm), len as isize, lhs, rhs, false, Parallelism::None, false) };
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
    let ohw = g.oh * g.ow;
    for l0 in (0..len).step_by(L) {
        let lanes = L.min(len - l0);
        let mut tiles = [(0usize, 0usize, 0usize); L];
        for (k, t) in tiles.iter_mut().enumerate().take(lanes) {
            *t = tl.locate(t0 + l0 + k);
        }
        let whole = |&(_, ty, tx): &(usize, usize, usize)| ty * 4 + 4 <= g.oh && tx * 4 + 4 <= g.ow;
        let dense = lanes == L && tiles.iter().all(whole);
        let mut h = [[[0f32; L]; 4]; 4];
        for co in channels.clone() {
            if !dense {
                h = [[[0f32; L]; 4]; 4];
            }
            for (k, &(ni, ty, tx)) in tiles.iter().enumerate().take(lanes) {
                let plane = &dy[(ni * g.cout + co) * ohw..(ni * g.cout + co + 1) * ohw];
                tile_outputs(g, ty, tx, |i, j, pos| h[i][j][k] = plane[pos]);
            }
            // Columns first (A h), then rows ((A h) Aᵀ).
            let mut cols = [[[0f32; L]; 4]; 6];
            for j in 0..4 {
                let t = lanewise(grad_1d, [&h[0][j], &h[1][j], &h[2][j], &h[3][j]]);
                for i in 0..6 {
                    cols[i][j] = t[i];
                }
            }
            let base = co * len + l0;
            for (i, row) in cols.iter().enumerate() {
                let t = lanewise(grad_1d, [&row[0], &row[1], &row[2], &row[3]]);
                for (j, val) in t.iter().enumerate() {
                    let at = (i * 6 + j) * stride_xi + base;
                    assert!(at + lanes <= u_len, "transformed gradient past its buffer");
                    // SAFETY: in bounds (checked); channel co's entries are this call's.
                    put_lanes(std::slice::from_raw_parts_mut(u.get().add(at), lanes), val, lanes);
                }
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
            let mut acc = vec![0f32; T * plane];
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
                    // SAFETY: `acc` holds the 36 `cout x cin` blocks; this thread owns it.
                    unsafe {
                        product(
                            acc.as_mut_ptr().add(xi * plane),
                            g.cin as isize,
                            lhs,
                            rhs,
                            true,
                            Parallelism::None,
                            false,
                        )
                    };
                }
                t0 += len;
            }
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
