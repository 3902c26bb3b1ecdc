"""Generated specs against the real API server with the operator running (issue 14's property): every job the API
server accepts gets a phase and a condition within a bound, no traceback reaches the operator's log, no child
outlives a Failed job, and no Python None reaches a status message.

The specs are mostly well-typed (the schema refuses the rest, which is fine: a 422 loses nothing) and lean on
what users get wrong: empty and odd strings, system paths, huge sizes, label keys with spaces, layouts that do not
divide. Hypothesis draws them (derandomize: a fixed seed; OMNITRAIN_PROPERTY_RANDOM=1 for a fresh one,
OMNITRAIN_PROPERTY_EXAMPLES=N for more; a failure prints the specs it names, so a finding can be replayed through
parse_spec and reconcile without a cluster); the whole batch is posted first and then watched, because the
operator reconciles jobs concurrently and a job-at-a-time loop would spend the test waiting on resync.

Its own control plane and operator: the session's operator watches every namespace and would race this one."""

from __future__ import annotations

import os
import re
import string
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes import client

sys.path.insert(0, os.path.dirname(__file__))
from control_plane import control_plane, wait_until  # noqa: E402
from jobs import create_job, get_job  # noqa: E402
from operator_process import OperatorProcess, install_crd, needs_binaries  # noqa: E402

from omnitrain.model.config import PRESETS  # noqa: E402
from omnitrain.operator import plan  # noqa: E402

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

EXAMPLES = int(os.environ.get("OMNITRAIN_PROPERTY_EXAMPLES", "300"))
SETTLE_S = 120.0  # from the last create to every accepted job having a phase and a condition

# -- what users write ---------------------------------------------------------------------------------------------
ODD_TEXT = ["", " ", "bad key!", "a" * 300, "é", "x\ny", "{}", "$(id)", "UPPER", "-lead", "trail-", "a/b/c", "."]
SYSTEM_PATHS = ["/", "/etc", "/proc", "/sys", "/var/run", "/root", "/tmp/../etc", "//mnt//x", "relative/path"]
SANE_PATHS = ["/mnt/nvme/omnitrain", "/mnt/checkpoints", "/tmp/omnitrain-ckpt", "/var/lib/omnitrain/ckpt"]

text = st.one_of(st.sampled_from(ODD_TEXT), st.text(string.ascii_lowercase + string.digits + "-./_", max_size=24))
paths = st.one_of(st.sampled_from(SYSTEM_PATHS + SANE_PATHS), text)
small = st.integers(min_value=-1, max_value=8)
sizes = st.one_of(small, st.sampled_from([0, 16, 1024, 65536, 2**31, 10**15, 2**62]))
floats = st.one_of(st.sampled_from([0.0, -1.0, 1e-4, 1e308]), st.floats(-10, 10, allow_nan=False))
quantities = st.one_of(
    st.integers(min_value=-1, max_value=64),
    st.sampled_from(["2", "500m", "4Gi", "1e3", "lots", "-1", "", "0.5", "64Gi", "1.5Ti"]),
)


def section(**fields) -> st.SearchStrategy[dict]:
    """A spec section with any subset of `fields` set (unset ones take the defaults)."""
    return st.fixed_dictionaries({}, optional=fields)


spec_sections = section(
    image=st.one_of(st.just("omnitrain:latest"), text),
    suspend=st.booleans(),
    model=section(
        preset=st.sampled_from([*PRESETS, "nope"]),
        hiddenSize=sizes,
        depth=small,
        numHeads=small,
        mlpRatio=floats,
    ),
    parallelism=section(
        nodes=st.integers(min_value=0, max_value=3),
        gpusPerNode=small,
        tensor=small,
        pipeline=small,
        ulysses=small,
        data=small,
        microBatches=small,
        pipelineSchedule=st.sampled_from(["1F1B", "interleaved1F1B", "gpipe"]),
        virtualStages=small,
    ),
    data=section(path=paths, tokenBudget=sizes, onCorrupt=st.sampled_from(["skip", "fail", "ignore"])),
    training=section(
        stage=st.sampled_from(["pretrain", "sft", "dpo", "rlhf"]),
        steps=sizes,
        warmupSteps=sizes,
        learningRate=floats,
        initFrom=paths,
        logEvery=small,
        compile=st.booleans(),
    ),
    checkpoint=section(
        localPath=paths,
        persistentPath=paths,
        persistentClaim=text,
        intervalSteps=sizes,
        keep=small,
    ),
    resilience=section(maxRestarts=small, hangTimeoutSeconds=sizes, restartBackoffSeconds=small),
    memory=section(
        offload=st.sampled_from(["none", "pipelineAware", "all"]), recompute=st.sampled_from(["none", "full"])
    ),
    scheduling=section(
        nodeSelector=st.dictionaries(text, text, max_size=2),
        tolerations=st.lists(
            section(
                key=text,
                operator=st.sampled_from(["Exists", "Equal"]),
                value=text,
                effect=st.sampled_from(["NoSchedule", "NoExecute"]),
            ),
            max_size=2,
        ),
        gpuResource=st.one_of(st.just("nvidia.com/gpu"), text),
        priorityClassName=text,
        schedulerName=text,
        queueName=text,
    ),
    resources=section(cpu=quantities, memory=quantities),
    metricsPort=st.integers(min_value=-1, max_value=70000),
    promotion=section(
        distill=section(enabled=st.booleans(), teacherSteps=small, studentSteps=small),
        inference=section(enabled=st.booleans(), replicas=small, port=sizes),
    ),
)

# DNS-1123 subdomains of every length the API server allows; the index in front keeps them unique.
name_body = st.from_regex(re.compile(r"[a-z0-9]([a-z0-9.-]{0,250}[a-z0-9])?"), fullmatch=True).filter(
    lambda s: ".." not in s and ".-" not in s and "-." not in s
)


# -- the cluster --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    needs_binaries()
    with control_plane(tmp_path_factory.mktemp("generated-cp")) as kubeconfig:
        install_crd(kubeconfig)
        from kubernetes import config

        api = config.new_client_from_config(str(kubeconfig))
        client.CoreV1Api(api).create_namespace({"metadata": {"name": "gen"}})
        log = tmp_path_factory.mktemp("generated-op") / "operator.log"
        # resync every 2 s: a few hundred jobs, two cores; settling is driven by the watch, not the resync
        op = OperatorProcess(kubeconfig, log, {"OMNITRAIN_RESYNC_SECONDS": "2", "OMNITRAIN_NAMESPACES": "gen"})
        try:
            yield api, op
        finally:
            op.stop()


def children_of(api, ns: str, job: str) -> list[str]:
    core, sel = client.CoreV1Api(api), plan.job_selector(job)
    found = [f"pod/{p.metadata.name}" for p in core.list_namespaced_pod(ns, label_selector=sel).items]
    found += [f"service/{s.metadata.name}" for s in core.list_namespaced_service(ns, label_selector=sel).items]
    found += [f"configmap/{c.metadata.name}" for c in core.list_namespaced_config_map(ns, label_selector=sel).items]
    return found


def test_every_accepted_generated_job_gets_a_phase_and_a_condition(cluster):
    api, op = cluster
    accepted: dict[str, dict] = {}
    refused: list[str] = []

    @settings(
        max_examples=EXAMPLES,
        derandomize=os.environ.get("OMNITRAIN_PROPERTY_RANDOM") != "1",
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(body=name_body, spec=spec_sections)
    def post(body: str, spec: dict) -> None:
        name = f"g{len(accepted) + len(refused)}-{body}"[:253].rstrip(".-")
        try:
            create_job(api, "gen", name, spec)
        except client.ApiException as exc:
            # the schema refusing it is the cheapest outcome; anything else from the API server is a finding
            assert exc.status == 422, f"{name}: HTTP {exc.status} {exc.body}"
            refused.append(name)
            return
        accepted[name] = spec

    post()
    assert accepted, "no generated spec was accepted: the generator no longer exercises the operator"
    print(f"{len(accepted)} accepted, {len(refused)} refused by the schema", file=sys.stderr)

    start, settled = time.monotonic(), {}

    def all_settled():
        for name in accepted.keys() - settled.keys():
            st_ = get_job(api, "gen", name).get("status") or {}
            if st_.get("phase") and st_.get("conditions"):
                settled[name] = st_
        return len(settled) == len(accepted)

    try:
        wait_until(all_settled, SETTLE_S, "every accepted job has a phase and a condition", interval=1.0)
    except TimeoutError:
        missing = sorted(accepted.keys() - settled.keys())[:5]
        raise AssertionError(
            f"{len(accepted) - len(settled)} of {len(accepted)} jobs had no phase and condition "
            f"{SETTLE_S:.0f} s after the last create, "
            f"e.g. {[(n[:60], repr(accepted[n])[:400]) for n in missing]}\noperator log:\n{op.tail()}"
        ) from None
    print(f"settled in {time.monotonic() - start:.1f} s", file=sys.stderr)

    leftovers = {}
    for name, status in settled.items():
        assert "None" not in (status.get("message") or ""), f"{name}: Python None in {status['message']!r}"
        if status["phase"] == "Failed":
            # a Failed job created nothing or removed what it created in the same pass
            left = children_of(api, "gen", name)
            if left:
                leftovers[name] = left
    assert not leftovers, f"children outlived Failed jobs: {dict(list(leftovers.items())[:5])}"

    log = Path(op.log).read_text()
    assert "Traceback" not in log, f"traceback in the operator log:\n{log[log.index('Traceback') - 2000 :][:6000]}"
    phases = {}
    for status in settled.values():
        phases[status["phase"]] = phases.get(status["phase"], 0) + 1
    print(f"phases: {phases}", file=sys.stderr)
