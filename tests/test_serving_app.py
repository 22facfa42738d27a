"""hashing/serving_app.py without a running service: how the code parts are split over partitions."""

from __future__ import annotations

import pickle

import pytest

from hashing.errors import InputError
from hashing.serving_app import PARTITION_SHIFT, ServicePlan, split_contiguous


@pytest.mark.parametrize(("size", "n"), [(1, 1), (4, 2), (5, 2), (16, 3), (7, 7)])
def test_split_contiguous_keeps_order_and_balances(size: int, n: int) -> None:
    items = list(range(size))
    groups = split_contiguous(items, n)
    assert len(groups) == n
    assert [x for g in groups for x in g] == items  # contiguous runs, in order: merge order = database order
    assert all(groups) and max(map(len, groups)) - min(map(len, groups)) <= 1


@pytest.mark.parametrize("n", [0, -1, 5])
def test_split_contiguous_refuses_more_partitions_than_parts(n: int) -> None:
    with pytest.raises(InputError, match=r"partitions must be in \[1, 4\]"):
        split_contiguous([1, 2, 3, 4], n)


def test_plan_travels_to_replicas_and_global_ids_keep_partition_order() -> None:
    plan = ServicePlan(model_name="m", model_version=3, model_uri="models:/m/3", codes_uri="/c",
                       split="database", partitions=[[("database/shard-000000.tar", "ab")]], classes=["a"],
                       tracking_uri="sqlite:///x")
    assert pickle.loads(pickle.dumps(plan)) == plan
    # partition p's rows get ids p << PARTITION_SHIFT | row: every row of p sorts before every row of p + 1
    assert (0 << PARTITION_SHIFT) | (2**PARTITION_SHIFT - 1) < (1 << PARTITION_SHIFT) | 0
