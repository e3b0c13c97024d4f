"""The config file read as YAML: the tree, the keys given more than once, and syntax errors, after
the file itself (a regular file, UTF-8 text: anything else is a ``ConfigError`` naming it).

YAML lets a mapping repeat a key and keeps the last value, so a second ``sinks.agent`` would
silently replace the first, HTTP sink and all. Every repeat is found here with its lines and
handed to the caller as a problem like any other (``loader`` fails on each, ``lenient`` only on
those in a part it reads). Merge keys (``<<: *base``) are no repeat: overriding what they bring
in is what they are for.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Final, NamedTuple

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from bridge.errors import ConfigError

_MERGE_TAG: Final = "tag:yaml.org,2002:merge"
_VALUE_TAG: Final = "tag:yaml.org,2002:value"
"""``=`` as a key: PyYAML's SafeLoader reads it as the text ``=``."""
_FLOW_HINTS: Final = {
    "while parsing a flow mapping": "(a ${...} value inside a {...} flow mapping must be quoted)",
    "while parsing a flow sequence": "(a ${...} value inside a [...] flow sequence must be quoted)",
}


@dataclass(frozen=True, slots=True)
class Repeat:
    """A key given more than once in one mapping."""

    keys: tuple[str | int, ...]
    """Its key path: the mapping keys as the config reads them (text), list indexes as ints."""
    marks: tuple[tuple[int, int], ...]
    """Where each of its occurrences starts: line and column, from 1."""

    @property
    def path(self) -> str:
        return "".join(
            f"[{k}]" if isinstance(k, int) else f".{k}" if i else k for i, k in enumerate(self.keys)
        )

    @property
    def message(self) -> str:
        if len(self.marks) == 2:
            return f"given twice ({self.where}); the second would replace the first"
        return f"given {len(self.marks)} times ({self.where}); the last would replace the others"

    @property
    def where(self) -> str:
        """``lines 12 and 20``; the columns too where a line holds more than one."""
        lines = [line for line, _ in self.marks]
        if len(set(lines)) == len(lines):
            return f"lines {_listing(lines)}"
        if len(set(lines)) == 1:  # a flow mapping: {type: http, type: file}
            return f"line {lines[0]}, columns {_listing([column for _, column in self.marks])}"
        return _listing([f"line {line} column {column}" for line, column in self.marks])

    @property
    def problem(self) -> str:
        return f"{self.path}: {self.message}"


def _listing(items: list[int] | list[str]) -> str:
    """``1, 2 and 3``."""
    texts = [str(item) for item in items]
    return f"{', '.join(texts[:-1])} and {texts[-1]}"


class YamlFile(NamedTuple):
    raw: object
    """The parsed tree; where a key repeats, its last value."""
    base_dir: Path
    """What relative paths inside it resolve against."""
    source: Path | None
    """The file it came from; None for text."""
    repeats: tuple[Repeat, ...]
    """The keys given more than once, in the order of the file."""


def read_yaml(path: str | os.PathLike[str] | None, text: str | None = None) -> YamlFile:
    """The YAML of ``path`` (or ``text``, whose relative paths resolve against the current
    directory).

    Raises:
        ConfigError: the file cannot be read or is not YAML.
    """
    if text is None:
        if path is None:
            raise ConfigError(["<config>: no config file given"])
        file = Path(path)
        text = read_config_text(file)
        source: Path | None = file.resolve()
        base_dir = file.resolve().parent
    else:
        source, base_dir = None, Path.cwd()
    try:
        raw, repeats = _parse(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        hint = flow_hint(text, exc)
        raise ConfigError([f"<yaml>: not valid YAML{line}: {problem}{hint}"]) from None
    except (ValueError, RecursionError) as exc:  # e.g. an integer too long to convert
        raise ConfigError([f"<yaml>: cannot read the YAML: {str(exc)[:200]}"]) from None
    return YamlFile(raw, base_dir, source, repeats)


def read_config_text(file: Path) -> str:
    """The text of the config file ``file``.

    Raises:
        ConfigError: naming the file: it cannot be opened or read, it is not a regular file, or
            it is not UTF-8 (with where the first bytes that are not are).
    """
    try:
        # O_NONBLOCK: opening a FIFO no one writes to would wait for a writer, for ever, and a
        # reload (SIGHUP) reads the file on the event loop. A regular file ignores the flag.
        fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError([f"{file}: cannot read config file: {exc.strerror or exc}"]) from None
    try:
        mode = os.fstat(fd).st_mode
        # Only a regular file: a pipe or device reads differently each time (a reload would
        # read another config, or none), and relative paths resolve against its directory.
        if not stat.S_ISREG(mode):
            raise ConfigError(
                [f"{file}: cannot read config file: it is {_file_kind(mode)}, not a regular file"]
            )
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read()
    except OSError as exc:  # EIO, or a file that went away over NFS
        raise ConfigError([f"{file}: cannot read config file: {exc.strerror or exc}"]) from None
    finally:
        os.close(fd)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{file}: {_not_utf8(data, exc)}"]) from None


def _file_kind(mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    )
    return next((kind for test, kind in kinds if test(mode)), "a special file")


def _not_utf8(data: bytes, exc: UnicodeDecodeError) -> str:
    """Where the first bytes that are not UTF-8 are: line and column (in characters, from 1)
    and the byte offset. Never the bytes themselves: they may be part of a secret."""
    start = data.rfind(b"\n", 0, exc.start) + 1
    line = data.count(b"\n", 0, exc.start) + 1
    # Everything before exc.start decoded: the line's start is whole characters.
    column = len(data[start : exc.start].decode("utf-8")) + 1
    return (
        f"not UTF-8 text at line {line}, column {column} (byte offset {exc.start}): save the "
        "file as UTF-8"
    )


def _parse(text: str) -> tuple[object, tuple[Repeat, ...]]:
    """What ``yaml.safe_load`` gives, and the repeated keys it drops on the way."""
    loader = yaml.SafeLoader(text)  # raises for a character YAML does not allow
    try:
        node = loader.get_single_node()
        if node is None:
            return None, ()
        repeats = find_repeats(loader, node)
        return loader.construct_document(node), repeats
    finally:
        loader.dispose()


def flow_hint(text: str, exc: yaml.YAMLError) -> str:
    """`` (a ${...} value ... must be quoted)`` when what broke the YAML is the ``{`` of an
    unquoted ``${`` inside a flow mapping or sequence (``{url: ${URL}}`` reads ``$`` as the value
    and then meets a ``{`` it cannot place); else nothing."""
    context = getattr(exc, "context", None)
    mark = getattr(exc, "problem_mark", None)
    hint = _FLOW_HINTS.get(context) if isinstance(context, str) else None
    if hint is None or mark is None or not 0 < mark.index < len(text):
        return ""
    return f" {hint}" if text[mark.index - 1 : mark.index + 1] == "${" else ""


def find_repeats(loader: yaml.SafeLoader, root: Node) -> tuple[Repeat, ...]:
    """Every key given more than once in a mapping of ``root``, with its key path.

    A key is compared as the config reads it: the value it constructs to, and that value's text
    (``1`` and ``'1'`` both name the sink "1"). A node an alias shares is looked at once, under
    the first path that reaches it.
    """
    found: list[Repeat] = []
    seen: set[int] = set()
    # A stack, not recursion: the depth of a tree is the file's to choose.
    stack: list[tuple[Node, tuple[str | int, ...]]] = [(root, ())]
    while stack:
        node, keys = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        children: list[tuple[Node, tuple[str | int, ...]]] = []
        if isinstance(node, SequenceNode):
            children = [(item, (*keys, i)) for i, item in enumerate(node.value)]
        elif isinstance(node, MappingNode):
            marks: dict[str, list[tuple[int, int]]] = {}
            by_value: dict[object, str] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, ScalarNode) or key_node.tag == _MERGE_TAG:
                    continue  # a merge brings keys in to be overridden; a list key is refused later
                value = _key_value(loader, key_node)
                text = by_value.setdefault(value, str(value))  # a scalar is hashable
                start = key_node.start_mark
                marks.setdefault(text, []).append((start.line + 1, start.column + 1))
                children.append((value_node, (*keys, text)))
            found += [Repeat((*keys, text), tuple(at)) for text, at in marks.items() if len(at) > 1]
        stack += reversed(children)
    return tuple(sorted(found, key=lambda r: r.marks[1]))


def _key_value(loader: yaml.SafeLoader, node: ScalarNode) -> object:
    if node.tag == _VALUE_TAG:
        return node.value
    return loader.construct_object(node, deep=True)
