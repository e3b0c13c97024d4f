"""The simulator's signed webhooks: per-inbox targets, OpenMail's retry schedule, timeouts and a
secret rotated between attempts. The receiver checks signatures with its own HMAC code.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

import pytest

from bridge.simulator import Simulator

from .conftest import (
    FAST_RETRIES,
    SALES,
    SUPPORT,
    Receiver,
    of,
    signature_ok,
)

pytestmark = pytest.mark.timeout(20)


async def test_inbox_webhook_overrides_account_with_its_own_secret(
    sim: Simulator, receiver: Receiver
) -> None:
    sim.set_webhook(receiver.url("account"), "account-secret")
    sim.set_webhook(receiver.url("sales"), "sales-secret", inbox_id=SALES)
    support = await sim.inject(inbox_id=SUPPORT)
    sales = await sim.inject(inbox_id=SALES)
    await sim.wait_for(lambda: len([r for r in sim.deliveries if r.channel == "webhook"]) == 2)
    by_id = {hit.json["event_id"]: hit for hit in receiver.hits}
    assert by_id[support].path == "/account"
    assert signature_ok(by_id[support], "account-secret")
    assert by_id[sales].path == "/sales"
    assert signature_ok(by_id[sales], "sales-secret")
    assert not signature_ok(by_id[sales], "account-secret")
    config = sim.webhook_config()
    assert "secret" not in json.dumps(config).replace("secret_set", "")


async def test_webhook_retry_after_500_re_signs_a_new_body(
    sim: Simulator, receiver: Receiver
) -> None:
    sim.set_webhook(receiver.url("account"), "s3cret")
    receiver.statuses = [500]
    event_id = await sim.inject()
    await sim.wait_for(lambda: any(r.status == 200 for r in of(sim, event_id)))
    first, second = receiver.hits
    assert [first.json["attempt"], second.json["attempt"]] == [1, 2]
    assert first.headers["X-Event-Id"] == second.headers["X-Event-Id"] == event_id
    assert signature_ok(first, "s3cret")
    assert signature_ok(second, "s3cret")
    assert first.body != second.body
    records = of(sim, event_id)
    assert [(r.channel, r.attempt, r.status) for r in records] == [
        ("webhook", 1, 500),
        ("webhook", 2, 200),
    ]
    assert records[0].error == "HTTP 500"
    # The second attempt waited 30 s * retry_scale after the first.
    assert second.arrived - first.arrived >= 30 * FAST_RETRIES * 0.9


async def test_webhook_timeout_counts_as_failure_and_gives_up_after_5(
    make_sim: Callable[..., Awaitable[Simulator]], receiver: Receiver
) -> None:
    sim = await make_sim(webhook_timeout=0.1)
    sim.set_webhook(receiver.url("account"), "s3cret")
    receiver.stall = 1  # first attempt too slow: never answered
    receiver.statuses = [200, 503, 404, 500, 502]  # the slow 200 does not count
    event_id = await sim.inject()
    await sim.wait_for(lambda: bool(of(sim, event_id, "failed")), timeout=10)
    records = of(sim, event_id)
    assert [r.attempt for r in records] == [1, 2, 3, 4, 5, 5]
    assert records[0].status is None
    assert "no response" in (records[0].error or "")
    assert [r.status for r in records[1:5]] == [503, 404, 500, 502]
    assert (records[-1].channel, records[-1].status) == ("failed", 502)
    assert len(receiver.hits) == 5
    assert sim.pending_webhooks == 0


async def test_changed_secret_applies_to_the_next_retry(
    make_sim: Callable[..., Awaitable[Simulator]], receiver: Receiver
) -> None:
    sim = await make_sim(retry_scale=0.01)  # 0.3 s before attempt 2: time to rotate
    sim.set_webhook(receiver.url("sales"), "old-secret", inbox_id=SALES)
    receiver.statuses = [500]
    event_id = await sim.inject(inbox_id=SALES)
    await sim.wait_for(lambda: bool(of(sim, event_id, "webhook")))
    sim.set_webhook(receiver.url("sales"), "new-secret", inbox_id=SALES)
    await sim.wait_for(lambda: len(of(sim, event_id, "webhook")) == 2)
    first, second = receiver.hits
    assert signature_ok(first, "old-secret")
    assert signature_ok(second, "new-secret")
    assert not signature_ok(second, "old-secret")
