//! Where a tensor's data lives. The host is always there; the GPU devices exist in every build
//! (so no signature depends on cargo features) but only run where the `wgpu` or `cuda` feature
//! is built and a driver answers — elsewhere using them is a `DeviceUnavailable` error.

use std::fmt;

/// A place where tensors live and kernels run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Device {
    /// The host CPU: ndarray storage, kernels parallelised with rayon.
    #[default]
    Cpu,
    /// The default GPU through wgpu (Vulkan, Metal, DX12; Mesa's lavapipe on a CPU-only
    /// machine): cubecl kernels compiled to WGSL. Needs the `wgpu` feature.
    Wgpu,
    /// The first NVIDIA GPU through CUDA: cubecl kernels compiled with NVRTC. Needs the `cuda`
    /// feature and a driver at run time.
    Cuda,
}

impl Device {
    /// Parses a device name as the command line spells it (`cpu`, `wgpu`, `cuda` or `cuda:0`;
    /// `gpu` picks CUDA when it runs here, else wgpu). Fails for a device this build or machine cannot use.
    pub fn parse(name: &str) -> crate::Result<Device> {
        let device = match name.trim().to_ascii_lowercase().as_str() {
            "cpu" => Device::Cpu,
            "wgpu" | "vulkan" | "metal" => Device::Wgpu,
            "cuda" | "cuda:0" => Device::Cuda,
            "gpu" => {
                if Device::Cuda.is_available() {
                    Device::Cuda
                } else {
                    Device::Wgpu
                }
            }
            other => {
                return Err(crate::TensorError::DeviceUnavailable { op: "Device::parse", device: other.to_string() })
            }
        };
        device.check()?;
        Ok(device)
    }

    /// Whether kernels can run on this device in this process.
    pub fn is_available(self) -> bool {
        self.check().is_ok()
    }

    /// `Ok` when the device can run kernels; otherwise the reason (feature not built, no
    /// adapter or driver).
    pub fn check(self) -> crate::Result<()> {
        match self {
            Device::Cpu => Ok(()),
            #[cfg(gpu)]
            gpu => crate::gpu::check(gpu),
            #[cfg(not(gpu))]
            other => Err(crate::TensorError::DeviceUnavailable {
                op: "Device::check",
                device: format!("{other} (this build has no GPU support: rebuild with the `wgpu` or `cuda` feature)"),
            }),
        }
    }

    /// Whether this is a GPU device.
    pub fn is_gpu(self) -> bool {
        !matches!(self, Device::Cpu)
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Device::Cpu => "cpu",
            Device::Wgpu => "wgpu",
            Device::Cuda => "cuda",
        })
    }
}
