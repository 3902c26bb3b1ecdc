"""Per-node GPU telemetry through NVML (nvidia-ml-py), read by each pod's local rank 0.

Everything here is best effort: without the library, without a driver (CPU machines, the local cluster) or for a
query a GPU does not support, a reading is simply absent. Telemetry must never take training down.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass
class GpuReading:
    """One GPU at one moment; None where NVML could not tell."""

    index: int
    name: str
    utilization: float | None = None  # 0..1, fraction of time a kernel ran
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    power_watts: float | None = None
    temperature_celsius: float | None = None
    ecc_uncorrected_errors: int | None = None  # volatile (since driver load) uncorrected ECC errors
    extra: dict = field(default_factory=dict)


class GpuTelemetry:
    """Reads all GPUs of this node. `available` is False (and `read()` returns []) when NVML is not usable."""

    def __init__(self) -> None:
        self._nvml = None
        self._handles: list = []
        try:
            import pynvml  # nvidia-ml-py

            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            self._nvml = pynvml
        except Exception as exc:  # ImportError, NVMLError_LibraryNotFound, NVMLError_DriverNotLoaded, ...
            log.debug("NVML not available, GPU telemetry off: %s", exc)

    @property
    def available(self) -> bool:
        return self._nvml is not None and bool(self._handles)

    def device_names(self) -> list[str]:
        return [self._call(self._nvml.nvmlDeviceGetName, h) or "" for h in self._handles] if self.available else []

    def _call(self, fn, *args):
        try:
            value = fn(*args)
        except Exception:  # NVMLError_NotSupported and friends: this reading is absent
            return None
        return value.decode() if isinstance(value, bytes) else value

    def read(self) -> list[GpuReading]:
        if not self.available:
            return []
        nv = self._nvml
        readings = []
        for index, handle in enumerate(self._handles):
            reading = GpuReading(index=index, name=self._call(nv.nvmlDeviceGetName, handle) or "")
            util = self._call(nv.nvmlDeviceGetUtilizationRates, handle)
            if util is not None:
                reading.utilization = util.gpu / 100.0
            mem = self._call(nv.nvmlDeviceGetMemoryInfo, handle)
            if mem is not None:
                reading.memory_used_bytes, reading.memory_total_bytes = int(mem.used), int(mem.total)
            power_mw = self._call(nv.nvmlDeviceGetPowerUsage, handle)
            if power_mw is not None:
                reading.power_watts = power_mw / 1000.0
            temp = self._call(nv.nvmlDeviceGetTemperature, handle, nv.NVML_TEMPERATURE_GPU)
            if temp is not None:
                reading.temperature_celsius = float(temp)
            ecc = self._call(
                nv.nvmlDeviceGetTotalEccErrors, handle, nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nv.NVML_VOLATILE_ECC
            )
            if ecc is not None:
                reading.ecc_uncorrected_errors = int(ecc)
            readings.append(reading)
        return readings

    def close(self) -> None:
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass
            self._nvml = None


__all__ = ["GpuReading", "GpuTelemetry"]
