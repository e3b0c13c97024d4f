"""Benchmark harness for openmail-bridge (``make bench`` / ``python -m bench``).

Measures, in one run on one machine, how fast events get from an OpenMail-speaking load server
into a file: baseline A (a minimal aiohttp client that only parses: the practical limit of the
ingest path), baseline B (the Python listener from OpenMail's quickstart), and the bridge (WebSocket
and webhook paths). Results are reported as ratios between runs of the same invocation, so machine
speed cancels out. See ``bench.runner`` for the procedure, ``bench.report`` for the table and
the targets.
"""
