//! Direct convolution for grouped convs with few channels per group (ResNeXt's 32 groups of 4
//! to 32 channels, depthwise convs). There the im2col matrix — `kh * kw` copies of the input —
//! cost more than the arithmetic, and each group's product was too small for a GEMM.
//!
//! Per (image, group): the group's input channels are copied once into zero-padded planes, one
//! per stride phase (`plane[a][b][i][j] = x[i * sh + a - ph][j * sw + b - pw]`), so that every
//! kernel tap of every output row reads one contiguous run. A register block of 4 output
//! channels x 8 or 16 output columns accumulates over input channels and taps, and is stored
//! with the epilogue (bias, residual, ReLU) applied on the way out.

use super::conv::{apply_epilogue, ConvGeom, Epilogue};
use super::matmul::SyncPtr;
use super::scratch::Scratch;
use super::small_gemm::fmadd;
use rayon::prelude::*;
use std::mem::MaybeUninit;

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
pub(crate) fn forward(g: &ConvGeom, x: &[f32], w: &[f32], epi: Epilogue<'_>, out: &mut [MaybeUninit<f32>]) {
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
