"""The OpenMail simulator: a local stand-in for OpenMail's WebSocket and webhook event delivery,
written to the protocol reference, for our tests, ``openmail-bridge demo`` and users' agents.

Modules: ``server`` (the :class:`Simulator`, routing), ``endpoint`` (``/v1/ws``: auth, limits),
``connection`` (one WebSocket's protocol), ``webhooks`` (signed webhooks and their targets),
``records`` (delivery records, the delivered bytes), ``mail`` (generated events), ``control`` (the
``/_sim`` HTTP API), ``run`` (:func:`serve` for the CLI).
"""

from __future__ import annotations

from bridge.simulator.connection import ConnectionInfo
from bridge.simulator.records import DeliveryRecord
from bridge.simulator.run import serve
from bridge.simulator.server import DEMO_API_KEY, Simulator

__all__ = ["DEMO_API_KEY", "ConnectionInfo", "DeliveryRecord", "Simulator", "serve"]
