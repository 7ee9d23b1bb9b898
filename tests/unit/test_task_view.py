"""What a task's poll shows of the shared queue: a coarse figure, never an exact count."""

from __future__ import annotations

import pytest

from shared.task_view import coarse_position


@pytest.mark.parametrize(
    ("ahead", "shown"),
    [(None, None), (0, 0), (1, 10), (9, 10), (10, 10), (11, 100), (100, 100), (101, 1000)],
)
def test_queue_positions_are_coarse(ahead: int | None, shown: int | None) -> None:
    assert coarse_position(ahead) == shown
