"""Benchmark harness for openmail-bridge (``make bench`` / ``python -m bench``).

Measures, in one run on one machine, how fast events get from an OpenMail-speaking load server
into a file or to an HTTP hook: baseline A (a minimal aiohttp client that only parses: the
practical limit of the ingest path), baseline B (the Python listener from OpenMail's quickstart),
baseline C (a forwarder that POSTs each event to a hook, one at a time, as OpenMail's CLI bridge
does), baseline D (a nats-py client publishing each event to JetStream, awaiting every PubAck),
and the bridge (WebSocket to a file, to the hook or to JetStream, webhook, the drain of a backlog
built up while the hook was down, and an edge bridge publishing to JetStream with a sidecar bridge
consuming into a file). The JetStream rows run a nats-server of their own (``bench.jetstream``) and
are skipped where there is none. Results are reported as ratios between runs of the same
invocation, so machine speed cancels out. See ``bench.runner`` and ``bench.backlog`` for the
procedures, ``bench.report`` for the table and the targets.
"""
