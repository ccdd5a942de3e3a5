//! Device selection: CPU always, CUDA and Metal when built with the `cuda` / `metal` features.

use crate::{ModelError, Result};
use candle_core::Device;
use std::str::FromStr;

/// Which device to run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// The first accelerator compiled in and present, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// CUDA device `n` (needs the `cuda` feature).
    Cuda(usize),
    /// Metal device `n` (needs the `metal` feature).
    Metal(usize),
}

impl FromStr for DeviceChoice {
    type Err = ModelError;
    /// Parses `auto`, `cpu`, `cuda`, `cuda:N`, `metal`, `metal:N`.
    fn from_str(s: &str) -> Result<Self> {
        let (kind, idx) = match s.split_once(':') {
            Some((k, i)) => (
                k,
                i.parse::<usize>()
                    .map_err(|_| ModelError::Device(format!("bad device index in `{s}`")))?,
            ),
            None => (s, 0),
        };
        match kind {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(idx)),
            "metal" => Ok(DeviceChoice::Metal(idx)),
            _ => Err(ModelError::Device(format!(
                "unknown device `{s}`; use auto, cpu, cuda[:N] or metal[:N]"
            ))),
        }
    }
}

impl DeviceChoice {
    /// Opens the device.
    ///
    /// ```
    /// use specula_models::DeviceChoice;
    /// let dev = DeviceChoice::Cpu.open().unwrap();
    /// assert!(dev.is_cpu());
    /// ```
    pub fn open(self) -> Result<Device> {
        let err = |e: candle_core::Error| ModelError::Device(e.to_string());
        match self {
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Cuda(i) => {
                if !candle_core::utils::cuda_is_available() {
                    return Err(ModelError::Device(
                        "CUDA requested but not available; build with `--features cuda` on a machine with a CUDA GPU".into(),
                    ));
                }
                Device::new_cuda(i).map_err(err)
            }
            DeviceChoice::Metal(i) => {
                if !candle_core::utils::metal_is_available() {
                    return Err(ModelError::Device(
                        "Metal requested but not available; build with `--features metal` on macOS"
                            .into(),
                    ));
                }
                Device::new_metal(i).map_err(err)
            }
            DeviceChoice::Auto => {
                if candle_core::utils::cuda_is_available() {
                    Device::new_cuda(0).map_err(err)
                } else if candle_core::utils::metal_is_available() {
                    Device::new_metal(0).map_err(err)
                } else {
                    Ok(Device::Cpu)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        assert_eq!("cpu".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cpu);
        assert_eq!(
            "cuda:1".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Cuda(1)
        );
        assert_eq!(
            "metal".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Metal(0)
        );
        assert!("tpu".parse::<DeviceChoice>().is_err());
        assert!("cuda:x".parse::<DeviceChoice>().is_err());
    }

    #[test]
    fn unavailable_accelerator_is_an_error_not_a_panic() {
        if !candle_core::utils::cuda_is_available() {
            assert!(DeviceChoice::Cuda(0).open().is_err());
        }
        assert!(DeviceChoice::Auto.open().is_ok());
    }
}
