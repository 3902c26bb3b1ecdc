"""Packed, balanced, resumable batches for one data-parallel rank.

Every rank reads the same global stream (cheap for pre-encoded latents) and makes the same decision: a step takes
samples until the step's token capacity (data ranks x micro-batches x tokenBudget) is full, places them into
micro-batch bins (balanced by estimated compute, or greedy in stream order) and keeps what did not fit for the next
step (carry-over). This rank packs its own bins. The position (reader position + carried samples' positions) is
the loader's state_dict, so a resumed run yields exactly the same next batches."""

from __future__ import annotations

from omnitrain.model.flops import TokenCounts
from omnitrain.model.packing import PackedBatch, SampleRecord, pack, sample_tokens
from omnitrain.trainer.data.balance import CostModel, assign_balanced, assign_sequential
from omnitrain.trainer.data.reader import DataError, ShardReader
from omnitrain.trainer.data.schema import DataSample

LOOKAHEAD = 8    # samples that did not fit, carried while the step keeps trying smaller ones


def records_of(sample: DataSample, pairs: bool) -> list[SampleRecord]:
    """One record, or (winner, loser) sharing the condition for DPO."""
    winner = SampleRecord(text=sample.text, video=sample.video, reference=sample.reference, context=sample.context)
    if not pairs:
        return [winner]
    if sample.loser is None:
        raise DataError(f"sample {sample.key} has no loser latent; stage dpo needs preference pairs")
    return [winner, SampleRecord(text=sample.text, video=sample.loser, reference=sample.reference,
                                 context=sample.context)]


class PackedLoader:
    def __init__(self, reader: ShardReader, patch_size: tuple[int, int, int], token_budget: int, cost: CostModel,
                 dp_rank: int = 0, dp_size: int = 1, micro_batches: int = 1, balance: bool = True,
                 pairs: bool = False, text_dim: int | None = None, latent_channels: int | None = None):
        self.reader, self.patch_size, self.token_budget, self.cost = reader, patch_size, token_budget, cost
        self.dp_rank, self.dp_size, self.micro_batches = dp_rank, dp_size, micro_batches
        self.balance, self.pairs = balance, pairs
        self.text_dim, self.latent_channels = text_dim, latent_channels
        self.carry: list[tuple[tuple, DataSample]] = []
        self.last_step_tokens = 0          # real tokens of the whole step (all ranks)
        self.last_step_counts = TokenCounts(0, 0, 0, 0)   # the same, split for the FLOP count

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
            raise DataError(f"sample {sample.key}: text embedding width {sample.text.shape[1]} but spec.model.textDim="
                            f"{self.text_dim}; use a dataset encoded for this model or change textDim")
        for name in ("video", "reference", "context", "loser"):
            latent = getattr(sample, name)
            if self.latent_channels is not None and latent is not None and latent.shape[0] != self.latent_channels:
                raise DataError(f"sample {sample.key}: {name} latent has {latent.shape[0]} channels but "
                                f"spec.model.latentChannels={self.latent_channels}; use a matching dataset")

    def _tokens(self, sample: DataSample) -> int:
        self._check(sample)
        n = sum(sample_tokens(r, self.patch_size) for r in records_of(sample, self.pairs))
        if n > self.token_budget:
            raise DataError(f"sample {sample.key} has {n} tokens, more than spec.data.tokenBudget="
                            f"{self.token_budget}; raise tokenBudget or drop long samples from the dataset")
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
        for (pos, sample, n), b in zip(taken, where):
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
                    self.last_step_counts += TokenCounts.from_lengths([text], [patches])
        if any(not samples for samples in out):
            raise DataError(f"a step of {bins} micro-batches got an empty one; lower parallelism.microBatches or "
                            "raise spec.data.tokenBudget")
        return out

    def next_step(self) -> list[PackedBatch]:
        """This rank's micro-batches of the next step."""
        bins = self.next_global_step()
        mine = bins[self.dp_rank * self.micro_batches:(self.dp_rank + 1) * self.micro_batches]
        return [pack([r for s in samples for r in records_of(s, self.pairs)], self.patch_size) for samples in mine]
