"""The recorder: delivered rows marked off the delivery path, those handed over while a mark
commits marked together next, each batch reported once its mark returned, in order."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from bridge.events import Origin
from bridge.recorder import Delivered, Recorder
from bridge.store import Delivery


def row(n: int) -> Delivery:
    return Delivery(id=n, seq=n, sink="s", event_id=f"evt_{n}", type="message.received",
                    inbox_id="inb_1", thread_id=f"thr_{n}", origin=Origin.WEBHOOK,
                    received_at=0.0, payload=b"{}", attempts=0, last_error=None)  # fmt: skip


class HeldStore:
    """Marks return when the test says so."""

    def __init__(self) -> None:
        self.marks: list[list[int]] = []
        self._done: list[asyncio.Future[None]] = []

    async def mark(self, deliveries: list[Delivery]) -> bool:
        self.marks.append([d.id for d in deliveries])
        done = asyncio.get_running_loop().create_future()
        self._done.append(done)
        await done
        return True

    def commit(self, index: int) -> None:
        self._done[index].set_result(None)


async def test_rows_handed_over_during_a_mark_are_marked_together_next() -> None:
    store, reported = HeldStore(), list[list[int]]()

    def recorded(batch: Sequence[Delivered]) -> None:
        reported.append([d.id for d, _ in batch])

    recorder = Recorder(store.mark, recorded)
    recorder.start("test:record")
    try:
        first = recorder.add([row(1)], None)
        await asyncio.sleep(0)
        assert store.marks == [[1]]
        second = recorder.add([row(2), row(3)], 2)
        assert recorder.add([row(4)], None) is second  # one write, one answer
        assert len(recorder) == 4  # none recorded yet
        assert not first.done()
        store.commit(0)
        await first
        assert reported == [[1]]
        await asyncio.sleep(0)
        assert store.marks == [[1], [2, 3, 4]]
        assert not second.done()
        store.commit(1)
        await second
        await recorder.drain()
        assert reported == [[1], [2, 3, 4]]
        assert len(recorder) == 0
    finally:
        await recorder.close()


async def test_the_attempt_that_delivered_each_row_is_reported() -> None:
    store, attempts = HeldStore(), list[int | None]()
    recorder = Recorder(store.mark, lambda batch: attempts.extend(a for _, a in batch))
    recorder.start("test:record")
    try:
        recorder.add([row(1)], 3)
        recorder.add([row(2)], None)
        await asyncio.sleep(0)
        store.commit(0)
        await recorder.drain()
        assert attempts == [3, None]
    finally:
        await recorder.close()


async def test_closing_leaves_unmarked_rows_unreported() -> None:
    store, reported = HeldStore(), list[int]()
    recorder = Recorder(store.mark, lambda batch: reported.extend(d.id for d, _ in batch))
    recorder.start("test:record")
    recorder.add([row(1)], None)
    await asyncio.sleep(0)
    await recorder.close()  # the mark never returned: the row stays pending in the store
    assert reported == []
