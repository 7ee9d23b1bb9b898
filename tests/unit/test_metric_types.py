"""The metric types whose labelled children are kept: the same child for the same values,
whichever way they are named, and the same exposition as prometheus_client's own."""

from __future__ import annotations

import prometheus_client
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from shared import metric_types


def exposition(kind: str, module: object) -> str:
    registry = CollectorRegistry()
    counter = module.Counter("c", "a counter", ["a", "b"], registry=registry)
    gauge = module.Gauge("g", "a gauge", ["a"], registry=registry)
    histogram = module.Histogram("h", "a histogram", ["a"], registry=registry)
    for _ in range(3):
        counter.labels("x", "y").inc()
        counter.labels(a="x", b="z").inc(2)
        gauge.labels("x").inc()
        gauge.labels("x").dec(0.5)
        histogram.labels("x").observe(0.3)
    counter.labels(5, "y").inc()  # values are made strings, as prometheus_client does
    lines = generate_latest(registry).decode().splitlines()
    return "\n".join(line for line in lines if "_created" not in line)


def test_the_exposition_is_prometheus_clients() -> None:
    assert exposition("kept", metric_types) == exposition("own", prometheus_client)


def test_a_childs_values_find_the_same_child() -> None:
    counter = metric_types.Counter("c", "a counter", ["a"], registry=CollectorRegistry())
    assert counter.labels("x") is counter.labels("x")
    assert counter.labels(a="x") is counter.labels("x")
    with pytest.raises(ValueError):
        counter.labels("x", "y")  # still checked: the wrong number of values
