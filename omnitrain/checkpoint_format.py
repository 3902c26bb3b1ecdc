"""The shard file format: torch.distributed.checkpoint (DCP) files that any parallel layout can read.

A step folder holds one file per rank and DCP's global index:

    rank-<R>.distcp   every item this rank holds, each one `torch.save`d back to back as DCP's FileSystemWriter
                      writes them (tensors: this rank's slice of the global tensor; other values: one item per
                      tensor-free subtree), then a trailer (pickled skeleton and item list, its length, MAGIC) that
                      lets the rank read its own file alone, without the index
    .metadata         DCP's Metadata: each key's global shape and chunks (offsets, sizes) and where every chunk
                      lies (file, byte offset, length); replicated chunks are listed once, at the lowest rank

So `torch.distributed.checkpoint.load` / `format_utils.dcp_to_torch_save` read a folder without omnitrain, and a
rank of another layout reads the chunks that overlap its own slices (`read_regions`). Unlike DCP's own save, every
rank's file keeps everything that rank holds, replicated items included: the node-local tier and the peer copies
restore a same-layout rank from its own file, with no read from another node.

Pure file format: no process group, no tiers (omnitrain.trainer.checkpoint decides which copy to read).
"""

from __future__ import annotations

import io
import pickle
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from omnitrain.checkpoint_paths import legacy_shard_file_name

MAGIC = b"OMNIDCP1"
_TRAILER = struct.Struct("<Q")
METADATA_NAME = ".metadata"  # DCP's name for its global index
FORMAT_DCP = "dcp"
FORMAT_TORCH_SAVE = "torch-save"  # format 1: one torch.save of the rank's whole state (still read, same layout only)


class ShardFormatError(ValueError):
    """A shard file or index that does not parse, or a checkpoint that does not hold what a rank asks of it."""


@dataclass(frozen=True)
class TensorRef:
    """Stands for the index-th tensor of a flattened state, with where its slice lies in the global tensor
    (global_shape None: the tensor is whole, not a slice)."""

    index: int
    global_shape: tuple[int, ...] | None = None
    offsets: tuple[int, ...] | None = None


def slice_of(tensor: torch.Tensor) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(global shape, offsets of this rank's slice) of a DTensor's local piece; a plain tensor is its whole self."""
    if hasattr(tensor, "device_mesh") and hasattr(tensor, "placements"):
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

        _, offsets = compute_local_shape_and_global_offset(tensor.shape, tensor.device_mesh, tensor.placements)
        return tuple(tensor.shape), tuple(int(o) for o in offsets)
    return tuple(tensor.shape), (0,) * tensor.dim()


@dataclass(frozen=True)
class ShardItem:
    """One item of a shard file: a tensor slice or a pickled value, at [byte_offset, byte_offset + length)."""

    key: str  # DCP's flattened key: the path joined with dots
    path: tuple  # where the value sits in the nested state, as DCP's planner_data spells it
    kind: str  # "tensor" or "bytes"
    byte_offset: int
    length: int
    ref: int = -1  # tensors: TensorRef.index in the file's skeleton
    dtype: str = ""
    global_shape: tuple[int, ...] = ()
    offsets: tuple[int, ...] = ()
    sizes: tuple[int, ...] = ()


def has_tensor(node: Any) -> bool:
    if isinstance(node, TensorRef):
        return True
    if isinstance(node, dict):
        return any(has_tensor(v) for v in node.values())
    if isinstance(node, (list, tuple)):
        return any(has_tensor(v) for v in node)
    return False


def leaves(skeleton: Any, path: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    """(path, leaf) of a skeleton: each TensorRef, and each tensor-free subtree as one value (DCP's BYTE_IO)."""
    if isinstance(skeleton, dict) and skeleton and has_tensor(skeleton):
        for k, v in skeleton.items():
            yield from leaves(v, (*path, k))
    elif isinstance(skeleton, (list, tuple)) and has_tensor(skeleton):
        for i, v in enumerate(skeleton):
            yield from leaves(v, (*path, i))
    else:
        yield path, skeleton


def key_of(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def _dcp_path(skeleton: Any, path: tuple) -> tuple:
    """The path as DCP's planner_data spells it: dict keys as strings (an optimizer's numbered state stays a dict
    when DCP rebuilds the nesting), list indices as ints."""
    out: list = []
    node = skeleton
    for part in path:
        out.append(str(part) if isinstance(node, dict) else part)
        node = node[part]
    return tuple(out)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


class _Counted:
    """A write-only stream that counts what passes: each item's offset and length in the file."""

    def __init__(self, write: Callable[[Any], Any]):
        self._write, self.size = write, 0

    def write(self, data) -> int:
        n = memoryview(data).nbytes
        self._write(data)
        self.size += n
        return n

    def flush(self) -> None:
        pass


def _compact(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor over a storage of its own size: torch.save writes a view's whole storage (a staging view would
    write the whole staging buffer)."""
    tensor = tensor.detach().cpu()
    whole = tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()
    return tensor if whole and tensor.is_contiguous() and tensor.storage_offset() == 0 else tensor.clone()


def write_shard(write: Callable[[Any], Any], skeleton: Any, tensors: list[torch.Tensor]) -> list[ShardItem]:
    """Write one rank's items and the trailer through `write`; returns the items (for the global index)."""
    items: list[ShardItem] = []
    out = _Counted(write)
    for path, leaf in leaves(skeleton):
        start = out.size
        if isinstance(leaf, TensorRef):
            tensor = tensors[leaf.index]
            torch.save(_compact(tensor), out)  # streamed: no second copy of the item in memory
            global_shape = leaf.global_shape if leaf.global_shape is not None else tuple(tensor.shape)
            offsets = leaf.offsets if leaf.offsets is not None else (0,) * tensor.dim()
            item = ShardItem(
                key_of(path),
                _dcp_path(skeleton, path),
                "tensor",
                start,
                out.size - start,
                ref=leaf.index,
                dtype=_dtype_name(tensor.dtype),
                global_shape=tuple(global_shape),
                offsets=tuple(offsets),
                sizes=tuple(tensor.shape),
            )
        else:
            torch.save(leaf, out)
            item = ShardItem(key_of(path), _dcp_path(skeleton, path), "bytes", start, out.size - start)
        items.append(item)
    trailer = pickle.dumps({"skeleton": skeleton, "items": items}, protocol=pickle.HIGHEST_PROTOCOL)
    out.write(trailer)
    out.write(_TRAILER.pack(len(trailer)) + MAGIC)
    return items


def is_shard(data: bytes | memoryview) -> bool:
    return bytes(data[-len(MAGIC) :]) == MAGIC


def _trailer(data: bytes | memoryview) -> dict:
    if not is_shard(data):
        raise ShardFormatError("not an omnitrain DCP shard file (no trailer)")
    end = len(data) - len(MAGIC) - _TRAILER.size
    (length,) = _TRAILER.unpack(bytes(data[end : end + _TRAILER.size]))
    return pickle.loads(bytes(data[end - length : end]))


def parse_shard(data: bytes | memoryview) -> Any:
    """One rank's whole state from its own file's bytes (as it was saved: nested, tensors as local slices)."""
    trailer = _trailer(data)
    view = memoryview(data)
    tensors: dict[int, torch.Tensor] = {}
    for item in trailer["items"]:
        if item.kind == "tensor":
            chunk = io.BytesIO(view[item.byte_offset : item.byte_offset + item.length])
            tensors[item.ref] = torch.load(chunk, map_location="cpu", weights_only=True)
    return _fill(trailer["skeleton"], tensors)


def _fill(node: Any, tensors: dict[int, torch.Tensor]) -> Any:
    if isinstance(node, TensorRef):
        return tensors[node.index]
    if isinstance(node, dict):
        return {k: _fill(v, tensors) for k, v in node.items()}
    if isinstance(node, list):
        return [_fill(v, tensors) for v in node]
    if isinstance(node, tuple):
        return tuple(_fill(v, tensors) for v in node)
    return node


def load_shard_bytes(data: bytes | memoryview) -> Any:
    """A rank's state from its file's bytes in either format (format 1, a plain torch.save, still loads)."""
    if is_shard(data):
        return parse_shard(data)
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)


# ---- the global index (DCP's .metadata) -------------------------------------------------------------------------
def build_metadata(files: list[tuple[str, list[ShardItem]]]):
    """DCP's Metadata for the shard files (name, items) in rank order: each chunk once, at its lowest rank."""
    from torch.distributed.checkpoint.filesystem import CURRENT_DCP_VERSION, _StorageInfo
    from torch.distributed.checkpoint.metadata import (
        BytesStorageMetadata,
        ChunkStorageMetadata,
        Metadata,
        MetadataIndex,
        TensorProperties,
        TensorStorageMetadata,
    )

    described: dict[str, Any] = {}
    storage: dict = {}
    planner: dict[str, tuple] = {}
    for name, items in files:
        for item in items:
            planner.setdefault(item.key, item.path)
            if item.kind == "bytes":
                described.setdefault(item.key, BytesStorageMetadata())
                storage.setdefault(MetadataIndex(item.key), _StorageInfo(name, item.byte_offset, item.length))
                continue
            md = described.setdefault(
                item.key,
                TensorStorageMetadata(
                    TensorProperties(dtype=getattr(torch, item.dtype)), torch.Size(item.global_shape), []
                ),
            )
            if md.size != torch.Size(item.global_shape):
                raise ShardFormatError(
                    f"{item.key}: ranks disagree on its global shape ({md.size} vs {item.global_shape})"
                )
            index = MetadataIndex(item.key, item.offsets)
            if index in storage or 0 in item.sizes:
                continue  # a replica of a chunk already listed, or an empty slice (an uneven FSDP shard)
            md.chunks.append(ChunkStorageMetadata(torch.Size(item.offsets), torch.Size(item.sizes)))
            storage[index] = _StorageInfo(name, item.byte_offset, item.length)
    return Metadata(
        state_dict_metadata=described, planner_data=planner, storage_data=storage, version=CURRENT_DCP_VERSION
    )


def metadata_bytes(metadata) -> bytes:
    return pickle.dumps(metadata, protocol=pickle.HIGHEST_PROTOCOL)


def parse_metadata(data: bytes):
    try:
        return pickle.loads(data)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a torn or foreign file
        raise ShardFormatError(f"unreadable {METADATA_NAME}: {type(e).__name__}: {e}") from e


@dataclass(frozen=True)
class Wanted:
    """A slice a rank needs of a global tensor: its dtype, the global shape, the slice's offsets and sizes."""

    dtype: torch.dtype
    global_shape: tuple[int, ...]
    offsets: tuple[int, ...]
    sizes: tuple[int, ...]


def read_regions(
    metadata, wanted: dict[str, Wanted], read: Callable[[str, int, int], bytes]
) -> dict[str, torch.Tensor]:
    """Assemble each wanted slice from the saved chunks that overlap it (DCP's resharding read plan);
    `read(file, offset, length)` gives a chunk's bytes. Raises ShardFormatError naming a key the checkpoint lacks
    or whose global shape differs."""
    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, TensorStorageMetadata
    from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

    out: dict[str, torch.Tensor] = {}
    cache: dict = {}  # the last chunk read: neighbouring slices often share one
    for key, want in wanted.items():
        md = metadata.state_dict_metadata.get(key)
        if not isinstance(md, TensorStorageMetadata):
            raise ShardFormatError(f"the checkpoint has no tensor {key!r}")
        if tuple(md.size) != tuple(want.global_shape):
            raise ShardFormatError(
                f"{key}: the checkpoint's global shape {tuple(md.size)} differs from this run's {want.global_shape}"
            )
        target = torch.empty(want.sizes, dtype=want.dtype)
        covered = 0
        local = ChunkStorageMetadata(torch.Size(want.offsets), torch.Size(want.sizes))
        for req in create_read_items_for_chunk_list(key, md, [local]):
            info = metadata.storage_data[req.storage_index]
            if req.storage_index not in cache:
                raw = read(info.relative_path, info.offset, info.length)
                cache = {req.storage_index: torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)}
            saved = cache[req.storage_index]
            src, dst = saved, target
            for dim, (s, d, n) in enumerate(zip(req.storage_offsets, req.dest_offsets, req.lengths, strict=True)):
                src, dst = src.narrow(dim, s, n), dst.narrow(dim, d, n)
            dst.copy_(src)
            covered += dst.numel()
        if covered != target.numel():
            raise ShardFormatError(
                f"{key}: the checkpoint's chunks cover {covered} of the {target.numel()} values needed"
            )
        out[key] = target
    return out


def load_consolidated(folder: str | Path, keys: set[str] | None = None) -> dict:
    """The whole (unsharded) state of a step folder, nested as saved, read by DCP's own loader (no process group).
    `keys`: top-level prefixes to read (e.g. {"train.model"}); None reads everything."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    # What format_utils.dcp_to_torch_save runs, kept in memory; no_dist: callable inside a process group too.
    state: dict = {}
    _load_state_dict(
        state, storage_reader=FileSystemReader(str(folder)), planner=_EmptyStateDictLoadPlanner(keys=keys), no_dist=True
    )
    return state


def read_model_state(step_folder: str | Path) -> dict | None:
    """The whole model of a checkpoint step folder, unsharded (state['train']['model']), whatever layout saved
    it: through DCP's index when the folder has one (format 2), else from rank 0's format-1 file (which holds the
    whole model only when pipeline and tensor degree were 1 and data parallelism replicated). None: the folder
    holds neither."""
    folder = Path(step_folder)
    if (folder / METADATA_NAME).is_file():
        model = load_consolidated(folder, keys={"train.model"}).get("train", {}).get("model")
        return model if isinstance(model, dict) else None
    legacy = folder / legacy_shard_file_name(0)
    if not legacy.is_file():
        return None
    data = torch.load(legacy, map_location="cpu", weights_only=False)
    model = (data.get("train") or {}).get("model") if isinstance(data, dict) else None
    return model if isinstance(model, dict) else None
