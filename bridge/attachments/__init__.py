"""Attachments an agent can open without the API key: an HTTP sink that asks for them gets each
attachment of a ``message.received`` event downloaded from the OpenMail API and stored under its
own directory, and the event it sends names the local file.

``settings`` is the sink's ``attachments`` option; ``rules`` decides, without I/O, which URLs and
redirects may be fetched and what an answer means; ``payload`` reads an event's attachment list and
writes the enriched one; ``files`` is the content-addressed, bounded directory; ``fetcher``
downloads one attachment with retries; ``service`` ties them together for one sink.
"""
