import threading

import pytest

from omnitrain.serving.batching import BatchQueue


def test_requests_with_the_same_key_run_as_one_batch_and_others_separately():
    seen = []
    release = threading.Event()

    def process(items):
        release.wait(30)
        seen.append(list(items))
        return [x * 10 for x in items]

    q = BatchQueue(process, max_batch=3, max_wait_s=30)
    futures = [q.submit("a", 1), q.submit("b", 2), q.submit("a", 3), q.submit("a", 4)]
    release.set()
    assert [f.result(timeout=30) for f in futures[::2]] == [10, 30]
    q.close()  # "b" would wait up to max_wait for company; closing runs it at once
    assert futures[1].result(timeout=30) == 20
    # The first batch fills up to max_batch with key "a" (not waiting out max_wait); "b" runs on its own.
    assert seen == [[1, 3, 4], [2]]


def test_a_failing_batch_fails_only_its_requests():
    def process(items):
        if "bad" in items:
            raise ValueError("boom")
        return items

    q = BatchQueue(process, max_batch=1, max_wait_s=0)
    try:
        bad, good = q.submit("k", "bad"), q.submit("k", "ok")
        with pytest.raises(ValueError, match="boom"):
            bad.result(timeout=30)
        assert good.result(timeout=30) == "ok"
    finally:
        q.close()
