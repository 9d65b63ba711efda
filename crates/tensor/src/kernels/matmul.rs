//! f32 matrix multiplication through the `gemm` crate (packed, cache-blocked, runtime-dispatched
//! AVX2/FMA/AVX-512 microkernels), with a strided-matrix description so transposed views and
//! sub-blocks are read in place.

use gemm::Parallelism;
use rayon::prelude::*;

/// A read-only strided matrix: element `(i, j)` is at `ptr + i * rs + j * cs`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MatRef {
    ptr: *const f32,
    rows: usize,
    cols: usize,
    rs: isize,
    cs: isize,
}

// SAFETY: a MatRef is only built over data that outlives the call using it and is never written
// through it.
unsafe impl Send for MatRef {}
unsafe impl Sync for MatRef {}

impl MatRef {
    fn offset(self, by: isize) -> MatRef {
        MatRef { ptr: self.ptr.wrapping_offset(by), ..self }
    }

    pub(crate) fn strided(ptr: *const f32, rows: usize, cols: usize, rs: isize, cs: isize) -> MatRef {
        MatRef { ptr, rows, cols, rs, cs }
    }

    /// A row-major block of `data` starting at `offset` with row stride `ld`, bounds-checked.
    pub(crate) fn of(data: &[f32], offset: usize, rows: usize, cols: usize, rs: usize, cs: usize) -> MatRef {
        if rows > 0 && cols > 0 {
            let last = offset + (rows - 1) * rs + (cols - 1) * cs;
            assert!(last < data.len(), "matrix block past the end of its buffer");
        }
        MatRef { ptr: data[offset..].as_ptr(), rows, cols, rs: rs as isize, cs: cs as isize }
    }
}

/// A pointer that may be shared across threads that write disjoint elements through it.
#[derive(Clone, Copy)]
pub(crate) struct SyncPtr(pub(crate) *mut f32);
// SAFETY: users only write disjoint index sets from different threads.
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}

impl SyncPtr {
    /// The pointer (a method, so closures capture the `Sync` wrapper rather than the field).
    #[inline]
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

/// Whether one GEMM should use every thread (when there is too little outer work to share).
pub(crate) fn parallelism(outer_items: usize) -> Parallelism {
    let threads = rayon::current_num_threads();
    if threads > 1 && outer_items < 2 * threads {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    }
}

/// `dst = lhs * rhs` (or `dst += lhs * rhs` with `accumulate`) where `dst` is the row-major
/// block of `out` at `offset` with row stride `ld`.
///
/// # Safety
/// `dst` must point to `lhs.rows x rhs.cols` writable elements with the given strides that no
/// other thread touches during the call; `lhs` and `rhs` must be valid for reads.
pub(crate) unsafe fn sgemm_raw(
    dst: *mut f32,
    dst_rs: isize,
    dst_cs: isize,
    lhs: MatRef,
    rhs: MatRef,
    accumulate: bool,
    par: Parallelism,
) {
    debug_assert_eq!(lhs.cols, rhs.rows);
    if lhs.rows == 0 || rhs.cols == 0 {
        return;
    }
    if lhs.cols == 0 {
        if !accumulate {
            for i in 0..lhs.rows {
                for j in 0..rhs.cols {
                    *dst.offset(i as isize * dst_rs + j as isize * dst_cs) = 0.0;
                }
            }
        }
        return;
    }
    let threads = match par {
        Parallelism::Rayon(t) if t > 1 => t,
        _ => 1,
    };
    let (row_bands, col_bands) = bands(lhs.rows, rhs.cols, lhs.cols, threads);
    if row_bands * col_bands <= 1 {
        gemm_call(dst, dst_rs, dst_cs, lhs, rhs, accumulate);
        return;
    }
    // One sequential GEMM per block of the output, instead of the `gemm` crate's own threading:
    // on the narrow, deep products of batch-1 convolutions (k of 2304 against 196 or 49
    // columns) its split left the threads idle much of the time (84 against 148 GFLOP/s on two
    // threads for 256 x 196 x 2304).
    let row_len = lhs.rows.div_ceil(row_bands);
    let col_len = rhs.cols.div_ceil(col_bands);
    let dst = SyncPtr(dst);
    (0..row_bands * col_bands).into_par_iter().for_each(|block| {
        let (r0, c0) = ((block / col_bands) * row_len, (block % col_bands) * col_len);
        if r0 >= lhs.rows || c0 >= rhs.cols {
            return;
        }
        let l = MatRef { rows: row_len.min(lhs.rows - r0), ..lhs.offset(r0 as isize * lhs.rs) };
        let r = MatRef { cols: col_len.min(rhs.cols - c0), ..rhs.offset(c0 as isize * rhs.cs) };
        let d = dst.get().wrapping_offset(r0 as isize * dst_rs + c0 as isize * dst_cs);
        // SAFETY: the blocks (r0.., c0..) are disjoint parts of the caller's output.
        unsafe { gemm_call(d, dst_rs, dst_cs, l, r, accumulate) };
    });
}

/// How to cut an `m x n` (depth `k`) product into blocks for `threads` sequential GEMMs:
/// `(row bands, column bands)`. Whole bands of the longer side when each stays at least a
/// microkernel-friendly size, a grid otherwise; `(1, 1)` when the product is too small for the
/// threads to pay.
fn bands(m: usize, n: usize, k: usize, threads: usize) -> (usize, usize) {
    const MIN_ROWS: usize = 32;
    const MIN_COLS: usize = 64;
    if threads <= 1 || m * n * k < 1 << 18 {
        return (1, 1);
    }
    // The `gemm` crate's microkernel runs along the output's rows in 16s: a row band of at
    // least 32 wastes little; measured on ResNet's conv shapes, row bands win unless the
    // output is much wider than tall.
    if 4 * m >= n && m >= MIN_ROWS * threads {
        return (threads, 1);
    }
    if n >= MIN_COLS * threads {
        return (1, threads);
    }
    let rows = (m / MIN_ROWS).clamp(1, threads);
    (rows, (threads / rows).max(1))
}

/// One sequential `gemm` call on row-major-or-strided operands.
///
/// # Safety
/// As for [`sgemm_raw`].
unsafe fn gemm_call(dst: *mut f32, dst_rs: isize, dst_cs: isize, lhs: MatRef, rhs: MatRef, accumulate: bool) {
    gemm::gemm(
        lhs.rows,
        rhs.cols,
        lhs.cols,
        dst,
        dst_cs,
        dst_rs,
        accumulate,
        lhs.ptr,
        lhs.cs,
        lhs.rs,
        rhs.ptr,
        rhs.cs,
        rhs.rs,
        1.0,
        1.0,
        false,
        false,
        false,
        Parallelism::None,
    );
}

/// Like [`sgemm_raw`], but through the register-blocked small-product kernels when `small` is
/// set and the operand layouts allow it (tiny grouped-conv products, where GEMM's packing and
/// dispatch cost more than the arithmetic).
///
/// # Safety
/// As for [`sgemm_raw`].
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn product(
    dst: *mut f32,
    dst_rs: isize,
    lhs: MatRef,
    rhs: MatRef,
    accumulate: bool,
    par: Parallelism,
    small: bool,
) {
    use super::small_gemm::{dots_gemm, rows_gemm};
    let (m, n, k) = (lhs.rows, rhs.cols, lhs.cols);
    let non_negative = lhs.rs >= 0 && lhs.cs >= 0 && rhs.rs >= 0 && rhs.cs >= 0 && dst_rs >= 0;
    if small && non_negative && rhs.cs == 1 {
        rows_gemm(
            m,
            n,
            k,
            lhs.ptr,
            lhs.rs as usize,
            lhs.cs as usize,
            rhs.ptr,
            rhs.rs as usize,
            dst,
            dst_rs as usize,
            accumulate,
        );
    } else if small && non_negative && rhs.rs == 1 && lhs.cs == 1 {
        dots_gemm(m, n, k, lhs.ptr, lhs.rs as usize, rhs.ptr, rhs.cs as usize, dst, dst_rs as usize, accumulate);
    } else {
        sgemm_raw(dst, dst_rs, 1, lhs, rhs, accumulate, par);
    }
}

/// `out[i] = lhs[i] * rhs[i]` for a batch of matrices at the given element offsets, `out`
/// row-major `[batch, m, n]`. Parallel over the batch when it is large, inside GEMM otherwise.
pub(crate) fn batched_sgemm(
    out: &mut [f32],
    m: usize,
    n: usize,
    lhs: MatRef,
    lhs_offsets: &[isize],
    rhs: MatRef,
    rhs_offsets: &[isize],
) {
    let nb = lhs_offsets.len();
    assert_eq!(out.len(), nb * m * n);
    if m * n == 0 {
        return;
    }
    let par = parallelism(nb);
    let one = |(i, chunk): (usize, &mut [f32])| {
        let l = lhs.offset(lhs_offsets[i]);
        let r = rhs.offset(rhs_offsets[i]);
        // SAFETY: each chunk is a distinct m*n block of `out`; l and r point into live views.
        // (A single large product is cut into bands of rows, one sequential GEMM per thread,
        // inside `sgemm_raw`.)
        unsafe { sgemm_raw(chunk.as_mut_ptr(), n as isize, 1, l, r, false, par) };
    };
    if matches!(par, Parallelism::None) && nb > 1 {
        out.par_chunks_mut(m * n).enumerate().for_each(one);
    } else {
        out.chunks_mut(m * n).enumerate().for_each(one);
    }
}
