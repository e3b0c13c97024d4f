"""The key-path walker: raw YAML read beside a dataclass's type hints, every problem collected.

:class:`Walker` converts scalars (``${VAR}`` interpolated first), durations, sizes, secrets,
listen addresses, URLs, paths, email addresses, ``Literal`` choices, tuples, maps and nested
sections, naming each problem ``key.path: message`` instead of stopping at the first. It knows
no section by name; the section-specific rules live in ``bridge.config.loader``.

``${VAR}``, ``${VAR:-default}`` and ``${VAR:?message}`` are expanded in every string value; an unset
``VAR`` falls back to the file named by ``VAR_FILE``. ``$$`` is a literal ``$``; any other ``${``
is a problem.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import math
import re
import types
import typing
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Final, Literal, Union

from bridge.config.values import (
    Bounds,
    Kind,
    Listen,
    Secret,
    parse_address,
    parse_duration,
    parse_listen,
    parse_rate,
    parse_size,
)

# The last branch is a ${ that starts none of the forms: README promises $$ as the way to a literal
# ${, so one written bare is a mistake to name, not text to keep.
_ENV_RE: Final = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:-|:\?)([^}]*))?\}|\$\$|\$\{")
_LITERAL: Final = "(write $${ for a literal ${)"
_UNCLOSED: Final = f"unclosed ${{ ... }} {_LITERAL}"
_NOT_A_VARIABLE: Final = (
    f"a ${{...}} that is not ${{VAR}}, ${{VAR:-default}} or ${{VAR:?message}} {_LITERAL}"
)
_WHOLE_NUMBER: Final = re.compile(r"-?[0-9]{1,30}")
INVALID: Final = object()
"""Returned in place of a value a problem was recorded for; the caller skips it."""
EMPTY_INBOUND_SECRET: Final = "is empty (an empty secret would accept anything)"  # noqa: S105
# Messages, not passwords (S105).
EMPTY_OUTBOUND_SECRET: Final = (
    "is empty (an empty secret cannot sign or authenticate what the bridge sends: give a value, "  # noqa: S105
    "or leave the key out)"
)


class Walker:
    """Walks raw YAML beside type hints, collecting every problem with its key path."""

    def __init__(
        self, base_dir: Path, env: Mapping[str, str], *, inbound_secrets: tuple[str, ...] = ()
    ) -> None:
        """``inbound_secrets``: key-path prefixes of the secrets that verify what others send
        (an empty one would let anything in); every other secret is one the bridge sends."""
        self.base_dir = base_dir
        self.env = env
        self.inbound_secrets = inbound_secrets
        self.problems: list[str] = []

    def empty_secret(self, path: str) -> str:
        """What is wrong with an empty secret at ``path``, which depends on which way it works."""
        inbound = any(
            path == p or path.startswith((f"{p}.", f"{p}[")) for p in self.inbound_secrets
        )
        return EMPTY_INBOUND_SECRET if inbound else EMPTY_OUTBOUND_SECRET

    def fail(self, path: str, message: str) -> object:
        self.problems.append(f"{path or '<top>'}: {message}")
        return INVALID

    def mapping(self, path: str, raw: object) -> dict[str, object] | None:
        """A copy of the section at ``path`` (absent is empty); None after a problem."""
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            self.fail(path, f"expected a mapping, got {describe_raw(raw)}")
            return None
        return dict(raw)

    # Strings: ${VAR} interpolation happens on every scalar string before conversion.
    def interpolate(self, path: str, text: str) -> str | None:
        missing: list[str] = []

        def replace(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            if match.group(0) == "${":
                # Never the text itself: the value may be a secret.
                missing.append(_NOT_A_VARIABLE if "}" in text[match.end() :] else _UNCLOSED)
                return ""
            name, op, arg = match.group(1), match.group(2), match.group(3)
            value = self.env.get(name)
            if value is None and self.env.get(f"{name}_FILE"):
                value, problem = self.env_file(name)
                if problem:
                    missing.append(problem)
                    return ""
            if op == ":-":
                return value if value else arg
            if op == ":?":
                if not value:
                    missing.append(f"{arg or 'must be set'} (${{{name}}} is unset or empty)")
                    return ""
                return value
            if value is None:
                missing.append(f"environment variable {name} is not set (${{{name}}})")
                return ""
            return value

        result = _ENV_RE.sub(replace, text)
        for message in dict.fromkeys(missing):
            self.fail(path, message)
        return None if missing else result

    def env_file(self, name: str) -> tuple[str, str | None]:
        """``${VAR}`` with VAR unset and ``VAR_FILE`` set reads that file (container secrets).
        Returns the value and a problem, if any."""
        file = Path(self.env[f"{name}_FILE"])
        try:
            return file.read_text(encoding="utf-8").strip(), None
        except OSError as exc:
            return "", f"cannot read {name}_FILE={file}: {exc.strerror or exc}"
        except UnicodeDecodeError:
            return "", f"cannot read {name}_FILE={file}: not UTF-8 text"
        except ValueError as exc:  # a NUL character in the file name
            return "", f"cannot read {name}_FILE={str(file)!r}: {exc}"

    def scalar_text(self, path: str, raw: object, what: str) -> str | None:
        if isinstance(raw, bool) or not isinstance(raw, str | int | float):
            self.fail(path, f"expected {what}, got {describe_raw(raw)}")
            return None
        return self.interpolate(path, raw) if isinstance(raw, str) else str(raw)

    def convert(self, path: str, raw: object, hint: object) -> object:
        origin = typing.get_origin(hint)
        if origin is Annotated:
            base, kind = typing.get_args(hint)[:2]
            return self.convert_kind(path, raw, base, kind)
        if origin in (Union, types.UnionType):
            options = [a for a in typing.get_args(hint) if a is not type(None)]
            if raw is None:
                return None
            if isinstance(raw, bool) and bool in options:
                return raw  # `key: false` turning off a section that is otherwise a mapping
            return self.convert(path, raw, options[0])
        if origin is Literal:
            choices = typing.get_args(hint)
            text = self.scalar_text(path, raw, "one of " + ", ".join(map(str, choices)))
            if text is None:
                return INVALID
            if text not in choices:
                return self.fail(path, f"{text!r} is not one of: {', '.join(map(str, choices))}")
            return text
        if origin in (dict, Mapping, collections.abc.Mapping):
            value_hint = typing.get_args(hint)[1]
            if raw is None:
                return {}
            if not isinstance(raw, dict):
                return self.fail(path, f"expected a mapping, got {describe_raw(raw)}")
            mapping = {str(k): self.convert(f"{path}.{k}", v, value_hint) for k, v in raw.items()}
            # Read-only, so a frozen section cannot be changed through one of its maps.
            return INVALID if INVALID in mapping.values() else MappingProxyType(mapping)
        if origin is tuple:
            (item,) = typing.get_args(hint)[:1]
            if raw is None:
                return ()
            if not isinstance(raw, list):
                return self.fail(path, f"expected a list, got {describe_raw(raw)}")
            items = [self.convert(f"{path}[{i}]", v, item) for i, v in enumerate(raw)]
            return INVALID if INVALID in items else tuple(items)
        if hint is bool:
            if isinstance(raw, bool):
                return raw
            if isinstance(raw, str):
                text = self.interpolate(path, raw)
                if text is None:
                    return INVALID
                if text.lower() in ("true", "yes", "on", "1"):
                    return True
                if text.lower() in ("false", "no", "off", "0"):
                    return False
            return self.fail(path, f"expected true or false, got {describe_raw(raw)}")
        if hint is int:
            return self.whole_number(path, raw, Bounds())
        if hint is str:
            text = self.scalar_text(path, raw, "a string")
            return INVALID if text is None else text
        if hint is Secret:
            text = self.scalar_text(path, raw, "a string")
            if text is None:
                return INVALID
            if not text.strip():
                return self.fail(path, self.empty_secret(path))
            return Secret(text)
        if hint is Listen:
            text = self.scalar_text(path, raw, "a host:port address")
            if text is None:
                return INVALID
            try:
                return parse_listen(text)
            except ValueError as exc:
                return self.fail(path, str(exc))
        if dataclasses.is_dataclass(hint) and isinstance(hint, type):
            return self.section(path, raw, hint)
        raise TypeError(f"config loader cannot handle {hint!r} at {path}")  # a programming error

    def whole_number(self, path: str, raw: object, bounds: Bounds) -> object:
        """An integer within ``bounds``; a non-number and an out-of-range one fail alike."""
        if isinstance(raw, bool) or not isinstance(raw, str | int | float):
            return self.fail(path, bounds.problem(describe_raw(raw)))
        text = self.interpolate(path, raw) if isinstance(raw, str) else str(raw)
        if text is None:
            return INVALID
        shown = text if isinstance(raw, int | float) else repr(text)
        if not _WHOLE_NUMBER.fullmatch(text.strip()) or not bounds.admits(int(text)):
            return self.fail(path, bounds.problem(shown))
        return int(text)

    def convert_kind(self, path: str, raw: object, base: object, kind: object) -> object:
        if isinstance(kind, Bounds):
            return self.whole_number(path, raw, kind)
        if not isinstance(kind, Kind):
            return self.convert(path, raw, base)
        if (
            kind is Kind.DURATION
            and isinstance(raw, int | float)
            and not isinstance(raw, bool)
            and math.isfinite(raw)
        ):
            if raw == 0:  # nothing needs no unit
                return 0.0
            return self.fail(path, f"{raw} has no unit; write e.g. {raw}s or {raw}ms")
        if kind is Kind.ADDRESS and not isinstance(raw, str):
            # A number is no address, though it has a text: 42 would be compared as "42".
            return self.fail(path, f"expected {kind.value}, got {describe_raw(raw)}")
        text = self.scalar_text(path, raw, kind.value)
        if text is None:
            return INVALID
        try:
            if kind is Kind.DURATION:
                return parse_duration(text)
            if kind is Kind.SIZE:
                return parse_size(text)
            if kind is Kind.RATE:
                return parse_rate(text)
            if kind is Kind.ADDRESS:
                return parse_address(text)
        except ValueError as exc:
            return self.fail(path, str(exc))
        if kind is Kind.PATH:
            if not text.strip():
                return self.fail(path, "is empty")
            resolved = self.resolve_path(path, text)
            return INVALID if resolved is None else resolved
        schemes = ("http", "https") if kind is Kind.HTTP_URL else ("ws", "wss")
        try:
            parts = urllib.parse.urlsplit(text.strip())
            _ = parts.port  # raises for a port that is not a number in 0-65535
        except ValueError:  # also "http://[x": an unclosed IPv6 host
            return self.fail(path, f"not {kind.value}")
        if parts.scheme not in schemes or not parts.hostname:
            return self.fail(path, f"not {kind.value}")
        return text.strip()

    def resolve_path(self, path: str, text: str) -> Path | None:
        """``text`` as a path, relative to the config file's directory; None after a problem."""
        if "\x00" in text:
            self.fail(path, "a path cannot contain a NUL character")
            return None
        try:
            file = Path(text).expanduser()
        except RuntimeError:  # ~name for a user that does not exist
            self.fail(path, f"cannot expand {text!r}: no such user")
            return None
        return file if file.is_absolute() else self.base_dir / file

    def read_secret_file(self, path: str, raw: object) -> object:
        text = self.scalar_text(path, raw, "a file path")
        if text is None:
            return INVALID
        file = self.resolve_path(path, text)
        if file is None:
            return INVALID
        try:
            value = file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            return self.fail(path, f"cannot read {file}: {exc.strerror or exc}")
        except UnicodeDecodeError:
            return self.fail(path, f"cannot read {file}: not UTF-8 text")
        if not value:
            return self.fail(path, f"{file} {self.empty_secret(path)}")
        return Secret(value)

    def section(
        self, path: str, raw: object, cls: type, *, extra: Mapping[str, object] | None = None
    ) -> object:
        """Build dataclass ``cls`` from mapping ``raw``: unknown keys, missing ones, bad values."""
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            return self.fail(path, f"expected a mapping, got {describe_raw(raw)}")
        hints = typing.get_type_hints(cls, include_extras=True)
        values: dict[str, object] = dict(extra or {})
        seen: set[str] = set()
        ok = True
        for f in dataclasses.fields(cls):
            if f.metadata.get("internal") or f.name in values:
                continue
            key = f.metadata.get("key", f.name)
            sub = f"{path}.{key}" if path else key
            hint = hints[f.name]
            if _is_secret(hint) and f"{key}_file" in raw:
                seen.add(f"{key}_file")
                if key in raw:
                    seen.add(key)
                    self.fail(sub, f"give either {key} or {key}_file, not both")
                    ok = False
                    continue
                value = self.read_secret_file(f"{sub}_file", raw[f"{key}_file"])
            elif key in raw:
                seen.add(key)
                value = self.convert(sub, raw[key], hint)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                self.fail(sub, "is required")
                ok = False
                continue
            else:
                continue
            if value is INVALID:
                ok = False
            else:
                values[f.name] = value
        for key in raw:
            if key not in seen:
                ok = False
                suggestion = _closest(
                    str(key),
                    [
                        f.metadata.get("key", f.name)
                        for f in dataclasses.fields(cls)
                        if not f.metadata.get("internal")
                    ],
                )
                self.fail(f"{path}.{key}" if path else str(key), "unknown key" + suggestion)
        if not ok:
            return INVALID
        try:
            return cls(**values)
        except TypeError as exc:  # a required field the loop reported missing already
            return self.fail(path, str(exc))
        except ValueError as exc:
            # A section's own check (``__post_init__``) says "key: problem" about one of its keys
            # (or "key.sub: problem" about a part of one).
            key, sep, message = str(exc).partition(": ")
            names = {f.metadata.get("key", f.name) for f in dataclasses.fields(cls)}
            if sep and key.split(".", 1)[0] in names:
                return self.fail(f"{path}.{key}" if path else key, message)
            return self.fail(path, str(exc))


def _is_secret(hint: object) -> bool:
    return hint is Secret or Secret in typing.get_args(hint)


def describe_raw(raw: object) -> str:
    """What a raw YAML value is, for a problem message: ``a mapping``, ``int 5``."""
    if raw is None:
        return "nothing (null)"
    if isinstance(raw, bool):
        return f"a boolean ({str(raw).lower()})"
    if isinstance(raw, dict):
        return "a mapping"
    if isinstance(raw, list):
        return "a list"
    return f"{type(raw).__name__} {raw!r}"


def _closest(key: str, known: list[str]) -> str:
    match = difflib.get_close_matches(key, known, n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""
