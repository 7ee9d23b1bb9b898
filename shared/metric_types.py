"""Prometheus' metric types, their labelled children kept by label values: a job or a
request looks up several children, and `labels()` (a lock, a check and a conversion of
every value each time) costs more than what is then counted."""

from __future__ import annotations

from typing import Any, Self

from prometheus_client import Counter as _Counter
from prometheus_client import Gauge as _Gauge
from prometheus_client import Histogram as _Histogram


class _KeptChildren:
    """What the metric types below share: `labels(*values)` from a dict after the first
    time. Spool never removes a child, so a kept one is always the metric's own."""

    _kept: dict[tuple[Any, ...], Any]

    def labels(self, *values: Any, **named: Any) -> Self:
        if named:
            return super().labels(*values, **named)  # type: ignore[misc, no-any-return]
        kept = self.__dict__.setdefault("_kept", {})
        child = kept.get(values)
        if child is None:
            child = kept[values] = super().labels(*values)  # type: ignore[misc]
        return child  # type: ignore[no-any-return]


class Counter(_KeptChildren, _Counter):
    pass


class Gauge(_KeptChildren, _Gauge):
    pass


class Histogram(_KeptChildren, _Histogram):
    pass
