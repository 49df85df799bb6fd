"""Field monitoring: reference profiles, drift on the device, and data capture (docs/monitoring.md)."""
