//! Convolutions over maps so small that most of im2col's matrix is padding, computed as one
//! dense layer.
//!
//! On a 2x2 map a 3x3 kernel padded by 1 meets four inputs per output, so 5 of im2col's 9 rows
//! per input channel are zeros: ResNet's last stage on 64-pixel pictures spends more than half
//! of its multiply-adds on them, in each of the three passes of a training step. Written out as
//! a dense matrix `D` of `(cout·ohw) x (cin·ihw)` — `D[(co, o), (ci, i)]` the tap of
//! `w[co, ci]` that joins input position `i` to output position `o`, 0 where none does — each
//! pass is one GEMM on the activations as they lie in NCHW (image `n` is a row of `cin·ihw`
//! values):
//!
//! - forward: `y[n, (co, o)] = x[n, (ci, i)] · Dᵀ`;
//! - input gradient: `dx[n, (ci, i)] = dy[n, (co, o)] · D`;
//! - weight gradient: `dD = dyᵀ · x`, and each tap of `dw` the sum of the entries of `dD` it
//!   stands at.
//!
//! Taken only where `D` holds few zeros (every pair of positions joined, on a 2x2 map with a
//! 3x3 kernel), so its arithmetic is the joined taps' and no more; `D` is rebuilt per call from
//! the weights (they change every training step), in blocks of output channels that stay in
//! cache while their product runs.

use super::conv::{apply_epilogue, ConvGeom, Epilogue};
use super::matmul::{sgemm_raw, MatRef, SyncPtr};
use super::scratch::Scratch;
use gemm::Parallelism;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Fewest images: the GEMMs' rows. At batch 1 the product is a matrix-vector one, and reading
/// `D` (16/9 of the weights on a 2x2 map) costs more than the padding's arithmetic saves.
const MIN_BATCH: usize = 16;
/// Most floats of one block of `D` (2 MiB): a block and its product stay in L2.
const BLOCK_FLOATS: usize = 1 << 19;

/// The kernel tap joining input `i` to output `o` along one axis, if any: `i = o·stride +
/// tap·dilation - padding`.
fn tap_1d(i: usize, o: usize, stride: usize, padding: usize, dilation: usize, taps: usize) -> Option<usize> {
    let offset = (i + padding).checked_sub(o * stride)?;
    (offset % dilation == 0 && offset / dilation < taps).then_some(offset / dilation)
}

/// For each pair (output position `o`, input position `i`), at `o * ihw + i`, the index
/// (`ky * kw + kx`) of the kernel tap joining them.
fn tap_table(g: &ConvGeom) -> Vec<Option<usize>> {
    let mut table = Vec::with_capacity(g.out_hw() * g.in_hw());
    for (oy, ox) in (0..g.oh).flat_map(|oy| (0..g.ow).map(move |ox| (oy, ox))) {
        for (iy, ix) in (0..g.h).flat_map(|iy| (0..g.w).map(move |ix| (iy, ix))) {
            let ky = tap_1d(iy, oy, g.p.stride[0], g.p.padding[0], g.p.dilation[0], g.kh);
            let kx = tap_1d(ix, ox, g.p.stride[1], g.p.padding[1], g.p.dilation[1], g.kw);
            table.push(ky.zip(kx).map(|(ky, kx)| ky * g.kw + kx));
        }
    }
    table
}

/// Whether the conv is one this path computes, and is worth it for: an ungrouped conv over a
/// map with fewer positions than the kernel has taps (so im2col's rows are mostly padding),
/// whose dense matrix is at most a fifth zeros, on a batch large enough for GEMM.
pub(crate) fn suits(g: &ConvGeom) -> bool {
    let (ohw, ihw, taps) = (g.out_hw(), g.in_hw(), g.kh * g.kw);
    if g.p.groups != 1 || g.n < MIN_BATCH || ihw >= taps || ohw == 0 {
        return false;
    }
    let joined = tap_table(g).iter().filter(|t| t.is_some()).count();
    4 * ohw * ihw <= 5 * joined
}

/// Output channels per block of `D`: whole rows `(co, o)` for all `o`.
fn channels_per_block(g: &ConvGeom) -> usize {
    (BLOCK_FLOATS / (g.out_hw() * g.cin * g.in_hw()).max(1)).clamp(1, g.cout)
}

/// Rows `(co, o)` of `D` for `co` in `co0..co0 + count`, row-major into `d`.
fn expand_rows(g: &ConvGeom, w: &[f32], taps: &[Option<usize>], co0: usize, d: &mut [f32]) {
    match g.in_hw() {
        1 => expand_rows_of::<1>(g, w, taps, co0, d),
        2 => expand_rows_of::<2>(g, w, taps, co0, d),
        4 => expand_rows_of::<4>(g, w, taps, co0, d),
        _ => expand_rows_of::<0>(g, w, taps, co0, d),
    }
}

/// [`expand_rows`] for maps of `I` positions (a fixed trip count the compiler unrolls; 0:
/// any other size, a loop).
fn expand_rows_of<const I: usize>(g: &ConvGeom, w: &[f32], taps: &[Option<usize>], co0: usize, d: &mut [f32]) {
    let (ohw, ihw, per_channel) = (g.out_hw(), g.in_hw(), g.kh * g.kw);
    debug_assert!(I == 0 || I == ihw);
    let positions = if I == 0 { ihw } else { I };
    let width = g.cin * ihw;
    // Per output position, where each input position's tap sits in a kernel, and whether one
    // joins them at all (the value is selected, not multiplied by 0, so a weight's NaN stays
    // out of the padding, as in im2col).
    let at: Vec<usize> = taps.iter().map(|t| t.unwrap_or(0)).collect();
    let joined: Vec<bool> = taps.iter().map(Option::is_some).collect();
    for (row, d_row) in d.chunks_exact_mut(width).enumerate() {
        let (co, o) = (co0 + row / ohw, row % ohw);
        let (at, joined) = (&at[o * ihw..][..positions], &joined[o * ihw..][..positions]);
        let kernels = &w[co * g.cin * per_channel..(co + 1) * g.cin * per_channel];
        for (d_ci, k) in d_row.chunks_exact_mut(positions).zip(kernels.chunks_exact(per_channel)) {
            for j in 0..positions {
                d_ci[j] = if joined[j] { k[at[j]] } else { 0.0 };
            }
        }
    }
}

/// The block of `D` for output channels `co0..co0 + count`, by columns, its rows in the order
/// (output position, channel): entry `((c, o), (ci, i))` at
/// `(ci * ihw + i) * rows + o * count + c`, scaled by `scales[c]`. The channels of one tap are
/// read once per input channel (one AVX-512 gather per 16 where the CPU has it) and copied
/// into every pair of positions that tap joins.
///
/// Tiles of 16 channels x 16 input channels: one output channel's kernels are `cin * kh * kw`
/// floats apart (18 KiB for 512 input channels, a multiple of 2 KiB), so reading one tap of
/// every channel in turn kept landing in the same two L1 sets and missed; a tile's kernels
/// (16 runs of 16 x 9 floats) stay in L1 while all their taps are copied out.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn expand_columns_impl<const FMA: bool>(
    g: &ConvGeom,
    w: &[f32],
    taps: &[Option<usize>],
    scales: &[f32],
    co0: usize,
    count: usize,
    d: &mut [f32],
) {
    const TILE: usize = 16;
    let (ohw, ihw, per_channel) = (g.out_hw(), g.in_hw(), g.kh * g.kw);
    let per_out = g.cin * per_channel;
    let kernels = &w[co0 * per_out..(co0 + count) * per_out];
    let rows = count * ohw;
    // Whether whole runs are one AVX-512 gather (the offsets are 32-bit).
    let gather = cfg!(target_arch = "x86_64")
        && crate::simd::simd_level() >= crate::simd::SimdLevel::Avx512
        && (TILE * per_out) < i32::MAX as usize;
    let mut used: Vec<usize> = taps.iter().flatten().copied().collect();
    used.sort_unstable();
    used.dedup();
    let mut by_tap = vec![[0f32; TILE]; per_channel];
    for c0 in (0..count).step_by(TILE) {
        let cs = c0..(c0 + TILE).min(count);
        let scales = &scales[cs.clone()];
        for ci0 in (0..g.cin).step_by(TILE) {
            for ci in ci0..(ci0 + TILE).min(g.cin) {
                // Each tap the map uses, across the tile's channels, scaled: read once, then
                // copied into every (input, output) pair it joins (the centre tap of a 3x3
                // kernel on a 2x2 map into four).
                for &t in &used {
                    let src = &kernels[c0 * per_out + ci * per_channel + t..];
                    let run = &mut by_tap[t];
                    match <&[f32; TILE]>::try_from(scales) {
                        // SAFETY: AVX-512 is available (`gather`); the 16 taps read lie in
                        // `src`, whose length covers the last one.
                        #[cfg(target_arch = "x86_64")]
                        Ok(scales) if gather => unsafe {
                            gather_taps(run, src[..(TILE - 1) * per_out + 1].as_ptr(), per_out as i32, scales)
                        },
                        _ => {
                            for ((v, k), s) in run.iter_mut().zip(src.iter().step_by(per_out)).zip(scales) {
                                *v = k * s;
                            }
                        }
                    }
                }
                for i in 0..ihw {
                    let col = ci * ihw + i;
                    for o in 0..ohw {
                        let run = &mut d[col * rows + o * count..][cs.clone()];
                        let value = taps[o * ihw + i].map(|t| &by_tap[t]);
                        match (<&mut [f32; TILE]>::try_from(&mut *run), value) {
                            // Whole runs as one fixed-size move, not a call to `memcpy`.
                            (Ok(run), Some(v)) => *run = *v,
                            (Ok(run), None) => *run = [0.0; TILE],
                            (Err(_), Some(v)) => run.copy_from_slice(&v[..run.len()]),
                            (Err(_), None) => run.fill(0.0),
                        }
                    }
                }
            }
        }
    }
}

/// `run[j] = src[j * stride] * scales[j]` for 16 values: one gather.
///
/// # Safety
/// AVX-512F must be available, and `src` valid for reads at the 16 offsets.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gather_taps(run: &mut [f32; 16], src: *const f32, stride: i32, scales: &[f32; 16]) {
    use std::arch::x86_64::*;
    let index = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(stride),
    );
    // SAFETY: the caller's contract.
    unsafe {
        let taps = _mm512_i32gather_ps::<4>(index, src);
        _mm512_storeu_ps(run.as_mut_ptr(), _mm512_mul_ps(taps, _mm512_loadu_ps(scales.as_ptr())));
    }
}

crate::multiversion! {
    /// [`expand_columns_impl`], compiled for the CPU's vector extension ([`crate::simd`]).
    unsafe fn expand_columns(
        g: &ConvGeom,
        w: &[f32],
        taps: &[Option<usize>],
        scales: &[f32],
        co0: usize,
        count: usize,
        d: &mut [f32],
    ) = expand_columns_impl;
}

/// Runs `f(co0, count, scratch)` for every block of output channels, in parallel.
fn for_channel_blocks(g: &ConvGeom, f: impl Fn(usize, usize, &mut Scratch) + Sync) {
    let per_block = channels_per_block(g);
    let blocks = g.cout.div_ceil(per_block);
    (0..blocks).into_par_iter().for_each_init(Scratch::take, |scratch, b| {
        let co0 = b * per_block;
        f(co0, per_block.min(g.cout - co0), scratch)
    });
}

/// The forward pass into `out` (`[n][cout][ohw]`), every element written, the epilogue applied.
pub(crate) fn forward(g: &ConvGeom, x: &[f32], w: &[f32], epi: Epilogue<'_>, out: &mut [MaybeUninit<f32>]) {
    let taps = tap_table(g);
    let (ohw, width, outputs) = (g.out_hw(), g.cin * g.in_hw(), g.cout * g.out_hw());
    assert_eq!(out.len(), g.n * outputs, "dense conv output of the wrong size");
    let out_ptr = SyncPtr(out.as_mut_ptr().cast());
    let rest = Epilogue { scale: None, ..epi };
    for_channel_blocks(g, |co0, count, d| {
        let rows = count * ohw;
        d.at_least(rows * width);
        // The scale is folded into `D`; bias, residual and ReLU follow the product.
        let scales: Vec<f32> = (co0..co0 + count).map(|co| epi.scale.map_or(1.0, |s| s[co])).collect();
        // SAFETY: a plain slice computation; no contract beyond the types.
        unsafe { expand_columns(g, w, &taps, &scales, co0, count, &mut d[..rows * width]) };
        // z = D · xᵀ (rows (o, c), one column per image): the layout in which the `gemm`
        // crate reads both operands in place (`y = x · Dᵀ` as written, it would transpose the
        // problem and copy `D` value by value into its packed panels).
        let mut z = Scratch::take();
        z.at_least(rows * g.n);
        let lhs = MatRef::of(d, 0, rows, width, 1, rows);
        let rhs = MatRef::of(x, 0, width, g.n, 1, width);
        // SAFETY: z holds rows x n floats.
        unsafe { sgemm_raw(z.as_mut_ptr(), 1, rows as isize, lhs, rhs, false, Parallelism::None) };
        for (ni, z) in z.chunks_exact(rows).take(g.n).enumerate() {
            for c in 0..count {
                let co = co0 + c;
                let start = (ni * g.cout + co) * ohw;
                // SAFETY: this block's own channels of image ni's output.
                let row = unsafe { std::slice::from_raw_parts_mut(out_ptr.get().add(start), ohw) };
                for (o, v) in row.iter_mut().enumerate() {
                    *v = z[o * count + c];
                }
                apply_epilogue(&rest, row, start, co);
            }
        }
    });
}

/// The input gradient into `dx` (`[n][cin][ihw]`), every element written.
pub(crate) fn backward_input(g: &ConvGeom, dy: &[f32], w: &[f32], dx: &mut [MaybeUninit<f32>]) {
    let taps = tap_table(g);
    let (width, outputs) = (g.cin * g.in_hw(), g.cout * g.out_hw());
    assert_eq!(dx.len(), g.n * width, "dense conv input gradient of the wrong size");
    // `D` whole (its product runs over all of its rows), built in parallel by channel blocks.
    let mut d = Vec::with_capacity(outputs * width);
    let d_ptr = SyncPtr(d.as_mut_ptr());
    for_channel_blocks(g, |co0, count, _| {
        let rows = count * g.out_hw();
        // SAFETY: this block's rows of `D`, inside its capacity, written by this block only.
        let block = unsafe { std::slice::from_raw_parts_mut(d_ptr.get().add(co0 * g.out_hw() * width), rows * width) };
        expand_rows(g, w, &taps, co0, block);
    });
    // SAFETY: the blocks above cover every row of `D`.
    unsafe { d.set_len(outputs * width) };
    let lhs = MatRef::of(dy, 0, g.n, outputs, outputs, 1);
    let rhs = MatRef::of(&d, 0, outputs, width, width, 1);
    let par = Parallelism::Rayon(rayon::current_num_threads());
    // SAFETY: `dx` holds n x width floats, written whole by the product.
    unsafe { sgemm_raw(dx.as_mut_ptr().cast(), width as isize, 1, lhs, rhs, false, par) };
}

/// The weight gradient (`[cout][cin][kh][kw]`).
pub(crate) fn backward_weight(g: &ConvGeom, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let taps = tap_table(g);
    let (ohw, ihw, per_channel) = (g.out_hw(), g.in_hw(), g.kh * g.kw);
    let (width, outputs) = (g.cin * ihw, g.cout * ohw);
    let mut dw = vec![0f32; g.cout * g.cin * per_channel];
    let dw_ptr = SyncPtr(dw.as_mut_ptr());
    for_channel_blocks(g, |co0, count, dd| {
        let rows = count * ohw;
        dd.at_least(rows * width);
        // dD's rows (co, o) of this block: dyᵀ's rows times x.
        let lhs = MatRef::of(dy, co0 * ohw, rows, g.n, 1, outputs);
        let rhs = MatRef::of(x, 0, g.n, width, width, 1);
        // SAFETY: the block's own scratch, rows x width floats.
        unsafe { sgemm_raw(dd.as_mut_ptr(), width as isize, 1, lhs, rhs, false, Parallelism::None) };
        // SAFETY: these output channels' kernels, zero-filled above, summed into by this block only.
        let dw_block = unsafe {
            std::slice::from_raw_parts_mut(dw_ptr.get().add(co0 * g.cin * per_channel), count * g.cin * per_channel)
        };
        for (row, dd_row) in dd[..rows * width].chunks_exact(width).enumerate() {
            let (c, o) = (row / ohw, row % ohw);
            let taps = &taps[o * ihw..(o + 1) * ihw];
            let kernels = &mut dw_block[c * g.cin * per_channel..(c + 1) * g.cin * per_channel];
            for (k, v) in kernels.chunks_exact_mut(per_channel).zip(dd_row.chunks_exact(ihw)) {
                for (&v, t) in v.iter().zip(taps) {
                    if let Some(t) = *t {
                        k[t] += v;
                    }
                }
            }
        }
    });
    dw
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Conv2dParams;

    fn geom(x: [usize; 4], w: [usize; 4], p: Conv2dParams) -> ConvGeom {
        ConvGeom::new("test", &x, &w, p).expect("a valid geometry")
    }

    /// The shapes `tests/conv.rs` checks against the oracle take this path; batch 1, 4x4 maps
    /// (39% of their pairs of positions joined) and grouped convs do not.
    #[test]
    fn suits_small_maps_at_batch_16_only() {
        let pad1 = Conv2dParams::new().padding(1);
        assert!(suits(&geom([16, 24, 2, 2], [20, 24, 3, 3], pad1)));
        assert!(suits(&geom([17, 10, 1, 1], [12, 10, 3, 3], pad1)));
        assert!(suits(&geom([16, 6, 2, 2], [7, 6, 3, 3], pad1.stride(2))));
        assert!(suits(&geom([16, 5, 1, 2], [6, 5, 1, 3], Conv2dParams { padding: [0, 1], ..Conv2dParams::new() })));
        assert!(suits(&geom([20, 300, 2, 2], [520, 300, 3, 3], pad1)));
        assert!(!suits(&geom([1, 512, 2, 2], [512, 512, 3, 3], pad1)));
        assert!(!suits(&geom([64, 256, 4, 4], [256, 256, 3, 3], pad1)));
        assert!(!suits(&geom([64, 256, 4, 4], [512, 256, 3, 3], pad1.stride(2))));
        assert!(!suits(&geom([64, 8, 2, 2], [8, 2, 3, 3], pad1.groups(4))));
        assert!(!suits(&geom([64, 512, 2, 2], [512, 512, 1, 1], Conv2dParams::new())));
    }
}
