"""Pipeline schedules as data: for each pipeline rank, the ordered list of (forward|backward, chunk, micro-batch).

Pure functions (tested without processes). Model chunk c (of pp * virtual_stages) lives on pipeline rank c % pp, so
with virtual stages each rank holds chunks r, r + pp, ... (Megatron's interleaving). The executor in pipeline.py
runs the actions in order; sends are non-blocking and receives are matched by tag, so any order that respects the
data dependencies (which these do) cannot deadlock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Action:
    kind: Literal["F", "B"]
    chunk: int  # global model chunk index, 0 .. pp * virtual_stages - 1
    micro_batch: int

    def __str__(self) -> str:
        return f"{self.kind}{self.chunk}.{self.micro_batch}"


def chunks_of_rank(rank: int, pp: int, virtual_stages: int) -> list[int]:
    return [rank + v * pp for v in range(virtual_stages)]


def split_blocks(depth: int, chunks: int) -> list[range]:
    """Contiguous block ranges per chunk; earlier chunks take the remainder (the last one also runs the head)."""
    if chunks > depth:
        raise ValueError(f"{chunks} pipeline chunks but only {depth} blocks")
    base, extra = divmod(depth, chunks)
    out, start = [], 0
    for c in range(chunks):
        n = base + (1 if c < extra else 0)
        out.append(range(start, start + n))
        start += n
    return out


def one_f_one_b(rank: int, pp: int, micro_batches: int) -> list[Action]:
    """Warm-up forwards so the last stage can start, then alternate one forward / one backward, then drain."""
    warmup = min(pp - rank - 1, micro_batches)
    actions = [Action("F", rank, i) for i in range(warmup)]
    backward = 0
    for i in range(warmup, micro_batches):
        actions.append(Action("F", rank, i))
        actions.append(Action("B", rank, backward))
        backward += 1
    actions += [Action("B", rank, i) for i in range(backward, micro_batches)]
    return actions


def interleaved_one_f_one_b(rank: int, pp: int, virtual_stages: int, micro_batches: int) -> list[Action]:
    """Megatron's interleaved 1F1B: micro-batches go through a rank's chunks in groups of pp, which shrinks the
    bubble by the number of virtual stages. Needs micro_batches to be a multiple of pp."""
    if micro_batches % pp:
        raise ValueError(f"interleaved1F1B needs microBatches ({micro_batches}) to be a multiple of pipeline ({pp})")
    v = virtual_stages
    total = micro_batches * v

    def unit(k: int, backward: bool) -> tuple[int, int]:
        group, within = divmod(k, pp * v)
        local_chunk = (k % (pp * v)) // pp
        if backward:
            local_chunk = v - 1 - local_chunk
        return rank + local_chunk * pp, group * pp + within % pp

    warmup = min((pp - rank - 1) * 2 + (v - 1) * pp, total)
    actions = [Action("F", *unit(k, False)) for k in range(warmup)]
    for k in range(total - warmup):
        actions.append(Action("F", *unit(k + warmup, False)))
        actions.append(Action("B", *unit(k, True)))
    actions += [Action("B", *unit(k, True)) for k in range(total - warmup, total)]
    return actions


def build_schedule(rank: int, pp: int, virtual_stages: int, micro_batches: int, schedule: str) -> list[Action]:
    if schedule == "interleaved1F1B" and virtual_stages > 1:
        return interleaved_one_f_one_b(rank, pp, virtual_stages, micro_batches)
    if virtual_stages != 1:
        raise ValueError("virtual stages > 1 need the interleaved1F1B schedule")
    return one_f_one_b(rank, pp, micro_batches)


def check_schedule(pp: int, virtual_stages: int, micro_batches: int, schedules: list[list[Action]]) -> None:
    """Every (chunk, micro-batch) runs forward once and backward once, on the right rank, forward first."""
    chunks = pp * virtual_stages
    for rank, actions in enumerate(schedules):
        seen = set()
        for a in actions:
            if a.chunk % pp != rank:
                raise AssertionError(f"{a} scheduled on rank {rank}")
            if a.kind == "B" and ("F", a.chunk, a.micro_batch) not in seen:
                raise AssertionError(f"{a} before its forward on rank {rank}")
            seen.add((a.kind, a.chunk, a.micro_batch))
        expected = {
            (k, c, m) for k in "FB" for c in chunks_of_rank(rank, pp, virtual_stages) for m in range(micro_batches)
        }
        if seen != expected or len(actions) != len(expected):
            raise AssertionError(f"rank {rank} runs {sorted(seen)}, expected {sorted(expected)}")
    assert chunks == sum(len(chunks_of_rank(r, pp, virtual_stages)) for r in range(pp))


def messages_in_order(pp: int, virtual_stages: int, micro_batches: int, schedules: list[list[Action]]) -> bool:
    """True when, for every pair of pipeline ranks and direction, the receiver asks for messages in the order the
    sender sends them. Gloo matches our tags anyway; NCCL ignores tags and matches point-to-point messages in
    order, so a schedule that passes this runs on NCCL too."""
    chunks = pp * virtual_stages
    sent: dict[tuple[int, int], list] = {}
    wanted: dict[tuple[int, int], list] = {}
    for rank, actions in enumerate(schedules):
        for a in actions:
            if a.kind == "F":
                if a.chunk > 0:
                    wanted.setdefault(((a.chunk - 1) % pp, rank), []).append(("F", a.chunk, a.micro_batch))
                if a.chunk < chunks - 1:
                    sent.setdefault((rank, (a.chunk + 1) % pp), []).append(("F", a.chunk + 1, a.micro_batch))
            else:
                if a.chunk < chunks - 1:
                    wanted.setdefault(((a.chunk + 1) % pp, rank), []).append(("B", a.chunk, a.micro_batch))
                if a.chunk > 0:
                    sent.setdefault((rank, (a.chunk - 1) % pp), []).append(("B", a.chunk - 1, a.micro_batch))
    return sent == wanted
