"""Packed, balanced, resumable batches for one data-parallel rank.

Every rank reads the same global stream (cheap for pre-encoded latents) and makes the same decision: a step takes
samples until the step's token capacity (data ranks x micro-batches x tokenBudget) is full, places them into
micro-batch bins (balanced by estimated compute, or greedy in stream order) and keeps what did not fit for the next
step (carry-over). This rank packs its own bins. The position (reader position + carried samples' positions) is
the loader's state_dict, so a resumed run yields exactly the same next batches.

With elastic Ulysses (`elastic_ulysses` = the group's degree) a step is an ElasticStep: the same bins as above
(so data order, resume and the step's samples are unchanged), plus their samples re-cut into micro-batches at the
granularity of the per-micro-batch degree (balance.assign_elastic)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch

from omnitrain.model.flops import TokenCounts
from omnitrain.model.packing import CONTEXT, REFERENCE, TEXT, VIDEO, PackedBatch, SampleRecord, pack, sample_tokens
from omnitrain.trainer.data.balance import CostModel, ElasticBin, assign_balanced, assign_elastic, assign_sequential
from omnitrain.trainer.data.reader import DataError, ShardReader
from omnitrain.trainer.data.schema import DataSample

LOOKAHEAD = 8  # samples that did not fit, carried while the step keeps trying smaller ones


def records_of(sample: DataSample, pairs: bool) -> list[SampleRecord]:
    """One record, or (winner, loser) sharing the condition for DPO."""
    winner = SampleRecord(text=sample.text, video=sample.video, reference=sample.reference, context=sample.context)
    if not pairs:
        return [winner]
    if sample.loser is None:
        raise DataError(f"sample {sample.key} has no loser latent; stage dpo needs preference pairs")
    return [
        winner,
        SampleRecord(text=sample.text, video=sample.loser, reference=sample.reference, context=sample.context),
    ]


@dataclasses.dataclass
class RegroupedBatch(PackedBatch):
    """A micro-batch cut out of other (noised) ones, with each sample's weight in the step's loss (see
    ElasticStep.take): a per-sample loss times loss_weights, summed, is its part of the fixed degree's step loss
    (times the number of micro-batches, which the step divides by)."""

    loss_weights: torch.Tensor | None = None  # [num_samples] float


def take_samples(batches: list[PackedBatch], members: list[tuple[int, int]]) -> PackedBatch:
    """A PackedBatch of the samples members = [(batch, sample index in it)], in that order, with their tokens,
    positions, latents and (when set) targets exactly as they are in `batches`."""
    parts: dict[str, list[torch.Tensor]] = {"text": [], "reference": [], "context": [], "video": [], "target": []}
    kinds, ids, positions, lengths, grids = [], [], [], [], []
    for new, (j, i) in enumerate(members):
        b = batches[j]
        lo, hi = int(b.cu_seqlens[i]), int(b.cu_seqlens[i + 1])  # pack() keeps a sample's tokens together
        kinds.append(b.kind[lo:hi])
        positions.append(b.positions[lo:hi])
        ids.append(torch.full((hi - lo,), new, dtype=torch.long))
        lengths.append(hi - lo)
        grids.append(b.video_grids[i])
        for kind, name in ((TEXT, "text"), (REFERENCE, "reference"), (CONTEXT, "context"), (VIDEO, "video")):
            parts[name].append(getattr(b, name)[b.sample_id[b.kind == kind] == i])
        if b.target is not None:
            parts["target"].append(b.target[b.video_sample_id() == i])
    cu = torch.zeros(len(members) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(lengths), 0)
    return PackedBatch(
        text=torch.cat(parts["text"]),
        reference=torch.cat(parts["reference"]),
        context=torch.cat(parts["context"]),
        video=torch.cat(parts["video"]),
        kind=torch.cat(kinds),
        sample_id=torch.cat(ids),
        positions=torch.cat(positions),
        cu_seqlens=cu,
        video_grids=grids,
        target=torch.cat(parts["target"]) if len(parts["target"]) == len(members) else None,
    )


@dataclass
class ElasticStep:
    """A Ulysses group's step for elastic degrees. `fixed` are the micro-batches the fixed degree would run; the
    objective noises them exactly as it would there (same generator, same order), then `take` cuts micro-batch k
    out of them: bins[k].samples index `where` (group sample -> (fixed micro-batch, its index there)); a sample is
    `records` packed samples (2 for DPO pairs). So the step has the same samples, noise and loss as the fixed
    degree's; only how they are grouped (and so which ranks run them) differs."""

    fixed: list[PackedBatch]
    bins: list[ElasticBin]
    where: list[tuple[int, int]]
    tokens: list[int]  # per group sample
    costs: list[float]  # per group sample
    records: int = 1

    def bin_tokens(self, k: int) -> int:
        return sum(self.tokens[i] for i in self.bins[k].samples)

    def bin_cost(self, k: int) -> float:
        return sum(self.costs[i] for i in self.bins[k].samples)

    def take(self, k: int, noised: list[tuple[PackedBatch, torch.Tensor]]) -> tuple[RegroupedBatch, torch.Tensor]:
        """Micro-batch k from the noised fixed micro-batches [(batch, per-sample timesteps)]. Loss weights keep
        the fixed degree's loss (mean over its m micro-batches of each one's mean): a DPO pair weighs 1 / (m x its
        micro-batch's pairs), a flow-matching sample its video tokens / (m x its micro-batch's video tokens);
        both times the elastic micro-batch count, which the step divides by."""
        m, r = len(self.fixed), self.records
        members = []
        for g in self.bins[k].samples:
            j, i = self.where[g]
            members += [(j, i * r + t) for t in range(r)]
        batch = take_samples([b for b, _ in noised], members)
        s = torch.cat([noised[j][1][i : i + 1] for j, i in members])
        if r == 2:
            weights = [1.0 / (m * (self.fixed[j].num_samples // 2)) for j, _ in members]
        else:  # each fixed micro-batch's video tokens per sample, counted once
            video = {
                j: torch.bincount(self.fixed[j].video_sample_id(), minlength=self.fixed[j].num_samples)
                for j in {j for j, _ in members}
            }
            weights = [float(video[j][i]) / (m * float(video[j].sum())) for j, i in members]
        scale = torch.tensor(weights, dtype=torch.float64) * len(self.bins)
        return RegroupedBatch(
            **{f.name: getattr(batch, f.name) for f in dataclasses.fields(batch)}, loss_weights=scale.float()
        ), s


class PackedLoader:
    def __init__(
        self,
        reader: ShardReader,
        patch_size: tuple[int, int, int],
        token_budget: int,
        cost: CostModel,
        dp_rank: int = 0,
        dp_size: int = 1,
        micro_batches: int = 1,
        balance: bool = True,
        pairs: bool = False,
        text_dim: int | None = None,
        latent_channels: int | None = None,
        elastic_ulysses: int = 0,
        materialize: Callable[[DataSample], DataSample | None] | None = None,
    ):
        # online encoding (online.py): the reader gives planned samples, this rank encodes its own bins' samples
        self.materialize = materialize
        self.reader, self.patch_size, self.token_budget, self.cost = reader, patch_size, token_budget, cost
        self.dp_rank, self.dp_size, self.micro_batches = dp_rank, dp_size, micro_batches
        self.balance, self.pairs = balance, pairs
        self.elastic_ulysses = elastic_ulysses
        self.text_dim, self.latent_channels = text_dim, latent_channels
        self.carry: list[tuple[tuple, DataSample]] = []
        self.last_step_tokens = 0  # real tokens of the whole step (all ranks)
        self.last_step_counts = TokenCounts(0, 0, 0, 0)  # the same, split for the FLOP count

    # -- resumable position ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"reader": self.reader.state_dict(), "carry": [list(pos) for pos, _ in self.carry]}

    def load_state_dict(self, state: dict) -> None:
        self.reader.load_state_dict(state["reader"])
        self.carry = []
        for pos in state["carry"]:
            sample = self.reader.read_at(tuple(pos))
            if sample is None:
                raise DataError(f"carried-over sample at {pos} can no longer be read from {self.reader.folder}")
            self.carry.append((tuple(pos), sample))

    # -- one step ---------------------------------------------------------------------------------------------
    def _check(self, sample: DataSample) -> None:
        if self.text_dim is not None and sample.text.shape[1] != self.text_dim:
            raise DataError(
                f"sample {sample.key}: text embedding width {sample.text.shape[1]} but spec.model.textDim="
                f"{self.text_dim}; use a dataset encoded for this model or change textDim"
            )
        for name in ("video", "reference", "context", "loser"):
            latent = getattr(sample, name)
            if self.latent_channels is not None and latent is not None and latent.shape[0] != self.latent_channels:
                raise DataError(
                    f"sample {sample.key}: {name} latent has {latent.shape[0]} channels but "
                    f"spec.model.latentChannels={self.latent_channels}; use a matching dataset"
                )

    def _tokens(self, sample: DataSample) -> int:
        self._check(sample)
        n = sum(sample_tokens(r, self.patch_size) for r in records_of(sample, self.pairs))
        if n > self.token_budget:
            raise DataError(
                f"sample {sample.key} has {n} tokens, more than spec.data.tokenBudget="
                f"{self.token_budget}; raise tokenBudget or drop long samples from the dataset"
            )
        return n

    def next_global_step(self) -> list[list[DataSample]]:
        """The samples of every bin of the next step (bin r * micro_batches + j = rank r, micro-batch j)."""
        bins = self.dp_size * self.micro_batches
        capacity = bins * self.token_budget
        taken, pending, total, misses = [], list(self.carry), 0, 0
        self.carry = []
        while total < capacity and misses < LOOKAHEAD:
            pos, sample = pending.pop(0) if pending else next(self.reader)
            n = self._tokens(sample)
            if total + n <= capacity:
                taken.append((pos, sample, n))
                total += n
            else:
                self.carry.append((pos, sample))
                misses += 1
        tokens = [n for _, _, n in taken]
        if self.balance:
            where = assign_balanced([self.cost(n) for n in tokens], tokens, bins, self.token_budget)
        else:
            where = assign_sequential(tokens, bins, self.token_budget)
        out: list[list[DataSample]] = [[] for _ in range(bins)]
        left = []
        for (pos, sample, _count), b in zip(taken, where):
            if b is None:
                left.append((pos, sample))
            else:
                out[b].append(sample)
        # what did not fit goes first next step, in stream order; then untried pending, then the misses
        self.carry = left + pending + self.carry
        self.last_step_tokens = sum(n for (_, _, n), b in zip(taken, where) if b is not None)
        self.last_step_counts = TokenCounts(0, 0, 0, 0)
        for samples in out:
            for s in samples:
                for r in records_of(s, self.pairs):
                    text = r.text.shape[0]
                    patches = sample_tokens(r, self.patch_size) - text
                    video = sample_tokens(SampleRecord(text=r.text[:0], video=r.video), self.patch_size)
                    self.last_step_counts += TokenCounts.from_lengths([text], [patches], [video])
        if any(not samples for samples in out):
            raise DataError(
                f"a step of {bins} micro-batches got an empty one; lower parallelism.microBatches or "
                "raise spec.data.tokenBudget"
            )
        return out

    def _materialized(self, samples: list[DataSample]) -> list[DataSample]:
        assert self.materialize is not None
        encoded = [e for e in map(self.materialize, samples) if e is not None]
        if not encoded:
            raise DataError(
                f"every sample of a micro-batch failed to encode (keys {[s.key for s in samples]}); see the warnings"
            )
        return encoded

    def next_step(self) -> list[PackedBatch] | ElasticStep:
        """This rank's micro-batches of the next step (its Ulysses group's ElasticStep with elastic_ulysses)."""
        bins = self.next_global_step()
        mine = bins[self.dp_rank * self.micro_batches : (self.dp_rank + 1) * self.micro_batches]
        if self.materialize is not None:
            mine = [self._materialized(samples) for samples in mine]
        fixed = [pack([r for s in samples for r in records_of(s, self.pairs)], self.patch_size) for samples in mine]
        if self.elastic_ulysses <= 1:
            return fixed
        where = [(j, i) for j, samples in enumerate(mine) for i in range(len(samples))]
        lengths = [[sample_tokens(r, self.patch_size) for r in records_of(mine[j][i], self.pairs)] for j, i in where]
        tokens = [sum(n) for n in lengths]
        costs = [sum(self.cost(t) for t in n) for n in lengths]  # attention is per packed sample
        return ElasticStep(
            fixed=fixed,
            bins=assign_elastic(tokens, costs, self.elastic_ulysses, self.token_budget),
            where=where,
            tokens=tokens,
            costs=costs,
            records=2 if self.pairs else 1,
        )
