"""GPU telemetry through NVML: device memory and utilisation, and each launched backend's own share."""
