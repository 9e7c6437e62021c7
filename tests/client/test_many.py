"""pool_many's planner: requests within the server's limits, items in input order."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from adapool_client import Limits
from adapool_client._many import BODY_MARGIN, Many, Planner, progress_bar
from adapool_client._wire import PoolOptions

LIMITS = Limits(
    max_body_bytes=64 * 2**20,
    max_items_per_request=4,
    max_tokens_per_item=2048,
    max_tokens_per_request=100,
)


def plan(planner: Planner, lengths: list[int], dim: int = 2) -> list[tuple[int, list[int]]]:
    out = []
    for n in lengths:
        batch = planner.add(np.zeros((n, dim)))
        if batch is not None:
            out.append((batch[0], [len(x) for x in batch[1]]))
    last = planner.flush()
    if last is not None:
        out.append((last[0], [len(x) for x in last[1]]))
    return out


def test_batches_stop_at_the_item_limit_and_at_the_padded_token_limit() -> None:
    planner = Planner(batch_size=32, limits=LIMITS, max_batch_tokens=None, itemsize=4)
    assert planner.batch_size == 4  # capped at max_items_per_request
    got = plan(planner, [10, 10, 10, 10, 10, 30, 30, 30, 60, 200, 5])
    # 4 x 10; then 10, 30, 30 (3 x 30 = 90; a fourth would pad to 120); 30 (30, 60 would
    # pad to 120); 60; 200 alone (over the limit: the server's 413 will say so); 5
    assert got == [
        (0, [10, 10, 10, 10]),
        (4, [10, 30, 30]),
        (7, [30]),
        (8, [60]),
        (9, [200]),
        (10, [5]),
    ]


def test_the_body_limit_bounds_batches_of_wide_tokens() -> None:
    body = 2 * 768 * 4 * 128 + BODY_MARGIN  # room for 2 items of 128 tokens of dim 768
    limits = Limits(body, 64, 2048, 32_768)
    planner = Planner(batch_size=64, limits=limits, max_batch_tokens=None, itemsize=4)
    assert [b for _, b in plan(planner, [128] * 5, dim=768)] == [[128, 128]] * 2 + [[128]]
    half = Planner(batch_size=64, limits=limits, max_batch_tokens=None, itemsize=2)  # float16
    assert [b for _, b in plan(half, [128] * 5, dim=768)] == [[128] * 4, [128]]


def test_without_limits_only_batch_size_and_max_batch_tokens_apply() -> None:
    planner = Planner(batch_size=3, limits=None, max_batch_tokens=None, itemsize=4)
    assert [b for _, b in plan(planner, [1000] * 7)] == [[1000] * 3, [1000] * 3, [1000]]
    planner = Planner(batch_size=10, limits=LIMITS, max_batch_tokens=50, itemsize=4)
    assert [b for _, b in plan(planner, [20, 20, 20])] == [[20, 20], [20]]  # 50 wins over 100


def test_items_are_checked_with_their_index_in_the_input() -> None:
    planner = Planner(batch_size=2, limits=None, max_batch_tokens=None, itemsize=4)
    for _ in range(3):
        planner.add(np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"items\[3\]: token dim 5 differs from item 0's 4"):
        planner.add(np.zeros((3, 5)))
    with pytest.raises(ValueError, match=r"items\[3\]: must be \[N, D\] with N >= 1"):
        planner.add(np.zeros((0, 4)))
    with pytest.raises(TypeError, match=r"items\[3\]: needs numbers"):
        planner.add(np.array([["x"]]))


@pytest.mark.parametrize("name", ["batch_size", "concurrency", "max_batch_tokens"])
def test_settings_below_one_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match=f"{name}: must be >= 1"):
        Many(PoolOptions(), **{name: 0})  # type: ignore[arg-type]


def test_the_progress_bar_is_tqdm_when_installed_else_a_line_on_stderr(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tqdm = pytest.importorskip("tqdm")
    bar = progress_bar(True, [1, 2, 3])
    assert isinstance(bar, tqdm.tqdm) and bar.total == 3
    bar.close()
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # as if tqdm were not installed
    bar = progress_bar(True, iter([1, 2, 3]))  # no len(): no total
    bar.update(2)
    bar.update(1)
    bar.close()
    assert capsys.readouterr().err.endswith("\rpooled 2 items\rpooled 3 items\n")
    quiet = progress_bar(False, [1])
    quiet.update(1)
    assert capsys.readouterr().err == ""
