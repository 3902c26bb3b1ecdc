"""Activation offload for one rank's pipeline schedule, with its own accounting of saved bytes.

A chunk's forward runs under torch.autograd.graph.saved_tensors_hooks: every tensor autograd saves is registered
in the (chunk, micro-batch) group, once however often it is saved. When policy.offload_plan says the group goes to
the host, each tensor's copy out starts as it is saved; the device copies count as held until the forward ends.
The copy back is issued at the action the plan names (before the backward needs it); unpacking waits only for
that tensor's copy. After the backward, the group is dropped.

The copy path is picked by the tensor's device type: on CUDA a side stream, pinned host buffers and events (the
caching allocator keeps a device buffer until the side stream's copy of it is done, via record_stream); elsewhere
(CPU) a plain copy into a separate buffer, which exercises the same bookkeeping and costs a real memcpy.

Kept on the device (counted as held, never offloaded): tensors that are leaves requiring grad but not parameters
(the activation received from the previous stage: the executor holds it anyway) and tensor subclasses (DTensor
under tensor parallelism). Parameters (also FSDP's unsharded ones, and views of them such as weight.t()) are not
activations: neither offloaded nor counted.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from omnitrain.trainer.memory.policy import OffloadDecision, offload_plan

_active: ActivationMemory | None = None  # the memory whose forward is running (selective recompute reports to it)


@dataclass
class MemoryAccount:
    """Bytes of saved activations on this rank (one pipeline stage): now, peak since reset, and traffic."""

    device: int = 0
    host: int = 0
    peak_device: int = 0
    peak_host: int = 0
    offloaded: int = 0  # bytes copied device -> host
    prefetched: int = 0  # bytes copied host -> device ahead of their backward
    late_reloads: int = 0  # tensors the backward needed before their prefetch: a wait the plan should avoid

    def move(self, device: int = 0, host: int = 0) -> None:
        self.device += device
        self.host += host
        self.peak_device = max(self.peak_device, self.device)
        self.peak_host = max(self.peak_host, self.host)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class _Entry:
    __slots__ = ("tensor", "host", "nbytes", "offloadable", "event")

    def __init__(self, tensor: torch.Tensor, nbytes: int, offloadable: bool):
        self.tensor: torch.Tensor | None = tensor
        self.host: torch.Tensor | None = None
        self.nbytes = nbytes
        self.offloadable = offloadable
        self.event = None


@dataclass
class _Group:
    decision: OffloadDecision | None
    entries: list[_Entry] = field(default_factory=list)
    index: dict[tuple, int] = field(default_factory=dict)
    on_host: bool = False

    @property
    def offload(self) -> bool:
        return self.decision is not None and self.decision.offload


def _storage_key(t: torch.Tensor) -> tuple:
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)


def _is_parameter(t: torch.Tensor) -> bool:
    base = t._base if t._base is not None else t
    return isinstance(base, nn.Parameter)


def _local_nbytes(t: torch.Tensor) -> int:
    local = getattr(t, "_local_tensor", t)
    return local.numel() * local.element_size()


class _Copier:
    """Device <-> host copies: asynchronous on CUDA (side stream, pinned memory, an event per tensor); plain copies
    elsewhere."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if self.cuda else None

    def to_host(self, entry: _Entry) -> None:
        t = entry.tensor
        if not self.cuda:
            entry.host = torch.empty(t.shape, dtype=t.dtype).copy_(t)
            return
        self.stream.wait_stream(torch.cuda.current_stream(t.device))
        with torch.cuda.stream(self.stream):
            entry.host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            entry.host.copy_(t, non_blocking=True)
            t.record_stream(self.stream)  # the allocator keeps t's memory until this copy is done
            entry.event = self.stream.record_event()

    def to_device(self, entry: _Entry, device: torch.device) -> None:
        host = entry.host
        if not self.cuda:
            entry.tensor = host.clone()
            return
        current = torch.cuda.current_stream(device)
        out = torch.empty(host.shape, dtype=host.dtype, device=device)  # allocated on the compute stream
        self.stream.wait_stream(current)
        with torch.cuda.stream(self.stream):
            out.copy_(host, non_blocking=True)
            entry.event = self.stream.record_event()
        out.record_stream(self.stream)
        entry.tensor = out

    def wait(self, entry: _Entry) -> None:
        if entry.event is not None:
            torch.cuda.current_stream(entry.tensor.device).wait_event(entry.event)
            entry.event = None


class ActivationMemory:
    """One rank's saved activations over a step. The executor calls, per action of the rank's schedule:
    `with forward(chunk, mb): ...`, then `before_backward(chunk, mb)` / `after_backward(chunk, mb)` around the
    backward; `start_step(actions)` first. Actions must come in the schedule's order (checked)."""

    def __init__(self, offload: str = "none", device: torch.device | str = "cpu", prefetch_ahead: int = 0):
        self.mode = offload
        self.device = torch.device(device)
        self.prefetch_ahead = prefetch_ahead
        self.account = MemoryAccount()
        self._copier = _Copier(self.device)
        self._actions: list = []
        self._plan: dict[tuple[int, int], OffloadDecision] = {}
        self._position = 0
        self._groups: dict[tuple[int, int], _Group] = {}
        self._running: _Group | None = None

    # ---- schedule ---------------------------------------------------------------------------------------------
    def start_step(self, actions: Sequence) -> None:
        if self._groups:
            raise RuntimeError(f"saved activations of {sorted(self._groups)} were never released by a backward")
        self._actions = list(actions)
        self._plan = offload_plan(self._actions, self.mode, self.prefetch_ahead)
        self._position = 0
        self.account = MemoryAccount()

    def _advance(self, kind: str, chunk: int, micro_batch: int) -> None:
        if self._position >= len(self._actions):
            raise RuntimeError(f"{kind}{chunk}.{micro_batch} runs past the schedule given to start_step")
        want = self._actions[self._position]
        if (want.kind, want.chunk, want.micro_batch) != (kind, chunk, micro_batch):
            raise RuntimeError(f"the executor ran {kind}{chunk}.{micro_batch} where the schedule has {want}")
        for key, decision in self._plan.items():
            if decision.offload and decision.prefetch_at == self._position and key in self._groups:
                self._prefetch(self._groups[key])
        self._position += 1

    # ---- forward ----------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def forward(self, chunk: int, micro_batch: int) -> Iterator[None]:
        global _active
        self._advance("F", chunk, micro_batch)
        group = self._groups[(chunk, micro_batch)] = _Group(self._plan.get((chunk, micro_batch)))
        previous, _active, self._running = _active, self, group
        try:
            with torch.autograd.graph.saved_tensors_hooks(lambda t: self._pack(group, t), self._unpack):
                yield
        finally:
            _active, self._running = previous, None
        if group.offload:
            self._finish_offload(group)

    def note_kept(self, t: torch.Tensor) -> None:
        """A tensor kept for the backward outside autograd's saved tensors (selective recompute's cache): counted
        as held on the device with the running forward's group; not offloadable."""
        if self._running is not None and t.device == self.device:
            self._register(self._running, t, offloadable=False)

    def _register(self, group: _Group, t: torch.Tensor, offloadable: bool) -> tuple | torch.Tensor:
        if type(t) is not torch.Tensor and not isinstance(t, nn.Parameter):
            offloadable = False  # DTensor & co: kept as they are
            key = ("object", id(t))
        else:
            key = _storage_key(t)
        i = group.index.get(key)
        if i is None:
            i = group.index[key] = len(group.entries)
            entry = _Entry(t, _local_nbytes(t), offloadable)
            group.entries.append(entry)
            self.account.move(device=entry.nbytes)
            if offloadable and group.offload:
                self._copier.to_host(entry)
        return (group, i)

    def _pack(self, group: _Group, t: torch.Tensor):
        if t.device != self.device or _is_parameter(t):
            return t
        keep = t.is_leaf and t.requires_grad
        return self._register(group, t, offloadable=not keep)

    def _unpack(self, packed):
        if isinstance(packed, torch.Tensor):
            return packed
        group, i = packed
        entry = group.entries[i]
        if entry.tensor is None:  # the plan did not prefetch it in time
            self.account.late_reloads += 1
            self._reload(entry)
        self._copier.wait(entry)
        return entry.tensor

    def _finish_offload(self, group: _Group) -> None:
        for entry in group.entries:
            if entry.offloadable:
                entry.tensor = None  # on CUDA record_stream keeps the memory until the copy is done
                self.account.move(device=-entry.nbytes, host=entry.nbytes)
                self.account.offloaded += entry.nbytes
        group.on_host = True

    # ---- backward ---------------------------------------------------------------------------------------------
    def _reload(self, entry: _Entry) -> None:
        self._copier.to_device(entry, self.device)
        entry.host = None
        self.account.move(device=entry.nbytes, host=-entry.nbytes)

    def _prefetch(self, group: _Group) -> None:
        if not group.on_host:
            return
        # The backward unpacks roughly in reverse order of saving: issue the copies in that order.
        for entry in reversed(group.entries):
            if entry.offloadable and entry.tensor is None:
                self._reload(entry)
                self.account.prefetched += entry.nbytes
        group.on_host = False

    def before_backward(self, chunk: int, micro_batch: int) -> None:
        self._advance("B", chunk, micro_batch)

    def after_backward(self, chunk: int, micro_batch: int) -> None:
        group = self._groups.pop((chunk, micro_batch))
        for entry in group.entries:
            if entry.tensor is not None:
                self.account.move(device=-entry.nbytes)
            elif entry.host is not None:
                self.account.move(host=-entry.nbytes)
        group.entries.clear()


def active() -> ActivationMemory | None:
    return _active
