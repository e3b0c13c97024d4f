"""The OpenMail simulator: a local stand-in for OpenMail's WebSocket and webhook event delivery and
its attachment downloads, written to the protocol reference, for our tests, ``openmail-bridge demo``
and users' agents.

Modules: ``server`` (the :class:`Simulator`, routing), ``endpoint`` (``/v1/ws``: auth, limits,
rejections), ``connection`` (one WebSocket's protocol), ``webhooks`` (signed webhooks and their
targets), ``keys`` (the account's API key), ``records`` (delivery records, rejections, attachment
requests, the delivered bytes), ``mail`` (generated events), ``attachments`` (served attachments:
metadata and bytes), ``downloads`` (``/v1/attachments``: auth, redirect, faults), ``control`` (the
``/_sim`` HTTP API), ``run`` (:func:`serve` for the CLI).
"""

from __future__ import annotations

from bridge.simulator.attachments import AttachmentSpec, ServedAttachment, content_of
from bridge.simulator.connection import ConnectionInfo
from bridge.simulator.downloads import FetchBehaviour, FetchMode
from bridge.simulator.records import AttachmentRequest, DeliveryRecord, Rejection
from bridge.simulator.run import serve
from bridge.simulator.server import DEMO_API_KEY, Simulator

__all__ = [
    "DEMO_API_KEY",
    "AttachmentRequest",
    "AttachmentSpec",
    "ConnectionInfo",
    "DeliveryRecord",
    "FetchBehaviour",
    "FetchMode",
    "Rejection",
    "ServedAttachment",
    "Simulator",
    "content_of",
    "serve",
]
