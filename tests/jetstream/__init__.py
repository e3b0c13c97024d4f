"""Tests of ``bridge.nats``, the NATS sink and the NATS source, against a real ``nats-server``.

A package, so that this directory's ``conftest`` is ``jetstream.conftest`` and does not replace
the top-level one. Not named ``nats``: pytest puts ``tests/`` on ``sys.path``, and a package of
that name there would shadow the ``nats`` client library.
"""
