"""Two gloo processes (two 'nodes'): rank 0 serves the job's figures, the other node only its own figures."""

import pytest
from obs_workers import data_parallel_run

from omnitrain import contract
from omnitrain.metrics_log import read_job_log
from omnitrain.observability import trainer_metrics as tm
from omnitrain.trainer.parallel.testing import run_on_ranks


def only(samples, name, **labels):
    hits = [v for s_labels, v in samples[name] if all(s_labels.get(k) == w for k, w in labels.items())]
    assert len(hits) == 1, (name, samples[name])
    return hits[0]


@pytest.mark.slow
def test_two_node_data_parallel_run(tmp_path):
    steps = 4
    results = run_on_ranks(data_parallel_run, 2, steps, str(tmp_path), timeout_s=240)
    rank0, rank1 = results
    assert rank0["losses"] == rank1["losses"]  # the reduced figures agree on every rank
    mean_loss, tokens, seconds = rank0["losses"][-1]
    assert tokens == 24 + 32
    job_endpoint, node1_endpoint = rank0["scraped"]
    assert only(job_endpoint, contract.METRIC_STEP, omnitrain_job="ddp") == steps
    assert only(job_endpoint, contract.METRIC_LOSS) == pytest.approx(mean_loss)
    assert only(job_endpoint, tm.METRIC_WORLD_SIZE) == 2
    assert only(job_endpoint, tm.METRIC_TOKENS_PER_SECOND) == pytest.approx(tokens / seconds)
    expected_mfu = 6.0 * rank0["params"] * tokens / (seconds * 2 * 1e10)
    assert only(job_endpoint, tm.METRIC_MFU) == pytest.approx(expected_mfu)
    # the second node's endpoint: its own process, no job figures
    assert contract.METRIC_STEP not in node1_endpoint and tm.METRIC_MFU not in node1_endpoint
    assert only(node1_endpoint, "process_resident_memory_bytes") > 0
    # one metrics log, written by rank 0, with the reduced loss of every step
    log = read_job_log(tmp_path)
    assert [r["loss"] for r in log.of_kind("step")] == pytest.approx([loss for loss, _, _ in rank0["losses"]])
    assert rank0["losses"][-1][0] < rank0["losses"][0][0]  # it trained
