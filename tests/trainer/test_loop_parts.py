import threading

import pytest

from omnitrain.model.config import PRESETS
from omnitrain.spec import DataSpec
from omnitrain.trainer.data.reader import DataError, list_shards
from omnitrain.trainer.dataset_setup import ensure_dataset
from omnitrain.trainer.lr_schedule import warmup_cosine


def test_warmup_then_cosine_to_the_floor():
    assert [warmup_cosine(i, 4, 20) for i in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert warmup_cosine(4, 4, 20) == 1.0
    assert warmup_cosine(12, 4, 20) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the decay
    assert warmup_cosine(20, 4, 20) == pytest.approx(0.1)
    assert warmup_cosine(50, 4, 20) == pytest.approx(0.1)
    values = [warmup_cosine(i, 4, 20) for i in range(4, 21)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert warmup_cosine(0, 0, 10) == 1.0


def _spec(path):
    return DataSpec.model_validate({"path": str(path), "synthetic": {"samples": 12, "shards": 2}})


def test_only_the_writer_writes_and_the_others_wait_for_it(tmp_path):
    data = _spec(tmp_path / "d")
    with pytest.raises(DataError, match="node 0"):
        ensure_dataset(data, PRESETS["tiny"], is_writer=False, wait_seconds=0.3)
    assert list_shards(tmp_path / "d") == []  # a non-writer never writes
    waiter_error = []

    def wait():
        try:
            ensure_dataset(data, PRESETS["tiny"], is_writer=False, wait_seconds=120)
        except Exception as error:  # surfaced below
            waiter_error.append(error)

    waiter = threading.Thread(target=wait)
    waiter.start()
    ensure_dataset(data, PRESETS["tiny"], is_writer=True, log=lambda *_: None)
    waiter.join(timeout=120)
    assert not waiter.is_alive() and waiter_error == []
    assert len(list_shards(tmp_path / "d")) == 2
    before = [p.stat().st_mtime_ns for p in list_shards(tmp_path / "d")]
    ensure_dataset(data, PRESETS["tiny"], is_writer=True, log=lambda *_: None)  # exists: not rewritten
    assert [p.stat().st_mtime_ns for p in list_shards(tmp_path / "d")] == before


def test_missing_dataset_without_synthetic_names_the_field(tmp_path):
    with pytest.raises(DataError, match="spec.data.path"):
        ensure_dataset(DataSpec(path=str(tmp_path)), PRESETS["tiny"], is_writer=True)
