//! Direct convolution for grouped convs with few channels per group (ResNeXt's 32 groups of 4
//! to 32 channels, depthwise convs). There the im2col matrix — `kh * kw` copies of the input —
//! cost more than the arithmetic, and each group's product was too small for a GEMM.
//!
//! Per (image, group): the group's input channels are copied once into zero-padded planes, one
//! per stride phase (`plane[a][b][i][j] = x[i * sh + a - ph][j * sw + b - pw]`), so that every
//! kernel tap of every output row reads one contiguous run. A register block of 4 output
//! channels x 8 or 16 output columns accumulates over input channels and taps, and is stored
//! with the epilogue (bias, residual, ReLU) applied on the way out. On AVX-512 a second kernel
//! ([`wide`]) runs along flattened phase planes instead, with weights packed once per prepared
//! conv.

use super::conv::{apply_epilogue, ConvGeom, Epilogue};
use super::matmul::SyncPtr;
use super::scratch::Scratch;
use super::small_gemm::fmadd;
use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::sync::OnceLock;

/// Output channels per register block.
const MB: usize = 4;

/// Whether the direct kernel takes this convolution: grouped, undilated, with few channels per
/// group (where a GEMM per group would be too small to run at speed).
pub(crate) fn suits(g: &ConvGeom) -> bool {
    g.p.groups > 1 && g.p.dilation == [1, 1] && g.cin_g <= 64 && g.cout_g <= 64
}

/// The layout of one (image, group)'s phase planes.
pub(super) struct Phases {
    /// Stride.
    pub(super) sh: usize,
    pub(super) sw: usize,
    /// Rows and row length of one phase plane (the row padded to whole register blocks).
    rows: usize,
    pub(super) row_len: usize,
}

impl Phases {
    pub(super) fn new(g: &ConvGeom, nb: usize) -> Phases {
        let [sh, sw] = g.p.stride;
        Phases { sh, sw, rows: g.oh + (g.kh - 1) / sh, row_len: g.ow.div_ceil(nb) * nb + (g.kw - 1) / sw }
    }

    pub(super) fn plane_len(&self) -> usize {
        self.rows * self.row_len
    }

    /// Offset of row `i` of phase `(a, b)` of input channel `ci` (of `cin_g`).
    #[inline(always)]
    pub(super) fn row(&self, cin_g: usize, a: usize, b: usize, ci: usize, i: usize) -> usize {
        (((a * self.sw + b) * cin_g + ci) * self.rows + i) * self.row_len
    }

    /// Copies group `gi` of `image` into `buf`, zeros where the window reads padding.
    pub(super) fn fill(&self, g: &ConvGeom, image: &[f32], gi: usize, buf: &mut [f32]) {
        let len = self.plane_len();
        for (p, dst) in buf[..self.sh * self.sw * g.cin_g * len].chunks_mut(len).enumerate() {
            self.fill_plane(g, image, gi, p, dst);
        }
    }

    /// Copies plane `p` (phase `(a, b)`, input channel `ci` of group `gi`, in the order of
    /// [`Phases::row`]) of `image` into `dst` (one plane long).
    pub(super) fn fill_plane(&self, g: &ConvGeom, image: &[f32], gi: usize, p: usize, dst: &mut [f32]) {
        let [ph, pw] = g.p.padding;
        let (ab, ci) = (p / g.cin_g, p % g.cin_g);
        let (a, b) = (ab / self.sw, ab % self.sw);
        let plane = &image[(gi * g.cin_g + ci) * g.in_hw()..][..g.in_hw()];
        for (i, dst) in dst.chunks_mut(self.row_len).enumerate().take(self.rows) {
            let ih = (i * self.sh + a) as isize - ph as isize;
            if ih < 0 || ih >= g.h as isize {
                dst.fill(0.0);
                continue;
            }
            let src = &plane[ih as usize * g.w..][..g.w];
            // Columns j read input column j * sw + b - pw: inside for j in [lo, hi).
            let lo = pw.saturating_sub(b).div_ceil(self.sw).min(self.row_len);
            let hi = if g.w + pw > b { (g.w + pw - b).div_ceil(self.sw).clamp(lo, self.row_len) } else { lo };
            dst[..lo].fill(0.0);
            dst[hi..].fill(0.0);
            if lo == hi {
                continue;
            }
            let first = lo * self.sw + b - pw;
            if self.sw == 1 {
                dst[lo..hi].copy_from_slice(&src[first..first + (hi - lo)]);
            } else {
                dst[lo..hi].iter_mut().zip(src[first..].iter().step_by(self.sw)).for_each(|(d, &v)| *d = v);
            }
        }
    }
}

/// Group `gi`'s weights as `[block][ci][tap][B]` (blocks of `B` output channels), output
/// channels past `cout_g` zero.
pub(super) fn pack_weights<const B: usize>(g: &ConvGeom, w: &[f32], gi: usize, buf: &mut [f32]) {
    let taps = g.kh * g.kw;
    let blocks = g.cout_g.div_ceil(B);
    for blk in 0..blocks {
        for ci in 0..g.cin_g {
            for t in 0..taps {
                for r in 0..B {
                    let co = blk * B + r;
                    buf[((blk * g.cin_g + ci) * taps + t) * B + r] =
                        if co < g.cout_g { w[((gi * g.cout_g + co) * g.cin_g + ci) * taps + t] } else { 0.0 };
                }
            }
        }
    }
}

/// One (image, group): every output row and register block, stored with the epilogue.
///
/// # Safety
/// `out` must be the whole output, valid for writes of image `ni`'s rows of group `gi`, which
/// no other thread touches during the call.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn group_impl<const NB: usize, const FMA: bool>(
    g: &ConvGeom,
    ph: &Phases,
    planes: &[f32],
    wpk: &[f32],
    ni: usize,
    gi: usize,
    epi: &Epilogue<'_>,
    out: SyncPtr,
) {
    let taps = g.kh * g.kw;
    let ohw = g.out_hw();
    // Where tap (ki, kj) of input channel 0 reads, relative to the output position's row and
    // column: its phase plane, the rows and columns it is shifted by.
    let tap_offsets: Vec<usize> = (0..taps)
        .map(|t| {
            let (ki, kj) = (t / g.kw, t % g.kw);
            ph.row(g.cin_g, ki % ph.sh, kj % ph.sw, 0, ki / ph.sh) + kj / ph.sw
        })
        .collect();
    let plane_len = ph.plane_len();
    // Every read below is `at + NB <= planes.len()` for `at` = a tap offset, plus channel,
    // row and column offsets at most those of the last block.
    let last_read = tap_offsets.iter().max().copied().unwrap_or(0)
        + (g.cin_g - 1) * plane_len
        + (g.oh - 1) * ph.row_len
        + (g.ow - 1) / NB * NB
        + NB;
    assert!(last_read <= planes.len() && wpk.len() >= g.cout_g.div_ceil(MB) * g.cin_g * taps * MB);
    let (xp, wp) = (planes.as_ptr(), wpk.as_ptr());
    for blk in 0..g.cout_g.div_ceil(MB) {
        let wb = wp.add(blk * g.cin_g * taps * MB);
        let rows_here = MB.min(g.cout_g - blk * MB);
        for oh in 0..g.oh {
            for ow0 in (0..g.ow).step_by(NB) {
                let mut acc = [[0f32; NB]; MB];
                let base = xp.add(oh * ph.row_len + ow0);
                for ci in 0..g.cin_g {
                    let xc = base.add(ci * plane_len);
                    let wc = wb.add(ci * taps * MB);
                    for (t, &off) in tap_offsets.iter().enumerate() {
                        // SAFETY: in bounds by `last_read` and the weights' length.
                        let xv: [f32; NB] = std::ptr::read_unaligned(xc.add(off) as *const [f32; NB]);
                        let wv: [f32; MB] = std::ptr::read_unaligned(wc.add(t * MB) as *const [f32; MB]);
                        for (r, acc_row) in acc.iter_mut().enumerate() {
                            for j in 0..NB {
                                acc_row[j] = fmadd::<FMA>(wv[r], xv[j], acc_row[j]);
                            }
                        }
                    }
                }
                let cols = NB.min(g.ow - ow0);
                for (r, acc_row) in acc.iter().enumerate().take(rows_here) {
                    let c = gi * g.cout_g + blk * MB + r;
                    let start = (ni * g.cout + c) * ohw + oh * g.ow + ow0;
                    // SAFETY: row c of image ni belongs to this (image, group).
                    let dst = std::slice::from_raw_parts_mut(out.get().add(start), cols);
                    dst.copy_from_slice(&acc_row[..cols]);
                    apply_epilogue(epi, dst, start, c);
                }
            }
        }
    }
}

crate::multiversion! {
    /// [`group_impl`], compiled for the CPU's vector extension ([`crate::simd`]).
    ///
    /// # Safety
    /// As for [`group_impl`].
    unsafe fn group<const NB: usize>(
        g: &ConvGeom,
        ph: &Phases,
        planes: &[f32],
        wpk: &[f32],
        ni: usize,
        gi: usize,
        epi: &Epilogue<'_>,
        out: SyncPtr,
    ) = group_impl, up to Avx2;
}

/// The forward pass into `out` (`[n, cout, oh, ow]`), parallel over (image, group) pairs.
/// `packed` keeps the AVX-512 kernel's packed weights between calls (a prepared conv's).
pub(crate) fn forward(
    g: &ConvGeom,
    x: &[f32],
    w: &[f32],
    epi: Epilogue<'_>,
    out: &mut [MaybeUninit<f32>],
    packed: Option<&OnceLock<Vec<f32>>>,
) {
    #[cfg(target_arch = "x86_64")]
    if wide::suits(g) {
        return wide::forward(g, x, w, epi, out, packed);
    }
    let _ = packed;
    // 8-column blocks for narrow maps (7 wide: 16 would waste more than half).
    let nb = if g.ow >= 14 { 16 } else { 8 };
    let ph = Phases::new(g, nb);
    let planes_len = ph.sh * ph.sw * g.cin_g * ph.plane_len();
    let wpk_len = g.cout_g.div_ceil(MB) * g.cin_g * g.kh * g.kw * MB;
    let out_ptr = SyncPtr(out.as_mut_ptr().cast());
    let in_len = g.cin * g.in_hw();
    (0..g.n * g.p.groups).into_par_iter().for_each_init(
        || (Scratch::take(), Scratch::take()),
        |(planes, wpk), item| {
            let (ni, gi) = (item / g.p.groups, item % g.p.groups);
            planes.at_least(planes_len);
            wpk.at_least(wpk_len);
            ph.fill(g, &x[ni * in_len..(ni + 1) * in_len], gi, planes);
            pack_weights::<MB>(g, w, gi, wpk);
            // SAFETY: item (ni, gi) writes only image ni's channels of group gi.
            unsafe {
                if nb == 16 {
                    group::<16>(g, &ph, planes, wpk, ni, gi, &epi, out_ptr);
                } else {
                    group::<8>(g, &ph, planes, wpk, ni, gi, &epi, out_ptr);
                }
            }
        },
    );
}

/// The AVX-512 form of the direct kernel. Written like the one above, its register block (4
/// output channels x one 16-lane vector of a row) held 4 accumulators: too few to hide the
/// multiply-adds' latency, and ran slower than the AVX2 copy. Here a block covers whole
/// vectors of a *flattened* phase plane instead of one output row: output position `(i, j)`
/// is lane `q = i·R + j`, `R` the planes' row length (`ow` plus the kernel's reach), so that
/// every tap of every lane is one contiguous load however narrow the map, and a block is 4 or
/// 8 channels x up to 6 or 3 vectors (24 accumulators). The `R - ow` lanes per row that fall
/// between output rows are computed and dropped: each vector's valid lanes are compressed
/// together and stored (with the epilogue) as one run of the output row-major plane.
#[cfg(target_arch = "x86_64")]
mod wide {
    use super::{pack_weights, ConvGeom, Epilogue, Phases, Scratch, SyncPtr};
    use rayon::prelude::*;
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;
    use std::sync::OnceLock;

    const LANES: usize = 16;

    /// Whether the AVX-512 kernel takes `g` (a convolution [`super::suits`] took): at least 4
    /// output channels per group (one block; fewer would leave most accumulators idle).
    pub(super) fn suits(g: &ConvGeom) -> bool {
        crate::simd::simd_level() >= crate::simd::SimdLevel::Avx512 && g.cout_g >= 4
    }

    /// One call's layout: the register block, the planes, where each tap reads, and where each
    /// vector of the flat plane stores.
    struct Layout {
        ph: Phases,
        /// Output channels and vectors per register block.
        mb: usize,
        vb: usize,
        /// Blocks of `vb` vectors that cover the flat plane's `ceil(((oh - 1)·R + ow) / 16)`.
        chunks: usize,
        /// Offset of tap `t` of input channel 0 within the planes (its phase plane, row and
        /// column shift).
        taps: Vec<usize>,
        /// Per vector of the flat plane: the mask of its lanes that are output positions, and
        /// the output offset (within a channel's plane) of the first of them.
        slots: Vec<(u16, usize)>,
        /// Floats of the planes [`Phases::fill`] writes for one (image, group).
        filled: usize,
        /// The same with the slack the last block reads past the last plane.
        planes_len: usize,
    }

    impl Layout {
        fn new(g: &ConvGeom) -> Layout {
            let ph = Phases::new(g, 1);
            let r = ph.row_len;
            let flat = (g.oh - 1) * r + g.ow;
            let vecs = flat.div_ceil(LANES);
            // Blocks of 8 channels x up to 3 vectors, or 4 x up to 6 for groups of fewer than
            // 8: the most vectors whose last block wastes at most an eighth of the work.
            let (mb, most) = if g.cout_g.is_multiple_of(8) { (8, 3) } else { (4, 6) };
            let vb = (1..=most.min(vecs)).rev().find(|&v| vecs.div_ceil(v) * v * 8 <= vecs * 9).unwrap_or(1);
            let chunks = vecs.div_ceil(vb);
            let taps: Vec<usize> = (0..g.kh * g.kw)
                .map(|t| {
                    let (ki, kj) = (t / g.kw, t % g.kw);
                    ph.row(g.cin_g, ki % ph.sh, kj % ph.sw, 0, ki / ph.sh) + kj / ph.sw
                })
                .collect();
            let slots = (0..vecs)
                .map(|v| {
                    let mut mask = 0u16;
                    for l in 0..LANES {
                        let q = v * LANES + l;
                        if q < flat && q % r < g.ow {
                            mask |= 1 << l;
                        }
                    }
                    let q = v * LANES;
                    (mask, (q / r) * g.ow + (q % r).min(g.ow))
                })
                .collect();
            let filled = ph.sh * ph.sw * g.cin_g * ph.plane_len();
            let reads = taps.iter().max().copied().unwrap_or(0) + (g.cin_g - 1) * ph.plane_len() + chunks * vb * LANES;
            Layout { ph, mb, vb, chunks, taps, slots, filled, planes_len: filled.max(reads) }
        }
    }

    /// Every group's weights as `[group][block][ci][tap][mb]` (blocks of `mb` output
    /// channels, those past `cout_g` zero), read in order by [`Job::run`].
    fn pack(g: &ConvGeom, w: &[f32], mb: usize) -> Vec<f32> {
        let per_group = g.cout_g.div_ceil(mb) * mb * g.cin_g * g.kh * g.kw;
        let mut packed = vec![0f32; g.p.groups * per_group];
        packed.par_chunks_mut(per_group.max(1)).enumerate().for_each(|(gi, dst)| match mb {
            8 => pack_weights::<8>(g, w, gi, dst),
            _ => pack_weights::<4>(g, w, gi, dst),
        });
        packed
    }

    /// The forward pass into `out`, parallel over (image, group) pairs; the packed weights
    /// from `packed` when the caller keeps them.
    pub(super) fn forward(
        g: &ConvGeom,
        x: &[f32],
        w: &[f32],
        epi: Epilogue<'_>,
        out: &mut [MaybeUninit<f32>],
        packed: Option<&OnceLock<Vec<f32>>>,
    ) {
        if g.out_hw() == 0 || g.n == 0 {
            return;
        }
        let lay = Layout::new(g);
        let owned;
        let wpk: &[f32] = match packed {
            Some(cell) => cell.get_or_init(|| pack(g, w, lay.mb)),
            None => {
                owned = pack(g, w, lay.mb);
                &owned
            }
        };
        let per_group = g.cout_g.div_ceil(lay.mb) * lay.mb * g.cin_g * g.kh * g.kw;
        assert_eq!(wpk.len(), g.p.groups * per_group, "packed weights of another shape");
        let out_ptr = SyncPtr(out.as_mut_ptr().cast());
        let in_len = g.cin * g.in_hw();
        (0..g.n * g.p.groups).into_par_iter().for_each_init(Scratch::take, |planes, item| {
            let (ni, gi) = (item / g.p.groups, item % g.p.groups);
            let wpk = &wpk[gi * per_group..][..per_group];
            planes.at_least(lay.planes_len);
            let image = &x[ni * in_len..(ni + 1) * in_len];
            if lay.ph.sw <= 2 {
                // SAFETY: AVX-512 was checked (`suits`); `planes` holds them all.
                unsafe { fill(g, &lay.ph, image, gi, planes) };
            } else {
                lay.ph.fill(g, image, gi, planes);
            }
            // What the last block reads past the planes only feeds lanes it drops.
            planes[lay.filled..lay.planes_len].fill(0.0);
            let job = Job { g, lay: &lay, planes, epi: &epi, out: out_ptr, ni, gi };
            macro_rules! run {
                ($mb:literal: $($vb:literal)*) => {
                    match lay.vb {
                        // SAFETY: AVX-512 was checked (`suits`); item (ni, gi) writes only
                        // image ni's channels of group gi.
                        $($vb => unsafe { job.run::<$mb, $vb>(wpk) },)*
                        _ => unreachable!("at most 6 vectors per block"),
                    }
                };
            }
            if lay.mb == 8 {
                run!(8: 1 2 3);
            } else {
                run!(4: 1 2 3 4 5 6);
            }
        });
    }

    /// [`Phases::fill`] for strides 1 and 2 along the rows: each plane row 16 columns at a
    /// time, a masked load (two and a shuffle picking every other column at stride 2) with
    /// the padding's lanes masked to zero — the rows of the late layers are a few columns
    /// long, where a copy and two fills per row cost more than the convolution.
    ///
    /// # Safety
    /// AVX-512 F is available; `sw` is 1 or 2; `buf` holds the group's planes.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
    unsafe fn fill(g: &ConvGeom, ph: &Phases, image: &[f32], gi: usize, buf: &mut [f32]) {
        debug_assert!(ph.sw == 1 || ph.sw == 2);
        let [pad_h, pad_w] = g.p.padding.map(|p| p as isize);
        let (len, row_len, w) = (ph.plane_len(), ph.row_len, g.w as isize);
        assert!(buf.len() >= ph.sh * ph.sw * g.cin_g * len);
        let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        // Lanes `l` whose column `from + l` lies in `[0, w)`.
        let inside = |from: isize| -> __mmask16 {
            let at = _mm512_add_epi32(lanes, _mm512_set1_epi32(from as i32));
            _mm512_cmpge_epi32_mask(at, _mm512_setzero_si512())
                & _mm512_cmplt_epi32_mask(at, _mm512_set1_epi32(w as i32))
        };
        for p in 0..ph.sh * ph.sw * g.cin_g {
            let (ab, ci) = (p / g.cin_g, p % g.cin_g);
            let (a, b) = (ab / ph.sw, ab % ph.sw);
            let plane = image[(gi * g.cin_g + ci) * g.in_hw()..][..g.in_hw()].as_ptr();
            let dst_plane = buf.as_mut_ptr().add(p * len);
            for i in 0..ph.rows {
                let dst = dst_plane.add(i * row_len);
                let ih = (i * ph.sh + a) as isize - pad_h;
                let row_inside = ih >= 0 && ih < g.h as isize;
                let src = plane.wrapping_offset(ih * w);
                for j0 in (0..row_len).step_by(16) {
                    let keep: __mmask16 = if row_len - j0 >= 16 { !0 } else { (1u16 << (row_len - j0)) - 1 };
                    // Column j of this phase reads input column j·sw + b - pad_w.
                    let from = (j0 * ph.sw + b) as isize - pad_w;
                    let v = if !row_inside {
                        _mm512_setzero_ps()
                    } else if ph.sw == 1 {
                        // SAFETY: only lanes inside the row are read.
                        _mm512_maskz_loadu_ps(inside(from) & keep, src.wrapping_offset(from))
                    } else {
                        let lo = _mm512_maskz_loadu_ps(inside(from), src.wrapping_offset(from));
                        let hi = _mm512_maskz_loadu_ps(inside(from + 16), src.wrapping_offset(from + 16));
                        _mm512_permutex2var_ps(lo, even, hi)
                    };
                    _mm512_mask_storeu_ps(dst.add(j0), keep, v);
                }
            }
        }
    }

    /// One (image, group)'s inputs.
    struct Job<'a> {
        g: &'a ConvGeom,
        lay: &'a Layout,
        planes: &'a [f32],
        epi: &'a Epilogue<'a>,
        out: SyncPtr,
        ni: usize,
        gi: usize,
    }

    impl Job<'_> {
        /// Every register block of `MB` channels x `VB` vectors, with `wpk` the group's weights
        /// packed in blocks of `MB` channels.
        ///
        /// # Safety
        /// AVX-512 F is available; image `ni`'s channels of group `gi` are this call's to write.
        #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
        #[inline(never)]
        unsafe fn run<const MB: usize, const VB: usize>(&self, wpk: &[f32]) {
            let (g, lay) = (self.g, self.lay);
            let (taps, plane_len) = (lay.taps.len(), lay.ph.plane_len());
            assert!(self.planes.len() >= lay.planes_len && wpk.len() >= g.cout_g.div_ceil(MB) * MB * g.cin_g * taps);
            let (xp, wp) = (self.planes.as_ptr(), wpk.as_ptr());
            for blk in 0..g.cout_g.div_ceil(MB) {
                let wb = wp.add(blk * g.cin_g * taps * MB);
                for chunk in 0..lay.chunks {
                    let mut acc = [[_mm512_setzero_ps(); VB]; MB];
                    for ci in 0..g.cin_g {
                        let xc = xp.add(ci * plane_len + chunk * VB * LANES);
                        let wc = wb.add(ci * taps * MB);
                        for (t, &off) in lay.taps.iter().enumerate() {
                            // SAFETY: within `planes_len` (its `reads` bound) and the packed
                            // weights (asserted).
                            let xs = xc.add(off);
                            let xv: [__m512; VB] = std::array::from_fn(|v| _mm512_loadu_ps(xs.add(v * LANES)));
                            for (r, acc_r) in acc.iter_mut().enumerate() {
                                let wv = _mm512_set1_ps(*wc.add(t * MB + r));
                                for v in 0..VB {
                                    acc_r[v] = _mm512_fmadd_ps(wv, xv[v], acc_r[v]);
                                }
                            }
                        }
                    }
                    self.store(blk * MB, chunk * VB, &acc);
                }
            }
        }

        /// A finished block's valid lanes, compressed into runs of the output rows, with the
        /// epilogue: channels `c0..` of the group, vectors `v0..` of the flat plane.
        #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
        #[inline]
        unsafe fn store<const MB: usize, const VB: usize>(&self, c0: usize, v0: usize, acc: &[[__m512; VB]; MB]) {
            let (g, epi) = (self.g, self.epi);
            let ohw = g.out_hw();
            for (r, acc_r) in acc.iter().enumerate().take(g.cout_g.saturating_sub(c0)) {
                let c = self.gi * g.cout_g + c0 + r;
                let at = (self.ni * g.cout + c) * ohw;
                let scale = epi.scale.map(|s| _mm512_set1_ps(s[c]));
                let bias = _mm512_set1_ps(epi.bias.map_or(0.0, |b| b[c]));
                for (v, &y) in acc_r.iter().enumerate() {
                    let Some(&(mask, off)) = self.lay.slots.get(v0 + v) else { break };
                    let run: __mmask16 = ((1u32 << mask.count_ones()) - 1) as u16;
                    let mut y = _mm512_maskz_compress_ps(mask, y);
                    if let Some(s) = scale {
                        y = _mm512_mul_ps(y, s);
                    }
                    let mut add = bias;
                    if let Some(res) = epi.residual {
                        add = _mm512_add_ps(add, _mm512_maskz_loadu_ps(run, res[at + off..].as_ptr()));
                    }
                    y = _mm512_add_ps(y, add);
                    if epi.relu {
                        // `max(0, y)` with 0 first: a NaN in y is returned, as `torch.relu` keeps it.
                        y = _mm512_max_ps(_mm512_setzero_ps(), y);
                    }
                    _mm512_mask_storeu_ps(self.out.get().add(at + off), run, y);
                }
            }
        }
    }
}
