//! The runtime family: the cubecl runtimes this crate runs on, their clients (a missing GPU is
//! an `Err`, not a panic), buffer helpers shared by every family, transfers to and from the
//! host, and the casts between f32 and the i32 that holds i64 data.

use super::GpuArray;
use crate::error::{Result, TensorError};
use crate::{DType, Device};
use cubecl::prelude::*;
use cubecl::server::Handle;
use std::sync::OnceLock;

/// Units per cube for the one-dimensional kernels.
pub(super) const BLOCK: u32 = 256;

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

pub(super) fn client<R: GpuRuntime>() -> Result<ComputeClient<R>> {
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

pub(super) fn gpu_err(op: &'static str, msg: impl std::fmt::Display) -> TensorError {
    TensorError::InvalidArgument { op, msg: format!("GPU error: {msg}") }
}

/// One unit per element over a grid of at most 65,535 cubes per axis.
pub(super) fn grid_1d(n: usize) -> (CubeCount, CubeDim) {
    let cubes = n.div_ceil(BLOCK as usize).max(1);
    let x = cubes.min(65_535);
    let y = cubes.div_ceil(x);
    (CubeCount::Static(x as u32, y as u32, 1), CubeDim { x: BLOCK, y: 1, z: 1 })
}

pub(super) fn u32_of(op: &'static str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| gpu_err(op, format!("size {v} does not fit the GPU kernels' 32-bit indices")))
}

/// A device array of one `u32` per dimension (a shape or strides, whose length is the rank).
pub(super) fn dims_array<R: Runtime>(client: &ComputeClient<R>, op: &'static str, values: &[usize]) -> Result<Handle> {
    let mut v: Vec<u32> = values.iter().map(|&v| u32_of(op, v)).collect::<Result<_>>()?;
    if v.is_empty() {
        v.push(0); // a rank-0 shape: never read, but a buffer cannot be empty
    }
    Ok(client.create_from_slice(u32::as_bytes(&v)))
}

/// A buffer of `len` 4-byte elements. The kernels index with 32-bit arithmetic, so larger
/// buffers are refused here rather than wrapped around there.
pub(super) fn f32_buffer<R: Runtime>(client: &ComputeClient<R>, len: usize) -> Result<Handle> {
    u32_of("gpu buffer", len)?;
    Ok(client.empty(len.max(1) * 4))
}

pub(super) fn arg<R: Runtime>(h: &Handle, len: usize) -> ArrayArg<R> {
    // SAFETY: every handle passed here was allocated with at least `len` elements of 4 bytes.
    unsafe { ArrayArg::from_raw_parts(h.clone(), len.max(1)) }
}

pub(super) fn new_array<R: GpuRuntime>(handle: Handle, shape: &[usize], dtype: DType) -> GpuArray {
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
                        DType::I64 => cast_to_int_kernel::launch_unchecked::<R>(&client, count, dim, src, dst),
                        DType::F32 => cast_to_float_kernel::launch_unchecked::<R>(&client, count, dim, src, dst),
                    }
                };
            }
            Ok(new_array::<R>(out, &x.shape, dtype))
        })
    };
    launch().expect("a GPU array's runtime has already started")
}

pub(super) fn zeros(shape: &[usize], device: Device) -> Result<GpuArray> {
    full(shape, 0.0, device)
}

pub(super) fn full(shape: &[usize], value: f32, device: Device) -> Result<GpuArray> {
    let n: usize = shape.iter().product();
    upload_f32(&vec![value; n], shape, device)
}

/// `f32 -> i32`, truncating toward zero (saturating at the i32 range).
#[cube(launch_unchecked)]
fn cast_to_int_kernel(x: &Array<f32>, out: &mut Array<i32>) {
    let i = ABSOLUTE_POS;
    if i < out.len() {
        let v = x[i];
        out[i] = select(v.is_nan(), 0i32, i32::cast_from(v.clamp(-2147483648.0, 2147483520.0)));
    }
}

/// `i32 -> f32`.
#[cube(launch_unchecked)]
fn cast_to_float_kernel(x: &Array<i32>, out: &mut Array<f32>) {
    let i = ABSOLUTE_POS;
    if i < out.len() {
        out[i] = f32::cast_from(x[i]);
    }
}
