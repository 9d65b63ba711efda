//! The [`Tensor`] type: creation, views, elementwise ops, reductions, softmax and matmul.
//!
//! A tensor is a cheap handle: cloning it shares the data (an `ndarray::ArcArray`), and views
//! (reshape of contiguous data, permute, transpose, narrow, unsqueeze) share it too. Ops never
//! mutate their inputs; every op returns a new tensor.

use crate::error::{bad_shape, invalid, mismatch, Result, TensorError};
use crate::shape::{broadcast_shapes, check_dim, checked_numel};
use crate::{DType, Device};
use ndarray::{ArcArray, ArrayD, ArrayViewD, Axis, IxDyn, Slice, Zip};
use rayon::prelude::*;
use std::borrow::Cow;
use std::fmt;

/// Elementwise work below this many elements stays on the calling thread.
const PARALLEL_THRESHOLD: usize = 1 << 15;

/// An n-dimensional array of `f32` or `i64` on a [`Device`].
#[derive(Clone)]
pub struct Tensor {
    storage: Storage,
}

#[derive(Clone)]
enum Storage {
    F32(ArcArray<f32, IxDyn>),
    I64(ArcArray<i64, IxDyn>),
    /// A contiguous buffer on a GPU (f32, or i64 held as i32).
    #[cfg(gpu)]
    Gpu(crate::gpu::GpuArray),
}

/// Applies the same expression to whichever host array a storage holds. Every caller handles
/// GPU storage before it gets here (views of GPU data are copies made by a kernel).
macro_rules! each_storage {
    ($storage:expr, $a:ident => $body:expr) => {
        match $storage {
            Storage::F32($a) => Storage::F32($body),
            Storage::I64($a) => Storage::I64($body),
            #[cfg(gpu)]
            Storage::Gpu(_) => unreachable!("GPU storage is handled before each_storage!"),
        }
    };
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tensor[{:?}, {}, {}]", self.shape(), self.dtype(), self.device())?;
        if self.numel() <= 16 {
            match &self.storage {
                Storage::F32(a) => write!(f, " {:?}", a.iter().collect::<Vec<_>>())?,
                Storage::I64(a) => write!(f, " {:?}", a.iter().collect::<Vec<_>>())?,
                #[cfg(gpu)]
                Storage::Gpu(_) => {}
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Creation
// ---------------------------------------------------------------------------------------------

impl Tensor {
    pub(crate) fn from_vec_unchecked(data: Vec<f32>, shape: &[usize]) -> Tensor {
        debug_assert_eq!(data.len(), shape.iter().product::<usize>());
        let a = ArrayD::from_shape_vec(IxDyn(shape), data).expect("length checked by the caller");
        Tensor { storage: Storage::F32(a.into_shared()) }
    }

    pub(crate) fn from_i64_vec_unchecked(data: Vec<i64>, shape: &[usize]) -> Tensor {
        let a = ArrayD::from_shape_vec(IxDyn(shape), data).expect("length checked by the caller");
        Tensor { storage: Storage::I64(a.into_shared()) }
    }

    fn from_f32_array(a: ArrayD<f32>) -> Tensor {
        Tensor { storage: Storage::F32(a.into_shared()) }
    }

    fn from_i64_array(a: ArrayD<i64>) -> Tensor {
        Tensor { storage: Storage::I64(a.into_shared()) }
    }

    /// An f32 tensor from row-major data; the length must equal the product of `shape`.
    pub fn from_vec(data: Vec<f32>, shape: &[usize]) -> Result<Tensor> {
        let n = checked_numel("from_vec", shape)?;
        if data.len() != n {
            return Err(bad_shape(
                "from_vec",
                shape,
                format!("{} values cannot fill a tensor of {n} elements", data.len()),
            ));
        }
        Ok(Tensor::from_vec_unchecked(data, shape))
    }

    /// An i64 tensor from row-major data; the length must equal the product of `shape`.
    pub fn from_vec_i64(data: Vec<i64>, shape: &[usize]) -> Result<Tensor> {
        let n = checked_numel("from_vec_i64", shape)?;
        if data.len() != n {
            return Err(bad_shape(
                "from_vec_i64",
                shape,
                format!("{} values cannot fill a tensor of {n} elements", data.len()),
            ));
        }
        Ok(Tensor::from_i64_vec_unchecked(data, shape))
    }

    /// A 0-dimensional f32 tensor.
    pub fn scalar(v: f32) -> Tensor {
        Tensor::from_vec_unchecked(vec![v], &[])
    }

    /// An f32 tensor filled with `value`.
    pub fn full(shape: &[usize], value: f32) -> Tensor {
        Tensor::from_f32_array(ArrayD::from_elem(IxDyn(shape), value))
    }

    /// An f32 tensor of zeros.
    pub fn zeros(shape: &[usize]) -> Tensor {
        Tensor::full(shape, 0.0)
    }

    /// An f32 tensor of ones.
    pub fn ones(shape: &[usize]) -> Tensor {
        Tensor::full(shape, 1.0)
    }

    /// An f32 tensor of zeros on `device`.
    pub fn zeros_on(shape: &[usize], device: Device) -> Result<Tensor> {
        Tensor::zeros(shape).to_device(device)
    }

    /// An i64 tensor of zeros.
    pub fn zeros_i64(shape: &[usize]) -> Tensor {
        Tensor::from_i64_array(ArrayD::from_elem(IxDyn(shape), 0))
    }

    /// Zeros with this tensor's shape, dtype and device.
    pub fn zeros_like(&self) -> Tensor {
        match self.dtype() {
            DType::F32 => Tensor::zeros(self.shape()),
            DType::I64 => Tensor::zeros_i64(self.shape()),
        }
    }

    /// `[start, start + step, ...)` below `end`, like `torch.arange` (f32).
    pub fn arange(start: f32, end: f32, step: f32) -> Result<Tensor> {
        if step == 0.0 || !step.is_finite() || !start.is_finite() || !end.is_finite() {
            return Err(invalid("arange", format!("cannot step from {start} to {end} by {step}")));
        }
        let n = ((end - start) / step).ceil().max(0.0) as usize;
        Ok(Tensor::from_vec_unchecked((0..n).map(|i| start + step * i as f32).collect(), &[n]))
    }

    /// `0, 1, ..., n - 1` as i64.
    pub fn arange_i64(n: usize) -> Tensor {
        Tensor::from_i64_vec_unchecked((0..n as i64).collect(), &[n])
    }
}

// ---------------------------------------------------------------------------------------------
// Metadata and data access
// ---------------------------------------------------------------------------------------------

impl Tensor {
    /// The size of each dimension.
    pub fn shape(&self) -> &[usize] {
        match &self.storage {
            Storage::F32(a) => a.shape(),
            Storage::I64(a) => a.shape(),
            #[cfg(gpu)]
            Storage::Gpu(g) => &g.shape,
        }
    }

    /// Alias of [`Tensor::shape`].
    pub fn dims(&self) -> &[usize] {
        self.shape()
    }

    /// The number of dimensions.
    pub fn rank(&self) -> usize {
        self.shape().len()
    }

    /// The number of elements.
    pub fn numel(&self) -> usize {
        self.shape().iter().product()
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        match &self.storage {
            Storage::F32(_) => DType::F32,
            Storage::I64(_) => DType::I64,
            #[cfg(gpu)]
            Storage::Gpu(g) => g.dtype,
        }
    }

    /// Where the data lives.
    pub fn device(&self) -> Device {
        match &self.storage {
            #[cfg(gpu)]
            Storage::Gpu(g) => g.device,
            _ => Device::Cpu,
        }
    }

    /// This tensor on `device` (the same tensor when it is already there), like `.to(device)`.
    /// Moving to a GPU copies the data up; moving back waits for pending kernels and copies
    /// it down. i64 data lives on a GPU as i32 (WGSL has no 64-bit integers): values outside
    /// the i32 range are refused.
    pub fn to_device(&self, device: Device) -> Result<Tensor> {
        if self.device() == device {
            return Ok(self.clone());
        }
        match device {
            Device::Cpu => self.to_host(),
            #[cfg(gpu)]
            gpu => {
                gpu.check()?;
                let host = self.to_host()?;
                let g = match &host.storage {
                    Storage::F32(_) => crate::gpu::upload_f32(&host.f32_data("to_device")?, host.shape(), gpu)?,
                    Storage::I64(_) => crate::gpu::upload_i64(&host.i64_data("to_device")?, host.shape(), gpu)?,
                    Storage::Gpu(_) => unreachable!("to_host returns host storage"),
                };
                Ok(Tensor { storage: Storage::Gpu(g) })
            }
            #[cfg(not(gpu))]
            other => Err(TensorError::DeviceUnavailable {
                op: "to_device",
                device: format!("{other} (this build has no GPU support: rebuild with the `wgpu` or `cuda` feature)"),
            }),
        }
    }

    /// The host copy of this tensor (itself when it is on the host).
    fn to_host(&self) -> Result<Tensor> {
        match &self.storage {
            #[cfg(gpu)]
            Storage::Gpu(g) => Ok(match crate::gpu::download(g)? {
                crate::gpu::HostData::F32(v) => Tensor::from_vec_unchecked(v, &g.shape),
                crate::gpu::HostData::I64(v) => Tensor::from_i64_vec_unchecked(v, &g.shape),
            }),
            _ => Ok(self.clone()),
        }
    }

    /// Whether the elements are laid out row-major without gaps (GPU data always is).
    pub fn is_contiguous(&self) -> bool {
        match &self.storage {
            Storage::F32(a) => a.is_standard_layout(),
            Storage::I64(a) => a.is_standard_layout(),
            #[cfg(gpu)]
            Storage::Gpu(_) => true,
        }
    }

    /// A row-major copy when the tensor is a strided view; the same tensor otherwise.
    pub fn contiguous(&self) -> Tensor {
        if self.is_contiguous() {
            return self.clone();
        }
        Tensor { storage: each_storage!(&self.storage, a => a.as_standard_layout().into_owned().into_shared()) }
    }

    pub(crate) fn f32_array(&self, op: &'static str) -> Result<&ArcArray<f32, IxDyn>> {
        match &self.storage {
            Storage::F32(a) => Ok(a),
            Storage::I64(_) => Err(TensorError::DType { op, expected: DType::F32, got: DType::I64 }),
            #[cfg(gpu)]
            Storage::Gpu(g) => Err(TensorError::Unsupported { op, device: g.device.to_string() }),
        }
    }

    pub(crate) fn i64_array(&self, op: &'static str) -> Result<&ArcArray<i64, IxDyn>> {
        match &self.storage {
            Storage::I64(a) => Ok(a),
            Storage::F32(_) => Err(TensorError::DType { op, expected: DType::I64, got: DType::F32 }),
            #[cfg(gpu)]
            Storage::Gpu(g) => Err(TensorError::Unsupported { op, device: g.device.to_string() }),
        }
    }

    /// The f32 elements in row-major order, borrowed when the tensor is contiguous.
    pub fn f32_data(&self, op: &'static str) -> Result<Cow<'_, [f32]>> {
        let a = self.f32_array(op)?;
        Ok(match a.as_slice() {
            Some(s) => Cow::Borrowed(s),
            None => Cow::Owned(a.iter().copied().collect()),
        })
    }

    /// The i64 elements in row-major order, borrowed when the tensor is contiguous.
    pub fn i64_data(&self, op: &'static str) -> Result<Cow<'_, [i64]>> {
        let a = self.i64_array(op)?;
        Ok(match a.as_slice() {
            Some(s) => Cow::Borrowed(s),
            None => Cow::Owned(a.iter().copied().collect()),
        })
    }

    /// The f32 elements in row-major order (copied down from a GPU, like `.tolist()`).
    pub fn to_vec_f32(&self) -> Result<Vec<f32>> {
        Ok(self.to_host()?.f32_data("to_vec_f32")?.into_owned())
    }

    /// The i64 elements in row-major order (copied down from a GPU).
    pub fn to_vec_i64(&self) -> Result<Vec<i64>> {
        Ok(self.to_host()?.i64_data("to_vec_i64")?.into_owned())
    }

    /// The value of a one-element f32 tensor (any rank), like `tensor.item()` (which waits for
    /// a GPU and copies the value down).
    pub fn item(&self) -> Result<f32> {
        if self.device().is_gpu() {
            return self.to_host()?.item();
        }
        let a = self.f32_array("item")?;
        if a.len() != 1 {
            return Err(bad_shape("item", a.shape(), "item() needs a tensor with one element"));
        }
        Ok(*a.iter().next().expect("one element"))
    }

    /// The f32 element at a multi-index.
    pub fn get(&self, index: &[usize]) -> Result<f32> {
        let a = self.f32_array("get")?;
        a.get(IxDyn(index))
            .copied()
            .ok_or_else(|| bad_shape("get", a.shape(), format!("index {index:?} is out of bounds")))
    }

    /// A read-only ndarray view of an f32 tensor (for interop).
    pub fn view_f32(&self) -> Result<ArrayViewD<'_, f32>> {
        Ok(self.f32_array("view_f32")?.view())
    }

    /// An f32 tensor that shares an ndarray's data.
    pub fn from_ndarray(a: ArcArray<f32, IxDyn>) -> Tensor {
        Tensor { storage: Storage::F32(a) }
    }

    /// Converts to another element type (f32 -> i64 truncates toward zero, like `.long()`; on
    /// a GPU, where i64 is held as i32, values beyond the i32 range saturate).
    pub fn to_dtype(&self, dtype: DType) -> Tensor {
        match (&self.storage, dtype) {
            (Storage::F32(_), DType::F32) | (Storage::I64(_), DType::I64) => self.clone(),
            (Storage::F32(a), DType::I64) => Tensor::from_i64_array(a.mapv(|v| v as i64)),
            (Storage::I64(a), DType::F32) => Tensor::from_f32_array(a.mapv(|v| v as f32)),
            #[cfg(gpu)]
            (Storage::Gpu(g), _) if g.dtype == dtype => self.clone(),
            #[cfg(gpu)]
            (Storage::Gpu(g), _) => Tensor::from_gpu(crate::gpu::cast(g, dtype)),
        }
    }

    /// The f32 elements as an owned vector: the tensor's own buffer when nothing else shares it
    /// (no copy), a copy otherwise.
    pub(crate) fn into_f32_vec(self, op: &'static str) -> Result<Vec<f32>> {
        if let Storage::F32(a) = &self.storage {
            if a.is_standard_layout() {
                let n = a.len();
                if let Storage::F32(a) = self.storage {
                    let (v, offset) = a.into_owned().into_raw_vec_and_offset();
                    let o = offset.unwrap_or(0);
                    return Ok(if o == 0 && v.len() == n { v } else { v[o..o + n].to_vec() });
                }
            }
        }
        Ok(self.f32_data(op)?.into_owned())
    }

    /// The GPU array of an operand that [`gpu_device`] found on a GPU.
    #[cfg(gpu)]
    pub(crate) fn gpu_of(&self, op: &'static str) -> Result<&crate::gpu::GpuArray> {
        match &self.storage {
            Storage::Gpu(g) => Ok(g),
            _ => Err(TensorError::DeviceMismatch { op, devices: format!("{} and a GPU", self.device()) }),
        }
    }

    /// The GPU array of an f32 operand that [`gpu_device`] found on a GPU.
    #[cfg(gpu)]
    pub(crate) fn gpu_f32(&self, op: &'static str) -> Result<&crate::gpu::GpuArray> {
        let g = self.gpu_of(op)?;
        if g.dtype != DType::F32 {
            return Err(TensorError::DType { op, expected: DType::F32, got: g.dtype });
        }
        Ok(g)
    }

    #[cfg(gpu)]
    pub(crate) fn from_gpu(g: crate::gpu::GpuArray) -> Tensor {
        Tensor { storage: Storage::Gpu(g) }
    }
}

// ---------------------------------------------------------------------------------------------
// Views and copies
// ---------------------------------------------------------------------------------------------

impl Tensor {
    /// The same elements in a new shape with the same element count. Shares the data when the
    /// tensor is contiguous, copies otherwise (like `torch.reshape`).
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        let n = checked_numel("reshape", shape)?;
        if n != self.numel() {
            return Err(mismatch("reshape", self.shape(), shape));
        }
        #[cfg(gpu)]
        if let Storage::Gpu(g) = &self.storage {
            return Ok(Tensor::from_gpu(g.reshaped(shape)));
        }
        let t = self.contiguous();
        let storage = each_storage!(t.storage, a => a
            .into_shape_with_order(IxDyn(shape))
            .expect("contiguous data of the same size can take any shape"));
        Ok(Tensor { storage })
    }

    /// Collapses dimensions `start..=end` into one, like `torch.flatten`.
    pub fn flatten(&self, start: usize, end: usize) -> Result<Tensor> {
        let shape = self.shape();
        if shape.is_empty() {
            return self.reshape(&[1]);
        }
        check_dim("flatten", end, shape.len())?;
        if start > end {
            return Err(invalid("flatten", format!("start dimension {start} is after end dimension {end}")));
        }
        let mut new = shape[..start].to_vec();
        new.push(shape[start..=end].iter().product());
        new.extend_from_slice(&shape[end + 1..]);
        self.reshape(&new)
    }

    /// Reorders the dimensions without copying, like `torch.permute`.
    pub fn permute(&self, dims: &[usize]) -> Result<Tensor> {
        let rank = self.rank();
        let mut seen = vec![false; rank];
        if dims.len() != rank || dims.iter().any(|&d| d >= rank || std::mem::replace(&mut seen[d], true)) {
            return Err(bad_shape("permute", self.shape(), format!("{dims:?} is not a permutation of the dimensions")));
        }
        #[cfg(gpu)]
        if let Storage::Gpu(g) = &self.storage {
            let strides = crate::gpu::contiguous_strides(&g.shape);
            let shape: Vec<usize> = dims.iter().map(|&d| g.shape[d]).collect();
            let strides: Vec<usize> = dims.iter().map(|&d| strides[d]).collect();
            return Ok(Tensor::from_gpu(crate::gpu::strided_copy(g, &shape, &strides, 0)?));
        }
        let storage = each_storage!(self.storage.clone(), a => a.permuted_axes(IxDyn(dims)));
        Ok(Tensor { storage })
    }

    /// Swaps two dimensions without copying.
    pub fn transpose(&self, d0: usize, d1: usize) -> Result<Tensor> {
        check_dim("transpose", d0, self.rank())?;
        check_dim("transpose", d1, self.rank())?;
        if self.device().is_gpu() {
            let mut dims: Vec<usize> = (0..self.rank()).collect();
            dims.swap(d0, d1);
            return self.permute(&dims);
        }
        let storage = each_storage!(self.storage.clone(), a => {
            let mut a = a;
            a.swap_axes(d0, d1);
            a
        });
        Ok(Tensor { storage })
    }

    /// The transpose of a 2-D tensor.
    pub fn t(&self) -> Result<Tensor> {
        if self.rank() != 2 {
            return Err(bad_shape("t", self.shape(), "t() needs a 2-D tensor"));
        }
        self.transpose(0, 1)
    }

    /// `len` elements of dimension `dim` from `start`, without copying, like `torch.narrow`.
    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Tensor> {
        check_dim("narrow", dim, self.rank())?;
        let size = self.shape()[dim];
        if start.checked_add(len).is_none_or(|end| end > size) {
            return Err(bad_shape(
                "narrow",
                self.shape(),
                format!("cannot take {len} elements from {start} of dimension {dim}"),
            ));
        }
        #[cfg(gpu)]
        if let Storage::Gpu(g) = &self.storage {
            let strides = crate::gpu::contiguous_strides(&g.shape);
            let mut shape = g.shape.clone();
            shape[dim] = len;
            return Ok(Tensor::from_gpu(crate::gpu::strided_copy(g, &shape, &strides, start * strides[dim])?));
        }
        let storage = each_storage!(self.storage.clone(), a => {
            let mut a = a;
            a.slice_axis_inplace(Axis(dim), Slice::from(start..start + len));
            a
        });
        Ok(Tensor { storage })
    }

    /// Inserts a dimension of size 1 at `dim`.
    pub fn unsqueeze(&self, dim: usize) -> Result<Tensor> {
        if dim > self.rank() {
            return Err(TensorError::DimOutOfRange { op: "unsqueeze", dim, rank: self.rank() + 1 });
        }
        if self.device().is_gpu() {
            let mut shape = self.shape().to_vec();
            shape.insert(dim, 1);
            return self.reshape(&shape);
        }
        let storage = each_storage!(self.storage.clone(), a => a.insert_axis(Axis(dim)));
        Ok(Tensor { storage })
    }

    /// Removes dimension `dim`, which must have size 1.
    pub fn squeeze(&self, dim: usize) -> Result<Tensor> {
        check_dim("squeeze", dim, self.rank())?;
        if self.shape()[dim] != 1 {
            return Err(bad_shape("squeeze", self.shape(), format!("dimension {dim} does not have size 1")));
        }
        if self.device().is_gpu() {
            let mut shape = self.shape().to_vec();
            shape.remove(dim);
            return self.reshape(&shape);
        }
        let storage = each_storage!(self.storage.clone(), a => a.index_axis_move(Axis(dim), 0));
        Ok(Tensor { storage })
    }

    /// A copy stretched to `shape` by numpy broadcasting, like `expand(...).contiguous()`.
    pub fn broadcast_to(&self, shape: &[usize]) -> Result<Tensor> {
        let target = broadcast_shapes("broadcast_to", self.shape(), shape)?;
        if target != shape {
            return Err(mismatch("broadcast_to", self.shape(), shape));
        }
        #[cfg(gpu)]
        if let Storage::Gpu(g) = &self.storage {
            let own = crate::gpu::contiguous_strides(&g.shape);
            let lead = shape.len() - g.shape.len();
            let strides: Vec<usize> =
                (0..shape.len()).map(|d| if d < lead || g.shape[d - lead] == 1 { 0 } else { own[d - lead] }).collect();
            return Ok(Tensor::from_gpu(crate::gpu::strided_copy(g, shape, &strides, 0)?));
        }
        let storage = each_storage!(&self.storage, a => a
            .broadcast(IxDyn(shape))
            .expect("shapes checked above")
            .to_owned()
            .into_shared());
        Ok(Tensor { storage })
    }

    /// Joins tensors of equal shape except along `dim`, like `torch.cat`.
    pub fn cat(tensors: &[&Tensor], dim: usize) -> Result<Tensor> {
        let first = tensors.first().ok_or_else(|| invalid("cat", "needs at least one tensor"))?;
        check_dim("cat", dim, first.rank())?;
        for t in tensors {
            let ok = t.rank() == first.rank()
                && t.dtype() == first.dtype()
                && t.shape().iter().zip(first.shape()).enumerate().all(|(i, (a, b))| i == dim || a == b);
            if !ok {
                return Err(mismatch("cat", first.shape(), t.shape()));
            }
        }
        #[cfg(gpu)]
        if gpu_device("cat", &tensors.iter().map(|t| Some(*t)).collect::<Vec<_>>())?.is_some() {
            let parts = tensors.iter().map(|t| t.gpu_of("cat")).collect::<Result<Vec<_>>>()?;
            let mut shape = first.shape().to_vec();
            shape[dim] = tensors.iter().map(|t| t.shape()[dim]).sum();
            return Ok(Tensor::from_gpu(crate::gpu::cat(&parts, dim, &shape)?));
        }
        match first.dtype() {
            DType::F32 => {
                let views = tensors.iter().map(|t| t.f32_array("cat").map(|a| a.view())).collect::<Result<Vec<_>>>()?;
                let a = ndarray::concatenate(Axis(dim), &views).map_err(|e| invalid("cat", e.to_string()))?;
                Ok(Tensor::from_f32_array(a))
            }
            DType::I64 => {
                let views = tensors.iter().map(|t| t.i64_array("cat").map(|a| a.view())).collect::<Result<Vec<_>>>()?;
                let a = ndarray::concatenate(Axis(dim), &views).map_err(|e| invalid("cat", e.to_string()))?;
                Ok(Tensor::from_i64_array(a))
            }
        }
    }

    /// Joins tensors of equal shape along a new dimension `dim`, like `torch.stack`.
    pub fn stack(tensors: &[&Tensor], dim: usize) -> Result<Tensor> {
        let first = tensors.first().ok_or_else(|| invalid("stack", "needs at least one tensor"))?;
        if dim > first.rank() {
            return Err(TensorError::DimOutOfRange { op: "stack", dim, rank: first.rank() + 1 });
        }
        for t in tensors {
            if t.shape() != first.shape() || t.dtype() != first.dtype() {
                return Err(mismatch("stack", first.shape(), t.shape()));
            }
        }
        let expanded = tensors.iter().map(|t| t.unsqueeze(dim)).collect::<Result<Vec<_>>>()?;
        Tensor::cat(&expanded.iter().collect::<Vec<_>>(), dim)
    }

    fn checked_indices(&self, op: &'static str, index: &Tensor, size: usize) -> Result<Vec<usize>> {
        let values = if index.device().is_gpu() { Cow::Owned(index.to_vec_i64()?) } else { index.i64_data(op)? };
        values
            .iter()
            .map(|&i| {
                if i >= 0 && (i as u64) < size as u64 {
                    Ok(i as usize)
                } else {
                    Err(TensorError::IndexOutOfRange { op, index: i, size })
                }
            })
            .collect()
    }

    /// The slices of dimension `dim` named by a 1-D i64 `index`, like `torch.index_select`.
    pub fn index_select(&self, dim: usize, index: &Tensor) -> Result<Tensor> {
        check_dim("index_select", dim, self.rank())?;
        if index.rank() != 1 {
            return Err(bad_shape("index_select", index.shape(), "the index must be 1-D"));
        }
        // On a GPU the index is read back to be checked (a kernel cannot report a bad one).
        let idx = self.checked_indices("index_select", index, self.shape()[dim])?;
        #[cfg(gpu)]
        if gpu_device("index_select", &[Some(self), Some(index)])?.is_some() {
            let (x, ix) = (self.gpu_of("index_select")?, index.gpu_of("index_select")?);
            let mut shape = self.shape().to_vec();
            shape[dim] = idx.len();
            let inner = self.shape()[dim + 1..].iter().product();
            let out = crate::gpu::gather(x, ix, (self.shape()[dim], idx.len(), inner), &shape, true)?;
            return Ok(Tensor::from_gpu(out));
        }
        let storage = each_storage!(&self.storage, a => a.select(Axis(dim), &idx).into_shared());
        Ok(Tensor { storage })
    }

    /// `out[i][j] = self[index[i][j]][j]` for `dim = 0` (and likewise for other dims), like
    /// `torch.gather`. `index` has this tensor's rank and is no larger in any other dimension.
    pub fn gather(&self, dim: usize, index: &Tensor) -> Result<Tensor> {
        check_dim("gather", dim, self.rank())?;
        let ishape = index.shape();
        if ishape.len() != self.rank()
            || ishape.iter().zip(self.shape()).enumerate().any(|(d, (i, s))| d != dim && i > s)
        {
            return Err(mismatch("gather", self.shape(), ishape));
        }
        #[cfg(gpu)]
        if gpu_device("gather", &[Some(self), Some(index)])?.is_some() {
            let (x, idx) = (self.gpu_of("gather")?, index.gpu_of("gather")?);
            let same_elsewhere = ishape.iter().zip(self.shape()).enumerate().all(|(d, (i, s))| d == dim || i == s);
            if idx.dtype != DType::I64 || !same_elsewhere {
                return Err(TensorError::Unsupported {
                    op: "gather with an index smaller than the input",
                    device: x.device.to_string(),
                });
            }
            // The indices are checked on the host (a copy down of the index, and a wait): a GPU
            // kernel cannot report one out of range.
            let size = self.shape()[dim];
            if let Some(&bad) = index.to_vec_i64()?.iter().find(|&&i| i < 0 || i as u64 >= size as u64) {
                return Err(TensorError::IndexOutOfRange { op: "gather", index: bad, size });
            }
            let inner: usize = self.shape()[dim + 1..].iter().product();
            let out = crate::gpu::gather(x, idx, (size, ishape[dim], inner), ishape, false)?;
            return Ok(Tensor::from_gpu(out));
        }
        let idx = index.i64_array("gather")?;
        let size = self.shape()[dim];
        if let Some(&bad) = idx.iter().find(|&&i| i < 0 || i as u64 >= size as u64) {
            return Err(TensorError::IndexOutOfRange { op: "gather", index: bad, size });
        }
        let idx = idx.as_standard_layout();
        let idx = idx.as_slice().expect("standard layout");
        let src_index = |flat: usize| {
            let mut pos = unravel(flat, ishape);
            pos[dim] = idx[flat] as usize;
            IxDyn(&pos)
        };
        let storage = match &self.storage {
            Storage::F32(a) => Storage::F32(
                ArrayD::from_shape_vec(IxDyn(ishape), (0..idx.len()).map(|f| a[src_index(f)]).collect())
                    .expect("sized")
                    .into_shared(),
            ),
            Storage::I64(a) => Storage::I64(
                ArrayD::from_shape_vec(IxDyn(ishape), (0..idx.len()).map(|f| a[src_index(f)]).collect())
                    .expect("sized")
                    .into_shared(),
            ),
            #[cfg(gpu)]
            Storage::Gpu(g) => return Err(TensorError::Unsupported { op: "gather", device: g.device.to_string() }),
        };
        Ok(Tensor { storage })
    }
}

// ---------------------------------------------------------------------------------------------
// Elementwise
// ---------------------------------------------------------------------------------------------

/// A binary elementwise operation, by name, so each op's definition is one line of a `match`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    /// `a + b`
    Add,
    /// `a - b`
    Sub,
    /// `a * b`
    Mul,
    /// `a / b`
    Div,
    /// `max(a, b)` (NaN propagates, like `torch.maximum`)
    Maximum,
    /// `min(a, b)` (NaN propagates, like `torch.minimum`)
    Minimum,
}

impl BinaryOp {
    fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
            BinaryOp::Maximum => "maximum",
            BinaryOp::Minimum => "minimum",
        }
    }

    #[inline(always)]
    fn f32(self, a: f32, b: f32) -> f32 {
        match self {
            BinaryOp::Add => a + b,
            BinaryOp::Sub => a - b,
            BinaryOp::Mul => a * b,
            BinaryOp::Div => a / b,
            BinaryOp::Maximum => {
                if a.is_nan() || a > b {
                    a
                } else {
                    b
                }
            }
            BinaryOp::Minimum => {
                if a.is_nan() || a < b {
                    a
                } else {
                    b
                }
            }
        }
    }

    fn i64(self, a: i64, b: i64) -> Option<i64> {
        match self {
            BinaryOp::Add => a.checked_add(b),
            BinaryOp::Sub => a.checked_sub(b),
            BinaryOp::Mul => a.checked_mul(b),
            BinaryOp::Div => a.checked_div(b),
            BinaryOp::Maximum => Some(a.max(b)),
            BinaryOp::Minimum => Some(a.min(b)),
        }
    }
}

fn map_f32(a: &ArcArray<f32, IxDyn>, f: impl Fn(f32) -> f32 + Sync + Send) -> Tensor {
    if let Some(s) = a.as_slice() {
        let v: Vec<f32> = if s.len() >= PARALLEL_THRESHOLD {
            s.par_iter().map(|&x| f(x)).collect()
        } else {
            s.iter().map(|&x| f(x)).collect()
        };
        Tensor::from_vec_unchecked(v, a.shape())
    } else {
        Tensor::from_f32_array(a.map(|&x| f(x)))
    }
}

impl Tensor {
    /// Applies a binary op with numpy broadcasting; both operands must have the same dtype.
    pub fn binary(&self, rhs: &Tensor, op: BinaryOp) -> Result<Tensor> {
        let name = op.name();
        let shape = broadcast_shapes(name, self.shape(), rhs.shape())?;
        #[cfg(gpu)]
        if gpu_device(name, &[Some(self), Some(rhs)])?.is_some() {
            let (a, b) = (self.gpu_of(name)?, rhs.gpu_of(name)?);
            if a.dtype != DType::F32 || b.dtype != DType::F32 {
                return Err(TensorError::Unsupported { op: name, device: format!("{} (i64 arithmetic)", a.device) });
            }
            use crate::op_codes as k;
            let code = match op {
                BinaryOp::Add => k::B_ADD,
                BinaryOp::Sub => k::B_SUB,
                BinaryOp::Mul => k::B_MUL,
                BinaryOp::Div => k::B_DIV,
                BinaryOp::Maximum => k::B_MAX,
                BinaryOp::Minimum => k::B_MIN,
            };
            return Ok(Tensor::from_gpu(crate::gpu::binary(a, b, &shape, code)?));
        }
        match (&self.storage, &rhs.storage) {
            (Storage::F32(a), Storage::F32(b)) => {
                if let (Some(x), Some(y)) = (a.as_slice(), b.as_slice()) {
                    if a.shape() == b.shape() {
                        let v: Vec<f32> = if x.len() >= PARALLEL_THRESHOLD {
                            x.par_iter().zip(y.par_iter()).map(|(&p, &q)| op.f32(p, q)).collect()
                        } else {
                            x.iter().zip(y).map(|(&p, &q)| op.f32(p, q)).collect()
                        };
                        return Ok(Tensor::from_vec_unchecked(v, &shape));
                    }
                }
                let av = a.broadcast(IxDyn(&shape)).ok_or_else(|| mismatch(name, a.shape(), &shape))?;
                let bv = b.broadcast(IxDyn(&shape)).ok_or_else(|| mismatch(name, b.shape(), &shape))?;
                let zip = Zip::from(&av).and(&bv);
                let out = if av.len() >= PARALLEL_THRESHOLD {
                    zip.par_map_collect(|&p, &q| op.f32(p, q))
                } else {
                    zip.map_collect(|&p, &q| op.f32(p, q))
                };
                Ok(Tensor::from_f32_array(out))
            }
            (Storage::I64(a), Storage::I64(b)) => {
                let av = a.broadcast(IxDyn(&shape)).ok_or_else(|| mismatch(name, a.shape(), &shape))?;
                let bv = b.broadcast(IxDyn(&shape)).ok_or_else(|| mismatch(name, b.shape(), &shape))?;
                let mut failed = false;
                let out = Zip::from(&av).and(&bv).map_collect(|&p, &q| {
                    op.i64(p, q).unwrap_or_else(|| {
                        failed = true;
                        0
                    })
                });
                if failed {
                    return Err(invalid(name, "i64 overflow or division by zero"));
                }
                Ok(Tensor::from_i64_array(out))
            }
            _ => Err(TensorError::DType { op: name, expected: self.dtype(), got: rhs.dtype() }),
        }
    }

    /// `self + rhs` with broadcasting.
    pub fn add(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Add)
    }
    /// `self - rhs` with broadcasting.
    pub fn sub(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Sub)
    }
    /// `self * rhs` with broadcasting.
    pub fn mul(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Mul)
    }
    /// `self / rhs` with broadcasting.
    pub fn div(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Div)
    }
    /// Elementwise maximum with broadcasting.
    pub fn maximum(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Maximum)
    }
    /// Elementwise minimum with broadcasting.
    pub fn minimum(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Minimum)
    }

    /// ReLU's backward: this gradient where the forward `output` is positive, else 0.
    pub fn relu_backward(&self, output: &Tensor) -> Result<Tensor> {
        const OP: &str = "relu_backward";
        if self.shape() != output.shape() {
            return Err(mismatch(OP, self.shape(), output.shape()));
        }
        #[cfg(gpu)]
        if gpu_device(OP, &[Some(self), Some(output)])?.is_some() {
            let g = crate::gpu::binary(self.gpu_f32(OP)?, output.gpu_f32(OP)?, self.shape(), codes::B_RELU_MASK)?;
            return Ok(Tensor::from_gpu(g));
        }
        let (g, y) = (self.f32_data(OP)?, output.f32_data(OP)?);
        let pick = |(&g, &y): (&f32, &f32)| if y > 0.0 { g } else { 0.0 };
        let v = if g.len() >= PARALLEL_THRESHOLD {
            g.par_iter().zip(y.par_iter()).map(pick).collect()
        } else {
            g.iter().zip(y.iter()).map(pick).collect()
        };
        Ok(Tensor::from_vec_unchecked(v, self.shape()))
    }

    /// Applies `f` to every f32 element (host tensors only: a Rust closure cannot run on a GPU).
    pub fn map(&self, op: &'static str, f: impl Fn(f32) -> f32 + Sync + Send) -> Result<Tensor> {
        Ok(map_f32(self.f32_array(op)?, f))
    }

    /// A named unary op: the GPU kernel `code` (with scalars `a`, `b`) on a GPU, `f` on the host.
    fn unary(&self, op: &'static str, code: UnaryCode, f: impl Fn(f32) -> f32 + Sync + Send) -> Result<Tensor> {
        #[cfg(gpu)]
        if let Storage::Gpu(g) = &self.storage {
            if g.dtype != DType::F32 {
                return Err(TensorError::DType { op, expected: DType::F32, got: g.dtype });
            }
            let (code, a, b) = code;
            return Ok(Tensor::from_gpu(crate::gpu::unary(g, code, a, b)?));
        }
        let _ = code;
        self.map(op, f)
    }

    /// `-x`
    pub fn neg(&self) -> Result<Tensor> {
        self.unary("neg", (codes::U_NEG, 0.0, 0.0), |x| -x)
    }
    /// `e^x`
    pub fn exp(&self) -> Result<Tensor> {
        self.unary("exp", (codes::U_EXP, 0.0, 0.0), f32::exp)
    }
    /// Natural logarithm.
    pub fn log(&self) -> Result<Tensor> {
        self.unary("log", (codes::U_LOG, 0.0, 0.0), f32::ln)
    }
    /// Square root.
    pub fn sqrt(&self) -> Result<Tensor> {
        self.unary("sqrt", (codes::U_SQRT, 0.0, 0.0), f32::sqrt)
    }
    /// `x^p`
    pub fn powf(&self, p: f32) -> Result<Tensor> {
        self.unary("powf", (codes::U_POWF, p, 0.0), move |x| x.powf(p))
    }
    /// `max(x, 0)`
    pub fn relu(&self) -> Result<Tensor> {
        self.unary("relu", (codes::U_RELU, 0.0, 0.0), crate::kernels::relu)
    }
    /// `|x|`
    pub fn abs(&self) -> Result<Tensor> {
        self.unary("abs", (codes::U_ABS, 0.0, 0.0), f32::abs)
    }
    /// Clamps into `[min, max]`, like `torch.clamp`.
    pub fn clamp(&self, min: f32, max: f32) -> Result<Tensor> {
        if min > max {
            return Err(invalid("clamp", format!("min {min} is greater than max {max}")));
        }
        // NaN stays NaN, as in PyTorch (`f32::max` would turn it into `min`).
        self.unary("clamp", (codes::U_CLAMP, min, max), move |x| {
            if x < min {
                min
            } else if x > max {
                max
            } else {
                x
            }
        })
    }
    /// `x + s`
    pub fn add_scalar(&self, s: f32) -> Result<Tensor> {
        self.unary("add_scalar", (codes::U_ADD_SCALAR, s, 0.0), move |x| x + s)
    }
    /// `x * s`
    pub fn mul_scalar(&self, s: f32) -> Result<Tensor> {
        self.unary("mul_scalar", (codes::U_MUL_SCALAR, s, 0.0), move |x| x * s)
    }
}

/// A GPU unary kernel and its two scalar arguments.
type UnaryCode = (u32, f32, f32);

use crate::op_codes as codes;

// ---------------------------------------------------------------------------------------------
// Reductions and softmax
// ---------------------------------------------------------------------------------------------

impl Tensor {
    fn sorted_dims(&self, op: &'static str, dims: &[usize]) -> Result<Vec<usize>> {
        let mut d = dims.to_vec();
        d.sort_unstable();
        d.dedup();
        for &x in &d {
            check_dim(op, x, self.rank())?;
        }
        Ok(d)
    }

    fn reduce_sum(&self, op: &'static str, dims: &[usize], keepdim: bool) -> Result<(ArrayD<f64>, usize)> {
        let a = self.f32_array(op)?;
        let dims = self.sorted_dims(op, dims)?;
        // Accumulate in f64: BN statistics and losses over large batches stay exact to f32.
        let mut acc: ArrayD<f64> = a.mapv(|v| v as f64);
        let mut count = 1usize;
        for &d in dims.iter().rev() {
            count *= acc.shape()[d];
            acc = acc.sum_axis(Axis(d));
            if keepdim {
                acc.insert_axis_inplace(Axis(d));
            }
        }
        Ok((acc, count))
    }

    /// Sums (or takes the maximum, `code` = `R_MAX`) over `dims` on a GPU, one axis at a time.
    #[cfg(gpu)]
    fn gpu_reduce(&self, op: &'static str, dims: &[usize], keepdim: bool, code: u32) -> Result<Tensor> {
        let g = self.gpu_of(op)?;
        if g.dtype != DType::F32 {
            return Err(TensorError::DType { op, expected: DType::F32, got: g.dtype });
        }
        let dims = self.sorted_dims(op, dims)?;
        let mut cur = g.clone();
        let mut shape = g.shape.clone();
        for &d in dims.iter().rev() {
            let (outer, red, inner) = (shape[..d].iter().product(), shape[d], shape[d + 1..].iter().product());
            shape[d] = 1;
            cur = match red {
                0 if code == codes::R_SUM => crate::gpu::zeros(&shape, g.device)?,
                0 => return Err(bad_shape(op, self.shape(), format!("cannot reduce the empty dimension {d}"))),
                1 => cur.reshaped(&shape),
                _ => crate::gpu::reduce(&cur, outer, red, inner, code, &shape)?,
            };
        }
        if !keepdim {
            let kept: Vec<usize> =
                shape.iter().enumerate().filter(|(d, _)| !dims.contains(d)).map(|(_, &s)| s).collect();
            cur = cur.reshaped(&kept);
        }
        Ok(Tensor::from_gpu(cur))
    }

    /// Sum over `dims` (all when empty... use [`Tensor::sum_all`]), like `torch.sum(dim, keepdim)`.
    pub fn sum(&self, dims: &[usize], keepdim: bool) -> Result<Tensor> {
        #[cfg(gpu)]
        if self.device().is_gpu() {
            return self.gpu_reduce("sum", dims, keepdim, codes::R_SUM);
        }
        let (acc, _) = self.reduce_sum("sum", dims, keepdim)?;
        Ok(Tensor::from_f32_array(acc.mapv(|v| v as f32)))
    }

    /// Mean over `dims`, like `torch.mean(dim, keepdim)`.
    pub fn mean(&self, dims: &[usize], keepdim: bool) -> Result<Tensor> {
        if self.device().is_gpu() {
            let count: usize = self.sorted_dims("mean", dims)?.iter().map(|&d| self.shape()[d]).product();
            return self.sum(dims, keepdim)?.mul_scalar(1.0 / count as f32);
        }
        let (acc, count) = self.reduce_sum("mean", dims, keepdim)?;
        Ok(Tensor::from_f32_array(acc.mapv(|v| (v / count as f64) as f32)))
    }

    /// Variance over `dims`; `unbiased` divides by `n - 1` (torch's default), else by `n`.
    pub fn var(&self, dims: &[usize], unbiased: bool, keepdim: bool) -> Result<Tensor> {
        if self.device().is_gpu() {
            let count: usize = self.sorted_dims("var", dims)?.iter().map(|&d| self.shape()[d]).product();
            let centred = self.sub(&self.mean(dims, true)?)?;
            let denom = if unbiased { count.saturating_sub(1) } else { count } as f32;
            return centred.mul(&centred)?.sum(dims, keepdim)?.mul_scalar(1.0 / denom);
        }
        let (sum, count) = self.reduce_sum("var", dims, true)?;
        let a = self.f32_array("var")?;
        let mean = sum.mapv(|v| v / count as f64);
        let centred = Zip::from(a).and_broadcast(&mean).map_collect(|&x, &m| (x as f64 - m) * (x as f64 - m));
        let sq = Tensor::from_f32_array(centred.mapv(|v| v as f32));
        let (acc, _) = sq.reduce_sum("var", dims, keepdim)?;
        let denom = if unbiased { count.saturating_sub(1) } else { count } as f64;
        Ok(Tensor::from_f32_array(acc.mapv(|v| (v / denom) as f32)))
    }

    /// Sum of all elements.
    pub fn sum_all(&self) -> Result<f32> {
        let d: Vec<usize> = (0..self.rank()).collect();
        self.sum(&d, false)?.item()
    }

    /// Mean of all elements.
    pub fn mean_all(&self) -> Result<f32> {
        let d: Vec<usize> = (0..self.rank()).collect();
        self.mean(&d, false)?.item()
    }

    fn reduce_lanes<T: Clone>(
        &self,
        op: &'static str,
        dim: usize,
        keepdim: bool,
        f: impl Fn(ndarray::ArrayView1<'_, f32>) -> T,
    ) -> Result<ArrayD<T>> {
        let a = self.f32_array(op)?;
        check_dim(op, dim, self.rank())?;
        if a.shape()[dim] == 0 {
            return Err(bad_shape(op, a.shape(), format!("cannot reduce the empty dimension {dim}")));
        }
        let mut out = a.map_axis(Axis(dim), f);
        if keepdim {
            out.insert_axis_inplace(Axis(dim));
        }
        Ok(out)
    }

    /// Maximum along `dim` (NaN wins, like torch).
    pub fn max(&self, dim: usize, keepdim: bool) -> Result<Tensor> {
        #[cfg(gpu)]
        if self.device().is_gpu() {
            check_dim("max", dim, self.rank())?;
            return self.gpu_reduce("max", &[dim], keepdim, codes::R_MAX);
        }
        let out = self.reduce_lanes("max", dim, keepdim, |lane| {
            lane.iter()
                .copied()
                .fold(f32::NEG_INFINITY, |m, x| if m.is_nan() || !(x.is_nan() || x > m) { m } else { x })
        })?;
        Ok(Tensor::from_f32_array(out))
    }

    /// Index of the first maximum along `dim` (i64), like `torch.argmax`.
    pub fn argmax(&self, dim: usize, keepdim: bool) -> Result<Tensor> {
        #[cfg(gpu)]
        if let Storage::Gpu(g) = &self.storage {
            check_dim("argmax", dim, self.rank())?;
            if g.shape[dim] == 0 || g.dtype != DType::F32 {
                return Err(bad_shape(
                    "argmax",
                    self.shape(),
                    format!("cannot reduce dimension {dim} of an empty or i64 tensor"),
                ));
            }
            let mut shape = g.shape.clone();
            let (outer, red, inner) = (shape[..dim].iter().product(), shape[dim], shape[dim + 1..].iter().product());
            if keepdim {
                shape[dim] = 1;
            } else {
                shape.remove(dim);
            }
            return Ok(Tensor::from_gpu(crate::gpu::argmax(g, outer, red, inner, &shape)?));
        }
        let out = self.reduce_lanes("argmax", dim, keepdim, |lane| {
            let mut best = 0usize;
            let mut best_v = f32::NEG_INFINITY;
            for (i, &x) in lane.iter().enumerate() {
                if best_v.is_nan() {
                    break;
                }
                if x.is_nan() || x > best_v || i == 0 {
                    best = i;
                    best_v = x;
                }
            }
            best as i64
        })?;
        Ok(Tensor::from_i64_array(out))
    }

    /// `exp(x) / sum(exp(x))` along `dim`, computed stably (max subtracted first).
    pub fn softmax(&self, dim: usize) -> Result<Tensor> {
        self.softmax_impl("softmax", dim, false)
    }

    /// `x - log(sum(exp(x)))` along `dim`, computed stably.
    pub fn log_softmax(&self, dim: usize) -> Result<Tensor> {
        self.softmax_impl("log_softmax", dim, true)
    }

    fn softmax_impl(&self, op: &'static str, dim: usize, log: bool) -> Result<Tensor> {
        if self.device().is_gpu() {
            check_dim(op, dim, self.rank())?;
            let shifted = self.sub(&self.max(dim, true)?)?;
            let e = shifted.exp()?;
            let sum = e.sum(&[dim], true)?;
            return if log { shifted.sub(&sum.log()?) } else { e.div(&sum) };
        }
        let a = self.f32_array(op)?;
        check_dim(op, dim, self.rank())?;
        let mut out = ArrayD::<f32>::zeros(a.raw_dim());
        Zip::from(out.lanes_mut(Axis(dim))).and(a.lanes(Axis(dim))).for_each(|mut o, x| {
            let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let m = if m.is_finite() { m } else { 0.0 };
            let sum: f64 = x.iter().map(|&v| ((v - m) as f64).exp()).sum();
            if log {
                let lse = m as f64 + sum.ln();
                o.iter_mut().zip(x).for_each(|(o, &v)| *o = (v as f64 - lse) as f32);
            } else {
                o.iter_mut().zip(x).for_each(|(o, &v)| *o = (((v - m) as f64).exp() / sum) as f32);
            }
        });
        Ok(Tensor::from_f32_array(out))
    }
}

// ---------------------------------------------------------------------------------------------
// Matrix multiplication
// ---------------------------------------------------------------------------------------------

impl Tensor {
    /// Matrix product of the last two dimensions, batched over the leading ones with numpy
    /// broadcasting, like `torch.matmul` for operands of rank >= 2. Strided views (such as a
    /// transpose) are read in place, without a copy.
    pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        #[cfg(gpu)]
        if gpu_device("matmul", &[Some(self), Some(rhs)])?.is_some() {
            return self.gpu_matmul(rhs);
        }
        let a = self.f32_array("matmul")?;
        let b = rhs.f32_array("matmul")?;
        let (ra, rb) = (a.ndim(), b.ndim());
        if ra < 2 || rb < 2 || a.shape()[ra - 1] != b.shape()[rb - 2] {
            return Err(mismatch("matmul", a.shape(), b.shape()));
        }
        let (m, k, n) = (a.shape()[ra - 2], a.shape()[ra - 1], b.shape()[rb - 1]);
        let batch = broadcast_shapes("matmul", &a.shape()[..ra - 2], &b.shape()[..rb - 2])?;
        let mut a_shape = batch.clone();
        a_shape.extend([m, k]);
        let mut b_shape = batch.clone();
        b_shape.extend([k, n]);
        let av = a.broadcast(IxDyn(&a_shape)).ok_or_else(|| mismatch("matmul", a.shape(), &a_shape))?;
        let bv = b.broadcast(IxDyn(&b_shape)).ok_or_else(|| mismatch("matmul", b.shape(), &b_shape))?;
        let nb: usize = batch.iter().product();
        let mut out = vec![0f32; nb * m * n];
        let offsets = |strides: &[isize]| -> Vec<isize> {
            (0..nb).map(|f| unravel(f, &batch).iter().zip(strides).map(|(&i, &s)| i as isize * s).sum()).collect()
        };
        let (sa, sb) = (av.strides(), bv.strides());
        let (oa, ob) = (offsets(&sa[..batch.len()]), offsets(&sb[..batch.len()]));
        let lhs = crate::kernels::matmul::MatRef::strided(av.as_ptr(), m, k, sa[batch.len()], sa[batch.len() + 1]);
        let rhs_m = crate::kernels::matmul::MatRef::strided(bv.as_ptr(), k, n, sb[batch.len()], sb[batch.len() + 1]);
        crate::kernels::matmul::batched_sgemm(&mut out, m, n, lhs, &oa, rhs_m, &ob);
        let mut shape = batch;
        shape.extend([m, n]);
        Ok(Tensor::from_vec_unchecked(out, &shape))
    }
}

#[cfg(gpu)]
impl Tensor {
    fn gpu_matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        let (a, b) = (self.gpu_of("matmul")?, rhs.gpu_of("matmul")?);
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
        let (ta, a_batched) = expand(self, m, k)?;
        let (tb, b_batched) = expand(rhs, k, n)?;
        let mut shape = batch;
        shape.extend([m, n]);
        let out = crate::gpu::matmul(
            ta.gpu_of("matmul")?,
            tb.gpu_of("matmul")?,
            nb,
            (m, k, n),
            (a_batched, b_batched),
            &shape,
        )?;
        Ok(Tensor::from_gpu(out))
    }
}

impl Tensor {
    /// `F.one_hot(targets, classes).float()`: `[..., classes]` with 1 at each target's index.
    /// Targets are i64 class indices below `classes`; the result is on the targets' device.
    pub fn one_hot(targets: &Tensor, classes: usize) -> Result<Tensor> {
        const OP: &str = "one_hot";
        if targets.dtype() != DType::I64 {
            return Err(TensorError::DType { op: OP, expected: DType::I64, got: targets.dtype() });
        }
        let mut shape = targets.shape().to_vec();
        shape.push(classes);
        #[cfg(gpu)]
        if let Storage::Gpu(g) = &targets.storage {
            // Equality of the class index with 0..classes, broadcast; the indices are exact in
            // f32 below 2^24. Out-of-range targets give all-zero rows (the host refuses them).
            let t = Tensor::from_gpu(crate::gpu::cast(g, DType::F32)).unsqueeze(targets.rank())?;
            let range = Tensor::arange(0.0, classes as f32, 1.0)?.to_device(g.device)?;
            let out = crate::gpu::binary(t.gpu_f32(OP)?, range.gpu_f32(OP)?, &shape, codes::B_EQ)?;
            return Ok(Tensor::from_gpu(out));
        }
        let mut out = vec![0f32; shape.iter().product()];
        for (row, &t) in targets.i64_data(OP)?.iter().enumerate() {
            match usize::try_from(t).ok().filter(|&t| t < classes) {
                Some(t) => out[row * classes + t] = 1.0,
                None => return Err(TensorError::IndexOutOfRange { op: OP, index: t, size: classes }),
            }
        }
        Ok(Tensor::from_vec_unchecked(out, &shape))
    }
}

/// The multi-index of flat position `flat` in a row-major array of `shape`.
pub(crate) fn unravel(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut pos = vec![0; shape.len()];
    for d in (0..shape.len()).rev() {
        if shape[d] > 0 {
            pos[d] = flat % shape[d];
            flat /= shape[d];
        }
    }
    pos
}

/// The GPU device shared by the given operands, `None` when all are on the host, and an error
/// when they are on different devices.
#[cfg(gpu)]
pub(crate) fn gpu_device(op: &'static str, operands: &[Option<&Tensor>]) -> Result<Option<Device>> {
    let devices: Vec<Device> = operands.iter().flatten().map(|t| t.device()).collect();
    match devices.first() {
        Some(&first) if devices.iter().any(|d| d.is_gpu()) => {
            if devices.iter().all(|&d| d == first) {
                Ok(Some(first))
            } else {
                let names: Vec<String> = devices.iter().map(|d| d.to_string()).collect();
                Err(TensorError::DeviceMismatch { op, devices: names.join(", ") })
            }
        }
        _ => Ok(None),
    }
}
