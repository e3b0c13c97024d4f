"""The live console at the admin server's ``/``: a server-rendered page, a little plain script
and a stylesheet served from this package (no framework, nothing fetched from elsewhere), and
the JSON API the page reads.

What lives where:

- :mod:`~bridge.console.routes`: the HTTP handlers (page, login, static files, ``/api/*``).
- :mod:`~bridge.console.view`: what the console reads off a running bridge, and its reads.
- :mod:`~bridge.console.overview`: the panels' facts in an operator's words (pure).
- :mod:`~bridge.console.events`: recent events and dead letters as shown (pure).
- :mod:`~bridge.console.page`, :mod:`~bridge.console.html`: the pages, always escaped.
- :mod:`~bridge.console.guard`: the Host, Origin and header rules (pure).
- :mod:`~bridge.console.auth`, :mod:`~bridge.console.sessions`: who is asking; the sessions.
- ``static/``: ``console.js`` (following the bridge, the actions), ``panels.js`` (drawing the
  panels), ``console.css``, ``favicon.svg``.
"""
