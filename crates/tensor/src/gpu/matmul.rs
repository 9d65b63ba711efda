//! The matrix-product family: one batched, strided, tiled kernel that serves plain and
//! transposed products, batched `matmul`, and the products inside the convolutions (grouped
//! weights repeating across images, images folded into the k axis for the weight gradient).

use super::runtime::{arg, client, f32_buffer, gpu_err, new_array, u32_of, zeros, GpuRuntime};
use super::{Gpu, GpuArray};
use crate::backend::MatmulOps;
use crate::error::{mismatch, Result, TensorError};
use crate::shape::broadcast_shapes;
use crate::{DType, Tensor};
use cubecl::prelude::*;
use cubecl::server::Handle;

/// Where the operands of a batched product `C[z] = A[z] B[z]` live: element `(z, r, kk)` of A is
/// at `a_off + (z % a_mod) * a_zs + r * a_rs + (kk / k_inner) * a_kos + (kk % k_inner) * a_ks`
/// (B's `(z, kk, c)` and C's `(z, r, c)` alike, with their own strides). One kernel so serves
/// plain and transposed operands, grouped convolutions (A repeats every `a_mod` batches) and
/// reductions over images folded into k (`k_inner` = positions per image).
#[derive(CubeLaunch, CubeType)]
struct MatmulMeta {
    /// Rows of A and C.
    m: u32,
    /// Columns of B and C.
    n: u32,
    /// The reduced axis.
    k: u32,
    /// Positions of k per outer k step (k itself unless images are folded into k).
    k_inner: u32,
    /// A's batch index is `z % a_mod`.
    a_mod: u32,
    /// A: batch, row, outer-k and k strides.
    a_zs: u32,
    a_rs: u32,
    a_kos: u32,
    a_ks: u32,
    /// B: batch, outer-k, k and column strides.
    b_zs: u32,
    b_kos: u32,
    b_ks: u32,
    b_cs: u32,
    /// C: batch and row strides (columns are contiguous).
    c_zs: u32,
    c_rs: u32,
    /// Where each operand starts in its buffer.
    a_off: u32,
    b_off: u32,
    c_off: u32,
}

/// Batched, strided matrix product `C[z] = A[z] B[z]` (or `C[z] += ...` when `accumulate`),
/// tiled 64x64 with a 16-deep k step; each of the 256 units computes a 4x4 block.
///
/// Where each operand's elements live is [`MatmulMeta`].
#[cube(launch_unchecked)]
fn matmul_kernel(a: &Array<f32>, b: &Array<f32>, c: &mut Array<f32>, meta: MatmulMeta, #[comptime] accumulate: bool) {
    let m = meta.m;
    let n = meta.n;
    let k = meta.k;
    let k_inner = meta.k_inner;
    let z = CUBE_POS_Z;
    let row0 = CUBE_POS_Y * 64;
    let col0 = CUBE_POS_X * 64;
    let t = UNIT_POS;
    let tr = t / 16;
    let tc = t % 16;
    let a_base = meta.a_off + (z % meta.a_mod) * meta.a_zs;
    let b_base = meta.b_off + z * meta.b_zs;
    let a_k_fast = meta.a_ks == 1 && meta.a_rs != 1;
    let b_k_fast = meta.b_ks == 1 && meta.b_cs != 1;

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
                v = a[(a_base + gr * meta.a_rs + (gk / k_inner) * meta.a_kos + (gk % k_inner) * meta.a_ks) as usize];
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
                w = b[(b_base + (gkb / k_inner) * meta.b_kos + (gkb % k_inner) * meta.b_ks + gc * meta.b_cs) as usize];
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
                let at = (meta.c_off + z * meta.c_zs + r * meta.c_rs + cc) as usize;
                let v = acc[(i * 4 + j) as usize];
                if comptime![accumulate] {
                    c[at] += v;
                } else {
                    c[at] = v;
                }
            }
        }
    }
}

/// [`MatmulMeta`] in host sizes, plus the number of batches (the grid's z).
#[derive(Clone, Copy, Default)]
pub(super) struct MatmulLayout {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub k_inner: usize,
    pub batches: usize,
    pub a_mod: usize,
    pub a_zs: usize,
    pub a_rs: usize,
    pub a_kos: usize,
    pub a_ks: usize,
    pub b_zs: usize,
    pub b_kos: usize,
    pub b_ks: usize,
    pub b_cs: usize,
    pub c_zs: usize,
    pub c_rs: usize,
    pub a_off: usize,
    pub b_off: usize,
    pub c_off: usize,
}

impl MatmulLayout {
    fn meta<R: Runtime>(&self) -> Result<MatmulMetaLaunch<R>> {
        let u = |v: usize| u32_of("matmul", v);
        Ok(MatmulMetaLaunch::new(
            u(self.m)?,
            u(self.n)?,
            u(self.k)?,
            u(self.k_inner.max(1))?,
            u(self.a_mod.max(1))?,
            u(self.a_zs)?,
            u(self.a_rs)?,
            u(self.a_kos)?,
            u(self.a_ks)?,
            u(self.b_zs)?,
            u(self.b_kos)?,
            u(self.b_ks)?,
            u(self.b_cs)?,
            u(self.c_zs)?,
            u(self.c_rs)?,
            u(self.a_off)?,
            u(self.b_off)?,
            u(self.c_off)?,
        ))
    }
}

/// Runs `C = A B` (or `C += A B` when `accumulate`) over the buffers as `l` lays them out.
#[allow(clippy::too_many_arguments)]
pub(super) fn launch_matmul<R: GpuRuntime>(
    client: &ComputeClient<R>,
    a: &Handle,
    a_len: usize,
    b: &Handle,
    b_len: usize,
    c: &Handle,
    c_len: usize,
    l: &MatmulLayout,
    accumulate: bool,
) -> Result<()> {
    if l.m == 0 || l.n == 0 || l.batches == 0 {
        return Ok(());
    }
    let (col_tiles, row_tiles) = (l.n.div_ceil(64), l.m.div_ceil(64));
    if l.batches > 65_535 || col_tiles > 65_535 || row_tiles > 65_535 {
        return Err(gpu_err(
            "matmul",
            format!("a {} x {} product in {} batches exceeds the grid's 65,535 tiles per axis", l.m, l.n, l.batches),
        ));
    }
    let count = CubeCount::Static(col_tiles as u32, row_tiles as u32, l.batches as u32);
    let dim = CubeDim { x: 256, y: 1, z: 1 };
    let meta = l.meta::<R>()?;
    unsafe {
        matmul_kernel::launch_unchecked::<R>(
            client,
            count,
            dim,
            arg(a, a_len),
            arg(b, b_len),
            arg(c, c_len),
            meta,
            accumulate,
        )
    };
    Ok(())
}

/// `[batch, m, k] x [batch, k, n]`, each operand's batch stride 0 when it is broadcast.
fn matmul(
    a: &GpuArray,
    b: &GpuArray,
    batches: usize,
    (m, k, n): (usize, usize, usize),
    (a_batched, b_batched): (bool, bool),
    out_shape: &[usize],
) -> Result<GpuArray> {
    on_runtime!(a.device, R => {
        let client = client::<R>()?;
        let len = batches * m * n;
        let out = f32_buffer(&client, len)?;
        let l = MatmulLayout {
            m,
            n,
            k,
            k_inner: k,
            batches,
            a_mod: batches,
            a_zs: if a_batched { m * k } else { 0 },
            a_rs: k,
            a_ks: 1,
            b_zs: if b_batched { k * n } else { 0 },
            b_ks: n,
            b_cs: 1,
            c_zs: m * n,
            c_rs: n,
            ..Default::default()
        };
        if k == 0 {
            return zeros(out_shape, R::DEVICE);
        }
        launch_matmul::<R>(&client, &a.handle, a.numel(), &b.handle, b.numel(), &out, len, &l, false)?;
        Ok(new_array::<R>(out, out_shape, DType::F32))
    })
}

impl MatmulOps for Gpu {
    fn matmul(&self, x: &Tensor, rhs: &Tensor) -> Result<Tensor> {
        let (a, b) = (x.gpu_of("matmul")?, rhs.gpu_of("matmul")?);
        if a.dtype != DType::F32 || b.dtype != DType::F32 {
            return Err(TensorError::DType { op: "matmul", expected: DType::F32, got: DType::I64 });
        }
        let (ra, rb) = (a.shape.len(), b.shape.len());
        if ra < 2 || rb < 2 || a.shape[ra - 1] != b.shape[rb - 2] {
            return Err(mismatch("matmul", &a.shape, &b.shape));
        }
        let (m, k, n) = (a.shape[ra - 2], a.shape[ra - 1], b.shape[rb - 1]);
        let batch = broadcast_shapes("matmul", &a.shape[..ra - 2], &b.shape[..rb - 2])?;
        let nb: usize = batch.iter().product();
        // An operand whose batch is a single matrix is read with batch stride 0; one broadcast
        // along some batch dimensions only is expanded first.
        let expand = |t: &Tensor, rows: usize, cols: usize| -> Result<(Tensor, bool)> {
            let own: usize = t.shape()[..t.rank() - 2].iter().product();
            if own == 1 {
                return Ok((t.clone(), false));
            }
            let mut full = batch.clone();
            full.extend([rows, cols]);
            Ok((if t.shape() == full.as_slice() { t.clone() } else { t.broadcast_to(&full)? }, true))
        };
        let (ta, a_batched) = expand(x, m, k)?;
        let (tb, b_batched) = expand(rhs, k, n)?;
        let mut shape = batch;
        shape.extend([m, n]);
        let out = matmul(ta.gpu_of("matmul")?, tb.gpu_of("matmul")?, nb, (m, k, n), (a_batched, b_batched), &shape)?;
        Ok(Tensor::from_gpu(out))
    }
}
