"""Workers of test_references.py: the same computation under a reference library (DeepSpeed, megatron-core) and
under ours, in the same gloo processes, reported as full tensors / rank lists for the test to compare."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

# Unpacked input (DeepSpeed's DistributedAttention takes [batch, seq, heads, head_dim] or [seq, batch, ...] and
# needs seq % degree == 0): BATCH samples of SEQ tokens each; 4 heads so that degree 4 leaves one head per rank.
BATCH, SEQ, HEADS, HEAD_DIM = 2, 8, 4, 8
HIDDEN = HEADS * HEAD_DIM


class AttentionLayer(nn.Module):
    """qkv projection -> attention over [.., heads, head_dim] by `attend` -> output projection: what both
    libraries' Ulysses wrap, with weights so the test compares their gradients too."""

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(HIDDEN, 3 * HIDDEN)
        self.o = nn.Linear(HIDDEN, HIDDEN)

    def forward(self, x: torch.Tensor, attend) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        q, k, v = (t.unflatten(-1, (HEADS, HEAD_DIM)) for t in self.qkv(x).chunk(3, dim=-1))
        for t in (q, k, v):
            t.retain_grad()  # the q/k/v gradients the exchange's backward delivers to this rank
        return self.o(attend(q, k, v).flatten(-2)), (q, k, v)


def inputs() -> tuple[AttentionLayer, torch.Tensor, torch.Tensor]:
    """The layer, x [BATCH, SEQ, HIDDEN] and the loss weights (loss = sum(out * w)), identical on every rank."""
    torch.manual_seed(0)
    layer = AttentionLayer().double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, SEQ, HIDDEN, generator=g, dtype=torch.float64)
    w = torch.randn(BATCH, SEQ, HIDDEN, generator=g, dtype=torch.float64)
    return layer, x, w


def single_process_reference() -> dict[str, torch.Tensor]:
    """The same layer in one process with plain SDPA per sample (no code of ours or DeepSpeed's)."""
    layer, x, w = inputs()
    x = x.clone().requires_grad_()

    def attend(q, k, v):  # [B, S, H, D]
        return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)

    out, qkv = layer(x, attend)
    (out * w).sum().backward()
    return _result(out, x.grad, [t.grad for t in qkv], layer)


def _result(out, x_grad, qkv_grads, layer) -> dict[str, torch.Tensor]:
    """Full tensors in [BATCH, SEQ, ...] order, plus the projection weights' gradients."""
    q, k, v = qkv_grads
    res = {"out": out, "x.grad": x_grad, "q.grad": q, "k.grad": k, "v.grad": v}
    res.update({f"{name}.grad": p.grad for name, p in layer.named_parameters()})
    return {name: t.detach().clone() for name, t in res.items()}


def _gather(local: torch.Tensor, dim: int, group) -> torch.Tensor:
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, local.detach().contiguous(), group=group)
    return torch.cat(parts, dim=dim)


def _sum_grads(layer: nn.Module, group) -> None:
    # Each rank's weight gradient covers its tokens only: summed over the sequence group it is the full one (what
    # the data x ulysses gradient reduction does in training).
    for p in layer.parameters():
        dist.all_reduce(p.grad, group=group)


@dataclass
class _OneSample:
    cu_seqlens: torch.Tensor
    max_seqlen: int


def deepspeed_ulysses(group, batch_dim_idx: int) -> dict[str, torch.Tensor]:
    """DeepSpeed's DistributedAttention (scatter heads, gather sequence) around our attention function, each rank
    holding its contiguous 1/degree of every sample's sequence."""
    from deepspeed.sequence.layer import DistributedAttention

    from omnitrain.model.attention import attention

    degree, rank = dist.get_world_size(group), dist.get_rank(group)
    layer, x, w = inputs()
    if batch_dim_idx == 1:  # DeepSpeed's sequence-first layout [S, B, ...]
        x, w = x.transpose(0, 1), w.transpose(0, 1)
    seq_dim = 1 - batch_dim_idx
    x = x.clone().requires_grad_()
    mine = slice(rank * SEQ // degree, (rank + 1) * SEQ // degree)
    x_local = x[:, mine] if seq_dim == 1 else x[mine]
    w_local = w[:, mine] if seq_dim == 1 else w[mine]

    class Local(nn.Module):
        def forward(self, q, k, v):  # the whole sequence of heads/degree heads, batch at batch_dim_idx
            if batch_dim_idx == 1:
                q, k, v = (t.transpose(0, 1) for t in (q, k, v))
            one = _OneSample(torch.tensor([0, q.shape[1]], dtype=torch.int32), q.shape[1])
            out = torch.stack([attention(q[b], k[b], v[b], one) for b in range(q.shape[0])])
            return out if batch_dim_idx == 0 else out.transpose(0, 1)

    gather_idx = seq_dim  # DeepSpeed's naming: the dim gathered (sequence) and the one scattered (heads, 2)
    ds_attention = DistributedAttention(Local(), group, scatter_idx=2, gather_idx=gather_idx)
    out, qkv = layer(x_local, lambda q, k, v: ds_attention(q, k, v, batch_dim_idx))
    (out * w_local).sum().backward()
    _sum_grads(layer, group)
    dist.all_reduce(x.grad, group=group)  # each rank filled its slice

    def full(t):  # local [.., S/degree, ..] -> [B, S, ..]
        t = _gather(t, seq_dim, group)
        return t if batch_dim_idx == 0 else t.transpose(0, 1)

    x_grad = x.grad if batch_dim_idx == 0 else x.grad.transpose(0, 1)
    return _result(full(out), x_grad, [full(t.grad) for t in qkv], layer)


def our_ulysses(group) -> dict[str, torch.Tensor]:
    """omnitrain's UlyssesAttention around the same attention function: the BATCH samples packed into one
    sequence (cu_seqlens), each rank holding its contiguous 1/degree of the packed tokens, as in training."""
    from omnitrain.model.attention import AttentionCore
    from omnitrain.trainer.parallel.ulysses import UlyssesAttention, gather_sequence, shard_sequence

    degree, rank = dist.get_world_size(group), dist.get_rank(group)
    layer, x, w = inputs()
    tokens = BATCH * SEQ
    x = x.reshape(tokens, HIDDEN).clone().requires_grad_()
    ctx = _OneSample(torch.arange(0, tokens + 1, SEQ, dtype=torch.int32), SEQ)
    ulysses = UlyssesAttention(AttentionCore(), degree, group)
    out, qkv = layer(shard_sequence(x, degree, rank), lambda q, k, v: ulysses(q, k, v, ctx))
    (out * shard_sequence(w.reshape(tokens, HIDDEN), degree, rank)).sum().backward()
    _sum_grads(layer, group)
    dist.all_reduce(x.grad, group=group)

    def full(t):  # local packed [L/degree, ..] -> [B, S, ..]
        return gather_sequence(t.detach(), tokens, degree, rank, group).unflatten(0, (BATCH, SEQ))

    return _result(full(out), x.grad.unflatten(0, (BATCH, SEQ)), [full(t.grad) for t in qkv], layer)


def ulysses_both(rank: int, world: int, degrees: tuple[int, ...]) -> dict:
    """For each degree: the world cut into consecutive groups of `degree` ranks; each runs DeepSpeed's Ulysses
    (both of its layouts) and ours. Keys (degree, "deepspeed-b0" | "deepspeed-b1" | "omnitrain")."""
    import importlib

    import deepspeed

    warnings.filterwarnings("ignore")
    # On CPU DeepSpeed JIT-compiles (ninja + a C++ compiler, minutes on a loaded machine) a shared-memory kernel
    # for its all-reduce at init; the all-to-all under test never uses it, so the backend starts without it.
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None  # (deepspeed.comm.torch is torch)
    deepspeed.init_distributed(dist_backend="gloo")  # adopts the gloo group run_on_ranks started
    torch.set_num_threads(1)
    results: dict = {}
    for degree in degrees:
        groups = [dist.new_group(list(range(s, s + degree))) for s in range(0, world, degree)]
        group = groups[rank // degree]
        results[degree, "deepspeed-b0"] = deepspeed_ulysses(group, batch_dim_idx=0)
        results[degree, "deepspeed-b1"] = deepspeed_ulysses(group, batch_dim_idx=1)
        results[degree, "omnitrain"] = our_ulysses(group)
    return results


# Megatron's group getters and the ParallelPlan group of ours that holds the same ranks (where one maps; Megatron's
# context parallel is our Ulysses: see test_references.py).
MEGATRON_GROUPS = {
    "tensor": ("get_tensor_model_parallel_group", "tp_group"),
    "pipeline": ("get_pipeline_model_parallel_group", "pp_group"),
    "data": ("get_data_parallel_group", "dp_group"),
    "context": ("get_context_parallel_group", "ulysses_group"),
    "data x context": ("get_data_parallel_group:with_context_parallel", "grad_group"),
}


def _megatron_groups(tp: int, pp: int, cp: int, order: str) -> dict[str, list[int]]:
    from megatron.core import parallel_state

    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        context_parallel_size=cp,
        order=order,
        create_gloo_process_groups=False,  # the default group is gloo already: no second copy of every group
    )
    try:
        out = {}
        for kind, (getter, _) in MEGATRON_GROUPS.items():
            name, _, flag = getter.partition(":")
            group = getattr(parallel_state, name)(**({flag: True} if flag else {}))
            out[kind] = dist.get_process_group_ranks(group)
        return out
    finally:
        parallel_state.destroy_model_parallel()


def _our_groups(tp: int, pp: int, cp: int, world: int) -> dict[str, list[int]]:
    from parallel_workers import build_model

    from omnitrain.trainer.parallel import ParallelLayout, setup_parallel

    layout = ParallelLayout(dp=world // (tp * pp * cp), pp=pp, ulysses=cp, tp=tp, micro_batches=pp)
    plan = setup_parallel(build_model(), layout=layout)
    return {kind: dist.get_process_group_ranks(getattr(plan, field)) for kind, (_, field) in MEGATRON_GROUPS.items()}


def megatron_and_ours(rank: int, world: int, runs: list[tuple[tuple[int, int, int], str]]) -> dict:
    """For each ((tp, pp, cp), order): this rank's groups under Megatron's parallel_state with that rank order,
    keyed like `runs`; and for each (tp, pp, cp) the groups of the plan setup_parallel builds for the same degrees,
    keyed ((tp, pp, cp), "omnitrain")."""
    warnings.filterwarnings("ignore")  # megatron-core warns at import that Transformer Engine and Apex are absent
    out: dict = {}
    for (tp, pp, cp), order in runs:
        out[(tp, pp, cp), order] = _megatron_groups(tp, pp, cp, order)
        if ((tp, pp, cp), "omnitrain") not in out:
            out[(tp, pp, cp), "omnitrain"] = _our_groups(tp, pp, cp, world)
    return out
