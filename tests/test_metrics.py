"""The metrics the bridge exports, beyond what the admin server's tests read of them."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bridge.metrics import LATENCY_BUCKETS, Metrics


def exposition(metrics: Metrics) -> list[str]:
    # The _created sample is the time the child was made: the one line two registries differ in.
    return [line for line in metrics.render().decode().splitlines() if "_created" not in line]


edges = st.sampled_from([*LATENCY_BUCKETS, 0.0])
nearby = edges.flatmap(lambda b: st.sampled_from([b, b * (1 + 1e-9), b * (1 - 1e-9)]))


@given(st.lists(st.one_of(nearby, st.floats(0, 1e6)), max_size=40))
def test_a_batch_observed_at_once_exports_what_observing_each_would(amounts: list[float]) -> None:
    one_by_one, batched = Metrics(), Metrics()
    each = one_by_one.delivery_latency.labels("agent")
    for amount in amounts:
        each.observe(amount)
    batched.delivery_latency.labels("agent").observe_many(amounts)
    assert exposition(batched) == exposition(one_by_one)
