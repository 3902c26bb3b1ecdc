"""Block-diagonal (per-sample) attention over a packed token sequence: the one attention function of the model.

Two rules, chosen by the model through the context it passes (`ctx.is_condition`, docs/contracts.md):
- full (no `is_condition`): every token attends to every token of its sample;
- condition-causal (`is_condition`, a per-token bool over the whole packed sequence): a condition token attends
  only to its sample's condition tokens, a video token to the whole sample. `condition_may_attend` is that rule,
  written once: every backend below, the serving cache (omnitrain/model/condcache.py) and the tests use it.

Backends, selected per call by capability (never assumed):
- "flash": flash_attn_varlen_func, when flash-attn is importable, the tensors are on CUDA and fp16/bf16. Under the
  condition-causal rule: one varlen call with no mask over gathered tokens, separate query and key boundaries (a
  sample's condition queries with its condition keys, its video queries with the whole sample).
- "flex": GPU without flash-attn, sequences longer than FLEX_MIN_TOKENS, and only with OMNITRAIN_FLEX_ATTENTION=1
  until a GPU run has measured it (none was lent yet): torch's FlexAttention (compiled on CUDA)
  with a block mask built from cu_seqlens (document-id mask_mod, and the condition rule when the context has one):
  blocks that cross samples are skipped, not computed and thrown away, and the mask is (L/128)^2 blocks instead of
  L^2 bytes. On CPU (only when forced) flex runs eagerly and forward only: torch has no CPU backward for it, so
  with gradients the same mask rule runs densely.
- "sdpa_mask": GPU without flash-attn, short sequences (or no FlexAttention): PyTorch SDPA over the whole packed
  sequence with a block-diagonal boolean mask (one kernel call instead of one per sample; the mask costs L^2 bytes,
  so it is used up to MASK_MAX_TOKENS).
- "sdpa_loop": CPU (and long GPU sequences without FlexAttention): PyTorch SDPA once per sample; no wasted
  cross-sample scores. Condition-causal: once per sample and kind of query for long samples (no condition-to-video
  scores), one masked call for short ones (SPLIT_MIN_TOKENS).
- "math": explicit matmul + softmax per sample; the numerical reference, and countable by FlopCounterMode.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import importlib.util
import os
import warnings
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

MASK_MAX_TOKENS = 8192
# Below this many tokens a packed sequence is a handful of 128-token blocks: the block mask skips little, and one
# dense masked SDPA call (mask L^2 bytes = 1 MiB here) costs less than building the block mask and launching the
# compiled flex kernel. Above it the cross-sample blocks flex skips grow with L^2 while the mask stays small.
# A judgement, not a GPU measurement yet (docs/design-decisions.md).
FLEX_MIN_TOKENS = 1024
BACKENDS = ("flash", "flex", "sdpa_mask", "sdpa_loop", "math")
_forced: str | None = None


def flash_available() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


@functools.cache
def flex_available() -> bool:
    """FlexAttention's public API (torch >= 2.5; the names used here exist in 2.11 and 2.13)."""
    try:
        from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


# Flex's CUDA path (compiled flex_attention and create_block_mask) has not run on a GPU yet (no machine was lent):
# until the GPU kit has measured it, automatic selection uses it only when asked for. force_backend("flex") and
# this variable are the two ways in.
FLEX_OPT_IN_ENV = "OMNITRAIN_FLEX_ATTENTION"


def flex_opted_in() -> bool:
    return os.environ.get(FLEX_OPT_IN_ENV) == "1" and flex_available()


def choose_backend(*, cuda: bool, half: bool, tokens: int, flash: bool, flex: bool) -> str:
    """The capability rule, pure: what the device, dtype and installed kernels allow for a sequence this long."""
    if not cuda:
        return "sdpa_loop"  # CPU: the mask path computes every cross-sample score too (3x slower, bench/train.py)
    if half and flash:
        return "flash"
    if tokens > FLEX_MIN_TOKENS and flex:
        return "flex"
    return "sdpa_mask" if tokens <= MASK_MAX_TOKENS else "sdpa_loop"


def select_backend(q: torch.Tensor) -> str:
    if _forced is not None:
        return _forced
    return choose_backend(
        cuda=q.is_cuda,
        half=q.dtype in (torch.float16, torch.bfloat16),
        tokens=q.shape[0],
        flash=q.is_cuda and flash_available(),
        flex=q.is_cuda and flex_opted_in(),
    )


@contextlib.contextmanager
def force_backend(name: str | None) -> Iterator[None]:
    """Use one backend inside the block (tests, benchmarks, FLOP counting)."""
    global _forced
    if name is not None and name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {BACKENDS}")
    previous, _forced = _forced, name
    try:
        yield
    finally:
        _forced = previous


def _segments(cu_seqlens: torch.Tensor, tokens: int) -> list[tuple[int, int]]:
    """Sample boundaries; tokens past cu_seqlens[-1] (sequence-parallel padding) form their own segment."""
    cu = [int(c) for c in cu_seqlens.tolist()]
    segs = [(s, e) for s, e in zip(cu[:-1], cu[1:]) if e > s]
    if tokens > cu[-1]:
        segs.append((cu[-1], tokens))
    return segs


def _segment_ids(cu_seqlens: torch.Tensor, tokens: int, device) -> torch.Tensor:
    ids = torch.full((tokens,), -1, dtype=torch.long, device=device)
    for i, (s, e) in enumerate(_segments(cu_seqlens, tokens)):
        ids[s:e] = i
    return ids


def _padded(is_condition: torch.Tensor, tokens: int) -> torch.Tensor:
    """is_condition covers the packed samples; tokens past them (sequence-parallel padding, their own segment) are
    not conditions, so they attend to their segment like video tokens."""
    cond = is_condition.bool()
    if cond.shape[0] < tokens:
        cond = torch.cat((cond, cond.new_zeros(tokens - cond.shape[0])))
    return cond


def _math(q, k, v, mask=None):
    # [L, H, D] -> [H, L, D]
    qh, kh, vh = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)
    scores = torch.matmul(qh, kh.transpose(1, 2)) * q.shape[-1] ** -0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.matmul(scores.softmax(dim=-1), vh).transpose(0, 1)


MaskMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def condition_may_attend(query_is_condition: torch.Tensor, key_is_condition: torch.Tensor) -> torch.Tensor:
    """THE condition-causal rule (within one sample; samples never see each other): a condition query may attend
    to condition keys only, so condition tokens' hidden states, keys and values never depend on the (noisy) video
    and can be cached across sampling steps; a video query may attend to every key. Elementwise, broadcasting."""
    return ~query_is_condition | key_is_condition


def condition_mask_of(ctx) -> torch.Tensor | None:
    """The context's per-token `is_condition` ([L] bool over the whole packed sequence), None under full attention.
    Contexts are dataclasses (MMDiT's BlockContext), dicts or plain objects (docs/contracts.md)."""
    value = ctx.get("is_condition") if isinstance(ctx, dict) else getattr(ctx, "is_condition", None)
    return None if value is None else value.bool()


def with_condition_mask(ctx, is_condition: torch.Tensor | None):
    """A copy of ctx whose attention follows the condition-causal rule for `is_condition` (None: full attention)."""
    if isinstance(ctx, dict):
        return {**ctx, "is_condition": is_condition}
    if dataclasses.is_dataclass(ctx) and any(f.name == "is_condition" for f in dataclasses.fields(ctx)):
        return dataclasses.replace(ctx, is_condition=is_condition)
    out = copy.copy(ctx)
    out.is_condition = is_condition
    return out


def document_mask_mod(doc: torch.Tensor, is_condition: torch.Tensor | None = None) -> MaskMod:
    """FlexAttention mask_mod over per-token sample ids `doc` ([L]): a query sees the keys of its own sample.
    With `is_condition` ([L] bool), condition-causal: a condition query sees only its sample's condition keys (so
    their keys/values do not depend on the video and can be cached across sampling steps); a video query sees the
    whole sample."""

    def same_sample(b, h, q_idx, kv_idx):
        return doc[q_idx] == doc[kv_idx]

    if is_condition is None:
        return same_sample

    def condition_causal(b, h, q_idx, kv_idx):
        return same_sample(b, h, q_idx, kv_idx) & condition_may_attend(is_condition[q_idx], is_condition[kv_idx])

    return condition_causal


def dense_mask(cu_seqlens: torch.Tensor, tokens: int, device, is_condition: torch.Tensor | None = None) -> torch.Tensor:
    """The same rule as `document_mask_mod` as an [L, L] boolean (True = attend): the reference, and the CPU
    backward path of "flex"."""
    doc = _segment_ids(cu_seqlens, tokens, device)
    mask = doc[:, None] == doc[None, :]
    if is_condition is not None:
        cond = _padded(is_condition, tokens).to(device)
        mask = mask & condition_may_attend(cond[:, None], cond[None, :])
    return mask


# Building a block mask evaluates the mask_mod over every block pair: every block of a step shares the sequence, so
# one mask serves the whole forward (and backward). Keyed by the CONTENTS of cu_seqlens (n + 1 ints) rather than by
# its data pointer: a freed tensor's address is reused by the next step's, and a stale mask would be silently wrong.
_BLOCK_MASKS: dict[tuple, object] = {}
_BLOCK_MASK_CACHE = 8  # a few shapes in flight (micro-batches, pipeline stages); each is (L / 128)^2 ints


def _mask_key(cu_seqlens: torch.Tensor, tokens: int, device, is_condition: torch.Tensor | None) -> tuple:
    cond = None if is_condition is None else _padded(is_condition, tokens).cpu().numpy().tobytes()
    return (tuple(int(c) for c in cu_seqlens.tolist()), tokens, str(device), cond)


def block_mask_for(cu_seqlens: torch.Tensor, tokens: int, device, is_condition: torch.Tensor | None = None):
    """The FlexAttention BlockMask of a packed sequence (padding past cu_seqlens[-1] is its own segment), cached."""
    from torch.nn.attention.flex_attention import create_block_mask

    key = _mask_key(cu_seqlens, tokens, device, is_condition)
    mask = _BLOCK_MASKS.get(key)
    if mask is None:
        doc = _segment_ids(cu_seqlens, tokens, device)
        cond = None if is_condition is None else _padded(is_condition, tokens).to(device)
        # Eager create_block_mask evaluates the mask_mod densely (an L x L boolean: 5.6 GB at 75,000 tokens);
        # compiled it works block by block. CPU stays eager: its sequences here are test-sized, compiling is slow.
        build = _compiled_create_block_mask() if torch.device(device).type == "cuda" else create_block_mask
        mask = build(document_mask_mod(doc, cond), None, None, tokens, tokens, device=device)
        if len(_BLOCK_MASKS) >= _BLOCK_MASK_CACHE:
            _BLOCK_MASKS.pop(next(iter(_BLOCK_MASKS)))  # oldest first (dicts keep insertion order)
        _BLOCK_MASKS[key] = mask
    return mask


@functools.cache
def _compiled_create_block_mask():
    from torch.nn.attention.flex_attention import create_block_mask

    return torch.compile(create_block_mask, dynamic=True)


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    # Eager flex materialises the full score matrix; compiled it is the fused block-sparse kernel. dynamic=True:
    # packed lengths change every step, and a recompile per length would cost more than the step.
    return torch.compile(flex_attention, dynamic=True)


def flex(q, k, v, cu_seqlens: torch.Tensor, is_condition: torch.Tensor | None = None) -> torch.Tensor:
    """FlexAttention over the packed sequence: q, k, v [L, H, D] -> [L, H, D]."""
    tokens = q.shape[0]
    if not q.is_cuda and torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v)):
        # torch's FlexAttention has no CPU backward (NotImplementedError, eager or compiled, torch 2.13): with
        # gradients on CPU the SAME rule runs as a dense masked SDPA, so CPU training under "flex" still works.
        return _sdpa(q, k, v, dense_mask(cu_seqlens, tokens, q.device, is_condition))
    from torch.nn.attention.flex_attention import flex_attention

    mask = block_mask_for(cu_seqlens, tokens, q.device, is_condition)
    run = _compiled_flex() if q.is_cuda else flex_attention  # CPU: eager (forward only), no compile needed
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        out = run(*(x.transpose(0, 1).unsqueeze(0) for x in (q, k, v)), block_mask=mask)
    return out.squeeze(0).transpose(0, 1)


def _sdpa(q, k, v, mask=None):
    out = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=mask)
    return out.transpose(0, 1)


def _by_query_kind(segs, is_condition: torch.Tensor):
    """The condition-causal rule without a mask: it depends on the query only through its kind, so each sample's
    queries split into condition and video queries, each attending over the keys `condition_may_attend` allows for
    its kind. Yields (query indices, key indices) per sample and kind; None as key indices: the whole sample."""
    for s, e in segs:
        yield from _sample_by_query_kind(s, e, is_condition)


def _sample_by_query_kind(s: int, e: int, is_condition: torch.Tensor):
    cond = is_condition[s:e]
    for query_kind in (True, False):
        rows = torch.nonzero(cond == query_kind).squeeze(1)
        if rows.numel() == 0:
            continue
        keys = condition_may_attend(torch.tensor(query_kind), cond)
        yield rows + s, None if bool(keys.all()) else torch.nonzero(keys).squeeze(1) + s, (s, e)


# Per sample on CPU, the split by kind of query skips the condition-to-video scores (about 0.6x the time of full
# attention, forward + backward, for 1,350-token samples, half conditions) but costs two kernel calls (about 2x for
# 30-token samples, where calls, not FLOPs, are the time); below this length one masked call per sample (the same
# rule as a mask) costs what full attention does. bench/train.py section 5 measures both (docs/benchmarks.md).
SPLIT_MIN_TOKENS = 256


def _condition_causal_split(q, k, v, segs, is_condition, run) -> torch.Tensor:
    """`run(q_rows, keys, values[, mask])` per sample: split by kind of query (_by_query_kind) for long samples,
    one call with the rule as a mask for short ones; outputs put back in order."""
    order, outs = [], []
    for s, e in segs:
        if e - s < SPLIT_MIN_TOKENS:
            cond = is_condition[s:e]
            order.append(torch.arange(s, e, device=q.device))
            outs.append(run(q[s:e], k[s:e], v[s:e], condition_may_attend(cond[:, None], cond[None, :])))
            continue
        for rows, keys, _ in _sample_by_query_kind(s, e, is_condition):
            ks, vs = (k[s:e], v[s:e]) if keys is None else (k[keys], v[keys])
            order.append(rows)
            outs.append(run(q[rows], ks, vs))
    return torch.cat(outs)[torch.argsort(torch.cat(order))]


def _flash_condition_causal(q, k, v, segs, is_condition) -> torch.Tensor:
    """flash-attn varlen has no mask, but takes separate query and key boundaries: the rule as ONE varlen call over
    gathered tokens, a "sequence" per sample and kind of query with the keys the rule allows it (_by_query_kind)."""
    from flash_attn import flash_attn_varlen_func

    q_rows, k_rows, q_len, k_len = [], [], [], []
    for rows, keys, (s, e) in _by_query_kind(segs, is_condition):
        keys = torch.arange(s, e, device=q.device) if keys is None else keys
        q_rows.append(rows)
        k_rows.append(keys)
        q_len.append(rows.numel())
        k_len.append(keys.numel())

    def cumulative(lengths: list[int]) -> torch.Tensor:
        return torch.tensor([0, *lengths], device=q.device).cumsum(0).to(torch.int32)

    qi, ki = torch.cat(q_rows), torch.cat(k_rows)
    out = flash_attn_varlen_func(q[qi], k[ki], v[ki], cumulative(q_len), cumulative(k_len), max(q_len), max(k_len))
    return out[torch.argsort(qi)]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx) -> torch.Tensor:
    """q, k, v: [tokens, heads, head_dim] (heads from the shape, so a tensor-parallel shard works unchanged);
    ctx.cu_seqlens (int32, n+1) and ctx.max_seqlen; ctx.is_condition (optional): the condition-causal rule.
    Returns [tokens, heads, head_dim]."""
    backend = select_backend(q)
    tokens = q.shape[0]
    is_condition = condition_mask_of(ctx)
    if is_condition is not None:
        is_condition = _padded(is_condition, tokens).to(q.device)
    if backend == "flash":
        if is_condition is not None:
            return _flash_condition_causal(q, k, v, _segments(ctx.cu_seqlens, tokens), is_condition)
        from flash_attn import flash_attn_varlen_func

        cu = ctx.cu_seqlens.to(device=q.device, dtype=torch.int32)
        longest = int(ctx.max_seqlen)
        if tokens > int(cu[-1]):  # sequence-parallel padding attends only to itself
            longest = max(longest, tokens - int(cu[-1]))
            cu = torch.cat((cu, cu.new_tensor([tokens])))
        return flash_attn_varlen_func(q, k, v, cu, cu, longest, longest)
    if backend == "flex":
        return flex(q, k, v, ctx.cu_seqlens, is_condition)
    segs = _segments(ctx.cu_seqlens, tokens)
    if backend == "sdpa_mask" and (len(segs) > 1 or is_condition is not None):
        return _sdpa(q, k, v, dense_mask(ctx.cu_seqlens, tokens, q.device, is_condition))
    run = _math if backend == "math" else _sdpa
    if is_condition is not None:
        return _condition_causal_split(q, k, v, segs, is_condition, run)
    if len(segs) == 1 and backend != "math":
        return _sdpa(q, k, v)
    return torch.cat([run(q[s:e], k[s:e], v[s:e]) for s, e in segs])


class AttentionCore(torch.nn.Module):
    """`attention` as a module, so sequence parallelism (Ulysses) can wrap it in place."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx) -> torch.Tensor:
        return attention(q, k, v, ctx)
