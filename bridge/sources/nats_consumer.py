"""The durable consumer a sidecar pulls from: the config the bridge creates it with, and the check
of one that already exists. What would lose events (acks that cover more than one message, a cap
on deliveries, a push consumer) or deliver another part of the stream than the config asks for
(other filters) makes it unusable; what only costs time or replays more than asked
(``ack_wait``, ``max_ack_pending``, where delivery starts) is a difference to warn of.

Pure: configs in, findings out; :mod:`bridge.sources.nats` acts on them.
"""

from __future__ import annotations

from typing import Final

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from bridge.config import NatsConsumeConfig

UNLIMITED: Final = -1
"""``max_deliver`` of a consumer that redelivers a message for as long as it is not acked."""
FIX_HINT: Final = (
    "the bridge does not consume from it: delete it (`nats consumer rm STREAM CONSUMER`) for the "
    "bridge to create it as it needs, or name another consumer in nats.consume.consumer; it is "
    "checked again with backoff, no restart needed"
)
FILTER_HINT: Final = (
    "the bridge does not consume from it. If another sidecar consumes from {durable}, name one "
    "of this bridge's own in nats.consume.consumer (a durable consumer shared by two bridges "
    "splits their mail); else set nats.consume.filter_subjects to {server} and restart, or "
    "delete the consumer (`nats consumer rm {stream} {durable}`) for the bridge to create it "
    "with {config}; it is checked again with backoff"
)
"""The hint for a consumer filtered otherwise than the config: deleting it is not the first
fix, since it may be another sidecar's."""
DIFFERS_HINT: Final = (
    "the consumer is used as the server has it: change it with `nats consumer edit`, or name a "
    "new consumer in nats.consume.consumer"
)


def consumer_config(consume: NatsConsumeConfig) -> ConsumerConfig:
    """What the bridge creates a missing durable consumer with: pulled, each message acked on
    its own, redelivered until it is, from the start of the stream."""
    filters = list(consume.filter_subjects)
    return ConsumerConfig(
        durable_name=consume.consumer,
        ack_policy=AckPolicy.EXPLICIT,
        max_deliver=UNLIMITED,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=consume.ack_wait,
        max_ack_pending=consume.max_ack_pending,
        filter_subject=filters[0] if len(filters) == 1 else None,
        filter_subjects=filters if len(filters) > 1 else None,
    )


def _word(value: object) -> object:
    """An enum as the word the server and the ``nats`` CLI use for it."""
    return value.value if isinstance(value, AckPolicy | DeliverPolicy) else value


def filters(config: ConsumerConfig) -> list[str]:
    """The subjects a consumer config delivers, sorted; empty for the whole stream. The server
    reports a consumer's filters under ``filter_subject`` or ``filter_subjects`` as they were
    given when it was made (one filter may be under either), and none by leaving both out."""
    given = set(config.filter_subjects or ())
    if config.filter_subject:
        given.add(config.filter_subject)
    return sorted(given)


def consumer_problems(
    found: ConsumerConfig, wanted: ConsumerConfig
) -> dict[str, dict[str, object]]:
    """What of an existing consumer's config would lose events the spool has not stored, or,
    against ``wanted`` (:func:`consumer_config`), deliver other mail than the config asks for:
    ``{key: {"server": found, "needed": what the bridge needs}}``; empty when it is usable.

    The bridge leaves a message it could not store un-acked and counts on JetStream to hold it
    until it is acked. ``ack_policy: all`` acks it with any later message, ``none`` on delivery;
    ``max_deliver`` drops it after that many deliveries; a push consumer sends at its own pace to
    a subject the bridge does not pull from. Other filters hand this bridge's sinks another
    part of the stream (another inbox's mail), and what it acks of it is gone for the sidecar
    the consumer was made for; what the config asks for never comes.
    """
    problems: dict[str, dict[str, object]] = {}
    if (have := filters(found)) != (need := filters(wanted)):
        problems["filter_subjects"] = {"server": have, "needed": need}
    if found.ack_policy != AckPolicy.EXPLICIT:  # the server's word, a str equal to the enum
        problems["ack_policy"] = {"server": _word(found.ack_policy), "needed": "explicit"}
    if found.max_deliver not in (None, 0, UNLIMITED):  # 0 and absent are the server's -1
        problems["max_deliver"] = {"server": found.max_deliver, "needed": UNLIMITED}
    if found.deliver_subject:
        problems["deliver_subject"] = {
            "server": found.deliver_subject,
            "needed": None,  # a pull consumer has none
        }
    return problems


def _filters_shown(value: object) -> str:
    """Filters as the config writes them: ``[a, b]``, or the whole stream for none."""
    if not value or not isinstance(value, list):
        return "[] (the whole stream)"
    return f"[{', '.join(str(subject) for subject in value)}]"


def fix_hint(stream: str, durable: str, problems: dict[str, dict[str, object]]) -> str:
    """How an operator makes the consumer usable: :data:`FILTER_HINT`, naming both filters,
    when its filters are wrong (whatever else is), else :data:`FIX_HINT`."""
    pair = problems.get("filter_subjects")
    if pair is None:
        return FIX_HINT
    return FILTER_HINT.format(
        stream=stream,
        durable=durable,
        server=_filters_shown(pair["server"]),
        config=_filters_shown(pair["needed"]),
    )


def describe_problems(stream: str, durable: str, problems: dict[str, dict[str, object]]) -> str:
    """One line for ``/status``'s ``last_error``: which consumer, what of it is wrong, and the
    :func:`fix_hint`."""
    parts = []
    for key, pair in problems.items():
        if key == "deliver_subject":
            parts.append(f"it is a push consumer (deliver_subject {pair['server']})")
        elif key == "filter_subjects":
            parts.append(
                f"it delivers filter_subjects {_filters_shown(pair['server'])}, not the "
                f"configured {_filters_shown(pair['needed'])}"
            )
        else:
            parts.append(f"{key} is {pair['server']} (needs {pair['needed']})")
    what = " and ".join(
        outcome
        for outcome, applies in (
            ("would misdirect mail", "filter_subjects" in problems),
            ("would lose events", bool(problems.keys() - {"filter_subjects"})),
        )
        if applies
    )
    hint = fix_hint(stream, durable, problems)
    return f"consumer {durable} on stream {stream} {what}: {'; '.join(parts)}; {hint}"


def consumer_differences(wanted: ConsumerConfig, found: ConsumerConfig) -> dict[str, object]:
    """What of ``wanted`` (:func:`consumer_config`) an existing consumer's ``found`` config does
    not hold: ``{key: {"server": found, "config": wanted}}``; empty when it holds all of it.
    Filters are not among them: other filters are a problem (:func:`consumer_problems`)."""
    pairs = {
        "ack_wait": (found.ack_wait, wanted.ack_wait),
        "max_ack_pending": (found.max_ack_pending, wanted.max_ack_pending),
        # Where a new consumer starts (another policy skips or replays part of the stream); an
        # existing one goes on from where it is, so this only says it was made otherwise.
        "deliver_policy": (_word(found.deliver_policy), _word(wanted.deliver_policy)),
    }
    return {
        key: {"server": have, "config": want} for key, (have, want) in pairs.items() if have != want
    }
