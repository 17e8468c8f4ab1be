"""The one YAML loader for files of Kubernetes objects: bounded, strict, and one clear line when it refuses.

Every place that reads FineTuneJob YAML (``kubetune validate``, ``run``, ``render``) goes through
:func:`read_documents`. It refuses, with a :class:`YamlRefused` naming the line:

- a file over :data:`MAX_BYTES` (the API server's request limit), binary data, text that is not UTF-8;
- nesting deeper than :data:`MAX_DEPTH` (counted while composing, so Python's recursion limit is never met);
- alias expansion over :data:`MAX_NODES` nodes per document (a "billion laughs" bomb is refused after
  reading its few hundred bytes, not expanded), and aliases that refer to themselves;
- duplicate keys in a mapping (as ``kubectl`` does); more than :data:`MAX_DOCUMENTS` documents.

Scalars resolve as Kubernetes' YAML reader resolves them, except timestamps: ``2024-01-01`` stays a
string (the API server reads it as one), so a date-like name is not turned into a ``date``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

MAX_BYTES = 3 * 1024 * 1024  # the API server refuses larger request bodies
MAX_DEPTH = 64
MAX_NODES = 100_000  # per document, aliases expanded
MAX_DOCUMENTS = 1_000


class YamlRefused(ValueError):
    """A YAML text that is refused; ``str()`` is one line, ``line`` the 1-based line when known."""

    def __init__(self, message: str, line: int | None = None):
        self.line = line
        super().__init__(f"line {line}: {message}" if line else message)


class _Loader(yaml.SafeLoader):
    """SafeLoader with a depth bound while composing and duplicate keys refused while constructing."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0

    def fetch_flow_collection_start(self, token_class: Any) -> None:
        # The scanner's cost grows with the square of the flow depth: refuse before it matters.
        if self.flow_level >= MAX_DEPTH:
            raise YamlRefused(f"nested deeper than {MAX_DEPTH} levels", self.get_mark().line + 1)
        super().fetch_flow_collection_start(token_class)

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise YamlRefused(f"nested deeper than {MAX_DEPTH} levels", mark.line + 1)
            node = super().compose_node(parent, index)
            assert node is not None  # a composed node is never empty here: the event was not a stream end
            return node
        finally:
            self._depth -= 1

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, ScalarNode):
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                if key in seen:
                    raise YamlRefused(
                        f"duplicate key {_short(key)} (first at line {seen[key]})", key_node.start_mark.line + 1
                    )
                seen[key] = key_node.start_mark.line + 1
            except TypeError:
                continue
        return super().construct_mapping(node, deep=deep)


# Kubernetes reads 2024-01-01 as a string; PyYAML's SafeLoader would make it a datetime.date.
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _expanded_size(root: Node) -> int:
    """Nodes in the document with every alias expanded, computed once per node (so a bomb costs its size in the
    file, not its expansion); YamlRefused past MAX_NODES, on a self-referring alias or an expanded depth over
    MAX_DEPTH. Iterative: no recursion however the nodes are shaped."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            kids = _children(node)
            size[key] = 1 + sum(size[id(k)] for k in kids)
            depth[key] = 1 + max((depth[id(k)] for k in kids), default=0)
            if size[key] > MAX_NODES:
                raise YamlRefused(
                    f"expands to more than {MAX_NODES:,} nodes (aliases expanded); a FineTuneJob is "
                    "far smaller: is this an alias bomb?",
                    node.start_mark.line + 1,
                )
            if depth[key] > MAX_DEPTH:
                raise YamlRefused(
                    f"nested deeper than {MAX_DEPTH} levels once aliases are expanded", node.start_mark.line + 1
                )
            continue
        if key in size:
            continue
        if key in on_path:
            raise YamlRefused(
                "an alias refers to the node that contains it (a recursive structure)", node.start_mark.line + 1
            )
        on_path.add(key)
        stack.append((node, True))
        stack.extend((k, False) for k in _children(node) if id(k) not in size)
    return size[id(root)]


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _problem(exc: yaml.YAMLError) -> YamlRefused:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return YamlRefused(f"not valid YAML: {problem}", mark.line + 1 if mark is not None else None)


def load_documents(text: str | bytes) -> list[Any]:
    """Every non-empty document of a YAML text, within the bounds above; :class:`YamlRefused` otherwise."""
    if isinstance(text, bytes):
        text = decode(text)
    if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise YamlRefused(f"larger than {MAX_BYTES // (1024 * 1024)} MiB, the most the API server accepts")
    loader = _Loader(text)
    docs: list[Any] = []
    try:
        while loader.check_node():
            if len(docs) >= MAX_DOCUMENTS:
                raise YamlRefused(f"more than {MAX_DOCUMENTS} documents")
            node = loader.get_node()
            if node is None:
                continue
            _expanded_size(node)
            docs.append(loader.construct_document(node))
    except yaml.YAMLError as exc:
        raise _problem(exc) from None
    except RecursionError:
        raise YamlRefused("nested too deeply to read") from None
    finally:
        loader.dispose()
    return [d for d in docs if d is not None]


def decode(data: bytes) -> str:
    """UTF-8 text (a BOM is dropped); YamlRefused for binary data or another encoding."""
    if b"\x00" in data[:8192]:
        raise YamlRefused("binary data, not a YAML text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise YamlRefused(f"not UTF-8 text (byte 0x{data[exc.start]:02x}); save the file as UTF-8", line) from None


def read_documents(path: str | Path) -> list[Any]:
    """The documents of a YAML file; reads at most MAX_BYTES + 1 bytes. OSError passes through."""
    with Path(path).open("rb") as fh:
        data = fh.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise YamlRefused(f"larger than {MAX_BYTES // (1024 * 1024)} MiB, the most the API server accepts")
    return load_documents(data)
