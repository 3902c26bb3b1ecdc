"""spec.training.compile: the refused combinations, the compiler check, and on CPU (inductor) compiled blocks that
train like eager ones over packed micro-batches of changing length, without a recompile per length."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from omnitrain.cli import main
from omnitrain.contract import ExitCode
from omnitrain.model.config import PRESETS
from omnitrain.model.mmdit import MMDiT, randomize_
from omnitrain.spec import JobSpec, validate_job_spec
from omnitrain.trainer.compile import compiler_problem
from omnitrain.trainer.parallel import setup_parallel

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent / "parallel"))
from parallel_workers import mmdit_microbatch  # noqa: E402
from train_helpers import config_dict, make_config, write_config  # noqa: E402

TINY = PRESETS["tiny"]
# (text tokens, latent frames, latent side, reference image?, video context?) per sample; one micro-batch a step,
# each a different packed length (74, 36, 88, 60 tokens) and sample count.
STEPS = [
    [(3, 1, 4, False, False), (5, 2, 4, True, False), (2, 1, 2, False, True)],
    [(4, 3, 2, False, False), (7, 1, 4, False, False)],
    [(2, 2, 4, False, True), (3, 1, 2, True, False), (6, 1, 2, False, False), (1, 1, 2, False, False)],
    [(5, 1, 4, True, True), (4, 2, 2, False, False)],
]


def _spec(**sections) -> JobSpec:
    return JobSpec.model_validate({"training": {"compile": True}, **sections})


def test_compile_refuses_what_it_is_not_tested_with():
    assert [str(e) for e in validate_job_spec(_spec(memory={"recompute": "full"}))] == []
    cases = {
        "spec.memory.recompute": {"memory": {"recompute": "selective"}},
        "spec.memory.offload": {"memory": {"offload": "all"}},
        "spec.parallelism.tensor": {"parallelism": {"tensor": 2, "gpusPerNode": 2}},
        "spec.parallelism.dataSharding": {"parallelism": {"dataSharding": "fsdp", "gpusPerNode": 2}},
    }
    for field, sections in cases.items():
        errors = [e for e in validate_job_spec(_spec(**sections)) if "training.compile" in e.message]
        assert [e.field for e in errors] == [field], (field, errors)
        assert "or set training.compile: false" in errors[0].message
    # the same specs without compile: nothing of this check
    plain = JobSpec.model_validate({"memory": {"recompute": "selective"}})
    assert not [e for e in validate_job_spec(plain) if "compile" in e.message]


def test_compiler_problem_names_what_is_missing(monkeypatch, tmp_path):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no compiler on it
    assert "needs a C++ compiler" in compiler_problem("cpu")
    monkeypatch.setenv("CXX", "no-such-cxx")
    assert "CXX='no-such-cxx' is not on PATH" in compiler_problem("cpu")
    (tmp_path / "g++").write_text("#!/bin/sh\n")
    (tmp_path / "g++").chmod(0o755)
    monkeypatch.delenv("CXX")
    assert compiler_problem("cpu") is None


def test_trainer_without_a_compiler_exits_with_config_code(tmp_path, monkeypatch):
    """Compilation impossible here: the pod fails as a config error naming the field (a restart would not help),
    instead of training eager at a step time nobody asked for."""
    term = tmp_path / "termination"
    monkeypatch.setenv("OMNITRAIN_TERMINATION_LOG", str(term))
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    data = config_dict(tmp_path, steps=3, compile=True)
    assert main(["train", "--config", write_config(tmp_path / "c.yaml", data)]) == ExitCode.CONFIG
    message = json.loads(term.read_text())["message"]
    assert message.startswith("spec.training.compile: torch.compile on CPU needs a C++ compiler"), message
    assert "set compile: false" in message
    # a refused combination stops the trainer too, before any compiler is looked for
    data["spec"]["memory"] = {"recompute": "selective"}
    assert main(["train", "--config", write_config(tmp_path / "s.yaml", data)]) == ExitCode.CONFIG
    assert "spec.memory.recompute: training.compile is not supported" in json.loads(term.read_text())["message"]


def _loss(prediction, args):
    batch = args[0]
    return ((prediction[batch.target_mask] - batch.target) ** 2).mean()


def _train(tmp_path, compile: bool, recompute: str, after_first_step=None, model_config=TINY):
    """A few optimizer steps of the tiny preset through setup_parallel (the trainer's path); losses and the
    gradients of every step."""
    config = make_config(tmp_path, compile=compile)
    config.spec.memory.recompute = recompute
    torch.manual_seed(0)
    # random everywhere: adaLN-Zero would leave the blocks' gradients zero at the first step
    plan = setup_parallel(randomize_(MMDiT(model_config), torch.Generator().manual_seed(0)), config)
    optimizer = torch.optim.AdamW(plan.parameters_for_optimizer(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    losses, grads = [], []
    for i, specs in enumerate(STEPS):
        optimizer.zero_grad()
        losses.append(float(plan.run_step([mmdit_microbatch(specs, g, TINY)], _loss)))
        grads.append({n: p.grad.clone() for n, p in plan.model.named_parameters() if p.grad is not None})
        optimizer.step()
        if i == 0 and after_first_step:
            after_first_step()
    return losses, grads


@pytest.mark.slow
@pytest.mark.skipif(compiler_problem("cpu") is not None, reason="no C++ compiler for inductor")
def test_compiled_blocks_train_like_eager_without_recompiling_per_length(tmp_path, monkeypatch):
    torch._dynamo.reset()
    counters.clear()
    graphs_after_first = {}

    def no_more_compiles():
        graphs_after_first["n"] = counters["stats"]["unique_graphs"]
        # from here on, any recompile (a new packed length specialised) raises instead of compiling
        monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)

    for recompute in ("none", "full"):
        want_losses, want_grads = _train(tmp_path / f"eager-{recompute}", False, recompute)
        losses, grads = _train(tmp_path / f"compiled-{recompute}", True, recompute, no_more_compiles)
        monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", False)
        assert losses == pytest.approx(want_losses, rel=1e-5), recompute
        for step, (got, want) in enumerate(zip(grads, want_grads)):
            assert sorted(got) == sorted(want)
            for name in want:
                torch.testing.assert_close(
                    got[name], want[name], rtol=1e-4, atol=1e-6, msg=lambda s: f"{recompute} step {step}: {s}"
                )
    # the compiled path really ran: graphs were traced, and none after each first step
    assert graphs_after_first["n"] > 0
    assert counters["stats"]["unique_graphs"] == graphs_after_first["n"]


@pytest.mark.slow
@pytest.mark.skipif(compiler_problem("cpu") is not None, reason="no C++ compiler for inductor")
def test_compiled_blocks_train_like_eager_under_condition_causal_attention(tmp_path):
    """spec.model.conditionAttention: causal with compile: the rule's per-sample attention stays eager (the
    compiled region is the block around it), the clean-condition rows ride in the context."""
    torch._dynamo.reset()
    causal = dataclasses.replace(TINY, condition_attention="causal")
    want_losses, want_grads = _train(tmp_path / "eager", False, "none", model_config=causal)
    losses, grads = _train(tmp_path / "compiled", True, "none", model_config=causal)
    assert losses == pytest.approx(want_losses, rel=1e-5)
    for got, want in zip(grads, want_grads):
        assert sorted(got) == sorted(want)
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6)
    assert losses != pytest.approx(_train(tmp_path / "full", False, "none")[0], rel=1e-6)  # the rule took effect


@pytest.mark.slow
@pytest.mark.skipif(compiler_problem("cpu") is not None, reason="no C++ compiler for inductor")
def test_the_training_loop_with_compile_matches_eager_and_keeps_the_parameter_names(tmp_path):
    """`omnitrain train`'s loop (data loader, packed micro-batches of the synthetic set, optimizer, schedule) with
    training.compile: the losses of eager training, and the same state dict names (checkpoints load either way)."""
    from omnitrain.trainer.train import train

    eager = train(make_config(tmp_path / "eager", steps=4), callbacks=[], log=lambda *_, **__: None)
    compiled = train(make_config(tmp_path / "compiled", steps=4, compile=True), callbacks=[], log=lambda *_, **__: None)
    assert compiled.losses == pytest.approx(eager.losses, rel=1e-4)
    assert list(compiled.state.model.state_dict()) == list(eager.state.model.state_dict())
    assert all(getattr(b, "_compiled_call_impl", None) is not None for b in compiled.state.model.blocks)
