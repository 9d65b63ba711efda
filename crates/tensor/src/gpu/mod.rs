//! GPU storage and the host side of the cubecl kernels (built with the `wgpu` or `cuda`
//! feature).
//!
//! A [`GpuArray`] is a contiguous row-major buffer on one device: f32 data as `f32`, i64 data
//! (labels, pooling indices) as `i32`, because WGSL has no 64-bit integers; uploads refuse i64
//! values outside the i32 range. Views on the GPU (permute, narrow, broadcast) are materialised
//! by one strided-copy kernel; reshape only changes the shape.
//!
//! Every function here is generic over the cubecl runtime and reached through `on_runtime!`,
//! which picks the runtime from the array's [`Device`]. Kernels are launched asynchronously;
//! only a download waits for them.
//!
//! Safety of the `launch_unchecked` calls (cubecl skips its own bounds checks there): every
//! buffer is allocated here with the length its `ArrayArg` declares, every sizes-derived index
//! stays below 2^32 (`f32_buffer` and the uploads refuse larger buffers), and each kernel either
//! compares its position with its output's length or runs on an exact grid (one cube per
//! channel or per output).

mod backend;
pub(crate) mod kernels;

pub(crate) use backend::Gpu;

use crate::error::{Result, TensorError};
use crate::kernels::conv::ConvGeom;
use crate::{DType, Device};
use cubecl::prelude::*;
use cubecl::server::Handle;
use kernels::BLOCK;
use std::sync::OnceLock;

/// A contiguous buffer on a GPU device.
#[derive(Clone)]
pub(crate) struct GpuArray {
    pub(crate) handle: Handle,
    pub(crate) shape: Vec<usize>,
    pub(crate) dtype: DType,
    pub(crate) device: Device,
}

impl GpuArray {
    pub(crate) fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub(crate) fn reshaped(&self, shape: &[usize]) -> GpuArray {
        GpuArray { shape: shape.to_vec(), ..self.clone() }
    }
}

/// A cubecl runtime this crate can run on, and the [`Device`] that names it.
pub(crate) trait GpuRuntime: Runtime {
    const DEVICE: Device;
    fn default_device() -> Self::Device;
}

#[cfg(feature = "wgpu")]
impl GpuRuntime for cubecl::wgpu::WgpuRuntime {
    const DEVICE: Device = Device::Wgpu;
    fn default_device() -> Self::Device {
        cubecl::wgpu::WgpuDevice::DefaultDevice
    }
}

#[cfg(feature = "cuda")]
impl GpuRuntime for cubecl::cuda::CudaRuntime {
    const DEVICE: Device = Device::Cuda;
    fn default_device() -> Self::Device {
        cubecl::cuda::CudaDevice { index: 0 }
    }
}

/// Runs `$body` with `$R` bound to the cubecl runtime of `$device`.
macro_rules! on_runtime {
    ($device:expr, $R:ident => $body:expr) => {{
        match $device {
            #[cfg(feature = "wgpu")]
            $crate::Device::Wgpu => {
                type $R = cubecl::wgpu::WgpuRuntime;
                $body
            }
            #[cfg(feature = "cuda")]
            $crate::Device::Cuda => {
                type $R = cubecl::cuda::CudaRuntime;
                $body
            }
            #[allow(unreachable_patterns)]
            other => Err($crate::TensorError::DeviceUnavailable {
                op: "gpu",
                device: format!("{other} (not built: enable the `wgpu` or `cuda` feature)"),
            }),
        }
    }};
}

/// The first client of a runtime is created under `catch_unwind`: cubecl panics when no adapter
/// or driver exists, and a missing GPU must be an `Err`, not a crash. The outcome is kept.
fn probe_cell(device: Device) -> &'static OnceLock<std::result::Result<(), String>> {
    static WGPU: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    static CUDA: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    match device {
        Device::Cuda => &CUDA,
        _ => &WGPU,
    }
}

fn client<R: GpuRuntime>() -> Result<ComputeClient<R>> {
    let probe = probe_cell(R::DEVICE).get_or_init(|| {
        std::panic::catch_unwind(|| {
            let _ = R::client(&R::default_device());
        })
        .map_err(|payload| {
            payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "the runtime could not start".into())
        })
    });
    match probe {
        Ok(()) => Ok(R::client(&R::default_device())),
        Err(msg) => {
            let hint = match R::DEVICE {
                Device::Cuda => "no usable NVIDIA driver: the CUDA runtime needs libcuda and NVRTC at run time",
                _ => {
                    "no Vulkan, Metal or DX12 adapter: on a machine without a GPU, install Mesa's software \
                      driver (Debian: mesa-vulkan-drivers)"
                }
            };
            Err(TensorError::DeviceUnavailable {
                op: "gpu",
                device: format!("{} ({hint}; cubecl said: {msg})", R::DEVICE),
            })
        }
    }
}

/// `Ok` when `device` can run kernels in this process (its runtime is built and starts).
pub(crate) fn check(device: Device) -> Result<()> {
    on_runtime!(device, R => client::<R>().map(|_| ()))
}

fn gpu_err(op: &'static str, msg: impl std::fmt::Display) -> TensorError {
    TensorError::InvalidArgument { op, msg: format!("GPU error: {msg}") }
}

/// One unit per element over a grid of at most 65,535 cubes per axis.
fn grid_1d(n: usize) -> (CubeCount, CubeDim) {
    let cubes = n.div_ceil(BLOCK as usize).max(1);
    let x = cubes.min(65_535);
    let y = cubes.div_ceil(x);
    (CubeCount::Static(x as u32, y as u32, 1), CubeDim { x: BLOCK, y: 1, z: 1 })
}

fn u32_of(op: &'static str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| gpu_err(op, format!("size {v} does not fit the GPU kernels' 32-bit indices")))
}

fn meta<R: Runtime>(client: &ComputeClient<R>, op: &'static str, values: &[usize]) -> Result<Handle> {
    let v: Vec<u32> = values.iter().map(|&v| u32_of(op, v)).collect::<Result<_>>()?;
    Ok(client.create_from_slice(u32::as_bytes(&v)))
}

/// A buffer of `len` 4-byte elements. The kernels index with 32-bit arithmetic, so larger
/// buffers are refused here rather than wrapped around there.
fn f32_buffer<R: Runtime>(client: &ComputeClient<R>, len: usize) -> Result<Handle> {
    u32_of("gpu buffer", len)?;
    Ok(client.empty(len.max(1) * 4))
}

fn arg<R: Runtime>(h: &Handle, len: usize) -> ArrayArg<R> {
    // SAFETY: every handle passed here was allocated with at least `len` elements of 4 bytes.
    unsafe { ArrayArg::from_raw_parts(h.clone(), len.max(1)) }
}

fn new_array<R: GpuRuntime>(handle: Handle, shape: &[usize], dtype: DType) -> GpuArray {
    GpuArray { handle, shape: shape.to_vec(), dtype, device: R::DEVICE }
}

// ---------------------------------------------------------------------------------------------
// Transfers
// ---------------------------------------------------------------------------------------------

/// Host data read back from a device.
pub(crate) enum HostData {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

pub(crate) fn upload_f32(data: &[f32], shape: &[usize], device: Device) -> Result<GpuArray> {
    u32_of("to_device", data.len())?;
    on_runtime!(device, R => {
        let client = client::<R>()?;
        let bytes = if data.is_empty() { client.empty(4) } else { client.create_from_slice(f32::as_bytes(data)) };
        Ok(new_array::<R>(bytes, shape, DType::F32))
    })
}

pub(crate) fn upload_i64(data: &[i64], shape: &[usize], device: Device) -> Result<GpuArray> {
    u32_of("to_device", data.len())?;
    let narrow: Vec<i32> =
        data.iter().map(|&v| i32::try_from(v)).collect::<std::result::Result<_, _>>().map_err(|_| {
            gpu_err("to_device", "i64 values outside the i32 range cannot move to a GPU (stored as i32)")
        })?;
    on_runtime!(device, R => {
        let client = client::<R>()?;
        let bytes = if narrow.is_empty() { client.empty(4) } else { client.create_from_slice(i32::as_bytes(&narrow)) };
        Ok(new_array::<R>(bytes, shape, DType::I64))
    })
}

pub(crate) fn download(a: &GpuArray) -> Result<HostData> {
    on_runtime!(a.device, R => {
        let client = client::<R>()?;
        let n = a.numel();
        let bytes = client.read_one(a.handle.clone()).map_err(|e| gpu_err("to_device", format!("{e:?}")))?;
        Ok(match a.dtype {
            DType::F32 => HostData::F32(f32::from_bytes(&bytes)[..n].to_vec()),
            DType::I64 => HostData::I64(i32::from_bytes(&bytes)[..n].iter().map(|&v| v as i64).collect()),
        })
    })
}

/// Converts between f32 and the i32 that holds i64 data. Infallible: the array exists, so its
/// device's runtime started.
pub(crate) fn cast(x: &GpuArray, dtype: DType) -> GpuArray {
    let launch = || -> Result<GpuArray> {
        on_runtime!(x.device, R => {
            let client = client::<R>()?;
            let n = x.numel();
            let out = f32_buffer(&client, n)?;
            if n > 0 {
                let (count, dim) = grid_1d(n);
                let (src, dst) = (arg(&x.handle, n), arg(&out, n));
                unsafe {
                    match dtype {
                        DType::I64 => kernels::cast_to_int_kernel::launch_unchecked::<R>(&client, count, dim, src, dst),
                        DType::F32 => kernels::cast_to_float_kernel::launch_unchecked::<R>(&client, count, dim, src, dst),
                    }
                };
            }
            Ok(new_array::<R>(out, &x.shape, dtype))
        })
    };
    launch().expect("a GPU array's runtime has already started")
}

pub(crate) fn zeros(shape: &[usize], device: Device) -> Result<GpuArray> {
    full(shape, 0.0, device)
}

pub(crate) fn full(shape: &[usize], value: f32, device: Device) -> Result<GpuArray> {
    let n: usize = shape.iter().product();
    upload_f32(&vec![value; n], shape, device)
}

// ---------------------------------------------------------------------------------------------
// Elementwise
// ---------------------------------------------------------------------------------------------

pub(crate) fn unary(x: &GpuArray, op: u32, a: f32, b: f32) -> Result<GpuArray> {
    on_runtime!(x.device, R => {
        let client = client::<R>()?;
        let n = x.numel();
        let out = f32_buffer(&client, n)?;
        if n > 0 {
            let (count, dim) = grid_1d(n);
            unsafe {
                kernels::unary_kernel::launch_unchecked::<R>(&client, count, dim, arg(&x.handle, n), arg(&out, n), a, b, op)
            };
        }
        Ok(new_array::<R>(out, &x.shape, DType::F32))
    })
}

/// `lhs op rhs` with numpy broadcasting to `out_shape`.
pub(crate) fn binary(lhs: &GpuArray, rhs: &GpuArray, out_shape: &[usize], op: u32) -> Result<GpuArray> {
    on_runtime!(lhs.device, R => {
        let client = client::<R>()?;
        let n: usize = out_shape.iter().product();
        let out = f32_buffer(&client, n)?;
        if n > 0 {
            let (count, dim) = grid_1d(n);
            if lhs.shape == out_shape && rhs.shape == out_shape {
                unsafe {
                    kernels::binary_same_kernel::launch_unchecked::<R>(
                        &client, count, dim, arg(&lhs.handle, n), arg(&rhs.handle, n), arg(&out, n), op,
                    )
                };
            } else {
                let rank = out_shape.len();
                let mut m = out_shape.to_vec();
                m.extend(broadcast_strides(&lhs.shape, out_shape));
                m.extend(broadcast_strides(&rhs.shape, out_shape));
                let m = meta(&client, "binary", &m)?;
                unsafe {
                    kernels::binary_bcast_kernel::launch_unchecked::<R>(
                        &client,
                        count,
                        dim,
                        arg(&lhs.handle, lhs.numel()),
                        arg(&rhs.handle, rhs.numel()),
                        arg(&out, n),
                        arg(&m, 3 * rank),
                        u32_of("binary", rank)?,
                        op,
                    )
                };
            }
        }
        Ok(new_array::<R>(out, out_shape, DType::F32))
    })
}

/// Row-major strides of `shape` aligned to the right of `out_shape`, 0 where broadcast.
fn broadcast_strides(shape: &[usize], out_shape: &[usize]) -> Vec<usize> {
    let own = contiguous_strides(shape);
    let lead = out_shape.len() - shape.len();
    (0..out_shape.len()).map(|d| if d < lead || shape[d - lead] == 1 { 0 } else { own[d - lead] }).collect()
}

pub(crate) fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        strides[d] = strides[d + 1] * shape[d + 1];
    }
    strides
}

/// Materialises the view `out[idx] = x[offset + sum idx_d * strides_d]` of shape `out_shape`.
pub(crate) fn strided_copy(x: &GpuArray, out_shape: &[usize], strides: &[usize], offset: usize) -> Result<GpuArray> {
    on_runtime!(x.device, R => {
        let client = client::<R>()?;
        let n: usize = out_shape.iter().product();
        let out = f32_buffer(&client, n)?;
        if n > 0 {
            let rank = out_shape.len();
            let mut m = out_shape.to_vec();
            m.extend_from_slice(strides);
            let m = meta(&client, "strided_copy", &m)?;
            let (count, dim) = grid_1d(n);
            let (src, dst, mm) = (arg(&x.handle, x.numel()), arg(&out, n), arg(&m, 2 * rank.max(1)));
            let (offset, rank) = (u32_of("strided_copy", offset)?, u32_of("strided_copy", rank)?);
            unsafe {
                match x.dtype {
                    DType::F32 => kernels::strided_copy_kernel::launch_unchecked::<f32, R>(&client, count, dim, src, dst, mm, offset, rank),
                    DType::I64 => kernels::strided_copy_kernel::launch_unchecked::<i32, R>(&client, count, dim, src, dst, mm, offset, rank),
                }
            };
        }
        Ok(new_array::<R>(out, out_shape, x.dtype))
    })
}

// ---------------------------------------------------------------------------------------------
// Reductions
// ---------------------------------------------------------------------------------------------

/// Reduces `x` viewed as `[outer, red, inner]` over the middle axis (`red >= 1`).
pub(crate) fn reduce(
    x: &GpuArray,
    outer: usize,
    red: usize,
    inner: usize,
    op: u32,
    out_shape: &[usize],
) -> Result<GpuArray> {
    on_runtime!(x.device, R => {
        let client = client::<R>()?;
        let n = outer * inner;
        let out = f32_buffer(&client, n)?;
        if n > 0 {
            let (r, i) = (u32_of("reduce", red)?, u32_of("reduce", inner)?);
            if red >= 1024 && n <= 65_535 {
                let count = CubeCount::Static(n as u32, 1, 1);
                let dim = CubeDim { x: BLOCK, y: 1, z: 1 };
                unsafe {
                    kernels::reduce_cube_kernel::launch_unchecked::<R>(&client, count, dim, arg(&x.handle, x.numel()), arg(&out, n), r, i, op)
                };
            } else {
                let (count, dim) = grid_1d(n);
                unsafe {
                    kernels::reduce_unit_kernel::launch_unchecked::<R>(&client, count, dim, arg(&x.handle, x.numel()), arg(&out, n), r, i, op)
                };
            }
        }
        Ok(new_array::<R>(out, out_shape, DType::F32))
    })
}

pub(crate) fn argmax(x: &GpuArray, outer: usize, red: usize, inner: usize, out_shape: &[usize]) -> Result<GpuArray> {
    on_runtime!(x.device, R => {
        let client = client::<R>()?;
        let n = outer * inner;
        let out = f32_buffer(&client, n)?;
        if n > 0 {
            let (count, dim) = grid_1d(n);
            unsafe {
                kernels::argmax_kernel::launch_unchecked::<R>(
                    &client, count, dim, arg(&x.handle, x.numel()), arg(&out, n), u32_of("argmax", red)?, u32_of("argmax", inner)?,
                )
            };
        }
        Ok(new_array::<R>(out, out_shape, DType::I64))
    })
}

/// `gather` (`select` false: an index `[outer, idx_len, inner]`) or `index_select` (`select`
/// true: a 1-D index of `idx_len`) along the middle axis of `[outer, red, inner]`.
pub(crate) fn gather(
    x: &GpuArray,
    index: &GpuArray,
    (red, idx_len, inner): (usize, usize, usize),
    out_shape: &[usize],
    select: bool,
) -> Result<GpuArray> {
    on_runtime!(x.device, R => {
        let client = client::<R>()?;
        let n: usize = out_shape.iter().product();
        let out = f32_buffer(&client, n)?;
        if n > 0 && red > 0 {
            let (count, dim) = grid_1d(n);
            let (src, idx, dst) = (arg(&x.handle, x.numel()), arg(&index.handle, index.numel()), arg(&out, n));
            let (r, l, i) = (u32_of("gather", red)?, u32_of("gather", idx_len)?, u32_of("gather", inner)?);
            unsafe {
                match x.dtype {
                    DType::F32 => kernels::gather_kernel::launch_unchecked::<f32, R>(&client, count, dim, src, idx, dst, r, l, i, select),
                    DType::I64 => kernels::gather_kernel::launch_unchecked::<i32, R>(&client, count, dim, src, idx, dst, r, l, i, select),
                }
            };
        }
        Ok(new_array::<R>(out, out_shape, x.dtype))
    })
}

/// Concatenation along `dim` of parts of one dtype whose shapes agree elsewhere.
pub(crate) fn cat(parts: &[&GpuArray], dim: usize, out_shape: &[usize]) -> Result<GpuArray> {
    let first = parts.first().ok_or_else(|| gpu_err("cat", "needs at least one tensor"))?;
    on_runtime!(first.device, R => {
        let client = client::<R>()?;
        let n: usize = out_shape.iter().product();
        let out = f32_buffer(&client, n)?;
        let strides = contiguous_strides(out_shape);
        let rank = out_shape.len();
        let mut offset = 0;
        for part in parts {
            let len = part.numel();
            if len > 0 {
                let mut m = part.shape.clone();
                m.extend_from_slice(&strides);
                let m = meta(&client, "cat", &m)?;
                let (count, grid) = grid_1d(len);
                let (src, dst, mm) = (arg(&part.handle, len), arg(&out, n), arg(&m, 2 * rank));
                let (base, r) = (u32_of("cat", offset * strides[dim])?, u32_of("cat", rank)?);
                unsafe {
                    match part.dtype {
                        DType::F32 => kernels::copy_into_kernel::launch_unchecked::<f32, R>(&client, count, grid, src, dst, mm, base, r),
                        DType::I64 => kernels::copy_into_kernel::launch_unchecked::<i32, R>(&client, count, grid, src, dst, mm, base, r),
                    }
                };
            }
            offset += part.shape[dim];
        }
        Ok(new_array::<R>(out, out_shape, first.dtype))
    })
}

// ---------------------------------------------------------------------------------------------
// Matrix products
// ---------------------------------------------------------------------------------------------

/// Where one operand of [`matmul_kernel`](kernels::matmul_kernel) lives; see its docs.
#[derive(Clone, Copy, Default)]
pub(crate) struct MatmulLayout {
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

#[allow(clippy::too_many_arguments)]
fn launch_matmul<R: GpuRuntime>(
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
    let m = meta(
        client,
        "matmul",
        &[
            l.m,
            l.n,
            l.k,
            l.k_inner.max(1),
            l.a_mod.max(1),
            l.a_zs,
            l.a_rs,
            l.a_kos,
            l.a_ks,
            l.b_zs,
            l.b_kos,
            l.b_ks,
            l.b_cs,
            l.c_zs,
            l.c_rs,
            l.a_off,
            l.b_off,
            l.c_off,
        ],
    )?;
    let count = CubeCount::Static(col_tiles as u32, row_tiles as u32, l.batches as u32);
    let dim = CubeDim { x: 256, y: 1, z: 1 };
    unsafe {
        kernels::matmul_kernel::launch_unchecked::<R>(
            client,
            count,
            dim,
            arg(a, a_len),
            arg(b, b_len),
            arg(c, c_len),
            arg(&m, 18),
            u32::from(accumulate),
        )
    };
    Ok(())
}

/// `[batch, m, k] x [batch, k, n]`, each operand's batch stride 0 when it is broadcast.
pub(crate) fn matmul(
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

// ---------------------------------------------------------------------------------------------
// Convolution
// ---------------------------------------------------------------------------------------------

/// What the GPU convolutions derive from a validated [`ConvGeom`].
impl ConvGeom {
    /// Images per im2col chunk: the column buffer stays under 64 Mi floats.
    fn gpu_chunk(&self) -> usize {
        let per_image = (self.p.groups * self.k() * self.out_hw()).max(1);
        // At most 65,535 (image, group) batches per product (the grid's limit); at least one image.
        ((64usize << 20) / per_image).clamp(1, self.n.max(1)).min((65_535 / self.p.groups).max(1))
    }
    fn gpu_im2col_meta(&self, n0: usize) -> [usize; 15] {
        // Rows run over all channels, so group g's rows are g * kg.. of each image's block.
        let p = &self.p;
        [
            self.cin,
            self.h,
            self.w,
            self.kh,
            self.kw,
            self.oh,
            self.ow,
            p.stride[0],
            p.stride[1],
            p.padding[0],
            p.padding[1],
            p.dilation[0],
            p.dilation[1],
            p.groups,
            n0,
        ]
    }
}

fn im2col<R: GpuRuntime>(
    client: &ComputeClient<R>,
    x: &GpuArray,
    s: &ConvGeom,
    n0: usize,
    nb: usize,
    col: &Handle,
) -> Result<()> {
    let len = nb * s.cin * s.kh * s.kw * s.out_hw();
    let m = meta(client, "im2col", &s.gpu_im2col_meta(n0))?;
    let (count, dim) = grid_1d(len);
    unsafe {
        kernels::im2col_kernel::launch_unchecked::<R>(
            client,
            count,
            dim,
            arg(&x.handle, x.numel()),
            arg(col, len),
            arg(&m, 15),
        )
    };
    Ok(())
}

/// Convolution forward, then the optional per-channel bias, residual and ReLU.
pub(crate) fn conv2d(
    x: &GpuArray,
    w: &GpuArray,
    bias: Option<&GpuArray>,
    residual: Option<&GpuArray>,
    relu: bool,
    s: &ConvGeom,
) -> Result<GpuArray> {
    on_runtime!(x.device, R => {
        let client = client::<R>()?;
        let (kg, og, p) = (s.k(), s.cout_g, s.out_hw());
        let len = s.n * s.cout * p;
        let out = f32_buffer(&client, len)?;
        let nb = s.gpu_chunk();
        let col = if s.pointwise() { None } else { Some(f32_buffer(&client, nb * s.p.groups * kg * p)?) };
        for n0 in (0..s.n).step_by(nb) {
            let nb = nb.min(s.n - n0);
            let mut l = MatmulLayout {
                m: og,
                n: p,
                k: kg,
                k_inner: kg,
                batches: nb * s.p.groups,
                a_mod: s.p.groups,
                a_zs: og * kg,
                a_rs: kg,
                a_ks: 1,
                b_zs: kg * p,
                b_ks: p,
                b_cs: 1,
                c_zs: og * p,
                c_rs: p,
                c_off: n0 * s.cout * p,
                ..Default::default()
            };
            match &col {
                Some(col) => {
                    im2col::<R>(&client, x, s, n0, nb, col)?;
                    launch_matmul::<R>(&client, &w.handle, w.numel(), col, nb * s.p.groups * kg * p, &out, len, &l, false)?;
                }
                None => {
                    l.b_off = n0 * s.cin * p;
                    launch_matmul::<R>(&client, &w.handle, w.numel(), &x.handle, x.numel(), &out, len, &l, false)?;
                }
            }
        }
        let out = new_array::<R>(out, &[s.n, s.cout, s.oh, s.ow], DType::F32);
        if bias.is_none() && residual.is_none() && !relu {
            return Ok(out);
        }
        channel_affine(&out, None, bias, residual, relu)
    })
}

/// Gradient of the convolution with respect to its input.
pub(crate) fn conv2d_backward_input(dy: &GpuArray, w: &GpuArray, s: &ConvGeom) -> Result<GpuArray> {
    on_runtime!(dy.device, R => {
        let client = client::<R>()?;
        let (kg, og, p) = (s.k(), s.cout_g, s.out_hw());
        let len = s.n * s.cin * s.h * s.w;
        let dx = f32_buffer(&client, len)?;
        let nb = s.gpu_chunk();
        let col = f32_buffer(&client, nb * s.p.groups * kg * p)?;
        for n0 in (0..s.n).step_by(nb) {
            let nb = nb.min(s.n - n0);
            let col_len = nb * s.p.groups * kg * p;
            let l = MatmulLayout {
                m: kg,
                n: p,
                k: og,
                k_inner: og,
                batches: nb * s.p.groups,
                a_mod: s.p.groups,
                a_zs: og * kg,
                a_rs: 1,
                a_ks: kg,
                b_off: n0 * s.cout * p,
                b_zs: og * p,
                b_ks: p,
                b_cs: 1,
                c_zs: kg * p,
                c_rs: p,
                ..Default::default()
            };
            launch_matmul::<R>(&client, &w.handle, w.numel(), &dy.handle, dy.numel(), &col, col_len, &l, false)?;
            let m = meta(&client, "conv2d_backward_input", &s.gpu_im2col_meta(n0))?;
            let chunk_len = nb * s.cin * s.h * s.w;
            let (count, dim) = grid_1d(chunk_len);
            unsafe {
                kernels::col2im_kernel::launch_unchecked::<R>(
                    &client, count, dim, arg(&col, col_len), arg(&dx, len), arg(&m, 15), u32_of("col2im", chunk_len)?,
                )
            };
        }
        Ok(new_array::<R>(dx, &[s.n, s.cin, s.h, s.w], DType::F32))
    })
}

/// Gradient of the convolution with respect to its weight (images folded into the k axis).
pub(crate) fn conv2d_backward_weight(x: &GpuArray, dy: &GpuArray, s: &ConvGeom) -> Result<GpuArray> {
    on_runtime!(x.device, R => {
        let client = client::<R>()?;
        let (kg, og, p) = (s.k(), s.cout_g, s.out_hw());
        let len = s.cout * kg;
        let dw = f32_buffer(&client, len)?;
        let nb = s.gpu_chunk();
        let col = if s.pointwise() { None } else { Some(f32_buffer(&client, nb * s.p.groups * kg * p)?) };
        for (chunk, n0) in (0..s.n).step_by(nb).enumerate() {
            let nb = nb.min(s.n - n0);
            let mut l = MatmulLayout {
                m: og,
                n: kg,
                k: nb * p,
                k_inner: p,
                batches: s.p.groups,
                a_mod: s.p.groups,
                a_off: n0 * s.cout * p,
                a_zs: og * p,
                a_rs: p,
                a_kos: s.cout * p,
                a_ks: 1,
                b_zs: kg * p,
                b_kos: s.p.groups * kg * p,
                b_ks: 1,
                b_cs: p,
                c_zs: og * kg,
                c_rs: kg,
                ..Default::default()
            };
            match &col {
                Some(col) => {
                    im2col::<R>(&client, x, s, n0, nb, col)?;
                    launch_matmul::<R>(&client, &dy.handle, dy.numel(), col, nb * s.p.groups * kg * p, &dw, len, &l, chunk > 0)?;
                }
                None => {
                    l.b_off = n0 * s.cin * p;
                    launch_matmul::<R>(&client, &dy.handle, dy.numel(), &x.handle, x.numel(), &dw, len, &l, chunk > 0)?;
                }
            }
        }
        if s.n == 0 {
            return zeros(&[s.cout, s.cin / s.p.groups, s.kh, s.kw], R::DEVICE);
        }
        Ok(new_array::<R>(dw, &[s.cout, s.cin / s.p.groups, s.kh, s.kw], DType::F32))
    })
}

// ---------------------------------------------------------------------------------------------
// Batch norm and per-channel affine maps
// ---------------------------------------------------------------------------------------------

/// `x * scale[c] + shift[c]` (+ residual) (then ReLU) over `[n, c, ...]`, each part optional.
pub(crate) fn channel_affine(
    x: &GpuArray,
    scale: Option<&GpuArray>,
    shift: Option<&GpuArray>,
    residual: Option<&GpuArray>,
    relu: bool,
) -> Result<GpuArray> {
    on_runtime!(x.device, R => {
        let client = client::<R>()?;
        let n = x.numel();
        let channels = x.shape.get(1).copied().unwrap_or(1);
        let spatial: usize = x.shape.iter().skip(2).product();
        let out = f32_buffer(&client, n)?;
        if n > 0 {
            let (count, dim) = grid_1d(n);
            // An absent operand is bound to `x` (never read: its flag compiles the read out).
            let or_x = |a: Option<&GpuArray>, len: usize| a.map_or_else(|| arg(&x.handle, n), |a| arg(&a.handle, len));
            unsafe {
                kernels::channel_affine_kernel::launch_unchecked::<R>(
                    &client,
                    count,
                    dim,
                    arg(&x.handle, n),
                    or_x(scale, channels),
                    or_x(shift, channels),
                    or_x(residual, n),
                    arg(&out, n),
                    u32_of("channel_affine", channels)?,
                    u32_of("channel_affine", spatial.max(1))?,
                    scale.is_some(),
                    shift.is_some(),
                    residual.is_some(),
                    relu,
                )
            };
        }
        Ok(new_array::<R>(out, &x.shape, DType::F32))
    })
}

/// Per-channel mean and biased variance of `[n, c, ...]`.
pub(crate) fn channel_stats(x: &GpuArray) -> Result<(GpuArray, GpuArray)> {
    on_runtime!(x.device, R => {
        let client = client::<R>()?;
        let (n, c) = (x.shape[0], x.shape[1]);
        let spatial: usize = x.shape.iter().skip(2).product();
        let (mean, var) = (f32_buffer(&client, c)?, f32_buffer(&client, c)?);
        unsafe {
            kernels::channel_stats_kernel::launch_unchecked::<R>(
                &client,
                CubeCount::Static(u32_of("batch_norm", c)?, 1, 1),
                CubeDim { x: BLOCK, y: 1, z: 1 },
                arg(&x.handle, x.numel()),
                arg(&mean, c),
                arg(&var, c),
                u32_of("batch_norm", n)?,
                u32_of("batch_norm", c)?,
                u32_of("batch_norm", spatial)?,
            )
        };
        Ok((new_array::<R>(mean, &[c], DType::F32), new_array::<R>(var, &[c], DType::F32)))
    })
}

/// Per-channel `sum(dy)` and `sum(dy * xhat)`.
pub(crate) fn channel_grad_sums(
    dy: &GpuArray,
    x: &GpuArray,
    mean: &GpuArray,
    invstd: &GpuArray,
) -> Result<(GpuArray, GpuArray)> {
    on_runtime!(x.device, R => {
        let client = client::<R>()?;
        let (n, c) = (x.shape[0], x.shape[1]);
        let spatial: usize = x.shape.iter().skip(2).product();
        let (sdy, sdyx) = (f32_buffer(&client, c)?, f32_buffer(&client, c)?);
        unsafe {
            kernels::channel_grad_sums_kernel::launch_unchecked::<R>(
                &client,
                CubeCount::Static(u32_of("batch_norm", c)?, 1, 1),
                CubeDim { x: BLOCK, y: 1, z: 1 },
                arg(&dy.handle, dy.numel()),
                arg(&x.handle, x.numel()),
                arg(&mean.handle, c),
                arg(&invstd.handle, c),
                arg(&sdy, c),
                arg(&sdyx, c),
                u32_of("batch_norm", n)?,
                u32_of("batch_norm", c)?,
                u32_of("batch_norm", spatial)?,
            )
        };
        Ok((new_array::<R>(sdy, &[c], DType::F32), new_array::<R>(sdyx, &[c], DType::F32)))
    })
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn bn_backward_input(
    dy: &GpuArray,
    x: &GpuArray,
    mean: &GpuArray,
    invstd: &GpuArray,
    gamma: &GpuArray,
    sum_dy: &GpuArray,
    sum_dy_xhat: &GpuArray,
) -> Result<GpuArray> {
    on_runtime!(x.device, R => {
        let client = client::<R>()?;
        let n = x.numel();
        let c = x.shape[1];
        let spatial: usize = x.shape.iter().skip(2).product();
        let count = x.shape[0] * spatial;
        let dx = f32_buffer(&client, n)?;
        let (cc, dim) = grid_1d(n);
        unsafe {
            kernels::bn_backward_input_kernel::launch_unchecked::<R>(
                &client,
                cc,
                dim,
                arg(&dy.handle, n),
                arg(&x.handle, n),
                arg(&mean.handle, c),
                arg(&invstd.handle, c),
                arg(&gamma.handle, c),
                arg(&sum_dy.handle, c),
                arg(&sum_dy_xhat.handle, c),
                arg(&dx, n),
                u32_of("batch_norm", c)?,
                u32_of("batch_norm", spatial.max(1))?,
                1.0 / count as f32,
            )
        };
        Ok(new_array::<R>(dx, &x.shape, DType::F32))
    })
}

// ---------------------------------------------------------------------------------------------
// Pooling
// ---------------------------------------------------------------------------------------------

/// Pooling sizes: input planes `[planes, h, w]`, output `[planes, oh, ow]`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PoolSizes {
    pub h: usize,
    pub w: usize,
    pub oh: usize,
    pub ow: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub count_include_pad: bool,
}

impl PoolSizes {
    fn meta(&self) -> [usize; 11] {
        [
            self.h,
            self.w,
            self.oh,
            self.ow,
            self.kernel[0],
            self.kernel[1],
            self.stride[0],
            self.stride[1],
            self.padding[0],
            self.padding[1],
            usize::from(self.count_include_pad),
        ]
    }
}

pub(crate) fn max_pool2d(x: &GpuArray, s: PoolSizes, out_shape: &[usize]) -> Result<(GpuArray, GpuArray)> {
    on_runtime!(x.device, R => {
        let client = client::<R>()?;
        let n: usize = out_shape.iter().product();
        let (out, idx) = (f32_buffer(&client, n)?, f32_buffer(&client, n)?);
        if n > 0 {
            let m = meta(&client, "max_pool2d", &s.meta())?;
            let (count, dim) = grid_1d(n);
            unsafe {
                kernels::max_pool_kernel::launch_unchecked::<R>(&client, count, dim, arg(&x.handle, x.numel()), arg(&out, n), arg(&idx, n), arg(&m, 11))
            };
        }
        Ok((new_array::<R>(out, out_shape, DType::F32), new_array::<R>(idx, out_shape, DType::I64)))
    })
}

/// `idx` holds in-range plane indices (checked by the caller).
pub(crate) fn max_pool2d_backward(dy: &GpuArray, idx: &GpuArray, in_shape: &[usize]) -> Result<GpuArray> {
    on_runtime!(dy.device, R => {
        let client = client::<R>()?;
        let n: usize = in_shape.iter().product();
        let dx = f32_buffer(&client, n)?;
        let planes = in_shape[0] * in_shape[1];
        if n > 0 && planes > 0 {
            let (ihw, ohw) = (in_shape[2] * in_shape[3], dy.shape[2] * dy.shape[3]);
            let (count, dim) = grid_1d(planes);
            unsafe {
                kernels::max_pool_backward_kernel::launch_unchecked::<R>(
                    &client,
                    count,
                    dim,
                    arg(&dy.handle, dy.numel()),
                    arg(&idx.handle, idx.numel()),
                    arg(&dx, n),
                    u32_of("max_pool2d_backward", planes)?,
                    u32_of("max_pool2d_backward", ihw)?,
                    u32_of("max_pool2d_backward", ohw)?,
                )
            };
        }
        Ok(new_array::<R>(dx, in_shape, DType::F32))
    })
}

/// Average pooling (`adaptive`: adaptive average pooling, where only h, w, oh, ow count),
/// forward (`x` = input, `out_shape` = output) or backward (`x` = output gradient, `out_shape`
/// = input shape): one kernel launch over `out_shape` either way.
pub(crate) fn avg_pool2d(
    x: &GpuArray,
    s: PoolSizes,
    out_shape: &[usize],
    adaptive: bool,
    backward: bool,
) -> Result<GpuArray> {
    on_runtime!(x.device, R => {
        let client = client::<R>()?;
        let n: usize = out_shape.iter().product();
        let out = f32_buffer(&client, n)?;
        if n > 0 {
            let m = meta(&client, "avg_pool2d", &s.meta())?;
            let (count, dim) = grid_1d(n);
            let (src, dst, mm) = (arg(&x.handle, x.numel()), arg(&out, n), arg(&m, 11));
            unsafe {
                match (adaptive, backward) {
                    (false, false) => kernels::avg_pool_kernel::launch_unchecked::<R>(&client, count, dim, src, dst, mm),
                    (false, true) => kernels::avg_pool_backward_kernel::launch_unchecked::<R>(&client, count, dim, src, dst, mm),
                    (true, false) => kernels::adaptive_avg_pool_kernel::launch_unchecked::<R>(&client, count, dim, src, dst, mm),
                    (true, true) => {
                        kernels::adaptive_avg_pool_backward_kernel::launch_unchecked::<R>(&client, count, dim, src, dst, mm)
                    }
                }
            };
        }
        Ok(new_array::<R>(out, out_shape, DType::F32))
    })
}

// ---------------------------------------------------------------------------------------------
// Optimizer steps (new buffers out; the inputs are left as they are)
// ---------------------------------------------------------------------------------------------

/// torch.optim.SGD's step: the new parameter and, with momentum, the new buffer.
#[allow(clippy::too_many_arguments)]
pub(crate) fn sgd_step(
    param: &GpuArray,
    grad: &GpuArray,
    buf: Option<&GpuArray>,
    lr: f32,
    weight_decay: f32,
    momentum: f32,
    damp: f32,
    nesterov: bool,
) -> Result<(GpuArray, Option<GpuArray>)> {
    on_runtime!(param.device, R => {
        let client = client::<R>()?;
        let n = param.numel();
        let has_momentum = momentum != 0.0;
        let (out_p, out_b) = (f32_buffer(&client, n)?, f32_buffer(&client, if has_momentum { n } else { 1 })?);
        if n > 0 {
            let (count, dim) = grid_1d(n);
            let old_b = buf.map_or(&param.handle, |b| &b.handle);
            unsafe {
                kernels::sgd_kernel::launch_unchecked::<R>(
                    &client,
                    count,
                    dim,
                    arg(&param.handle, n),
                    arg(&grad.handle, n),
                    arg(old_b, n),
                    arg(&out_p, n),
                    arg(&out_b, if has_momentum { n } else { 1 }),
                    lr,
                    weight_decay,
                    momentum,
                    damp,
                    has_momentum,
                    nesterov,
                    buf.is_none(),
                )
            };
        }
        let new_buf = has_momentum.then(|| new_array::<R>(out_b, &param.shape, DType::F32));
        Ok((new_array::<R>(out_p, &param.shape, DType::F32), new_buf))
    })
}

/// torch.optim.Adam's (AdamW's) step: the new parameter and both new moments. `scalars`:
/// beta1, beta2, 1 - beta1, 1 - beta2, eps, l2 decay, decoupled shrink, step size, sqrt of the
/// second bias correction.
pub(crate) fn adam_step(
    param: &GpuArray,
    grad: &GpuArray,
    m1: &GpuArray,
    m2: &GpuArray,
    scalars: [f32; 9],
) -> Result<(GpuArray, GpuArray, GpuArray)> {
    on_runtime!(param.device, R => {
        let client = client::<R>()?;
        let n = param.numel();
        let (p, a, b) = (f32_buffer(&client, n)?, f32_buffer(&client, n)?, f32_buffer(&client, n)?);
        if n > 0 {
            let sc = client.create_from_slice(f32::as_bytes(&scalars));
            let (count, dim) = grid_1d(n);
            unsafe {
                kernels::adam_kernel::launch_unchecked::<R>(
                    &client,
                    count,
                    dim,
                    arg(&param.handle, n),
                    arg(&grad.handle, n),
                    arg(&m1.handle, n),
                    arg(&m2.handle, n),
                    arg(&p, n),
                    arg(&a, n),
                    arg(&b, n),
                    arg(&sc, 9),
                )
            };
        }
        let shape = &param.shape;
        Ok((new_array::<R>(p, shape, DType::F32), new_array::<R>(a, shape, DType::F32), new_array::<R>(b, shape, DType::F32)))
    })
}
