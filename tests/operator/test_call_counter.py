"""The operator's API call counter names each call by method and path when asked to (the recovery bench prints
them when a recovery costs more calls than it should)."""

from __future__ import annotations

from omnitrain.operator.kube import CallCounter, call_kind


def test_call_kind_is_method_and_path():
    url = "https://127.0.0.1:6443/apis/omnitrain.io/v1alpha1/namespaces/ns/omnitrainingjobs/j?pretty=false"
    assert call_kind("GET", url) == "GET /apis/omnitrain.io/v1alpha1/namespaces/ns/omnitrainingjobs/j"


def test_counter_counts_in_all_and_by_kind_only_when_tracking_and_snapshots_subtract():
    counter = CallCounter()
    counter.add("GET", "https://h/a")
    assert counter.calls == 1 and counter.snapshot() == {}  # kinds off: nothing kept per path
    counter.track_kinds()
    counter.add("GET", "https://h/a")
    before = counter.snapshot()
    counter.add("GET", "https://h/a")
    counter.add("POST", "https://h/b")
    assert counter.calls == 4
    assert counter.snapshot() - before == {"GET /a": 1, "POST /b": 1}
