"""The metrics the bridge exports, beyond what the admin server's tests read of them."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from bridge.metrics import LATENCY_BUCKETS, Metrics

LATENCY = "openmail_bridge_delivery_latency_seconds"


def samples(metrics: Metrics) -> dict[str, float]:
    # _created is the time the child was made: the one sample two registries always differ in.
    return {
        f"{s.name}{sorted(s.labels.items())}": s.value
        for family in metrics.registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    }


edges = st.sampled_from([*LATENCY_BUCKETS, 0.0])
nearby = edges.flatmap(lambda b: st.sampled_from([b, b * (1 + 1e-9), b * (1 - 1e-9)]))
batch = st.lists(st.one_of(nearby, st.floats(0, 1e6)), max_size=40)


@given(st.lists(batch, max_size=4))
def test_batches_observed_at_once_export_what_observing_each_would(
    batches: list[list[float]],
) -> None:
    one_by_one, batched = Metrics(), Metrics()
    each = one_by_one.delivery_latency.labels("agent")
    many = batched.delivery_latency.labels("agent")
    for amounts in batches:
        for amount in amounts:
            each.observe(amount)
        many.observe_many(amounts)
    expected, got = samples(one_by_one), samples(batched)
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        if name.startswith(f"{LATENCY}_sum"):  # summed per batch: rounding may differ
            assert math.isclose(got[name], value, rel_tol=1e-12, abs_tol=1e-9)
        else:
            assert got[name] == value, name
