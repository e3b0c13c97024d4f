"""Tests of ``bridge.simulator``, one module each. A package, so that this directory's
``conftest`` (its fixtures and helpers, imported by the tests here) is ``simulator.conftest`` and
does not replace the top-level ``conftest`` other test modules import by that name.
"""
