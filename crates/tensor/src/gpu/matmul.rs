//! The matrix-product family. Products go to cubek-matmul (tracel-ai's tuned kernels, burn's):
//! its tensor-core routine where the device has tensor cores (`cmma`), its unit routine
//! elsewhere (lavapipe in CI). Our own batched, strided, tiled kernel stays for what cubek's
//! products cannot express — images folded into the k axis and accumulation into the output,
//! both of the conv weight gradient — for buffer offsets a wgpu binding cannot take, and as the
//! fallback when cubek refuses a problem. `RESNET_GPU_MATMUL` chooses: `auto` (the default, as
//! above), `unit` (cubek's unit routine only: plain f32 everywhere, no TF32), `own` (our kernel
//! only).

use super::runtime::{arg, client, f32_buffer, gpu_err, new_array, u32_of, zeros, GpuRuntime};
use super::{Gpu, GpuArray};
use crate::backend::MatmulOps;
use crate::error::{mismatch, Result, TensorError};
use crate::shape::broadcast_shapes;
use crate::{DType, Tensor};
use cubecl::prelude::*;
use cubecl::server::Handle;
use cubecl::zspace::{Shape, Strides};
use cubek::matmul::definition::{MatmulElems, MatmulGlobalElems, MatmulSetupError};
use cubek::matmul::launch::Strategy;
use cubek::std::InputBinding;
use std::sync::OnceLock;

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
        if len == 0 {
            return Ok(new_array::<R>(out, out_shape, DType::F32));
        }
        let batch_of = |batched: bool| if batched { batches } else { 1 };
        let lhs = Operand::contiguous(&a.handle, 0, vec![batch_of(a_batched), m, k]);
        let rhs = Operand::contiguous(&b.handle, 0, vec![batch_of(b_batched), k, n]);
        if !cubek_matmul::<R>(&client, &lhs, &rhs, &Operand::contiguous(&out, 0, vec![batches, m, n]))? {
            launch_matmul::<R>(&client, &a.handle, a.numel(), &b.handle, b.numel(), &out, len, &l, false)?;
        }
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

/// Which kernels run the products (`RESNET_GPU_MATMUL`, read once).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MatmulChoice {
    /// cubek: tensor cores where the device has them, else its unit routine.
    Auto,
    /// cubek's unit routine only (plain f32).
    Unit,
    /// Our own tiled kernel only.
    Own,
}

fn matmul_choice() -> MatmulChoice {
    static CHOICE: OnceLock<MatmulChoice> = OnceLock::new();
    *CHOICE.get_or_init(|| match std::env::var("RESNET_GPU_MATMUL").as_deref() {
        Ok("unit") => MatmulChoice::Unit,
        Ok("own") => MatmulChoice::Own,
        _ => MatmulChoice::Auto,
    })
}

/// Whether products may go to cubek (`RESNET_GPU_MATMUL` is not `own`).
pub(super) fn cubek_enabled() -> bool {
    matmul_choice() != MatmulChoice::Own
}

/// One operand of a cubek product: the buffer, the element it starts at, and its shape and
/// strides in elements (rank >= 2; batch dimensions of size 1 broadcast, numpy's way).
pub(super) struct Operand<'a> {
    pub handle: &'a Handle,
    pub offset: usize,
    pub shape: Vec<usize>,
    pub strides: Vec<usize>,
}

impl Operand<'_> {
    /// A contiguous row-major operand.
    pub(super) fn contiguous(handle: &Handle, offset: usize, shape: Vec<usize>) -> Operand<'_> {
        let strides = super::view::contiguous_strides(&shape);
        Operand { handle, offset, shape, strides }
    }

    fn binding<R: Runtime>(&self) -> TensorBinding<R> {
        let handle = match self.offset {
            0 => self.handle.clone(),
            off => self.handle.clone().offset_start(4 * off as u64),
        };
        // SAFETY: the callers derive shapes and strides from the buffers they allocated, so every
        // element the product addresses lies inside the buffer.
        unsafe {
            TensorBinding::from_raw_parts(handle, Strides::from(self.strides.clone()), Shape::from(self.shape.clone()))
        }
    }
}

/// wgpu binds a buffer at an offset only in steps of its storage-offset alignment (256 bytes
/// at most, by the WebGPU limits); an operand elsewhere goes to our own kernel.
fn offset_bindable(offset: usize) -> bool {
    (4 * offset).is_multiple_of(256)
}

/// `out = lhs @ rhs` by cubek-matmul. `Ok(false)` when it is not to run there (our own kernel
/// is chosen, an offset cannot be bound, or cubek has no routine for the problem): the caller
/// then runs our kernel. Setup errors are not launch failures, so nothing has run by then.
pub(super) fn cubek_matmul<R: GpuRuntime>(
    client: &ComputeClient<R>,
    lhs: &Operand,
    rhs: &Operand,
    out: &Operand,
) -> Result<bool> {
    let choice = matmul_choice();
    if choice == MatmulChoice::Own || ![lhs, rhs, out].iter().all(|o| offset_bindable(o.offset)) {
        return Ok(false);
    }
    let f32_type = f32::as_type_native_unchecked().storage_type();
    let globals = MatmulGlobalElems { lhs: f32_type, rhs: f32_type, out: f32_type };
    let launch = |strategy: Strategy| -> std::result::Result<(), MatmulSetupError> {
        let mut dtypes = MatmulElems::from_globals(&globals);
        cubek::matmul::launch::launch_ref(
            &strategy,
            client,
            InputBinding::new(lhs.binding::<R>(), f32_type),
            InputBinding::new(rhs.binding::<R>(), f32_type),
            out.binding::<R>(),
            &mut dtypes,
        )
    };
    // Whether this runtime's device has no tensor-core routine, learnt on the first product.
    static NO_CMMA: [OnceLock<()>; 2] = [OnceLock::new(), OnceLock::new()];
    let no_cmma = &NO_CMMA[usize::from(R::DEVICE == crate::Device::Cuda)];
    if choice == MatmulChoice::Auto && no_cmma.get().is_none() {
        match launch(Strategy::SimpleCyclicCmma(Default::default())) {
            Ok(()) => return Ok(true),
            Err(MatmulSetupError::Unavailable(_)) => {
                let _ = no_cmma.set(());
            }
            Err(_) => return Ok(false),
        }
    }
    Ok(launch(Strategy::SimpleUnit(Default::default())).is_ok())
}

#[cfg(all(test, feature = "wgpu"))]
mod tests {
    //! cubek's products and our own kernel on the same operands — broadcast weights, transposed
    //! weights, an output at an offset — against a naive product (the public suites in
    //! `tests/device.rs` see only the result, not which kernel made it).
    use super::*;
    use crate::gpu::runtime::{client, upload_f32};
    use cubecl::wgpu::WgpuRuntime;

    fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n).map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 1000) as f32 / 500.0 - 1.0).collect()
    }

    /// `c[z] = a[z % a_batches] b[z]`, with `a` read through `a_at(z, r, kk)`.
    fn naive(
        a: &[f32],
        a_at: impl Fn(usize, usize, usize) -> usize,
        b: &[f32],
        (z, m, k, n): (usize, usize, usize, usize),
    ) -> Vec<f32> {
        let mut c = vec![0f32; z * m * n];
        for zz in 0..z {
            for r in 0..m {
                for col in 0..n {
                    let s: f64 = (0..k).map(|kk| a[a_at(zz, r, kk)] as f64 * b[(zz * k + kk) * n + col] as f64).sum();
                    c[(zz * m + r) * n + col] = s as f32;
                }
            }
        }
        c
    }

    #[test]
    fn cubek_and_own_products_match_a_naive_product() {
        let Ok(client) = client::<WgpuRuntime>() else {
            assert!(
                std::env::var("RESNET_REQUIRE_GPU").as_deref() != Ok("1"),
                "RESNET_REQUIRE_GPU=1 but wgpu cannot run"
            );
            eprintln!("skipped: no wgpu adapter");
            return;
        };
        let (groups, m, k, n, images) = (3, 5, 7, 9, 2);
        let z = images * groups;
        let a = data(groups * m * k, 1);
        let b = data(z * k * n, 2);
        let a_buf = upload_f32(&a, &[a.len()], crate::Device::Wgpu).unwrap();
        let b_buf = upload_f32(&b, &[b.len()], crate::Device::Wgpu).unwrap();
        // The output starts 64 floats (256 bytes) into its buffer, as a later chunk of images does.
        let off = 64;
        let read = |h: &Handle| -> Vec<f32> {
            f32::from_bytes(&client.read_one(h.clone()).unwrap())[off..off + z * m * n].to_vec()
        };
        for transposed in [false, true] {
            // a as [groups, m, k], or as the transpose of a [groups, k, m] buffer.
            let (a_shape, a_strides) = match transposed {
                false => (vec![1, groups, m, k], vec![groups * m * k, m * k, k, 1]),
                true => (vec![1, groups, m, k], vec![groups * m * k, m * k, 1, m]),
            };
            let a_at = |zz: usize, r: usize, kk: usize| {
                let g = zz % groups;
                if transposed {
                    g * m * k + kk * m + r
                } else {
                    (g * m + r) * k + kk
                }
            };
            let want = naive(&a, a_at, &b, (z, m, k, n));
            let lhs = Operand { handle: &a_buf.handle, offset: 0, shape: a_shape, strides: a_strides };
            let rhs = Operand::contiguous(&b_buf.handle, 0, vec![images, groups, k, n]);
            let out = f32_buffer(&client, off + z * m * n).unwrap();
            let ran = cubek_matmul::<WgpuRuntime>(
                &client,
                &lhs,
                &rhs,
                &Operand::contiguous(&out, off, vec![images, groups, m, n]),
            );
            // (`RESNET_GPU_MATMUL=own` sends every product to our kernel.)
            assert_eq!(ran.unwrap(), cubek_enabled(), "cubek refused the product (transposed: {transposed})");
            let own_out = f32_buffer(&client, off + z * m * n).unwrap();
            let (a_rs, a_ks) = if transposed { (1, m) } else { (k, 1) };
            let l = MatmulLayout {
                m,
                n,
                k,
                k_inner: k,
                batches: z,
                a_mod: groups,
                a_zs: m * k,
                a_rs,
                a_ks,
                b_zs: k * n,
                b_ks: n,
                b_cs: 1,
                c_zs: m * n,
                c_rs: n,
                c_off: off,
                ..Default::default()
            };
            launch_matmul::<WgpuRuntime>(
                &client,
                &a_buf.handle,
                a.len(),
                &b_buf.handle,
                b.len(),
                &own_out,
                off + z * m * n,
                &l,
                false,
            )
            .unwrap();
            let mut results = vec![("own", read(&own_out))];
            if cubek_enabled() {
                results.push(("cubek", read(&out)));
            }
            for (name, got) in results {
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g - w).abs() <= 1e-4 * w.abs().max(1.0),
                        "{name}, transposed {transposed}: element {i} is {g}, not {w}"
                    );
                }
            }
        }
        // An offset wgpu cannot bind goes to our kernel.
        let rhs = Operand::contiguous(&b_buf.handle, 3, vec![1, 2, 2]);
        let lhs = Operand::contiguous(&a_buf.handle, 0, vec![1, 2, 2]);
        let out = f32_buffer(&client, 4).unwrap();
        assert!(
            !cubek_matmul::<WgpuRuntime>(&client, &lhs, &rhs, &Operand::contiguous(&out, 0, vec![1, 2, 2])).unwrap()
        );
    }
}
