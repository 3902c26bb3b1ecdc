"""The training loop: TrainerConfig in, trained model (and checkpoints, metrics) out.

    omnitrain train --config FILE      (one process, or under torchrun: gloo on CPU, nccl on GPU)

One step: this rank's packed micro-batches from the loader -> noise and timesteps from a generator seeded by
(seed, step, data rank) -> plan.run_step (forward/backward over the micro-batches on the parallel layout) -> clip ->
AdamW -> LR schedule -> callbacks. Seeding per step (instead of carrying RNG state) makes a resumed run draw the same
noise as an uninterrupted one and keeps runs bitwise reproducible on CPU.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from omnitrain.checkpoint_format import read_model_state
from omnitrain.model.flops import TokenCounts, training_flops
from omnitrain.model.mmdit import MMDiT
from omnitrain.spec import TrainerConfig
from omnitrain.trainer.callbacks import TrainerCallback, default_callbacks
from omnitrain.trainer.data.balance import CostModel
from omnitrain.trainer.data.loader import PackedLoader
from omnitrain.trainer.data.reader import ShardReader
from omnitrain.trainer.dataset_setup import ensure_dataset
from omnitrain.trainer.lr_schedule import warmup_cosine
from omnitrain.trainer.objectives import DiffusionDPOLoss, FlowMatchingLoss, dpo_inputs, flow_matching_inputs
from omnitrain.trainer.state import TrainState
from omnitrain.trainer.stop_signal import StopRequest
from omnitrain.training_hooks import COMPLETED, ERROR, STOPPED, Restored, StepStats


class TrainConfigError(ValueError):
    """Bad training config; the message names the field and the fix (exit code CONFIG)."""


@dataclass
class TrainResult:
    step: int
    losses: list[float]
    state: TrainState
    goodput: dict | None = None  # the job's goodput at the end (rank 0; GoodputReport.to_status)
    checkpoint_step: int | None = None  # the newest complete checkpoint after the final save
    stopped: bool = False  # left early on SIGTERM (omnitrain.trainer.stop_signal), after a final save


def step_seed(seed: int, step: int, data_rank: int) -> int:
    return (seed * 1_000_003 + step) * 10_007 + data_rank


def load_initial_weights(path: str, model: torch.nn.Module) -> None:
    """spec.training.initFrom: a checkpoint step folder (its whole model, whatever layout saved it), or a torch
    file with a state dict (plain, or under 'model')."""
    target = Path(path)
    file = target
    if target.is_dir():
        data = read_model_state(target)
        if data is None:
            raise TrainConfigError(f"spec.training.initFrom: {path} is not a checkpoint step folder with a whole model")
    elif target.is_file():
        data = torch.load(file, map_location="cpu", weights_only=False)
    else:
        raise TrainConfigError(f"spec.training.initFrom: {path} is neither a model file nor a checkpoint step folder")
    for key in ("train", "model"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        data = data["model"]
    try:
        model.load_state_dict(data)
    except (RuntimeError, TypeError) as error:
        raise TrainConfigError(f"spec.training.initFrom: {file} does not fit spec.model ({error})") from error


def _world() -> tuple[int, int, int]:
    """(global rank, local rank, node rank) from torchrun's environment."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("GROUP_RANK", 0)))


def _slowest(seconds: float, stop: bool, device: torch.device) -> tuple[float, bool]:
    """The slowest rank's step time, and whether any rank was asked to stop: one all-reduce (MAX) for both, so
    every rank leaves the loop after the same step."""
    if not dist.is_initialized():
        return seconds, stop
    t = torch.tensor([seconds, float(stop)], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t[0]), bool(t[1] > 0)


def step_inputs(batches, schedule, ulysses_rank: int, rng: torch.Generator, make_inputs, training, device) -> list:
    """The (noisy batch, timesteps) micro-batches this rank runs; None for those of its Ulysses group it does not.
    batches: the loader's micro-batches, or its ElasticStep with elastic Ulysses (schedule)."""
    fixed = batches.fixed if schedule is not None else batches
    noised = []
    for batch in fixed:  # all of them, as the fixed degree does: the noise of each follows from the ones before
        noised.append(
            make_inputs(batch, rng, training.logit_normal_mean, training.logit_normal_std, training.timestep_shift)
        )
    if schedule is None:
        return [(noisy.to(device), s.to(device)) for noisy, s in noised]
    return [
        tuple(t.to(device) for t in batches.take(k, noised)) if ulysses_rank in schedule.ranks_of(k) else None
        for k in range(len(batches.bins))
    ]


def restore_all(callbacks: list[TrainerCallback], state: TrainState) -> Restored:
    """Ask every callback to restore (collective hooks run on every rank); at most one may load a checkpoint."""
    restored = [r for r in (cb.restore(state=state) for cb in callbacks) if r is not None]
    if len(restored) > 1:
        raise ValueError(f"{len(restored)} callbacks restored the training state; at most one may")
    return restored[0] if restored else Restored(step=0, seconds=0.0)


def train(config: TrainerConfig, callbacks: list[TrainerCallback] | None = None, log=print) -> TrainResult:
    with StopRequest() as stop:
        return _train(config, callbacks, log, stop)


def _online_encoding(spec, model_cfg, device: torch.device):
    """The frozen encoders of spec.data.encoders (None without), checked against the model."""
    if spec.data.encoders is None or spec.data.pre_encode is not None:  # pre-encoded: the Job ran the encoders
        return None
    from omnitrain.encoders import EncoderError, Encoders
    from omnitrain.trainer.data.online import OnlineEncoding
    from omnitrain.trainer.data.pack import clip_root

    try:
        encoders = Encoders.load(spec.data.encoders, device=str(device))
        encoders.check_model(model_cfg.latent_channels, model_cfg.text_dim, model_cfg.patch_size)
    except EncoderError as error:
        raise TrainConfigError(str(error)) from error
    return OnlineEncoding(encoders, clip_root(spec.data.path), spec.data.on_corrupt)


def _train(config: TrainerConfig, callbacks: list[TrainerCallback] | None, log, stop: StopRequest) -> TrainResult:
    from omnitrain.trainer.parallel import init_distributed, setup_parallel
    from omnitrain.trainer.parallel.elastic import PrefetchingLoader, RegroupedLoss, step_schedule

    spec = config.spec
    training = spec.training
    model_cfg = spec.model.resolve()
    rank, local_rank, node_rank = _world()
    ensure_dataset(
        spec.data,
        model_cfg,
        is_writer=(local_rank == 0 and node_rank == 0),
        log=log if rank == 0 else (lambda *_: None),
    )
    init_distributed()
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")

    torch.manual_seed(training.seed)  # identical initial model on every rank
    model = MMDiT(model_cfg)
    if training.init_from:
        load_initial_weights(training.init_from, model)
    reference = None
    if training.stage == "dpo":
        if not training.init_from:
            raise TrainConfigError(
                "spec.training.initFrom: stage dpo needs the checkpoint that is both the start and the frozen reference"
            )
        reference = MMDiT(model_cfg)
        reference.load_state_dict(model.state_dict())
        reference.to(device)
    if training.compile:
        from omnitrain.trainer.compile import compiler_problem

        problem = compiler_problem(device.type)
        if problem:  # fail rather than train eager at a step time nobody asked for (docs/design-decisions.md)
            raise TrainConfigError(f"spec.training.compile: {problem} (install it in the image, or set compile: false)")
    plan = setup_parallel(model.to(device), config)
    optimizer = torch.optim.AdamW(
        plan.parameters_for_optimizer(),
        lr=training.learning_rate,
        betas=(0.9, 0.95),
        weight_decay=training.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: warmup_cosine(i, training.warmup, training.steps)
    )
    dp_index, dp_count = plan.data_shard
    elastic = plan.layout.elastic_ulysses
    online = _online_encoding(spec, model_cfg, device)
    loader = PackedLoader(
        ShardReader(
            spec.data.pre_encode.path if spec.data.pre_encode else spec.data.path,
            spec.data.on_corrupt,
            row_decoder=online.plan if online else None,
        ),
        model_cfg.patch_size,
        spec.data.token_budget,
        CostModel.of(model_cfg),
        dp_rank=dp_index,
        dp_size=dp_count,
        micro_batches=spec.parallelism.micro_batches,
        balance=spec.data.balance,
        pairs=training.stage == "dpo",
        text_dim=model_cfg.text_dim,
        latent_channels=model_cfg.latent_channels,
        elastic_ulysses=plan.ulysses_size if elastic else 0,
        materialize=online.materialize if online else None,
    )
    if elastic:  # step N+1's micro-batches and where they run are worked out while step N trains
        loader = PrefetchingLoader(loader, lambda step: step_schedule(step, plan.ulysses_size))
    state = TrainState(
        model=plan.model, optimizer=optimizer, lr_scheduler=scheduler, data_loader=loader, rng=torch.Generator()
    )
    callbacks = default_callbacks(config) if callbacks is None else callbacks
    restored = restore_all(callbacks, state)
    start = state.step = restored.step
    for cb in callbacks:
        cb.on_train_start(state=state, step=start, restore_seconds=restored.seconds)
    if rank == 0:
        log(
            f"train: {training.stage} {spec.model.preset} ({sum(p.numel() for p in model.parameters()):,} params) "
            f"from step {start} to {training.steps}; {plan.describe()}"
        )

    loss_fn = FlowMatchingLoss() if reference is None else DiffusionDPOLoss(reference, training.dpo_beta)
    if elastic:
        loss_fn = RegroupedLoss(loss_fn)
    make_inputs = flow_matching_inputs if reference is None else dpo_inputs
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if training.precision == "bf16" and device.type == "cuda"
        else contextlib.nullcontext()
    )
    losses: list[float] = []
    reason = COMPLETED
    try:
        for step in range(start + 1, training.steps + 1):
            began = time.perf_counter()
            encoded_before = online.seconds if online else 0.0
            batches, schedule = loader.next_step() if elastic else (loader.next_step(), None)
            data_seconds = time.perf_counter() - began
            encode_seconds = online.seconds - encoded_before if online else None
            state.rng.manual_seed(step_seed(training.seed, step, dp_index))
            microbatches = step_inputs(batches, schedule, plan.ulysses_rank, state.rng, make_inputs, training, device)
            with autocast:
                loss = plan.run_step(microbatches, loss_fn, schedule=schedule)
            if training.grad_clip > 0:
                plan.clip_grad_norm_(training.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step = step
            loss_value = float(loss)
            losses.append(loss_value)
            step_seconds, stopping = _slowest(time.perf_counter() - began, stop.requested, device)
            counts: TokenCounts = loader.last_step_counts
            if rank == 0 and (step % training.log_every == 0 or step == training.steps):
                log(
                    f"step {step}/{training.steps} loss {loss_value:.4f} lr {scheduler.get_last_lr()[0]:.2e} "
                    f"tokens/s {counts.tokens / step_seconds:,.0f} step {step_seconds * 1000:.0f} ms",
                    flush=True,
                )
            stats = StepStats(
                step=step,
                loss=loss_value,
                tokens=counts.tokens,
                flops=training_flops(model_cfg, counts),
                step_seconds=step_seconds,
                data_seconds=data_seconds,
                encode_seconds=encode_seconds,
            )
            for cb in callbacks:
                cb.on_step_end(state=state, stats=stats)
            if stopping and step < training.steps:
                reason = STOPPED
                if rank == 0:
                    log(f"train: asked to stop (SIGTERM) at step {step}/{training.steps}: final checkpoint", flush=True)
                break
    except BaseException:
        reason = ERROR
        raise
    finally:
        if elastic:
            loader.close()
        for cb in callbacks:
            cb.on_train_end(state=state, step=state.step, reason=reason)
        for cb in callbacks:  # reached only when every on_train_end returned: the final save is complete
            cb.on_exit(step=state.step)
    outcomes = [cb.outcome() for cb in callbacks]
    return TrainResult(
        step=state.step,
        losses=losses,
        state=state,
        checkpoint_step=next((o.checkpoint_step for o in outcomes if o.checkpoint_step), None),
        goodput=next((o.goodput for o in outcomes if o.goodput is not None), None),
        stopped=reason == STOPPED,
    )
