//! The product of a prepared (inference) convolution on AVX-512, with its weights packed once:
//! every 1x1 conv and every im2col conv that a prepared model runs, where the `gemm` crate
//! would repack the weights on every call, split the product between the threads less evenly,
//! and leave the epilogue (bias, residual, ReLU) to a second pass over the output.
//!
//! The register block runs along the output *channels*: 2 vectors of 16 channels x [`NR`] (14)
//! output positions, 28 accumulators. Per depth step it loads the two weight vectors and
//! broadcasts 14 activations. Running along the channels is what fits ResNet's maps: 56x56,
//! 28x28, 14x14 and 7x7 are all multiples of 7, and 14 columns divide every one of them but the
//! last (49 = 3 x 14 + 7), whereas blocks of 16 positions (the `gemm` crate's direction) leave
//! 49 positions in 64 lanes and 196 in 208 with a narrow, slow tail. The price is a transposed
//! store: each finished block's sums are gathered per channel from a small buffer, and the
//! epilogue is applied on the way out (one pass over the output, not two).
//!
//! Weights: panels of [`MR`] (32) output channels, each `depth` steps of 32 floats, packed when
//! the prepared convolution first runs (a second copy of its weights, kept beside the tensor).
//! Activations: per call, the image's rows (1x1) or its im2col rows cut into micro-panels of
//! [`NR`] positions, [`KC`] steps deep at a time, the im2col rows read straight from the image
//! into the micro-panels (no im2col matrix: the 3x3 convs of ResNet-50 at batch 1 went from
//! 1333 to 1105 us with one built per slice in cache, to 710-800 us without one), so that each
//! block reads both operands in order while the weights' `32 x KC` slice stays in L1; deeper
//! products keep partial sums per block. At batch 1 every weight comes from memory once per forward pass, so the next slice
//! is prefetched while the current one runs; the threads split whichever operand is larger
//! (the weights by panels on the late, narrow layers, the positions otherwise), and larger
//! batches take whole images per thread.
//!
//! [`product`] is the same on one thread, for the Winograd forward pass of a prepared conv:
//! its 36 products per call, whose transformed weights are packed likewise.
//!
//! Only for x86-64 with AVX-512 at the current [`simd_level`](crate::simd::simd_level);
//! [`available`] says so, and callers keep the `gemm` path otherwise.

use super::conv::{ConvGeom, Epilogue};
use super::matmul::SyncPtr;
use super::scratch::Scratch;
use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::ops::Range;

/// Output channels per weight panel (two vectors).
const MR: usize = 32;
/// Output positions per register block.
const NR: usize = 14;
/// Bytes of packed activations one pass over the weight panels covers: small enough to stay
/// in the core's L2 cache while every panel runs over it.
const PASS_BYTES: usize = 1 << 19;
/// Most depth steps per range when a product is cut into several: the weights' `MR x KC`
/// slice (24 KiB) stays in the core's L1 cache beside a block's activations (10.5 KiB) and the
/// next slice being prefetched, while the blocks of a pass run over it. (Ranges of 256 steps,
/// 32 KiB, measured 2-7% slower on ResNet-50's deep 1x1 convs at batch 1: 1024 -> 256 at 14x14
/// 348-374 against 292-361 us, timed alone alternately.)
const KC: usize = 192;
/// Products at most this deep run as one range (256 -> 1024 at 14x14 was no faster cut in two).
const ONE_RANGE: usize = 256;

/// Whether [`forward`] can run now: an x86-64 CPU with AVX-512, not lowered below it.
pub(crate) fn available() -> bool {
    cfg!(target_arch = "x86_64") && crate::simd::simd_level() >= crate::simd::SimdLevel::Avx512
}

/// A convolution's weights as a `cout x depth` matrix in panels of [`MR`] rows: panel `p`,
/// step `k` holds rows `p·MR .. p·MR + MR` of column `k` side by side (zero past the last row).
#[derive(Debug, Clone)]
pub(crate) struct PackedWeights {
    data: Vec<f32>,
    rows: usize,
    depth: usize,
}

impl PackedWeights {
    /// Packs the row-major `rows x depth` matrix `w` (a contiguous `[cout, cin, kh, kw]`
    /// weight).
    pub(crate) fn pack(w: &[f32], rows: usize, depth: usize) -> PackedWeights {
        let panels = rows.div_ceil(MR);
        let mut data = vec![0f32; panels * MR * depth];
        data.par_chunks_mut((MR * depth).max(1)).enumerate().for_each(|(p, panel)| {
            for r in 0..MR.min(rows - p * MR) {
                let row = &w[(p * MR + r) * depth..][..depth];
                for (k, &v) in row.iter().enumerate() {
                    panel[k * MR + r] = v;
                }
            }
        });
        PackedWeights { data, rows, depth }
    }

    fn panels(&self) -> usize {
        self.rows.div_ceil(MR)
    }
}

/// Whether [`forward`] takes `g` with weights packed for it: ungrouped, on AVX-512, deep
/// enough that the transposed store is a small part of each block's work, with enough output
/// channels that each packed block of positions serves several panels, and maps of at most
/// 1024 positions. (Measured per layer inside ResNet-50 at batch 1: on the 56x56 maps the
/// `gemm` crate, whose blocks run along the positions, was as fast or faster — 826 against
/// 1002 us for the 256 -> 128 1x1 conv — while every layer on 28x28 and smaller maps ran 5-20%
/// faster here.)
pub(crate) fn suits(g: &ConvGeom) -> bool {
    available() && g.p.groups == 1 && g.k() >= 128 && g.cout >= 128 && (1..=1024).contains(&g.out_hw())
}

/// The forward pass into `out` (`[n, cout, oh, ow]`) with `w` packed from `g`'s weights.
pub(crate) fn forward(g: &ConvGeom, x: &[f32], w: &PackedWeights, epi: Epilogue<'_>, out: &mut [MaybeUninit<f32>]) {
    debug_assert!(available() && w.rows == g.cout && w.depth == g.k() && g.p.groups == 1);
    let ohw = g.out_hw();
    let blocks = ohw.div_ceil(NR);
    let in_len = g.cin * g.in_hw();
    let job = Job { g, w, epi: &epi, out: SyncPtr(out.as_mut_ptr().cast()) };
    let threads = rayon::current_num_threads();
    if g.n >= 2 * threads {
        (0..g.n).into_par_iter().for_each_init(
            || (Scratch::take(), Scratch::take()),
            |scratch, ni| {
                let src = job.source(&x[ni * in_len..(ni + 1) * in_len]);
                // SAFETY: item ni writes only image ni's output.
                unsafe { job.run(src, scratch, ni, 0..w.panels(), 0..blocks) };
            },
        );
        return;
    }
    let mut col = Scratch::take();
    for ni in 0..g.n {
        let image = &x[ni * in_len..(ni + 1) * in_len];
        // Split whichever operand is larger, so that each thread streams its share of it once
        // and the smaller one is what both read: the weights by panels when they outweigh the
        // columns (late, narrow layers), the positions otherwise.
        let parts = threads.min(w.panels() * blocks).max(1);
        let by_panels = w.panels() >= parts && (g.cout >= ohw || blocks < parts);
        // When the threads split the panels, each packs every position's taps for itself:
        // read straight from the image, that costs less than building one im2col matrix for
        // both (the 3x3 convs of ResNet-50's later stages at batch 1: 914-1017 -> 732-800 us).
        // A strided 1x1 conv has one tap per channel, no load to share between taps: there the
        // subsampled image, built once for both, stays ahead (512 -> 1024 at 28x28 stride 2
        // 668-721 against 706-772 us).
        let src = if by_panels && g.kh * g.kw == 1 && !g.pointwise() {
            col.at_least(g.k() * ohw);
            super::conv::im2col_all(g, image, 0, ohw, &mut col, threads > 1);
            Source::Rows { data: &col, ld: ohw }
        } else {
            job.source(image)
        };
        (0..parts).into_par_iter().for_each_init(
            || (Scratch::take(), Scratch::take()),
            |scratch, t| {
                let (pr, br) = if by_panels {
                    (t * w.panels() / parts..(t + 1) * w.panels() / parts, 0..blocks)
                } else {
                    (0..w.panels(), t * blocks / parts..(t + 1) * blocks / parts)
                };
                // SAFETY: the parts are disjoint (panel, block) ranges of image ni's output.
                unsafe { job.run(src, scratch, ni, pr, br) };
            },
        );
    }
}

/// `out = w · src` on this thread: `w` (`rows x depth`, packed) times `depth` rows of `cols`
/// floats of `src`, `ld_src` apart, into `rows` rows of `out`, `ld_out` apart (the Winograd
/// forward pass's 36 products per call, each one thread's).
///
/// # Safety
/// [`available`] is true; `out` is valid for writes of `rows` rows of `cols` floats `ld_out`
/// apart, written by no one else during the call.
pub(crate) unsafe fn product(w: &PackedWeights, src: &[f32], ld_src: usize, cols: usize, out: *mut f32, ld_out: usize) {
    debug_assert!(available());
    if cols == 0 || w.rows == 0 {
        return;
    }
    if w.depth == 0 {
        for r in 0..w.rows {
            // SAFETY: row r of the caller's output.
            unsafe { std::slice::from_raw_parts_mut(out.add(r * ld_out), cols).fill(0.0) };
        }
        return;
    }
    let epi = Epilogue::default();
    let src = Source::Rows { data: src, ld: ld_src };
    let op = Operands { w, src, cols, out: SyncPtr(out), ld_out, residual: None, epi: &epi };
    let mut scratch = (Scratch::take(), Scratch::take());
    // SAFETY: the caller's contract; the whole product is this call's.
    unsafe { op.run(&mut scratch, 0..w.panels(), 0..cols.div_ceil(NR)) };
}

/// One call's shared inputs.
struct Job<'a> {
    g: &'a ConvGeom,
    w: &'a PackedWeights,
    epi: &'a Epilogue<'a>,
    out: SyncPtr,
}

impl Job<'_> {
    /// One image's columns: the image itself for a 1x1 stride-1 conv, its im2col rows
    /// otherwise (read from the image where they are packed).
    fn source<'c>(&self, image: &'c [f32]) -> Source<'c>
    where
        Self: 'c,
    {
        if self.g.pointwise() {
            Source::Rows { data: image, ld: self.g.out_hw() }
        } else {
            Source::Image { g: self.g, image }
        }
    }

    /// Weight panels `pr` against position blocks `br` of image `ni`, whose columns are `src`.
    ///
    /// # Safety
    /// No other thread may write the same (panel, block) outputs of image `ni`.
    unsafe fn run(&self, src: Source<'_>, scratch: &mut Scratches, ni: usize, pr: Range<usize>, br: Range<usize>) {
        let (g, ohw) = (self.g, self.g.out_hw());
        let at = ni * g.cout * ohw;
        let op = Operands {
            w: self.w,
            src,
            cols: ohw,
            out: SyncPtr(self.out.get().add(at)),
            ld_out: ohw,
            residual: self.epi.residual.map(|r| &r[at..]),
            epi: self.epi,
        };
        op.run(scratch, pr, br);
    }
}

/// A product's right operand, `depth` rows of `cols` positions.
#[derive(Clone, Copy)]
enum Source<'a> {
    /// Rows `ld` apart: a 1x1 conv's image, Winograd's tiles.
    Rows { data: &'a [f32], ld: usize },
    /// One image of `g`, whose im2col rows are packed straight from it
    /// ([`avx512::pack_taps`]), no im2col matrix built.
    Image { g: &'a ConvGeom, image: &'a [f32] },
}

/// Per-thread buffers of a product: packed micro-panels, partial sums.
type Scratches = (Scratch, Scratch);

/// `out = epi(w · src)`: `w` (`rows x depth`, packed) times `src`'s `depth x cols`, into
/// `rows` rows of `out`, `ld_out` apart; the epilogue's scale and bias are indexed by row,
/// `residual` is laid out as `out`.
struct Operands<'a> {
    w: &'a PackedWeights,
    src: Source<'a>,
    cols: usize,
    out: SyncPtr,
    ld_out: usize,
    residual: Option<&'a [f32]>,
    epi: &'a Epilogue<'a>,
}

impl Operands<'_> {
    /// Weight panels `pr` against position blocks `br` (of [`NR`] columns), in
    /// passes over as many blocks as fit [`PASS_BYTES`] and, within each, over [`KC`] steps of
    /// depth at a time: each step range copies its blocks' rows into `panels` (block `b`:
    /// `kc` steps of positions `b·NR .. b·NR + NR`, zero past the last) so that each register
    /// block reads both operands in order, the weights' `MR x kc` slice staying in L1 while
    /// the blocks run over it. Partial sums wait in `sums`, one `NR x MR` tile per (panel,
    /// block); the last step range finishes them into the output.
    ///
    /// # Safety
    /// No other thread may write the same (panel, block) outputs; `out` (and `residual`) hold
    /// `rows` rows of `cols` positions `ld_out` apart.
    unsafe fn run(&self, scratch: &mut Scratches, pr: Range<usize>, br: Range<usize>) {
        let (depth, rows_all, cols_all) = (self.w.depth, self.w.rows, self.cols);
        let (panels, sums) = scratch;
        // Depth ranges of even length.
        let ranges = if depth <= ONE_RANGE { 1 } else { depth.div_ceil(KC) };
        let even = depth.div_ceil(ranges).max(1);
        let step = match self.src {
            Source::Rows { .. } => even,
            // Whole kernel rows for the image's taps ([`avx512::pack_taps`] picks a row's
            // taps from one load).
            Source::Image { g, .. } => even.div_ceil(g.kw.max(1)) * g.kw.max(1),
        };
        let kc_max = step.min(depth).max(1);
        let per_pass = (PASS_BYTES / (kc_max * NR * 4)).clamp(1, br.len().max(1));
        panels.at_least(per_pass * kc_max * NR);
        // One depth range: each tile's sums are finished as soon as they are made, and one
        // buffer (in L1) serves them all.
        let tiles_kept = if depth <= step { 1 } else { per_pass * pr.len() };
        sums.at_least(tiles_kept * NR * MR);
        let mut b0 = br.start;
        while b0 < br.end {
            let b1 = (b0 + per_pass).min(br.end);
            let mut k0 = 0;
            while k0 < depth {
                let kc = step.min(depth - k0);
                let last = k0 + kc == depth;
                for (b, dst) in (b0..b1).zip(panels.chunks_exact_mut(kc * NR)) {
                    let (p0, width) = (b * NR, NR.min(cols_all - b * NR));
                    match self.src {
                        Source::Rows { data, ld } => {
                            let from = &data[k0 * ld + p0..];
                            assert!(from.len() >= (kc - 1) * ld + width);
                            // SAFETY: AVX-512 was checked; `from` holds `kc` rows of `width`
                            // floats `ld` apart (asserted), `dst` `kc` steps of NR.
                            #[cfg(target_arch = "x86_64")]
                            avx512::pack_block(from.as_ptr(), ld, width, kc, dst);
                            #[cfg(not(target_arch = "x86_64"))]
                            let _ = from;
                        }
                        // SAFETY: AVX-512 was checked; `dst` holds `kc` steps of NR.
                        #[cfg(target_arch = "x86_64")]
                        Source::Image { g, image } => avx512::pack_taps(g, image, k0..k0 + kc, p0, width, dst),
                        #[cfg(not(target_arch = "x86_64"))]
                        Source::Image { .. } => {}
                    }
                    #[cfg(not(target_arch = "x86_64"))]
                    let _ = (dst, width);
                }
                for p in pr.clone() {
                    let a = self.w.data[(p * depth + k0) * MR..].as_ptr();
                    let rows = MR.min(rows_all - p * MR);
                    // The weights' next slice (this range's next panel, or the next range's
                    // first), fetched a share per block while this one's blocks run: at batch
                    // 1 every weight comes from memory once, and the hardware prefetcher alone
                    // leaves the late layers waiting on it. Into L2 rather than L1: the late
                    // layers of infer-resnet50-b1 ran 1-11% faster so (e.g. 512 -> 512 3x3 on
                    // 7x7 780-851 -> 747-791 us, alternately), the L1 loads' own prefetcher
                    // covering the last step.
                    let next = if p + 1 < pr.end {
                        Some((p + 1) * depth + k0)
                    } else if k0 + kc < depth {
                        Some(pr.start * depth + k0 + kc)
                    } else {
                        None
                    };
                    let next_kc = if p + 1 < pr.end { kc } else { step.min(depth.saturating_sub(k0 + kc)) };
                    let lines = next_kc * MR * 4 / 64;
                    for b in b0..b1 {
                        let share = (b - b0) * lines / (b1 - b0)..(b + 1 - b0) * lines / (b1 - b0);
                        let prefetch = next.map(|at| Prefetch {
                            from: self.w.data[at * MR + share.start * 16..].as_ptr(),
                            lines: share.len().min(kc),
                        });
                        let cols = NR.min(cols_all - b * NR);
                        let at = p * MR * self.ld_out + b * NR;
                        let tile = Tile {
                            rows,
                            cols,
                            c0: p * MR,
                            out: self.out.get().add(at),
                            residual: self.residual.map(|r| r[at..].as_ptr()),
                            ld: self.ld_out,
                        };
                        let kept = ((p - pr.start) * (b1 - b0) + b - b0) % tiles_kept;
                        let sum = &mut sums[kept * NR * MR..][..NR * MR];
                        let step = Step { first: k0 == 0, finish: last.then_some((&tile, self.epi)), prefetch };
                        // SAFETY: AVX-512 was checked (`available`); the weight panel holds
                        // `kc` steps of MR floats from `a`, the block's micro-panel `kc` of NR;
                        // the tile is this thread's.
                        #[cfg(target_arch = "x86_64")]
                        avx512::block(kc, a, panels[(b - b0) * kc * NR..].as_ptr(), cols, sum, step);
                        #[cfg(not(target_arch = "x86_64"))]
                        let _ = (a, sum, step);
                    }
                }
                k0 += kc;
            }
            b0 = b1;
        }
    }
}

/// Where one step range of a register block stands: the first starts its sums from zero, the
/// last finishes them into their tile with the epilogue.
struct Step<'a> {
    first: bool,
    finish: Option<(&'a Tile, &'a Epilogue<'a>)>,
    prefetch: Option<Prefetch>,
}

/// Cache lines of weights to fetch during a step range, one per depth step.
#[derive(Clone, Copy)]
struct Prefetch {
    from: *const f32,
    lines: usize,
}

/// Where one register block's outputs go: `rows x cols` of them from `out`, rows `ld` apart,
/// for output channels from `c0`.
struct Tile {
    rows: usize,
    cols: usize,
    c0: usize,
    out: *mut f32,
    residual: Option<*const f32>,
    ld: usize,
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{ConvGeom, Epilogue, Prefetch, Step, Tile, MR, NR};
    use std::arch::x86_64::*;

    /// Copies positions `0..width` of `depth` rows `ld` apart (from `src`) into `dst` as
    /// `depth` steps of [`NR`], zero past `width`: one masked load and store per row (a
    /// `copy_from_slice` of 14 floats is a call to `memmove`).
    ///
    /// # Safety
    /// AVX-512 F is available; `src` is valid for `depth` rows of `width` floats `ld` apart.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
    pub(super) unsafe fn pack_block(src: *const f32, ld: usize, width: usize, depth: usize, dst: &mut [f32]) {
        debug_assert!(width <= NR && dst.len() >= depth * NR);
        let mask: __mmask16 = (1u16 << width) - 1;
        let full: __mmask16 = (1u16 << NR) - 1;
        let out = dst.as_mut_ptr();
        for r in 0..depth {
            let v = _mm512_maskz_loadu_ps(mask, src.add(r * ld));
            _mm512_mask_storeu_ps(out.add(r * NR), full, v);
        }
    }

    /// The im2col rows `ks` of positions `p0..p0 + width` of one image of `g`, packed as
    /// [`pack_block`] packs them (`ks.len()` steps of [`NR`], zero past `width`), read straight
    /// from the image rather than built as an im2col matrix and copied again (that copying was
    /// a quarter of a batch-1 stride-2 3x3 conv). The block's positions fall in runs along
    /// output rows (one run unless the map is narrower than [`NR`]); for each run and each
    /// kernel row of an input channel, the input row's 32 floats under the run are loaded once
    /// (masked: padding reads as zero) and each kernel column's taps picked out of them with
    /// one permutation, at any stride, where they span at most 32 floats; one tap at a time
    /// otherwise.
    ///
    /// # Safety
    /// AVX-512 F is available; `image` is one whole image of `g`; `dst` holds `ks.len() x NR`.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
    pub(super) unsafe fn pack_taps(
        g: &ConvGeom,
        image: &[f32],
        ks: std::ops::Range<usize>,
        p0: usize,
        width: usize,
        dst: &mut [f32],
    ) {
        let (taps, in_hw) = (g.kh * g.kw, g.in_hw());
        assert!(width <= NR && dst.len() >= ks.len() * NR && image.len() == g.cin * in_hw && ks.end <= g.cin * taps);
        let (sh, sw) = (g.p.stride[0], g.p.stride[1]);
        let (dh, dw) = (g.p.dilation[0], g.p.dilation[1]);
        let (ph, pw, w) = (g.p.padding[0], g.p.padding[1] as isize, g.w as isize);
        let zero = _mm512_setzero_ps();
        // Lanes past the block's positions are zero.
        let past_width = (((1u32 << NR) - 1) & !((1u32 << width) - 1)) as __mmask16;
        // The block's runs of positions along one output row, worked out once (not per step):
        // (output row, first column, first lane, length).
        let mut runs = [(0usize, 0usize, 0usize, 0usize); NR];
        let (mut count, mut lane) = (0, 0);
        while lane < width {
            let (oh, ow0) = ((p0 + lane) / g.ow, (p0 + lane) % g.ow);
            let run = (g.ow - ow0).min(width - lane);
            runs[count] = (oh, ow0, lane, run);
            (count, lane) = (count + 1, lane + run);
        }
        let runs = &runs[..count];
        // Whole kernel rows at a time: the steps start on one and each tap's offset in the
        // loaded row (`j·sw + kj·dw` for position j of a run) stays under 32.
        let longest = runs.iter().map(|r| r.3).max().unwrap_or(0);
        let by_rows = ks.start.is_multiple_of(g.kw)
            && ks.len().is_multiple_of(g.kw)
            && (longest.max(1) - 1) * sw + (g.kw - 1) * dw < 32;
        let lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let picks = _mm512_mullo_epi32(lanes, _mm512_set1_epi32(sw as i32));
        let group = if by_rows { g.kw } else { 1 };
        // One tap's run spans more than 32 floats only at strides of 3 and more.
        let in_reach = (longest.max(1) - 1) * sw < 32;
        let (mut c, mut ki, mut kj0) = (ks.start / taps, (ks.start % taps) / g.kw, ks.start % g.kw);
        for step in (0..ks.len()).step_by(group) {
            let plane = &image[c * in_hw..(c + 1) * in_hw];
            let out = dst.as_mut_ptr().add(step * NR);
            for s in 0..group {
                _mm512_mask_storeu_ps(out.add(s * NR), past_width, zero);
            }
            for &(oh, ow0, lane, run) in runs {
                let run_mask = (((1u32 << run) - 1) << lane) as __mmask16;
                let Some(ih) = (oh * sh + ki * dh).checked_sub(ph).filter(|&ih| ih < g.h) else {
                    for s in 0..group {
                        _mm512_mask_storeu_ps(out.add(s * NR), run_mask, zero);
                    }
                    continue;
                };
                let row = &plane[ih * g.w..(ih + 1) * g.w];
                // Input column of the run's first position at this step's first tap.
                let iw0 = (ow0 * sw + kj0 * dw) as isize - pw;
                if !in_reach {
                    let run_out = std::slice::from_raw_parts_mut(out.add(lane), run);
                    for (j, v) in run_out.iter_mut().enumerate() {
                        let iw = iw0 + (j * sw) as isize;
                        *v = if (0..w).contains(&iw) { row[iw as usize] } else { 0.0 };
                    }
                    continue;
                }
                // 32 floats from it, those outside the row as zeros (a masked-off lane is not
                // read).
                let (lo, hi) = ((-iw0).clamp(0, 32), (w - iw0).clamp(0, 32));
                let inside = (((1u64 << hi) - 1) & !((1u64 << lo) - 1)) as u32;
                let from = row.as_ptr().wrapping_offset(iw0);
                let a = _mm512_maskz_loadu_ps(inside as __mmask16, from);
                let b = _mm512_maskz_loadu_ps((inside >> 16) as __mmask16, from.wrapping_add(16));
                for s in 0..group {
                    let pick = _mm512_add_epi32(picks, _mm512_set1_epi32((s * dw) as i32));
                    let v = _mm512_permutex2var_ps(a, pick, b);
                    // The run's values into lanes `lane..lane + run`.
                    _mm512_mask_storeu_ps(out.add(s * NR), run_mask, shift_up(v, lane));
                }
            }
            kj0 += group;
            if kj0 == g.kw {
                (kj0, ki) = (0, ki + 1);
                if ki == g.kh {
                    (ki, c) = (0, c + 1);
                }
            }
        }
    }

    /// `v` moved up by `by` lanes (lane `j` to `j + by`), zeros below.
    #[target_feature(enable = "avx512f")]
    unsafe fn shift_up(v: __m512, by: usize) -> __m512 {
        if by == 0 {
            return v;
        }
        let index = _mm512_sub_epi32(
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            _mm512_set1_epi32(by as i32),
        );
        _mm512_maskz_permutexvar_ps((0xffffu32 << by) as __mmask16, index, v)
    }

    /// One step range of a register block: `depth` steps accumulated onto `sum` (from zero
    /// on the first), then finished into the tile when the step says so.
    ///
    /// # Safety
    /// AVX-512 F is available; `a` holds `depth x MR` floats, `b` `depth x NR`; the tile's
    /// outputs (and residual) are valid for its rows and columns.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
    pub(super) unsafe fn block(
        depth: usize,
        a: *const f32,
        b: *const f32,
        cols: usize,
        sum: &mut [f32],
        step: Step<'_>,
    ) {
        debug_assert!(sum.len() >= NR * MR);
        let (buf, first) = (sum.as_mut_ptr(), step.first);
        macro_rules! dispatch {
            ($($n:literal)*) => {
                match cols {
                    $($n => accumulate::<$n>(depth, a, b, buf, first, step.prefetch),)*
                    _ => unreachable!("a block has 1..=NR columns"),
                }
            };
        }
        dispatch!(1 2 3 4 5 6 7 8 9 10 11 12 13 14);
        if let Some((tile, epi)) = step.finish {
            finish(sum, tile, epi);
        }
    }

    /// `buf[j·MR + r] (+)= Σ_k a[k·MR + r] · b[k·NR + j]` for `j < N`, from zero when `first`. Not
    /// inlined, so the 28 accumulators stay in registers without stack copies around them.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
    #[inline(never)]
    unsafe fn accumulate<const N: usize>(
        depth: usize,
        a: *const f32,
        b: *const f32,
        buf: *mut f32,
        first: bool,
        prefetch: Option<Prefetch>,
    ) {
        let mut lo = [_mm512_setzero_ps(); N];
        let mut hi = [_mm512_setzero_ps(); N];
        if !first {
            for j in 0..N {
                lo[j] = _mm512_loadu_ps(buf.add(j * MR));
                hi[j] = _mm512_loadu_ps(buf.add(j * MR + 16));
            }
        }
        let (mut ap, mut bp) = (a, b);
        let Prefetch { from, lines } = prefetch.unwrap_or(Prefetch { from: a, lines: 0 });
        for k in 0..depth {
            if k < lines {
                _mm_prefetch::<_MM_HINT_T1>(from.add(16 * k).cast());
            }
            let (w0, w1) = (_mm512_loadu_ps(ap), _mm512_loadu_ps(ap.add(16)));
            for j in 0..N {
                let x = _mm512_set1_ps(*bp.add(j));
                lo[j] = _mm512_fmadd_ps(w0, x, lo[j]);
                hi[j] = _mm512_fmadd_ps(w1, x, hi[j]);
            }
            ap = ap.add(MR);
            bp = bp.add(NR);
        }
        for j in 0..N {
            _mm512_storeu_ps(buf.add(j * MR), lo[j]);
            _mm512_storeu_ps(buf.add(j * MR + 16), hi[j]);
        }
    }

    /// Per output channel: its `cols` sums gathered from `buf` (position-major), then
    /// `scale`, `+ bias + residual`, ReLU as [`apply_epilogue`](super::super::conv::apply_epilogue),
    /// one masked store into the channel's row.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
    unsafe fn finish(buf: &[f32], tile: &Tile, epi: &Epilogue<'_>) {
        let mask: __mmask16 = (1u16 << tile.cols) - 1;
        let index = _mm512_mullo_epi32(
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            _mm512_set1_epi32(MR as i32),
        );
        let zero = _mm512_setzero_ps();
        for r in 0..tile.rows {
            let c = tile.c0 + r;
            let mut y = _mm512_mask_i32gather_ps::<4>(zero, mask, index, buf.as_ptr().add(r));
            if let Some(s) = epi.scale {
                y = _mm512_mul_ps(y, _mm512_set1_ps(s[c]));
            }
            let mut add = _mm512_set1_ps(epi.bias.map_or(0.0, |b| b[c]));
            if let Some(res) = tile.residual {
                add = _mm512_add_ps(add, _mm512_maskz_loadu_ps(mask, res.add(r * tile.ld)));
            }
            y = _mm512_add_ps(y, add);
            if epi.relu {
                // `max(0, y)` with 0 first: a NaN in y is returned, as `torch.relu` keeps it.
                y = _mm512_max_ps(zero, y);
            }
            _mm512_mask_storeu_ps(tile.out.add(r * tile.ld), mask, y);
        }
    }
}
