"""Attachments the simulator serves (§6, §10): their metadata as OpenMail puts it in a message
(camelCase: ``filename``, ``contentType``, ``sizeBytes``, ``url``, ``parsedText``,
``extractionMethod``) and their bytes.

The bytes are derived from the message id and the file name, so that a test in any language can
recompute them without asking: the first ``sizeBytes`` bytes of
``SHAKE-256(f"{message_id}/{filename}")`` (UTF-8). Nothing is stored but the metadata.
"""

from __future__ import annotations

import hashlib
import mimetypes
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote

MAX_ATTACHMENTS: Final = 20
"""Most attachments one generated message may carry."""
MAX_SIZE: Final = 64 * 1024 * 1024
"""Largest attachment the simulator makes (the bytes are built in memory per request)."""
DEFAULT_SIZE: Final = 4096
"""Attachment ``i`` (from 1) of a message is ``i * DEFAULT_SIZE`` bytes unless a size is given."""
EXTRACTION_LIMIT: Final = 10 * 1024 * 1024
"""OpenMail extracts no text from larger files (``extractionMethod: skipped_too_large``)."""
NO_TEXT: Final = frozenset({"unsupported", "pdf_error", "skipped_too_large"})
"""``extractionMethod`` values that say extraction failed: no ``parsedText`` then."""
_OFFICE_PREFIXES: Final = (
    "application/vnd.openxmlformats-officedocument.",
    "application/vnd.ms-",
    "application/msword",
)


def attachment_json(
    *,
    filename: str,
    content_type: str,
    size_bytes: int,
    url: str,
    parsed_text: str | None,
    extraction_method: str,
) -> dict[str, object]:
    """One entry of ``message.attachments`` in OpenMail's key order (§6)."""
    data: dict[str, object] = {
        "filename": filename,
        "contentType": content_type,
        "sizeBytes": size_bytes,
        "url": url,
    }
    if parsed_text is not None:
        data["parsedText"] = parsed_text
    data["extractionMethod"] = extraction_method
    return data


def content_of(message_id: str, filename: str, size: int) -> bytes:
    """The bytes the simulator serves for this attachment."""
    return hashlib.shake_256(f"{message_id}/{filename}".encode()).digest(size)


def attachment_url(base_url: str, message_id: str, filename: str) -> str:
    """``{base}/v1/attachments/{message_id}/{filename}``, each part percent-encoded (a ``/`` in a
    file name stays inside its path segment)."""
    return f"{base_url}/v1/attachments/{quote(message_id, safe='')}/{quote(filename, safe='')}"


@dataclass(frozen=True, slots=True, kw_only=True)
class AttachmentSpec:
    """What a test asks for; each field left None takes the default of the attachment's place."""

    filename: str | None = None
    content_type: str | None = None
    size_bytes: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ServedAttachment:
    """An attachment of one message, as the simulator announces and serves it."""

    message_id: str
    filename: str
    content_type: str
    size_bytes: int
    url: str
    parsed_text: str | None
    extraction_method: str

    def content(self) -> bytes:
        return content_of(self.message_id, self.filename, self.size_bytes)

    def sha256(self) -> str:
        return hashlib.sha256(self.content()).hexdigest()

    def to_json(self) -> dict[str, object]:
        """The entry in ``message.attachments``."""
        return attachment_json(
            filename=self.filename,
            content_type=self.content_type,
            size_bytes=self.size_bytes,
            url=self.url,
            parsed_text=self.parsed_text,
            extraction_method=self.extraction_method,
        )


def extraction_method(content_type: str, size: int) -> str:
    """What OpenMail's text extraction would report for such a file."""
    kind = content_type.split(";", 1)[0].strip().lower()
    if size > EXTRACTION_LIMIT:
        return "skipped_too_large"
    if kind == "application/pdf":
        return "pdf"
    if kind.startswith("image/"):
        return "ocr"
    if kind == "text/csv":
        return "csv"
    if kind.startswith("text/"):
        return "text"
    if kind.startswith(_OFFICE_PREFIXES):
        return "office"
    return "unsupported"


def _check_filename(filename: str) -> None:
    if not filename or len(filename) > 255:
        raise ValueError("filename: must be 1 to 255 characters")
    if "\x00" in filename:
        raise ValueError("filename: must not contain NUL")
    if filename in (".", ".."):
        # A URL path normalises these away: no request could name the file.
        raise ValueError(f"filename: {filename!r} cannot be addressed in a URL")


def make_attachments(
    message_id: str, specs: Sequence[AttachmentSpec], base_url: str
) -> list[ServedAttachment]:
    """The attachments of ``message_id``, one per spec, served under ``base_url``.

    Attachment ``i`` (from 1) defaults to ``document-{i}.pdf`` (odd ``i``) or ``scan-{i}.png``
    (even), ``i * DEFAULT_SIZE`` bytes; a given file name without a type gets the type its
    extension suggests (else ``application/octet-stream``).

    Raises:
        ValueError: too many attachments, a size out of range, an unusable or repeated file name.
    """
    if len(specs) > MAX_ATTACHMENTS:
        raise ValueError(f"at most {MAX_ATTACHMENTS} attachments per message")
    served: list[ServedAttachment] = []
    names: set[str] = set()
    for index, spec in enumerate(specs, start=1):
        default_name, default_type = (
            (f"document-{index}.pdf", "application/pdf")
            if index % 2
            else (f"scan-{index}.png", "image/png")
        )
        filename = spec.filename if spec.filename is not None else default_name
        _check_filename(filename)
        if filename in names:
            raise ValueError(f"filename: {filename!r} appears twice in one message")
        names.add(filename)
        if spec.content_type is not None:
            content_type = spec.content_type
        elif spec.filename is None:
            content_type = default_type
        else:
            content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        if not content_type.strip() or "\n" in content_type or "\r" in content_type:
            raise ValueError("content_type: must be a non-empty single-line string")
        size = spec.size_bytes if spec.size_bytes is not None else index * DEFAULT_SIZE
        if not 0 <= size <= MAX_SIZE:
            raise ValueError(f"size_bytes: must be between 0 and {MAX_SIZE}")
        method = extraction_method(content_type, size)
        text = None if method in NO_TEXT else f"Attachment {index} of {message_id}: {filename}"
        served.append(
            ServedAttachment(
                message_id=message_id,
                filename=filename,
                content_type=content_type,
                size_bytes=size,
                url=attachment_url(base_url, message_id, filename),
                parsed_text=text,
                extraction_method=method,
            )
        )
    return served
