//! Register-blocked kernels for the small matrix products of grouped convolutions (ResNeXt's 32
//! groups give products like 4 x 36 x 400), where a general GEMM spends more time packing and
//! dispatching than multiplying.
//!
//! The loops are written once, generically, and compiled twice: for AVX2 + FMA (selected at run
//! time) and for the baseline target. LLVM vectorises the fixed-size inner loops; the FMA
//! build fuses multiply and add.

/// Columns of the output per register block.
const NB: usize = 16;
/// Rows of the output per register block.
const MB: usize = 4;

/// `a * b + c`, fused into one instruction in the FMA build.
#[inline(always)]
pub(crate) fn fmadd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// `c[i, j] (+)= sum_p a[i * ars + p * acs] * b[p * ldb + j]` for `i < m`, `j < n`, `p < k`,
/// where `c[i, j]` is at `c + i * ldc + j`.
///
/// # Safety
/// `a` and `b` must be valid for the reads implied by the strides; `c` must be valid for writes
/// of the `m x n` block and not touched by other threads.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn rows_impl<const FMA: bool>(
    m: usize,
    n: usize,
    k: usize,
    a: *const f32,
    ars: usize,
    acs: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    let b_row = |p: usize, j0: usize, len: usize| std::slice::from_raw_parts(b.add(p * ldb + j0), len);
    for i0 in (0..m).step_by(MB) {
        let mb = MB.min(m - i0);
        let weight = |ii: usize, p: usize| if ii < mb { *a.add((i0 + ii) * ars + p * acs) } else { 0.0 };
        let mut j0 = 0;
        while j0 < n {
            let nb = NB.min(n - j0);
            let mut acc = [[0f32; NB]; MB];
            if nb == NB {
                for p in 0..k {
                    let brow: &[f32; NB] = b_row(p, j0, NB).try_into().expect("NB long");
                    for (ii, acc_row) in acc.iter_mut().enumerate() {
                        let w = weight(ii, p);
                        for j in 0..NB {
                            acc_row[j] = fmadd::<FMA>(w, brow[j], acc_row[j]);
                        }
                    }
                }
            } else {
                for p in 0..k {
                    let brow = b_row(p, j0, nb);
                    for (ii, acc_row) in acc.iter_mut().enumerate() {
                        let w = weight(ii, p);
                        for j in 0..nb {
                            acc_row[j] = fmadd::<FMA>(w, brow[j], acc_row[j]);
                        }
                    }
                }
            }
            for (ii, acc_row) in acc.iter().enumerate().take(mb) {
                let dst = c.add((i0 + ii) * ldc + j0);
                for (j, &v) in acc_row.iter().enumerate().take(nb) {
                    let d = dst.add(j);
                    *d = if accumulate { *d + v } else { v };
                }
            }
            j0 += nb;
        }
    }
}

/// `c[i, j] (+)= sum_t a[i * lda + t] * b[j * ldb + t]`: products of rows (`A B^T`).
///
/// # Safety
/// `a` and `b` must be valid for `k` reads from each row start; `c` must be valid for writes of
/// the `m x n` block and not touched by other threads.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn dots_impl<const FMA: bool>(
    m: usize,
    n: usize,
    k: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    let a_row = |i: usize| std::slice::from_raw_parts(a.add(i * lda), k);
    const L: usize = 8;
    let full = k / L * L;
    for j in 0..n {
        let brow = std::slice::from_raw_parts(b.add(j * ldb), k);
        for i0 in (0..m).step_by(MB) {
            let mb = MB.min(m - i0);
            let mut acc = [[0f32; L]; MB];
            for t0 in (0..full).step_by(L) {
                let bv: &[f32; L] = brow[t0..t0 + L].try_into().expect("L long");
                for (ii, acc_row) in acc.iter_mut().enumerate().take(mb) {
                    let av: &[f32; L] = a_row(i0 + ii)[t0..t0 + L].try_into().expect("L long");
                    for l in 0..L {
                        acc_row[l] = fmadd::<FMA>(av[l], bv[l], acc_row[l]);
                    }
                }
            }
            for (ii, acc_row) in acc.iter().enumerate().take(mb) {
                let arow = a_row(i0 + ii);
                let tail: f32 = (full..k).map(|t| arow[t] * brow[t]).sum();
                let v = acc_row.iter().sum::<f32>() + tail;
                let d = c.add((i0 + ii) * ldc + j);
                *d = if accumulate { *d + v } else { v };
            }
        }
    }
}

crate::multiversion! {
    /// [`rows_impl`], compiled for the CPU's vector extension ([`crate::simd`]).
    ///
    /// # Safety
    /// As for [`rows_impl`]: `c` is valid for the written block and private to this call.
    pub(crate) unsafe fn rows_gemm(
        m: usize,
        n: usize,
        k: usize,
        a: *const f32,
        ars: usize,
        acs: usize,
        b: *const f32,
        ldb: usize,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
    ) = rows_impl, up to Avx2;
}

crate::multiversion! {
    /// [`dots_impl`], compiled for the CPU's vector extension ([`crate::simd`]).
    ///
    /// # Safety
    /// As for [`dots_impl`]: `c` is valid for the written block and private to this call.
    pub(crate) unsafe fn dots_gemm(
        m: usize,
        n: usize,
        k: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        ldb: usize,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
    ) = dots_impl, up to Avx2;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(
        m: usize,
        n: usize,
        k: usize,
        a: impl Fn(usize, usize) -> f32,
        b: impl Fn(usize, usize) -> f32,
    ) -> Vec<f32> {
        (0..m * n).map(|ij| (0..k).map(|p| a(ij / n, p) as f64 * b(p, ij % n) as f64).sum::<f64>() as f32).collect()
    }

    #[test]
    fn rows_and_dots_match_naive_on_odd_sizes() {
        for (m, n, k) in [(1, 1, 1), (4, 16, 9), (5, 37, 36), (9, 3, 2), (3, 100, 17)] {
            let a: Vec<f32> = (0..m * k).map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0).collect();
            let b: Vec<f32> = (0..k * n).map(|i| ((i * 5 % 11) as f32 - 5.0) / 3.0).collect();
            let want = naive(m, n, k, |i, p| a[i * k + p], |p, j| b[p * n + j]);
            let mut c = vec![1.0f32; m * n];
            unsafe { rows_gemm(m, n, k, a.as_ptr(), k, 1, b.as_ptr(), n, c.as_mut_ptr(), n, false) };
            for (x, y) in c.iter().zip(&want) {
                assert!((x - y).abs() < 1e-4, "rows {m}x{n}x{k}: {x} vs {y}");
            }
            // b^T stored row-major as [n, k]: dots(a, bt) = a b.
            let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
            let mut c = vec![1.0f32; m * n];
            unsafe { dots_gemm(m, n, k, a.as_ptr(), k, bt.as_ptr(), k, c.as_mut_ptr(), n, true) };
            for (x, y) in c.iter().zip(&want) {
                assert!((x - (y + 1.0)).abs() < 1e-4, "dots {m}x{n}x{k}: {x} vs {}", y + 1.0);
            }
        }
    }
}
