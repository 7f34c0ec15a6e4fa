"""The one YAML reader for configs, ``key=value`` overrides and checkpoints' ``config.yaml``.

A config is plain data, and a checkpoint's config may come from someone else (a shared checkpoint), so
the reader is bounded before anything is built from the text:

- no tags at all (``!!python/object``, ``!!str``, ``!local``): a config never needs one, and refusing
  them all is simpler to trust than a list of the dangerous ones;
- bounded size (bytes read), nesting depth (refused while composing, before Python recursion runs out)
  and *expanded* node count: an alias costs nothing to write and as much as its target to expand, so the
  composed graph is measured with every alias counted at its full size before any Python value exists
  (a billion-laughs bomb is refused, not expanded);
- strict UTF-8, and every error one line naming the source.

The result holds plain Python values only (dict, list, str, int, float, bool, None, dates).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from affectverse_ds.bounded import BoundedReadError, read_bounded

MAX_BYTES = 1 << 20  # a full config is a few KB
MAX_DEPTH = 32  # configs nest 3 deep
MAX_NODES = 20_000  # scalars + collections after expanding every alias


class YamlRefused(ValueError):
    """The text is not plain, bounded YAML; the message is one line naming the source."""


class _Refused(Exception):
    """Raised inside the loader; carries the line so the message can name it."""

    def __init__(self, line: int, why: str) -> None:
        super().__init__(why)
        self.line, self.why = line, why


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's pure-Python safe loader with tags refused and nesting depth capped while composing."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        tag = getattr(event, "tag", None)
        if tag is not None and tag != "!":  # "!" is the non-specific tag of quoted scalars
            raise _Refused(event.start_mark.line + 1, f"tag {tag!r} refused (configs hold plain data only)")
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(event.start_mark.line + 1, f"nested deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a graph whose expansion (aliases counted at full size) is too big or too deep, or has a cycle.

    Iterative and memoised by node identity: the cost is the number of distinct nodes, not the expansion."""
    size: dict[int, int] = {}
    height: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            kids = _children(node)
            size[key] = 1 + sum(size[id(k)] for k in kids)
            height[key] = 1 + max((height[id(k)] for k in kids), default=0)
            open_nodes.discard(key)
            line = node.start_mark.line + 1
            if size[key] > MAX_NODES:
                raise _Refused(line, f"aliases expand to more than {MAX_NODES} nodes")
            if height[key] > MAX_DEPTH:
                raise _Refused(line, f"aliases nest deeper than {MAX_DEPTH} levels")
            continue
        if key in size:
            continue
        if key in open_nodes:
            raise _Refused(node.start_mark.line + 1, "an alias refers to a node that contains it")
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((k, False) for k in _children(node) if id(k) not in size)


def loads(text: str, source: str) -> Any:
    """Plain data from YAML ``text``; ``source`` names it in errors (a file, or ``override train.lr``)."""
    if len(text) > MAX_BYTES:
        raise YamlRefused(f"{source}: {len(text)} characters is over the {MAX_BYTES} limit")
    loader = None
    try:
        loader = _BoundedLoader(text)  # the reader checks the characters here
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node)
        return loader.construct_document(node)
    except _Refused as err:
        raise YamlRefused(f"{source}: line {err.line}: {err.why}") from None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise YamlRefused(f"{source}: {where}{err.problem or err.context}") from None
    except yaml.reader.ReaderError as err:
        raise YamlRefused(f"{source}: character #x{err.character:04x} at position {err.position} is not "
                          f"allowed in YAML") from None
    except (yaml.YAMLError, ValueError, TypeError, RecursionError) as err:  # e.g. an int of 10^5 digits
        first = (str(err).splitlines() or [type(err).__name__])[0][:200]
        raise YamlRefused(f"{source}: not plain YAML ({first})") from None
    finally:
        if loader is not None:
            loader.dispose()


def load_file(path: str | Path) -> Any:
    """Plain data from the YAML file ``path``: a regular file of at most ``MAX_BYTES`` of UTF-8."""
    try:
        data = read_bounded(path, MAX_BYTES, "YAML file")
    except BoundedReadError as err:
        raise YamlRefused(str(err)) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise YamlRefused(f"{path}: not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start})") from None
    return loads(text.removeprefix("\ufeff"), str(path))
