import os
import re
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

from omnitrain.serving.api import decode_array, encode_array
from omnitrain.serving.engine import InferenceEngine
from omnitrain.serving.server import InferenceServer
from tests.promotion.helpers import TINY
from tests.serving.conftest import http, wait_until


def _request(seed=0, **extra):
    g = torch.Generator().manual_seed(100 + seed)
    body = {
        "text": encode_array(torch.randn(5, TINY.text_dim, generator=g)),
        "frames": 2,
        "height": 4,
        "width": 4,
        "seed": seed,
    }
    body.update(extra)
    return body


@pytest.fixture
def server(student_file):
    srv = InferenceServer(
        InferenceEngine(str(student_file), fp8=True), host="127.0.0.1", port=0, max_batch=4, max_wait_s=0.05
    )
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv, f"http://127.0.0.1:{srv.port}"
    srv.shutdown()


def test_ready_only_after_loading_then_generates(server):
    srv, url = server
    assert http("GET", url + "/healthz")[0] == 200
    code, body = http("GET", url + "/readyz")
    assert code == 503 and body["status"] == "loading"
    assert http("POST", url + "/v1/generate", _request())[0] == 503
    srv.start_loading()
    wait_until(lambda: http("GET", url + "/readyz")[0] == 200, what="readyz 200")
    # a full-attention model file, no distillation: served through the cache, and said to be approximate
    cache = http("GET", url + "/readyz")[1]["conditionCache"]
    assert cache["exact"] is False and "conditionAttention: causal" in cache["reason"]
    code, out = http("POST", url + "/v1/generate", _request(seed=3, return_latent=True, guidance=2.0))
    assert code == 200, out
    latent = decode_array(out["latent"], "latent")
    assert out["shape"] == [TINY.latent_channels, 2, 4, 4] == list(latent.shape)
    assert out["steps"] == 4 and torch.isfinite(latent).all()
    assert out["mean"] == pytest.approx(float(latent.mean()), abs=1e-6)
    metrics = http("GET", url + "/metrics")[1]
    assert 'omnitrain_serve_requests_total{code="200"} 1.0' in metrics
    assert 'omnitrain_serve_requests_total{code="503"} 1.0' in metrics
    assert "omnitrain_serve_ready 1.0" in metrics and "omnitrain_serve_batch_size_count" in metrics
    assert "omnitrain_serve_condition_cache_exact 0.0" in metrics


def test_concurrent_requests_get_the_same_answer_as_alone(server):
    srv, url = server
    srv.start_loading()
    wait_until(lambda: srv.engine.loaded.is_set(), what="model loaded")
    alone = [http("POST", url + "/v1/generate", _request(seed=s, return_latent=True))[1] for s in range(4)]
    together = [None] * 4

    def call(i):
        together[i] = http("POST", url + "/v1/generate", _request(seed=i, return_latent=True))[1]

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for a, b in zip(alone, together):
        np.testing.assert_allclose(
            decode_array(b["latent"], "b").numpy(), decode_array(a["latent"], "a").numpy(), rtol=1e-4, atol=1e-5
        )
    assert alone[0]["mean"] != alone[1]["mean"]  # different seeds, different videos


def test_bad_requests_name_the_field(server):
    srv, url = server
    srv.start_loading()
    wait_until(lambda: srv.engine.loaded.is_set(), what="model loaded")
    code, out = http("POST", url + "/v1/generate", _request(text=[[1.0, 2.0]]))
    assert code == 400 and "text: expected [tokens, 16]" in out["error"]
    code, out = http("POST", url + "/v1/generate", _request(height=5))
    assert code == 400 and "patch size" in out["error"]
    code, out = http("POST", url + "/v1/generate", _request(steps=0))
    assert code == 400 and out["error"].startswith("steps:")
    code, out = http("POST", url + "/v1/generate", _request(reference=np.zeros((3, 1, 4, 4)).tolist()))
    assert code == 400 and out["error"].startswith("reference: expected a latent [4, 1, H, W]")
    code, out = http("POST", url + "/v1/generate", _request(colour="red"))
    assert code == 400 and "colour" in out["error"]


def test_reference_and_context_conditions_change_the_video(server):
    srv, url = server
    srv.start_loading()
    wait_until(lambda: srv.engine.loaded.is_set(), what="model loaded")
    g = torch.Generator().manual_seed(0)
    ref = encode_array(torch.randn(TINY.latent_channels, 1, 4, 4, generator=g))
    ctx = encode_array(torch.randn(TINY.latent_channels, 2, 4, 4, generator=g))
    plain = http("POST", url + "/v1/generate", _request(return_latent=True))[1]
    edited = http("POST", url + "/v1/generate", _request(return_latent=True, reference=ref, context=ctx))[1]
    assert not torch.allclose(decode_array(plain["latent"], "p"), decode_array(edited["latent"], "e"))


def test_fp8_server_stays_close_to_fp32(student_file):
    outs = []
    for fp8 in (False, True):
        engine = InferenceEngine(str(student_file), fp8=fp8)
        engine.load()
        from omnitrain.serving.api import GenerateRequest

        outs.append(engine.run_batch([engine.prepare(GenerateRequest.model_validate(_request(return_latent=True)))]))
    a, b = (decode_array(o[0]["latent"], "x") for o in outs)
    assert 0 < float((a - b).norm() / a.norm()) < 0.05


def test_serve_command_answers_over_http(student_file):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "omnitrain",
            "serve",
            "--checkpoint",
            str(student_file),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    try:
        line = proc.stdout.readline()
        port = int(re.search(r"listening on 127\.0\.0\.1:(\d+)", line).group(1))
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: http("GET", url + "/readyz")[0] == 200, what="readyz 200")
        code, out = http("POST", url + "/v1/generate", _request())
        assert code == 200 and out["shape"] == [TINY.latent_channels, 2, 4, 4]
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
