//! The [`Tensor`] type: creation, views, elementwise ops, reductions, softmax and matmul.
//!
//! A tensor is a cheap handle: cloning it shares the data (an `ndarray::ArcArray`), and views
//! (reshape of contiguous data, permute, transpose, narrow, unsqueeze) share it too. Ops never
//! mutate their inputs; every op returns a new tensor.

use crate::backend::{backend_for, backend_of};
use crate::error::{bad_shape, invalid, mismatch, Result, TensorError};
use crate::shape::{broadcast_shapes, check_dim, checked_numel};
use crate::{DType, Device};
use ndarray::{ArcArray, ArrayD, ArrayViewD, IxDyn};
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

mod host;

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
        let host = self.to_host()?;
        let a = host.f32_array("item")?;
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

    /// The GPU array of an operand on a GPU (the GPU backend's operands all are).
    #[cfg(gpu)]
    pub(crate) fn gpu_of(&self, op: &'static str) -> Result<&crate::gpu::GpuArray> {
        match &self.storage {
            Storage::Gpu(g) => Ok(g),
            _ => Err(TensorError::DeviceMismatch { op, devices: format!("{} and a GPU", self.device()) }),
        }
    }

    /// The GPU array of an f32 operand on a GPU.
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
        backend_of("reshape", self)?.reshape(self, shape)
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
        backend_of("permute", self)?.permute(self, dims)
    }

    /// Swaps two dimensions without copying.
    pub fn transpose(&self, d0: usize, d1: usize) -> Result<Tensor> {
        check_dim("transpose", d0, self.rank())?;
        check_dim("transpose", d1, self.rank())?;
        backend_of("transpose", self)?.transpose(self, d0, d1)
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
        backend_of("narrow", self)?.narrow(self, dim, start, len)
    }

    /// Inserts a dimension of size 1 at `dim`.
    pub fn unsqueeze(&self, dim: usize) -> Result<Tensor> {
        if dim > self.rank() {
            return Err(TensorError::DimOutOfRange { op: "unsqueeze", dim, rank: self.rank() + 1 });
        }
        backend_of("unsqueeze", self)?.unsqueeze(self, dim)
    }

    /// Removes dimension `dim`, which must have size 1.
    pub fn squeeze(&self, dim: usize) -> Result<Tensor> {
        check_dim("squeeze", dim, self.rank())?;
        if self.shape()[dim] != 1 {
            return Err(bad_shape("squeeze", self.shape(), format!("dimension {dim} does not have size 1")));
        }
        backend_of("squeeze", self)?.squeeze(self, dim)
    }

    /// A copy stretched to `shape` by numpy broadcasting, like `expand(...).contiguous()`.
    pub fn broadcast_to(&self, shape: &[usize]) -> Result<Tensor> {
        let target = broadcast_shapes("broadcast_to", self.shape(), shape)?;
        if target != shape {
            return Err(mismatch("broadcast_to", self.shape(), shape));
        }
        backend_of("broadcast_to", self)?.broadcast_to(self, shape)
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
        let mut shape = first.shape().to_vec();
        shape[dim] = tensors.iter().map(|t| t.shape()[dim]).sum();
        let operands: Vec<Option<&Tensor>> = tensors.iter().map(|t| Some(*t)).collect();
        backend_for("cat", &operands)?.cat(tensors, dim, &shape)
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

    /// The values of an index tensor, each checked to be below `size` (read back from a GPU:
    /// a kernel cannot report a bad one).
    fn checked_indices(&self, op: &'static str, index: &Tensor, size: usize) -> Result<Vec<usize>> {
        let host = index.to_host()?;
        host.i64_data(op)?
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
        let idx = self.checked_indices("index_select", index, self.shape()[dim])?;
        backend_for("index_select", &[Some(self), Some(index)])?.index_select(self, dim, index, &idx)
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
        backend_for("gather", &[Some(self), Some(index)])?.gather(self, dim, index)
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
    pub(crate) fn name(self) -> &'static str {
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

impl Tensor {
    /// Applies a binary op with numpy broadcasting; both operands must have the same dtype.
    pub fn binary(&self, rhs: &Tensor, op: BinaryOp) -> Result<Tensor> {
        let name = op.name();
        let shape = broadcast_shapes(name, self.shape(), rhs.shape())?;
        backend_for(name, &[Some(self), Some(rhs)])?.binary(self, rhs, op, &shape)
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
        backend_for(OP, &[Some(self), Some(output)])?.relu_backward(self, output)
    }

    /// Applies `f` to every f32 element (host tensors only: a Rust closure cannot run on a GPU).
    pub fn map(&self, op: &'static str, f: impl Fn(f32) -> f32 + Sync + Send) -> Result<Tensor> {
        Ok(host::map_f32(self.f32_array(op)?, f))
    }

    /// Whether every element is finite (no NaN, no infinity), like `torch.isfinite(t).all()`;
    /// on a GPU one value is read back.
    pub fn all_finite(&self) -> Result<bool> {
        Tensor::all_finite_together(&[self])
    }

    /// Whether every element of every tensor is finite, with one read-back on a GPU (the
    /// tensors on one device): the gradient check of a training step.
    pub fn all_finite_together(tensors: &[&Tensor]) -> Result<bool> {
        const OP: &str = "all_finite";
        if let Some(t) = tensors.iter().find(|t| t.dtype() != DType::F32) {
            return Err(TensorError::DType { op: OP, expected: DType::F32, got: t.dtype() });
        }
        let operands: Vec<Option<&Tensor>> = tensors.iter().map(|t| Some(*t)).collect();
        backend_for(OP, &operands)?.all_finite(tensors)
    }

    fn unary(&self, op: UnaryOp) -> Result<Tensor> {
        backend_of(op.name(), self)?.unary(self, op)
    }

    /// `-x`
    pub fn neg(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Neg)
    }
    /// `e^x`
    pub fn exp(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Exp)
    }
    /// Natural logarithm.
    pub fn log(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Log)
    }
    /// Square root.
    pub fn sqrt(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Sqrt)
    }
    /// `x^p`
    pub fn powf(&self, p: f32) -> Result<Tensor> {
        self.unary(UnaryOp::Powf(p))
    }
    /// `max(x, 0)`
    pub fn relu(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Relu)
    }
    /// `|x|`
    pub fn abs(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Abs)
    }
    /// Clamps into `[min, max]`, like `torch.clamp` (NaN stays NaN).
    pub fn clamp(&self, min: f32, max: f32) -> Result<Tensor> {
        if min > max {
            return Err(invalid("clamp", format!("min {min} is greater than max {max}")));
        }
        self.unary(UnaryOp::Clamp(min, max))
    }
    /// `x + s`
    pub fn add_scalar(&self, s: f32) -> Result<Tensor> {
        self.unary(UnaryOp::AddScalar(s))
    }
    /// `x * s`
    pub fn mul_scalar(&self, s: f32) -> Result<Tensor> {
        self.unary(UnaryOp::MulScalar(s))
    }
}

/// A named elementwise unary op, with its scalar arguments.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum UnaryOp {
    Neg,
    Exp,
    Log,
    Sqrt,
    Powf(f32),
    Relu,
    Abs,
    /// `[min, max]`; NaN stays NaN, as in PyTorch.
    Clamp(f32, f32),
    AddScalar(f32),
    MulScalar(f32),
}

impl UnaryOp {
    pub(crate) fn name(self) -> &'static str {
        match self {
            UnaryOp::Neg => "neg",
            UnaryOp::Exp => "exp",
            UnaryOp::Log => "log",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Powf(_) => "powf",
            UnaryOp::Relu => "relu",
            UnaryOp::Abs => "abs",
            UnaryOp::Clamp(..) => "clamp",
            UnaryOp::AddScalar(_) => "add_scalar",
            UnaryOp::MulScalar(_) => "mul_scalar",
        }
    }

    /// The op on one value (the host's rule, which the GPU kernels follow).
    #[inline(always)]
    pub(crate) fn f32(self, x: f32) -> f32 {
        match self {
            UnaryOp::Neg => -x,
            UnaryOp::Exp => x.exp(),
            UnaryOp::Log => x.ln(),
            UnaryOp::Sqrt => x.sqrt(),
            UnaryOp::Powf(p) => x.powf(p),
            UnaryOp::Relu => crate::kernels::relu(x),
            UnaryOp::Abs => x.abs(),
            UnaryOp::Clamp(min, max) => {
                if x < min {
                    min
                } else if x > max {
                    max
                } else {
                    x
                }
            }
            UnaryOp::AddScalar(s) => x + s,
            UnaryOp::MulScalar(s) => x * s,
        }
    }
}

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

    /// Sum over `dims` (all when empty... use [`Tensor::sum_all`]), like `torch.sum(dim, keepdim)`.
    pub fn sum(&self, dims: &[usize], keepdim: bool) -> Result<Tensor> {
        let dims = self.sorted_dims("sum", dims)?;
        backend_of("sum", self)?.sum(self, &dims, keepdim)
    }

    /// Mean over `dims`, like `torch.mean(dim, keepdim)`.
    pub fn mean(&self, dims: &[usize], keepdim: bool) -> Result<Tensor> {
        let dims = self.sorted_dims("mean", dims)?;
        backend_of("mean", self)?.mean(self, &dims, keepdim)
    }

    /// Variance over `dims`; `unbiased` divides by `n - 1` (torch's default), else by `n`.
    pub fn var(&self, dims: &[usize], unbiased: bool, keepdim: bool) -> Result<Tensor> {
        let dims = self.sorted_dims("var", dims)?;
        backend_of("var", self)?.var(self, &dims, unbiased, keepdim)
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

    /// Maximum along `dim` (NaN wins, like torch).
    pub fn max(&self, dim: usize, keepdim: bool) -> Result<Tensor> {
        check_dim("max", dim, self.rank())?;
        backend_of("max", self)?.max(self, dim, keepdim)
    }

    /// Index of the first maximum along `dim` (i64), like `torch.argmax`.
    pub fn argmax(&self, dim: usize, keepdim: bool) -> Result<Tensor> {
        check_dim("argmax", dim, self.rank())?;
        backend_of("argmax", self)?.argmax(self, dim, keepdim)
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
        check_dim(op, dim, self.rank())?;
        backend_of(op, self)?.softmax(self, dim, log)
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
        backend_for("matmul", &[Some(self), Some(rhs)])?.matmul(self, rhs)
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
        backend_of(OP, targets)?.one_hot(targets, classes, &shape)
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
