"""GPU hardware-fault evidence for the watchdog: critical XID events and new uncorrected ECC errors via NVML.

A clean no-op where there is no NVML library, no driver or no GPU (CPU machines, the local cluster): `available` is
False and `check()` returns None. Any NVML failure during a check is "no evidence", never a fault.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

# XIDs that mean the GPU or its links need a human (NVIDIA's XID catalogue): double-bit ECC (48), row-remap
# failure (63, 64), NVLink error (74), fell off the bus (79), uncontained/contained ECC (94, 95).
CRITICAL_XIDS = frozenset({48, 63, 64, 74, 79, 92, 94, 95})


@dataclass(frozen=True)
class HardwareFault:
    gpu: int
    kind: str  # "xid" or "ecc"
    detail: str

    def evidence(self) -> dict:
        return {"gpu": self.gpu, "kind": self.kind, "detail": self.detail}


def new_ecc_errors(baseline: dict[int, int], current: dict[int, int]) -> list[int]:
    """GPUs whose volatile uncorrected ECC count grew since the watchdog started (older errors are not ours)."""
    return sorted(i for i, n in current.items() if n > baseline.get(i, n))


class GpuHealth:
    def __init__(self) -> None:
        self._nvml: Any = None  # pynvml, loaded lazily: it is optional and absent on CPU machines
        self._handles: list = []
        self._events = None
        self._ecc_baseline: dict[int, int] = {}
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            self._nvml = pynvml
        except Exception as exc:  # no library, no driver, no device
            log.debug("NVML not available, GPU health checks off: %s", exc)
            return
        try:
            self._events = pynvml.nvmlEventSetCreate()
            for handle in self._handles:
                pynvml.nvmlDeviceRegisterEvents(handle, pynvml.nvmlEventTypeXidCriticalError, self._events)
        except Exception as exc:  # not supported on some boards/containers: ECC counts still work
            log.debug("XID events not available: %s", exc)
            self._events = None
        self._ecc_baseline = self._ecc_counts()

    @property
    def available(self) -> bool:
        return self._nvml is not None and bool(self._handles)

    def _ecc_counts(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        nv = self._nvml
        for i, handle in enumerate(self._handles):
            try:
                counts[i] = int(
                    nv.nvmlDeviceGetTotalEccErrors(handle, nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nv.NVML_VOLATILE_ECC)
                )
            except Exception:
                continue
        return counts

    def _index_of(self, handle) -> int:
        for i, h in enumerate(self._handles):
            if h == handle:
                return i
        return -1

    def check(self) -> HardwareFault | None:
        if not self.available:
            return None
        nv = self._nvml
        if self._events is not None:
            try:
                data = nv.nvmlEventSetWait_v2(self._events, 0)
                xid = int(data.eventData)
                if xid in CRITICAL_XIDS:
                    return HardwareFault(self._index_of(data.device), "xid", f"critical XID {xid}")
            except Exception:  # NVML_ERROR_TIMEOUT: no event pending
                pass
        grown = new_ecc_errors(self._ecc_baseline, self._ecc_counts())
        if grown:
            return HardwareFault(grown[0], "ecc", "new uncorrected ECC errors")
        return None

    def close(self) -> None:
        if self._nvml is not None:
            try:
                if self._events is not None:
                    self._nvml.nvmlEventSetFree(self._events)
                self._nvml.nvmlShutdown()
            except Exception:
                pass
            self._nvml = None
