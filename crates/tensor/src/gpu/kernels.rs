//! The cubecl kernels of the GPU path. Every kernel reads and writes contiguous row-major
//! buffers; shapes, strides and offsets arrive as `u32` scalars or a small `u32` metadata array.
//! Launch code (grid sizes, metadata) lives in `ops.rs`, next to the host function that uses it.
//!
//! Elementwise kernels take one unit per output element (`ABSOLUTE_POS`, a linear index over a
//! 2-D grid of cubes so that more than 65,535 cubes fit); reductions over few outputs use one
//! cube per output and a shared-memory tree, so the summation order is fixed by the shape and
//! results repeat bit for bit.

use crate::op_codes::*;
use cubecl::prelude::*;

/// Units per cube for the one-dimensional kernels.
pub(crate) const BLOCK: u32 = 256;

#[cube]
fn apply_unary(v: f32, a: f32, b: f32, #[comptime] op: u32) -> f32 {
    let mut r = v;
    if comptime![op == U_NEG] {
        r = -v;
    } else if comptime![op == U_EXP] {
        r = v.exp();
    } else if comptime![op == U_LOG] {
        r = v.ln();
    } else if comptime![op == U_SQRT] {
        r = v.sqrt();
    } else if comptime![op == U_RELU] {
        // As the host kernel and PyTorch: NaN stays NaN.
        r = select(v < 0.0, 0.0, v);
    } else if comptime![op == U_ABS] {
        r = v.abs();
    } else if comptime![op == U_CLAMP] {
        r = select(v < a, a, select(v > b, b, v));
    } else if comptime![op == U_POWF] {
        r = v.powf(a);
    } else if comptime![op == U_ADD_SCALAR] {
        r = v + a;
    } else if comptime![op == U_MUL_SCALAR] {
        r = v * a;
    } else if comptime![op == U_RSQRT_EPS] {
        r = 1.0 / (v + a).sqrt();
    }
    r
}

#[cube]
fn apply_binary(x: f32, y: f32, #[comptime] op: u32) -> f32 {
    let mut r = x;
    if comptime![op == B_ADD] {
        r = x + y;
    } else if comptime![op == B_SUB] {
        r = x - y;
    } else if comptime![op == B_MUL] {
        r = x * y;
    } else if comptime![op == B_DIV] {
        r = x / y;
    } else if comptime![op == B_MAX] {
        // torch.maximum propagates NaN from either side.
        r = select(x > y || x.is_nan(), x, y);
    } else if comptime![op == B_MIN] {
        r = select(x < y || x.is_nan(), x, y);
    } else if comptime![op == B_EQ] {
        r = select(x == y, 1.0, 0.0);
    } else if comptime![op == B_RELU_MASK] {
        // ReLU's backward: the gradient `x` where the forward output `y` was positive.
        r = select(y > 0.0, x, 0.0);
    }
    r
}

#[cube(launch_unchecked)]
pub(crate) fn unary_kernel(x: &Array<f32>, out: &mut Array<f32>, a: f32, b: f32, #[comptime] op: u32) {
    let i = ABSOLUTE_POS;
    if i < out.len() {
        out[i] = apply_unary(x[i], a, b, op);
    }
}

/// `out = lhs op rhs` where both operands already have the output's shape.
#[cube(launch_unchecked)]
pub(crate) fn binary_same_kernel(lhs: &Array<f32>, rhs: &Array<f32>, out: &mut Array<f32>, #[comptime] op: u32) {
    let i = ABSOLUTE_POS;
    if i < out.len() {
        out[i] = apply_binary(lhs[i], rhs[i], op);
    }
}

/// Broadcasting `out = lhs op rhs`. `meta` holds the output shape, then the lhs strides, then
/// the rhs strides (a broadcast dimension has stride 0), `rank` entries each.
#[cube(launch_unchecked)]
pub(crate) fn binary_bcast_kernel(
    lhs: &Array<f32>,
    rhs: &Array<f32>,
    out: &mut Array<f32>,
    meta: &Array<u32>,
    rank: u32,
    #[comptime] op: u32,
) {
    let i = ABSOLUTE_POS;
    if i < out.len() {
        let mut rem = i as u32;
        let mut li = 0u32;
        let mut ri = 0u32;
        for d in 0..rank {
            let dim = rank - 1 - d;
            let size = meta[dim as usize];
            let idx = rem % size;
            rem /= size;
            li += idx * meta[(rank + dim) as usize];
            ri += idx * meta[(2 * rank + dim) as usize];
        }
        out[i] = apply_binary(lhs[li as usize], rhs[ri as usize], op);
    }
}

/// `base + sum_d idx_d * stride_d`, where `idx` is row-major position `pos` in a shape: `meta`
/// holds the shape (`rank` entries), then the strides.
#[cube]
fn strided_position(pos: u32, meta: &Array<u32>, rank: u32, base: u32) -> u32 {
    let mut rem = pos;
    let mut at = base;
    for d in 0..rank {
        let dim = rank - 1 - d;
        let size = meta[dim as usize];
        at += (rem % size) * meta[(rank + dim) as usize];
        rem /= size;
    }
    at
}

/// `out[i] = src[offset + sum_d idx_d * stride_d]`: materialises a permuted, narrowed or
/// broadcast view (of f32 data, or the i32 that holds i64). `meta` holds the output shape then
/// the source strides.
#[cube(launch_unchecked)]
pub(crate) fn strided_copy_kernel<T: CubePrimitive>(
    src: &Array<T>,
    out: &mut Array<T>,
    meta: &Array<u32>,
    offset: u32,
    rank: u32,
) {
    let i = ABSOLUTE_POS;
    if i < out.len() {
        out[i] = src[strided_position(i as u32, meta, rank, offset) as usize];
    }
}

/// `out[base + sum_d idx_d * out_stride_d] = src[i]` where `idx` is `i` in `src`'s shape: writes
/// one part of a concatenation into its place. `meta` holds `src`'s shape, then `out`'s strides.
#[cube(launch_unchecked)]
pub(crate) fn copy_into_kernel<T: CubePrimitive>(
    src: &Array<T>,
    out: &mut Array<T>,
    meta: &Array<u32>,
    base: u32,
    rank: u32,
) {
    let i = ABSOLUTE_POS;
    if i < src.len() {
        out[strided_position(i as u32, meta, rank, base) as usize] = src[i];
    }
}

/// `f32 -> i32`, truncating toward zero (saturating at the i32 range).
#[cube(launch_unchecked)]
pub(crate) fn cast_to_int_kernel(x: &Array<f32>, out: &mut Array<i32>) {
    let i = ABSOLUTE_POS;
    if i < out.len() {
        let v = x[i];
        out[i] = select(v.is_nan(), 0i32, i32::cast_from(v.clamp(-2147483648.0, 2147483520.0)));
    }
}

/// `i32 -> f32`.
#[cube(launch_unchecked)]
pub(crate) fn cast_to_float_kernel(x: &Array<i32>, out: &mut Array<f32>) {
    let i = ABSOLUTE_POS;
    if i < out.len() {
        out[i] = f32::cast_from(x[i]);
    }
}

/// Reduces `x` viewed as `[outer, red, inner]` over the middle axis, one unit per output.
/// Used when outputs are many and the reduced axis short.
#[cube(launch_unchecked)]
pub(crate) fn reduce_unit_kernel(x: &Array<f32>, out: &mut Array<f32>, red: u32, inner: u32, #[comptime] op: u32) {
    let o = ABSOLUTE_POS;
    if o < out.len() {
        let o = o as u32;
        let base = (o / inner) * red * inner + o % inner;
        let mut acc = x[base as usize];
        for r in 1..red {
            let v = x[(base + r * inner) as usize];
            if comptime![op == R_SUM] {
                acc += v;
            } else {
                acc = select(v > acc || v.is_nan(), v, acc);
            }
        }
        out[o as usize] = acc;
    }
}

/// The same reduction with one cube of `BLOCK` units per output: each unit folds a strided
/// share of the axis, then a shared-memory tree combines the partial results.
#[cube(launch_unchecked)]
pub(crate) fn reduce_cube_kernel(x: &Array<f32>, out: &mut Array<f32>, red: u32, inner: u32, #[comptime] op: u32) {
    let o = CUBE_POS as u32;
    let t = UNIT_POS;
    let mut shared = SharedMemory::<f32>::new(256usize);
    let base = (o / inner) * red * inner + o % inner;
    let mut acc = f32::new(0.0);
    if comptime![op == R_MAX] {
        acc = x[base as usize];
    }
    let mut r = t;
    while r < red {
        let v = x[(base + r * inner) as usize];
        if comptime![op == R_SUM] {
            acc += v;
        } else {
            acc = select(v > acc || v.is_nan(), v, acc);
        }
        r += BLOCK;
    }
    shared[t as usize] = acc;
    sync_cube();
    // Unrolled at compile time, so every barrier sits in uniform control flow (WGSL's rule).
    #[unroll]
    for level in 0..8u32 {
        let half = 128u32 >> level;
        if t < half {
            let a = shared[t as usize];
            let b = shared[(t + half) as usize];
            if comptime![op == R_SUM] {
                shared[t as usize] = a + b;
            } else {
                shared[t as usize] = select(b > a || b.is_nan(), b, a);
            }
        }
        sync_cube();
    }
    if t == 0 {
        out[o as usize] = shared[0];
    }
}

/// Index of the first maximum along the middle axis of `[outer, red, inner]` (NaN counts as
/// the maximum, as in torch.argmax).
#[cube(launch_unchecked)]
pub(crate) fn argmax_kernel(x: &Array<f32>, out: &mut Array<i32>, red: u32, inner: u32) {
    let o = ABSOLUTE_POS;
    if o < out.len() {
        let o = o as u32;
        let base = (o / inner) * red * inner + o % inner;
        let mut best = x[base as usize];
        let mut arg = 0u32;
        for r in 1..red {
            let v = x[(base + r * inner) as usize];
            if (v > best || v.is_nan()) && !best.is_nan() {
                best = v;
                arg = r;
            }
        }
        out[o as usize] = arg as i32;
    }
}

/// Picks `x[.., index[..], ..]` along the middle axis of `[outer, red, inner]` into
/// `[outer, idx_len, inner]`: `gather` (an index of the output's shape) or, with `one_d`,
/// `index_select` (a 1-D index of `idx_len` entries, the same for every outer and inner
/// position).
#[cube(launch_unchecked)]
pub(crate) fn gather_kernel<T: CubePrimitive>(
    x: &Array<T>,
    index: &Array<i32>,
    out: &mut Array<T>,
    red: u32,
    idx_len: u32,
    inner: u32,
    #[comptime] one_d: bool,
) {
    let o = ABSOLUTE_POS;
    if o < out.len() {
        let o = o as u32;
        let outer = o / (idx_len * inner);
        let within = o % inner;
        let mut at = o;
        if comptime![one_d] {
            at = (o / inner) % idx_len;
        }
        let k = index[at as usize];
        // The host checked the indices; one out of range would read past the row, so it is
        // clamped into it instead.
        let kk = select(k < 0, 0u32, min(k as u32, red - 1));
        out[o as usize] = x[(outer * red * inner + kk * inner + within) as usize];
    }
}

/// Batched, strided matrix product `C[z] = A[z] B[z]` (or `C[z] += ...` when `accumulate`),
/// tiled 64x64 with a 16-deep k step; each of the 256 units computes a 4x4 block.
///
/// `meta`: m, n, k, k_inner, a_mod, a_zs, a_rs, a_kos, a_ks, b_zs, b_kos, b_ks, b_cs, c_zs, c_rs,
/// a_off, b_off, c_off. Element (z, r, kk) of A is at
/// `a_off + (z % a_mod) * a_zs + r * a_rs + (kk / k_inner) * a_kos + (kk % k_inner) * a_ks`, so one
/// kernel serves plain and transposed operands, grouped convolutions (A repeats every `a_mod`
/// batches) and reductions over images folded into k (`k_inner` = positions per image).
#[cube(launch_unchecked)]
pub(crate) fn matmul_kernel(a: &Array<f32>, b: &Array<f32>, c: &mut Array<f32>, meta: &Array<u32>, accumulate: u32) {
    let m = meta[0];
    let n = meta[1];
    let k = meta[2];
    let k_inner = meta[3];
    let a_mod = meta[4];
    let a_zs = meta[5];
    let a_rs = meta[6];
    let a_kos = meta[7];
    let a_ks = meta[8];
    let b_zs = meta[9];
    let b_kos = meta[10];
    let b_ks = meta[11];
    let b_cs = meta[12];
    let c_zs = meta[13];
    let c_rs = meta[14];
    let a_off = meta[15];
    let b_off = meta[16];
    let c_off = meta[17];

    let z = CUBE_POS_Z;
    let row0 = CUBE_POS_Y * 64;
    let col0 = CUBE_POS_X * 64;
    let t = UNIT_POS;
    let tr = t / 16;
    let tc = t % 16;
    let a_base = a_off + (z % a_mod) * a_zs;
    let b_base = b_off + z * b_zs;
    let a_k_fast = a_ks == 1 && a_rs != 1;
    let b_k_fast = b_ks == 1 && b_cs != 1;

    let mut sa = SharedMemory::<f32>::new(1024usize);
    let mut sb = SharedMemory::<f32>::new(1024usize);
    let mut acc = Array::<f32>::new(16usize);
    #[unroll]
    for i in 0..16usize {
        acc[i] = 0.0;
    }
    let mut k0 = 0u32;
    while k0 < k {
        // A tile: 64 rows x 16 k; B tile: 16 k x 64 columns; four elements per unit each.
        // Neighbouring units read neighbouring addresses (coalesced loads): along k when that
        // is the operand's unit stride, along rows / columns otherwise.
        #[unroll]
        for l in 0..4u32 {
            let e = t + l * 256;
            let mut r = e % 64;
            let mut kk = e / 64;
            if a_k_fast {
                r = e / 16;
                kk = e % 16;
            }
            let gr = row0 + r;
            let gk = k0 + kk;
            let mut v = f32::new(0.0);
            if gr < m && gk < k {
                v = a[(a_base + gr * a_rs + (gk / k_inner) * a_kos + (gk % k_inner) * a_ks) as usize];
            }
            sa[(kk * 64 + r) as usize] = v;
            let mut cc = e % 64;
            let mut kb = e / 64;
            if b_k_fast {
                cc = e / 16;
                kb = e % 16;
            }
            let gc = col0 + cc;
            let gkb = k0 + kb;
            let mut w = f32::new(0.0);
            if gc < n && gkb < k {
                w = b[(b_base + (gkb / k_inner) * b_kos + (gkb % k_inner) * b_ks + gc * b_cs) as usize];
            }
            sb[(kb * 64 + cc) as usize] = w;
        }
        sync_cube();
        for kk in 0..16u32 {
            let mut av = Array::<f32>::new(4usize);
            let mut bv = Array::<f32>::new(4usize);
            #[unroll]
            for i in 0..4u32 {
                av[i as usize] = sa[(kk * 64 + tr + 16 * i) as usize];
                bv[i as usize] = sb[(kk * 64 + tc + 16 * i) as usize];
            }
            #[unroll]
            for i in 0..4u32 {
                #[unroll]
                for j in 0..4u32 {
                    acc[(i * 4 + j) as usize] += av[i as usize] * bv[j as usize];
                }
            }
        }
        sync_cube();
        k0 += 16;
    }
    #[unroll]
    for i in 0..4u32 {
        #[unroll]
        for j in 0..4u32 {
            let r = row0 + tr + 16 * i;
            let cc = col0 + tc + 16 * j;
            if r < m && cc < n {
                let at = (c_off + z * c_zs + r * c_rs + cc) as usize;
                let v = acc[(i * 4 + j) as usize];
                if accumulate == 1 {
                    c[at] += v;
                } else {
                    c[at] = v;
                }
            }
        }
    }
}

/// im2col for images `n0..n0 + nb`: `col[(n - n0), g, (ci * kh + ki) * kw + kj, oy * ow + ox]`.
/// `meta`: c, h, w, kh, kw, oh, ow, sh, sw, ph, pw, dh, dw, groups, n0.
#[cube(launch_unchecked)]
pub(crate) fn im2col_kernel(x: &Array<f32>, col: &mut Array<f32>, meta: &Array<u32>) {
    let i = ABSOLUTE_POS;
    if i < col.len() {
        let c = meta[0];
        let h = meta[1];
        let w = meta[2];
        let kh = meta[3];
        let kw = meta[4];
        let oh = meta[5];
        let ow = meta[6];
        let n0 = meta[14];
        let p = oh * ow;
        let i = i as u32;
        let pos = i % p;
        let row = (i / p) % (c * kh * kw);
        let img = i / (p * c * kh * kw);
        let kj = row % kw;
        let ki = (row / kw) % kh;
        let ci = row / (kw * kh);
        let oy = pos / ow;
        let ox = pos % ow;
        let iy = (oy * meta[7] + ki * meta[11]) as i32 - meta[9] as i32;
        let ix = (ox * meta[8] + kj * meta[12]) as i32 - meta[10] as i32;
        let mut v = f32::new(0.0);
        if iy >= 0 && iy < h as i32 && ix >= 0 && ix < w as i32 {
            v = x[((((n0 + img) * c + ci) * h + iy as u32) * w + ix as u32) as usize];
        }
        col[i as usize] = v;
    }
}

/// col2im as a gather (no atomics): each input element sums the im2col entries that read it.
/// `dx` covers images `n0..n0 + nb`; `meta` as for [`im2col_kernel`].
#[cube(launch_unchecked)]
pub(crate) fn col2im_kernel(col: &Array<f32>, dx: &mut Array<f32>, meta: &Array<u32>, dx_len: u32) {
    let i = ABSOLUTE_POS as u32;
    if i < dx_len {
        let c = meta[0];
        let h = meta[1];
        let w = meta[2];
        let kh = meta[3];
        let kw = meta[4];
        let oh = meta[5];
        let ow = meta[6];
        let sh = meta[7];
        let sw = meta[8];
        let ph = meta[9];
        let pw = meta[10];
        let dh = meta[11];
        let dw = meta[12];
        let n0 = meta[14];
        let ix = i % w;
        let iy = (i / w) % h;
        let ci = (i / (w * h)) % c;
        let img = i / (w * h * c);
        let p = oh * ow;
        let mut acc = f32::new(0.0);
        for ki in 0..kh {
            let ty = (iy + ph) as i32 - (ki * dh) as i32;
            if ty >= 0 && ty % sh as i32 == 0 && ty / (sh as i32) < oh as i32 {
                let oy = ty as u32 / sh;
                for kj in 0..kw {
                    let tx = (ix + pw) as i32 - (kj * dw) as i32;
                    if tx >= 0 && tx % sw as i32 == 0 && tx / (sw as i32) < ow as i32 {
                        let ox = tx as u32 / sw;
                        let row = (ci * kh + ki) * kw + kj;
                        acc += col[((img * c * kh * kw + row) * p + oy * ow + ox) as usize];
                    }
                }
            }
        }
        dx[((n0 + img) * c * h * w + (i % (c * h * w))) as usize] = acc;
    }
}

/// `out[n, c, ..] = x[n, c, ..] * scale[c] + shift[c]` (+ residual) (then ReLU), each part
/// optional (a comptime flag; an absent array is never read): batch norm's normalisation, a
/// conv's bias, and the fused conv + BN (+ add) + ReLU epilogue.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn channel_affine_kernel(
    x: &Array<f32>,
    scale: &Array<f32>,
    shift: &Array<f32>,
    residual: &Array<f32>,
    out: &mut Array<f32>,
    channels: u32,
    spatial: u32,
    #[comptime] has_scale: bool,
    #[comptime] has_shift: bool,
    #[comptime] has_residual: bool,
    #[comptime] relu: bool,
) {
    let i = ABSOLUTE_POS;
    if i < out.len() {
        let ch = ((i as u32 / spatial) % channels) as usize;
        let mut v = x[i];
        if comptime![has_scale] {
            v *= scale[ch];
        }
        if comptime![has_shift] {
            v += shift[ch];
        }
        if comptime![has_residual] {
            v += residual[i];
        }
        if comptime![relu] {
            v = select(v < 0.0, 0.0, v);
        }
        out[i] = v;
    }
}

/// Per-channel mean and biased variance of `[n, c, spatial]` (two passes, one cube per channel).
#[cube(launch_unchecked)]
pub(crate) fn channel_stats_kernel(
    x: &Array<f32>,
    mean: &mut Array<f32>,
    var: &mut Array<f32>,
    n: u32,
    channels: u32,
    spatial: u32,
) {
    let ch = CUBE_POS as u32;
    let t = UNIT_POS;
    let count = n * spatial;
    let mut shared = SharedMemory::<f32>::new(256usize);
    let mut acc = f32::new(0.0);
    let mut j = t;
    while j < count {
        acc += x[((j / spatial) * channels * spatial + ch * spatial + j % spatial) as usize];
        j += BLOCK;
    }
    let mu = block_sum(acc, &mut shared, t) / f32::cast_from(count);
    let mut sq = f32::new(0.0);
    let mut j = t;
    while j < count {
        let d = x[((j / spatial) * channels * spatial + ch * spatial + j % spatial) as usize] - mu;
        sq += d * d;
        j += BLOCK;
    }
    let v = block_sum(sq, &mut shared, t) / f32::cast_from(count);
    if t == 0 {
        mean[ch as usize] = mu;
        var[ch as usize] = v;
    }
}

/// Per-channel `sum(dy)` and `sum(dy * (x - mean) * invstd)` of `[n, c, spatial]`.
#[cube(launch_unchecked)]
pub(crate) fn channel_grad_sums_kernel(
    dy: &Array<f32>,
    x: &Array<f32>,
    mean: &Array<f32>,
    invstd: &Array<f32>,
    sum_dy: &mut Array<f32>,
    sum_dy_xhat: &mut Array<f32>,
    n: u32,
    channels: u32,
    spatial: u32,
) {
    let ch = CUBE_POS as u32;
    let t = UNIT_POS;
    let count = n * spatial;
    let mu = mean[ch as usize];
    let is = invstd[ch as usize];
    let mut shared = SharedMemory::<f32>::new(256usize);
    let mut a = f32::new(0.0);
    let mut b = f32::new(0.0);
    let mut j = t;
    while j < count {
        let at = ((j / spatial) * channels * spatial + ch * spatial + j % spatial) as usize;
        let g = dy[at];
        a += g;
        b += g * (x[at] - mu);
        j += BLOCK;
    }
    let sa = block_sum(a, &mut shared, t);
    let sb = block_sum(b, &mut shared, t);
    if t == 0 {
        sum_dy[ch as usize] = sa;
        sum_dy_xhat[ch as usize] = sb * is;
    }
}

/// Batch norm's input gradient in training:
/// `dx = k * (dy - sum_dy / m - xhat * sum_dy_xhat / m)` with `k = gamma * invstd`.
#[cube(launch_unchecked)]
pub(crate) fn bn_backward_input_kernel(
    dy: &Array<f32>,
    x: &Array<f32>,
    mean: &Array<f32>,
    invstd: &Array<f32>,
    gamma: &Array<f32>,
    sum_dy: &Array<f32>,
    sum_dy_xhat: &Array<f32>,
    dx: &mut Array<f32>,
    channels: u32,
    spatial: u32,
    inv_count: f32,
) {
    let i = ABSOLUTE_POS;
    if i < dx.len() {
        let ch = ((i as u32 / spatial) % channels) as usize;
        let is = invstd[ch];
        let xhat = (x[i] - mean[ch]) * is;
        dx[i] = gamma[ch] * is * (dy[i] - sum_dy[ch] * inv_count - xhat * sum_dy_xhat[ch] * inv_count);
    }
}

/// Sum over a cube's units through shared memory; every unit gets the total.
#[cube]
fn block_sum(v: f32, shared: &mut SharedMemory<f32>, t: u32) -> f32 {
    shared[t as usize] = v;
    sync_cube();
    #[unroll]
    for level in 0..8u32 {
        let half = 128u32 >> level;
        if t < half {
            shared[t as usize] = shared[t as usize] + shared[(t + half) as usize];
        }
        sync_cube();
    }
    let total = shared[0];
    sync_cube();
    total
}

/// Max pooling over `[n*c, h, w]` planes with PyTorch's flat `h * w` argmax indices.
/// `meta`: h, w, oh, ow, kh, kw, sh, sw, ph, pw.
#[cube(launch_unchecked)]
pub(crate) fn max_pool_kernel(x: &Array<f32>, out: &mut Array<f32>, idx: &mut Array<i32>, meta: &Array<u32>) {
    let i = ABSOLUTE_POS;
    if i < out.len() {
        let h = meta[0];
        let w = meta[1];
        let oh = meta[2];
        let ow = meta[3];
        let i32v = i as u32;
        let ox = i32v % ow;
        let oy = (i32v / ow) % oh;
        let plane = i32v / (ow * oh);
        let y0 = (oy * meta[6]) as i32 - meta[8] as i32;
        let x0 = (ox * meta[7]) as i32 - meta[9] as i32;
        let mut best = f32::new(0.0);
        let mut arg = i32::new(-1);
        for ki in 0..meta[4] {
            let y = y0 + ki as i32;
            if y >= 0 && y < h as i32 {
                for kj in 0..meta[5] {
                    let xx = x0 + kj as i32;
                    if xx >= 0 && xx < w as i32 {
                        let at = y * w as i32 + xx;
                        let v = x[(plane * h * w + at as u32) as usize];
                        if arg < 0 || ((v > best || v.is_nan()) && !best.is_nan()) {
                            best = v;
                            arg = at;
                        }
                    }
                }
            }
        }
        out[i] = best;
        idx[i] = arg;
    }
}

/// Max pooling's backward: each output gradient goes to the input element its index names.
/// One unit per plane walks the plane's outputs in order (no float atomics in WGSL, and the
/// sums repeat bit for bit).
#[cube(launch_unchecked)]
pub(crate) fn max_pool_backward_kernel(
    dy: &Array<f32>,
    idx: &Array<i32>,
    dx: &mut Array<f32>,
    planes: u32,
    ihw: u32,
    ohw: u32,
) {
    let plane = ABSOLUTE_POS as u32;
    if plane < planes {
        let base = plane * ihw;
        for j in 0..ihw {
            dx[(base + j) as usize] = 0.0;
        }
        for j in 0..ohw {
            let at = (plane * ohw + j) as usize;
            let k = idx[at];
            // An index outside the plane (only a hand-made one can be) is skipped, never written.
            if k >= 0 && (k as u32) < ihw {
                let target = (base + k as u32) as usize;
                dx[target] += dy[at];
            }
        }
    }
}

/// Average pooling forward (`backward == 0`) or its gather-form backward (`backward == 1`).
/// `meta`: h, w, oh, ow, kh, kw, sh, sw, ph, pw, count_include_pad.
#[cube]
fn avg_pool_divisor(oy: u32, ox: u32, meta: &Array<u32>) -> f32 {
    let h = meta[0] as i32;
    let w = meta[1] as i32;
    let y0 = (oy * meta[6]) as i32 - meta[8] as i32;
    let x0 = (ox * meta[7]) as i32 - meta[9] as i32;
    // The window clipped to the padded input (ceil_mode windows can run past it) ...
    let y1 = min(y0 + meta[4] as i32, h + meta[8] as i32);
    let x1 = min(x0 + meta[5] as i32, w + meta[9] as i32);
    let mut count = (y1 - y0) * (x1 - x0);
    if meta[10] == 0 {
        // ... or to the input itself when padding does not count.
        count = (min(y1, h) - max(y0, 0)) * (min(x1, w) - max(x0, 0));
    }
    f32::cast_from(count)
}

#[cube(launch_unchecked)]
pub(crate) fn avg_pool_kernel(x: &Array<f32>, out: &mut Array<f32>, meta: &Array<u32>) {
    let i = ABSOLUTE_POS;
    if i < out.len() {
        let h = meta[0];
        let w = meta[1];
        let oh = meta[2];
        let ow = meta[3];
        let iv = i as u32;
        let ox = iv % ow;
        let oy = (iv / ow) % oh;
        let plane = iv / (ow * oh);
        let y0 = (oy * meta[6]) as i32 - meta[8] as i32;
        let x0 = (ox * meta[7]) as i32 - meta[9] as i32;
        let mut acc = f32::new(0.0);
        for ki in 0..meta[4] {
            let y = y0 + ki as i32;
            if y >= 0 && y < h as i32 {
                for kj in 0..meta[5] {
                    let xx = x0 + kj as i32;
                    if xx >= 0 && xx < w as i32 {
                        acc += x[(plane * h * w + y as u32 * w + xx as u32) as usize];
                    }
                }
            }
        }
        out[i] = acc / avg_pool_divisor(oy, ox, meta);
    }
}

#[cube(launch_unchecked)]
pub(crate) fn avg_pool_backward_kernel(dy: &Array<f32>, dx: &mut Array<f32>, meta: &Array<u32>) {
    let i = ABSOLUTE_POS;
    if i < dx.len() {
        let h = meta[0];
        let w = meta[1];
        let oh = meta[2];
        let ow = meta[3];
        let kh = meta[4];
        let kw = meta[5];
        let sh = meta[6];
        let sw = meta[7];
        let ph = meta[8];
        let pw = meta[9];
        let iv = i as u32;
        let ix = iv % w;
        let iy = (iv / w) % h;
        let plane = iv / (w * h);
        let mut acc = f32::new(0.0);
        for ki in 0..kh {
            let ty = (iy + ph) as i32 - ki as i32;
            if ty >= 0 && ty % sh as i32 == 0 && ty / (sh as i32) < oh as i32 {
                let oy = ty as u32 / sh;
                for kj in 0..kw {
                    let tx = (ix + pw) as i32 - kj as i32;
                    if tx >= 0 && tx % sw as i32 == 0 && tx / (sw as i32) < ow as i32 {
                        let ox = tx as u32 / sw;
                        acc += dy[(plane * oh * ow + oy * ow + ox) as usize] / avg_pool_divisor(oy, ox, meta);
                    }
                }
            }
        }
        dx[i] = acc;
    }
}

/// Adaptive average pooling: output cell `o` of a size-`out` axis averages input rows
/// `floor(o * in / out) .. ceil((o + 1) * in / out)`. `meta`: h, w, oh, ow.
#[cube(launch_unchecked)]
pub(crate) fn adaptive_avg_pool_kernel(x: &Array<f32>, out: &mut Array<f32>, meta: &Array<u32>) {
    let i = ABSOLUTE_POS;
    if i < out.len() {
        let h = meta[0];
        let w = meta[1];
        let oh = meta[2];
        let ow = meta[3];
        let iv = i as u32;
        let ox = iv % ow;
        let oy = (iv / ow) % oh;
        let plane = iv / (ow * oh);
        let y0 = oy * h / oh;
        let y1 = ((oy + 1) * h).div_ceil(oh);
        let x0 = ox * w / ow;
        let x1 = ((ox + 1) * w).div_ceil(ow);
        let mut acc = f32::new(0.0);
        for y in y0..y1 {
            for xx in x0..x1 {
                acc += x[(plane * h * w + y * w + xx) as usize];
            }
        }
        out[i] = acc / f32::cast_from((y1 - y0) * (x1 - x0));
    }
}

#[cube(launch_unchecked)]
pub(crate) fn adaptive_avg_pool_backward_kernel(dy: &Array<f32>, dx: &mut Array<f32>, meta: &Array<u32>) {
    let i = ABSOLUTE_POS;
    if i < dx.len() {
        let h = meta[0];
        let w = meta[1];
        let oh = meta[2];
        let ow = meta[3];
        let iv = i as u32;
        let ix = iv % w;
        let iy = (iv / w) % h;
        let plane = iv / (w * h);
        let mut acc = f32::new(0.0);
        for oy in 0..oh {
            let y0 = oy * h / oh;
            let y1 = ((oy + 1) * h).div_ceil(oh);
            if iy >= y0 && iy < y1 {
                for ox in 0..ow {
                    let x0 = ox * w / ow;
                    let x1 = ((ox + 1) * w).div_ceil(ow);
                    if ix >= x0 && ix < x1 {
                        acc += dy[(plane * oh * ow + oy * ow + ox) as usize] / f32::cast_from((y1 - y0) * (x1 - x0));
                    }
                }
            }
        }
        dx[i] = acc;
    }
}

/// One SGD step (torch.optim.SGD's order of operations), into new buffers. `first == 1` on a
/// parameter's first step with momentum (the buffer starts as the direction).
#[cube(launch_unchecked)]
pub(crate) fn sgd_kernel(
    param: &Array<f32>,
    grad: &Array<f32>,
    buf: &Array<f32>,
    out_param: &mut Array<f32>,
    out_buf: &mut Array<f32>,
    lr: f32,
    weight_decay: f32,
    momentum: f32,
    damp: f32,
    #[comptime] has_momentum: bool,
    #[comptime] nesterov: bool,
    #[comptime] first: bool,
) {
    let i = ABSOLUTE_POS;
    if i < out_param.len() {
        let p = param[i];
        let mut d = select(weight_decay != 0.0, grad[i] + weight_decay * p, grad[i]);
        if comptime![has_momentum] {
            let mut b = d;
            if comptime![!first] {
                b = buf[i] * momentum + damp * d;
            }
            out_buf[i] = b;
            if comptime![nesterov] {
                d += momentum * b;
            } else {
                d = b;
            }
        }
        out_param[i] = p - lr * d;
    }
}

/// One Adam / AdamW step (torch's single-tensor order: decay, moments, `addcdiv`), into new
/// buffers. `shrink` is AdamW's `1 - lr * wd` (1 for Adam), `l2` Adam's weight decay (0 for
/// AdamW).
#[cube(launch_unchecked)]
pub(crate) fn adam_kernel(
    param: &Array<f32>,
    grad: &Array<f32>,
    m1: &Array<f32>,
    m2: &Array<f32>,
    out_param: &mut Array<f32>,
    out_m1: &mut Array<f32>,
    out_m2: &mut Array<f32>,
    scalars: &Array<f32>,
) {
    let i = ABSOLUTE_POS;
    if i < out_param.len() {
        let beta1 = scalars[0];
        let beta2 = scalars[1];
        let one_b1 = scalars[2];
        let one_b2 = scalars[3];
        let eps = scalars[4];
        let l2 = scalars[5];
        let shrink = scalars[6];
        let step_size = scalars[7];
        let bc2_sqrt = scalars[8];
        let p = select(shrink != 1.0, param[i] * shrink, param[i]);
        let g = select(l2 != 0.0, grad[i] + l2 * p, grad[i]);
        let a = m1[i] * beta1 + one_b1 * g;
        let b = m2[i] * beta2 + one_b2 * (g * g);
        out_m1[i] = a;
        out_m2[i] = b;
        let denom = b.sqrt() / bc2_sqrt + eps;
        out_param[i] = p + (-step_size) * (a / denom);
    }
}
