//! Where a tensor's data lives. Only the host exists today; the GPU devices arrive behind cargo
//! features without changing any public signature, because every constructor and transfer
//! already takes a [`Device`].

use std::fmt;

/// A place where tensors live and kernels run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Device {
    /// The host CPU: ndarray storage, kernels parallelised with rayon.
    #[default]
    Cpu,
}

impl Device {
    /// Parses a device name as the command line spells it (`cpu`).
    pub fn parse(name: &str) -> crate::Result<Device> {
        match name.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(Device::Cpu),
            other => Err(crate::TensorError::DeviceUnavailable { op: "Device::parse", device: other.to_string() }),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
        }
    }
}
