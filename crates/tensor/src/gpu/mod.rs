//! The GPU backend (built with the `wgpu` or `cuda` feature): cubecl kernels on a wgpu
//! (Vulkan/Metal/DX12) or CUDA device, behind the same kernel-family traits as the host.
//!
//! A [`GpuArray`] is a contiguous row-major buffer on one device: f32 data as `f32`, i64 data
//! (labels, pooling indices) as `i32`, because WGSL has no 64-bit integers; uploads refuse i64
//! values outside the i32 range. Views on the GPU (permute, narrow, broadcast) are materialised
//! by one strided-copy kernel; reshape only changes the shape.
//!
//! One file per kernel family, each with its `#[cube]` kernels, their launchers, the metadata
//! they share (a `#[derive(CubeLaunch)]` struct with named fields, read by name on both sides)
//! and the family's trait impl for [`Gpu`]: `runtime` (clients, transfers, casts), `view`,
//! `elementwise`, `reduce`, `matmul`, `conv`, `batch_norm`, `pool`, `optim`. A trait method
//! without its GPU impl does not compile.
//!
//! Every launcher is generic over the cubecl runtime and reached through `on_runtime!`, which
//! picks the runtime from the array's [`Device`](crate::Device). Kernels are launched
//! asynchronously; only a download waits for them.
//!
//! Safety of the `launch_unchecked` calls (cubecl skips its own bounds checks there): every
//! buffer is allocated here with the length its `ArrayArg` declares, every sizes-derived index
//! stays below 2^32 (`f32_buffer` and the uploads refuse larger buffers), and each kernel either
//! compares its position with its output's length or runs on an exact grid (one cube per
//! channel or per output).

#[macro_use]
mod runtime;
mod batch_norm;
mod conv;
mod elementwise;
mod matmul;
mod optim;
mod pool;
mod reduce;
mod view;

pub(crate) use runtime::{cast, check, download, upload_f32, upload_i64, HostData};

use crate::DType;
use cubecl::server::Handle;

/// Tensors on a cubecl device (wgpu or CUDA): the [`crate::backend`] traits' GPU impls, one
/// per family file.
pub(crate) struct Gpu;

/// A contiguous buffer on a GPU device.
#[derive(Clone)]
pub(crate) struct GpuArray {
    pub(crate) handle: Handle,
    pub(crate) shape: Vec<usize>,
    pub(crate) dtype: DType,
    pub(crate) device: crate::Device,
}

impl GpuArray {
    pub(crate) fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub(crate) fn reshaped(&self, shape: &[usize]) -> GpuArray {
        GpuArray { shape: shape.to_vec(), ..self.clone() }
    }
}
