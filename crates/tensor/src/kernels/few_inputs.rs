//! Direct convolution on AVX-512 for convs with few input channels: the stem of every ResNet
//! (3 channels, 7x7, stride 2). Through im2col its product is 64 rows deep by 147 long, too
//! small for a GEMM to run at speed, and the column matrix it multiplies is 49 copies of the
//! image; here the taps read the image's phase planes ([`Phases`], as the grouped direct kernel)
//! in place.
//!
//! A register block holds [`MB`] (8) output channels x [`ROWS`] (3) output rows x 16 columns
//! (24 vectors): per tap (input channel, kernel row, kernel column) it loads one vector from
//! each of the rows' planes and broadcasts the 8 channels' weights. (4 channels x 6 rows did
//! the same arithmetic with twice the vector loads, most of which straddle two cache lines —
//! a tap's column offset is 0-3 floats; the stem's forward at batch 8 went from 6.3-7.2 to
//! 5.6-6.1 ms.) The epilogue (scale, bias, residual,
//! ReLU) is applied in registers before the one store. Only for x86-64 with AVX-512 at the
//! current [`simd_level`](crate::simd::simd_level); elsewhere the convolution keeps im2col.

use super::conv::{ConvGeom, Epilogue};
use super::direct::{pack_weights, Phases};
use super::matmul::SyncPtr;
use super::scratch::Scratch;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Output rows per register block.
const ROWS: usize = 3;
/// Output channels per register block.
const MB: usize = 8;

/// Whether this kernel takes the convolution: ungrouped, undilated, few input channels, a
/// kernel of at least 3x3 (below that im2col copies little), on a CPU with AVX-512.
pub(crate) fn suits(g: &ConvGeom) -> bool {
    cfg!(target_arch = "x86_64")
        && crate::simd::simd_level() >= crate::simd::SimdLevel::Avx512
        && g.p.groups == 1
        && g.p.dilation == [1, 1]
        && g.cin <= 4
        && g.kh * g.kw >= 9
        && g.oh * g.ow > 0
}

/// The forward pass into `out` (`[n, cout, oh, ow]`). Whole images per work item when the
/// batch has enough of them; otherwise one image at a time, its planes filled in parallel and
/// its blocks of rows and output channels shared out.
pub(crate) fn forward(g: &ConvGeom, x: &[f32], w: &[f32], epi: Epilogue<'_>, out: &mut [MaybeUninit<f32>]) {
    debug_assert!(suits(g));
    let mut ph = Phases::new(g, 16);
    // Rows that start on 16-float boundaries: fewer of the loads straddle two cache lines.
    ph.row_len = ph.row_len.next_multiple_of(16);
    let plane_len = ph.plane_len();
    let planes_len = ph.sh * ph.sw * g.cin * plane_len;
    let taps = g.kh * g.kw;
    let blocks = g.cout.div_ceil(MB);
    let mut wpk = vec![0f32; blocks * g.cin * taps * MB];
    pack_weights::<MB>(g, w, 0, &mut wpk);
    // Where tap k = (ci, ki, kj) reads, relative to its output row's first column.
    let offsets: Vec<usize> = (0..g.cin * taps)
        .map(|k| {
            let (ci, ki, kj) = (k / taps, (k % taps) / g.kw, k % g.kw);
            ph.row(g.cin, ki % ph.sh, kj % ph.sw, ci, ki / ph.sh) + kj / ph.sw
        })
        .collect();
    let job = Job { g, ph: &ph, wpk: &wpk, offsets: &offsets, epi: &epi, out: SyncPtr(out.as_mut_ptr().cast()) };
    let in_len = g.cin * g.in_hw();
    let threads = rayon::current_num_threads();
    if g.n >= 2 * threads {
        (0..g.n).into_par_iter().for_each_init(Scratch::take, |planes, ni| {
            planes.at_least(planes_len);
            ph.fill(g, &x[ni * in_len..(ni + 1) * in_len], 0, planes);
            // SAFETY: item ni writes only image ni's output.
            unsafe { job.run(planes, ni, 0..g.oh.div_ceil(ROWS), 0..blocks) };
        });
        return;
    }
    let mut planes = Scratch::take();
    planes.at_least(planes_len);
    let row_blocks = g.oh.div_ceil(ROWS);
    for ni in 0..g.n {
        let image = &x[ni * in_len..(ni + 1) * in_len];
        planes[..planes_len]
            .par_chunks_mut(plane_len)
            .enumerate()
            .for_each(|(p, dst)| ph.fill_plane(g, image, 0, p, dst));
        let planes: &[f32] = &planes;
        (0..row_blocks * blocks).into_par_iter().for_each(|item| {
            let (rb, blk) = (item / blocks, item % blocks);
            // SAFETY: item (rb, blk) writes only its rows of its output channels of image ni.
            unsafe { job.run(planes, ni, rb..rb + 1, blk..blk + 1) };
        });
    }
}

/// What every work item of one call shares.
struct Job<'a> {
    g: &'a ConvGeom,
    ph: &'a Phases,
    /// The weights as [`pack_weights`] lays them out: per block of [`MB`] output channels,
    /// per tap, the block's [`MB`] weights.
    wpk: &'a [f32],
    offsets: &'a [usize],
    epi: &'a Epilogue<'a>,
    out: SyncPtr,
}

// SAFETY: the output pointer is only written at disjoint places by different items.
unsafe impl Sync for Job<'_> {}

impl Job<'_> {
    /// Output rows `row_blocks` (in [`ROWS`]) of the channel blocks `blocks` of image `ni`.
    ///
    /// # Safety
    /// No other thread may write those outputs during the call; `planes` must hold image ni's
    /// planes as laid out by [`Phases::fill`].
    unsafe fn run(
        &self,
        planes: &[f32],
        ni: usize,
        row_blocks: std::ops::Range<usize>,
        blocks: std::ops::Range<usize>,
    ) {
        let g = self.g;
        // Every read is at most the last offset plus the last block's row and column, plus a vector.
        let last =
            self.offsets.iter().max().copied().unwrap_or(0) + (g.oh - 1) * self.ph.row_len + (g.ow - 1) / 16 * 16 + 16;
        assert!(last <= planes.len() && self.wpk.len() >= g.cout.div_ceil(MB) * self.offsets.len() * MB);
        #[cfg(target_arch = "x86_64")]
        for rb in row_blocks {
            let (r0, r1) = (rb * ROWS, ((rb + 1) * ROWS).min(g.oh));
            for blk in blocks.clone() {
                // SAFETY: reads in bounds by `last`; AVX-512 by `suits`; the writes are the caller's.
                unsafe {
                    match r1 - r0 {
                        3 => avx512::block::<3>(self, planes, ni, r0, blk),
                        2 => avx512::block::<2>(self, planes, ni, r0, blk),
                        _ => avx512::block::<1>(self, planes, ni, r0, blk),
                    }
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (planes, ni, row_blocks, blocks);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Job, MB};
    use std::arch::x86_64::*;

    /// Rows `r0 .. r0 + R` of output channels `blk * MB ..` of image `ni`, all columns.
    ///
    /// # Safety
    /// AVX-512 F; as for [`Job::run`].
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn block<const R: usize>(job: &Job<'_>, planes: &[f32], ni: usize, r0: usize, blk: usize) {
        let g = job.g;
        let taps = job.offsets.len();
        let w = job.wpk.as_ptr().add(blk * taps * MB);
        let channels = MB.min(g.cout - blk * MB);
        let ohw = g.out_hw();
        let zero = _mm512_setzero_ps();
        for ow0 in (0..g.ow).step_by(16) {
            let cols = 16.min(g.ow - ow0);
            let mask: __mmask16 = if cols == 16 { 0xffff } else { (1u16 << cols) - 1 };
            let base = planes.as_ptr().add(r0 * job.ph.row_len + ow0);
            let acc = accumulate::<R>(job.offsets, base, job.ph.row_len, w);
            for (m, rows) in acc.iter().enumerate().take(channels) {
                let c = blk * MB + m;
                let scale = job.epi.scale.map(|s| _mm512_set1_ps(s[c]));
                let bias = _mm512_set1_ps(job.epi.bias.map_or(0.0, |b| b[c]));
                for (r, &v) in rows.iter().enumerate() {
                    let at = (ni * g.cout + c) * ohw + (r0 + r) * g.ow + ow0;
                    let mut y = match scale {
                        Some(s) => _mm512_mul_ps(v, s),
                        None => v,
                    };
                    // `+ (bias + residual)`, as `apply_epilogue` adds them.
                    let add = match job.epi.residual {
                        Some(res) => _mm512_add_ps(bias, _mm512_maskz_loadu_ps(mask, res.as_ptr().add(at))),
                        None => bias,
                    };
                    y = _mm512_add_ps(y, add);
                    if job.epi.relu {
                        // `max(0, y)` with 0 first: a NaN in y is returned, as `torch.relu` keeps it.
                        y = _mm512_max_ps(zero, y);
                    }
                    _mm512_mask_storeu_ps(job.out.get().add(at), mask, y);
                }
            }
        }
    }

    /// The `MB x R` accumulators of one 16-column block: for every tap, a vector from each of
    /// the `R` rows (`ld` apart) at the tap's offset from `base`, times the tap's `MB` weights.
    /// Not inlined, so that the accumulators stay in registers across the loop.
    #[target_feature(enable = "avx512f,avx2,fma")]
    #[inline(never)]
    unsafe fn accumulate<const R: usize>(
        offsets: &[usize],
        base: *const f32,
        ld: usize,
        w: *const f32,
    ) -> [[__m512; R]; MB] {
        let mut acc = [[_mm512_setzero_ps(); R]; MB];
        for (k, &off) in offsets.iter().enumerate() {
            let p = base.add(off);
            let mut xv = [_mm512_setzero_ps(); R];
            for (r, v) in xv.iter_mut().enumerate() {
                *v = _mm512_loadu_ps(p.add(r * ld));
            }
            for (m, row) in acc.iter_mut().enumerate() {
                let wv = _mm512_set1_ps(*w.add(k * MB + m));
                for (a, &v) in row.iter_mut().zip(&xv) {
                    *a = _mm512_fmadd_ps(wv, v, *a);
                }
            }
        }
        acc
    }
}
