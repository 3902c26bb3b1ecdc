"""spec.training.compile: torch.compile per transformer block (regional compilation), dynamic in the token count.

- Regional: every DiTBlock is compiled on its own (`block.compile`), not the whole model. The blocks share one code
  object, so dynamo traces them once and reuses the graphs for every block (compile time of one block, not of the
  depth); the embedder and head, whose shapes follow the batch's mix of token kinds, stay eager.
- Dynamic: a packed micro-batch has a new token count almost every step; `dynamic=True` traces the token dimension
  as a symbol from the first call, so a new length runs the same graphs instead of recompiling.
- The attention core stays eager (`torch.compiler.disable`): its per-sample loop reads cu_seqlens' values (a graph
  break anyway, and a recompile per sample count if traced), flash-attn varlen is an opaque kernel, and Ulysses'
  all-to-all wraps it in place. Compiled are the matmuls, norms, modulation, RoPE and residuals around it.
- With recompute, compile sits inside the checkpoint: run_block's torch.utils.checkpoint calls the compiled block,
  and the backward's recomputation re-runs the same compiled graphs. Recompute "selective" is refused with compile
  (omnitrain.spec.compile_problems): its per-op policy is a dispatch mode over eager ops, which a compiled graph
  fuses away.

Inductor needs a C++ compiler on CPU and Triton on GPU; `compiler_problem` says what is missing, and the trainer
fails with that message (exit code CONFIG) rather than silently training eager at another step time.
"""

from __future__ import annotations

import importlib.util
import os
import shutil

import torch
from torch import nn

CXX_CANDIDATES = ("g++", "c++", "clang++")


def compiler_problem(device_type: str) -> str | None:
    """Why torch.compile's inductor cannot build kernels for `device_type` here, or None when it can."""
    if device_type == "cuda":
        if importlib.util.find_spec("triton") is None:
            return "torch.compile on GPU needs Triton, which is not installed in this image"
        return None
    cxx = os.environ.get("CXX")
    if cxx and shutil.which(cxx) is None:
        return f"torch.compile on CPU needs a C++ compiler: CXX={cxx!r} is not on PATH"
    if not cxx and not any(shutil.which(c) for c in CXX_CANDIDATES):
        return f"torch.compile on CPU needs a C++ compiler ({', '.join(CXX_CANDIDATES)}); none is on PATH"
    return None


def keep_eager(module: nn.Module) -> None:
    """Run this module's forward outside any compiled region (a graph break at its call)."""
    module.forward = torch.compiler.disable(module.forward)  # type: ignore[method-assign]


def compile_blocks(blocks: list[nn.Module]) -> None:
    """Compile each block in place (its parameters, names and state dict unchanged), attention cores eager."""
    for block in blocks:
        core = getattr(getattr(block, "attn", None), "core", None)
        if core is not None:
            keep_eager(core)
        block.compile(dynamic=True)


__all__ = ["compile_blocks", "compiler_problem", "keep_eager"]
