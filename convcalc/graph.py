"""The spec lowered once into a graph: the one structure every command reads.

A ``Network`` (a tree of layers and blocks, with ``from`` references) becomes a
list of ``Node``s in an order where every node comes after its inputs (spec order:
``from`` may only name earlier layers), and a tree of ``Group``s that records the
blocks for reports (a block's row, the depth of each row, which node joins a
residual or concat block). No other module walks the blocks of a spec.

Paths name nodes as reports name rows: ``layers.5.body.0``. A residual or concat
block's join (its ``+`` or ``cat``) is a node whose path is the block's own.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

from convcalc.errors import Problem, SpecValidationError, shown
from convcalc.layers import LayerModel, Leaf
from convcalc.spec import (
    Block,
    BlockCall,
    Concat,
    LayerSpec,
    Network,
    Repeat,
    Residual,
    Sequential,
)

__all__ = ["Graph", "Group", "Node", "Ref", "lower"]

Join = Literal["residual", "concat"]


@dataclass(frozen=True, slots=True)
class Ref:
    """One output of a node: ``index`` picks a piece of a split or chunk."""

    node: int
    index: int = 0
    picked: bool = field(default=False, compare=False)  # written as name.k


@dataclass(eq=False, slots=True)
class Node:
    """An input, a leaf layer, or the join of a residual or concat block."""

    index: int
    path: str
    layer: LayerModel | None  # None for an input; the block itself for a join
    inputs: tuple[Ref, ...]
    labels: tuple[str, ...]  # how messages name the inputs
    depth: int
    trainable: bool = True  # this layer's and every enclosing block's flag
    in_shortcut: bool = False  # inside a residual's shortcut (no coverage warnings)
    join: Join | None = None
    group: Group | None = None  # the innermost block (or chain) around it
    closes: tuple[Group, ...] = ()  # blocks whose last node this is, innermost first

    @property
    def is_input(self) -> bool:
        return self.layer is None

    @property
    def leaf(self) -> Leaf:
        assert isinstance(self.layer, Leaf)
        return self.layer

    @property
    def label(self) -> str:
        name = self.layer.name if self.layer is not None else None
        return f"{self.path} ({name})" if name else self.path


@dataclass(eq=False, slots=True)
class Group:
    """A block (with its own report row) or a chain inside one (a residual's body or
    shortcut, a concat's branch: no row)."""

    path: str
    layer: Block | None  # None for the network and for chains
    type: str  # the row's type: the block's, ``sequential`` for a repeat's copy
    row: bool
    depth: int
    entry: Ref
    members: list[Node | Group] = field(default_factory=list)
    output: Ref | None = None
    first: int = -1  # the range of node indices inside it
    last: int = -1

    @property
    def name(self) -> str | None:
        return self.layer.name if self.layer is not None and self.type == self.layer.type else None

    @property
    def line(self) -> int | None:
        return self.layer.line if self.layer is not None else None


@dataclass(eq=False)
class Graph:
    """The lowered spec: nodes in topological order, the block tree, the outputs."""

    network: Network
    nodes: list[Node]
    inputs: dict[str, Ref]
    outputs: dict[str, Ref]
    root: Group
    unused: list[Node]  # layers (and inputs) whose output nothing reads

    def rows(self) -> Iterator[Node | Group]:
        """Report order: a block before its members, joins left out."""
        yield from _rows(self.root)

    def layer_nodes(self) -> Iterator[Node]:
        """The leaf layers (no inputs, no joins), in order."""
        return (node for node in self.nodes if node.layer is not None and node.join is None)


def _rows(group: Group) -> Iterator[Node | Group]:
    for member in group.members:
        if isinstance(member, Group):
            if member.row:
                yield member
            yield from _rows(member)
        elif member.join is None:
            yield member


def lower(network: Network) -> Graph:
    """The graph of a validated network (memoised on it: lowering happens once)."""
    cached = network._graph
    if isinstance(cached, Graph):
        return cached
    graph = _Lowering(network).run()
    network._graph = graph
    return graph


class _Lowering:
    def __init__(self, network: Network) -> None:
        self.network = network
        self.nodes: list[Node] = []
        self.names: dict[str, Ref] = {}  # name -> the latest layer with it (in scope)
        self.paths: dict[str, Ref] = {}

    def run(self) -> Graph:
        network = self.network
        inputs = {}
        for name in network.input_shapes:
            node = Node(len(self.nodes), name, None, (), (), 0)
            self.nodes.append(node)
            inputs[name] = Ref(node.index)
        self.names.update(inputs)
        first = next(iter(inputs.values()))
        root = Group("layers", None, "network", False, 0, first)
        root.first = len(self.nodes)
        out = self.sequence(network.layers, "layers", 1, first, root, True, False)
        root.output = out
        root.last = len(self.nodes) - 1
        if network.outputs is None:
            outputs = {"output": out}
        else:
            outputs = {text: self.resolve(text, None, "outputs") for text in network.outputs}
        read = {ref.node for node in self.nodes for ref in node.inputs}
        read |= {ref.node for ref in outputs.values()}
        unused = [node for node in self.nodes if node.index not in read and node.join is None]
        return Graph(network, self.nodes, inputs, outputs, root, unused)

    # -- walking the spec, once --------------------------------------------------------

    def sequence(
        self,
        layers: list[LayerSpec],
        prefix: str,
        depth: int,
        current: Ref,
        group: Group,
        trainable: bool,
        shortcut: bool,
    ) -> Ref:
        for index, layer in enumerate(layers):
            current = self.layer(
                layer, f"{prefix}.{index}", depth, current, group, trainable, shortcut
            )
        return current

    def layer(
        self,
        layer: LayerSpec,
        path: str,
        depth: int,
        current: Ref,
        parent: Group,
        trainable: bool,
        shortcut: bool,
    ) -> Ref:
        trainable = trainable and layer.trainable
        sources = layer.from_
        inputs: tuple[Ref, ...]
        if sources is None:
            inputs = (current,)
            labels: tuple[str, ...] = ("its input",)
        else:
            texts = [sources] if isinstance(sources, str) else list(sources)
            inputs = tuple(self.resolve(text, layer, path) for text in texts)
            labels = tuple(texts)
        if isinstance(layer, Leaf):
            node = Node(len(self.nodes), path, layer, inputs, labels, depth, trainable, shortcut)
            node.group = parent
            self.nodes.append(node)
            parent.members.append(node)
            out = Ref(node.index)
        else:
            if len(inputs) != 1:
                raise self.error(
                    f"a {layer.type} block takes one input, got from: {list(labels)}", layer, path
                )
            out = self.block(layer, path, depth, inputs[0], parent, trainable, shortcut)
        if layer.name:
            self.names[layer.name] = out
        self.paths[path] = out
        return out

    def block(
        self,
        block: Block,
        path: str,
        depth: int,
        entry: Ref,
        parent: Group,
        trainable: bool,
        shortcut: bool,
    ) -> Ref:
        group = self.open(path, block, block.type, True, depth, entry, parent)
        if isinstance(block, BlockCall):
            outer = self.names
            self.names = {"input": entry}  # a block's layers see only its own names
            try:
                out = self.sequence(
                    block.layers, path, depth + 1, entry, group, trainable, shortcut
                )
            finally:
                self.names = outer
        elif isinstance(block, Sequential):
            out = self.sequence(block.layers, path, depth + 1, entry, group, trainable, shortcut)
        elif isinstance(block, Repeat):
            if len(block.layers) == 1:  # the copies are the layer itself: layer1.0, layer1.1
                layers = block.layers * block.times
                out = self.sequence(layers, path, depth + 1, entry, group, trainable, shortcut)
            else:
                out = entry
                for copy in range(block.times):
                    copy_path = f"{path}.{copy}"
                    inner = self.open(copy_path, block, "sequential", True, depth + 1, out, group)
                    out = self.sequence(
                        block.layers, copy_path, depth + 2, out, inner, trainable, shortcut
                    )
                    self.close(inner, out)
        elif isinstance(block, Residual):
            body = self.chain(
                block.layers, f"{path}.body", depth, entry, group, trainable, shortcut
            )
            short = self.chain(
                block.shortcut, f"{path}.shortcut", depth, entry, group, trainable, True
            )
            which = "the shortcut's" if block.shortcut else "the identity shortcut's"
            out = self.join(block, path, depth, (body, short), ("the body's", which), group)
        elif isinstance(block, Concat):
            branches = tuple(
                self.chain(branch, f"{path}.branches.{i}", depth, entry, group, trainable, shortcut)
                for i, branch in enumerate(block.branches)
            )
            labels = tuple(f"branch {i}" for i in range(len(branches)))
            out = self.join(block, path, depth, branches, labels, group)
        else:  # pragma: no cover - every block class is handled above
            raise TypeError(f"unknown block {type(block).__name__}")
        self.close(group, out)
        return out

    def chain(
        self,
        layers: list[LayerSpec],
        path: str,
        depth: int,
        entry: Ref,
        parent: Group,
        trainable: bool,
        shortcut: bool,
    ) -> Ref:
        group = self.open(path, None, "chain", False, depth, entry, parent)
        out = self.sequence(layers, path, depth + 1, entry, group, trainable, shortcut)
        self.close(group, out)
        return out

    def join(
        self,
        block: Block,
        path: str,
        depth: int,
        inputs: tuple[Ref, ...],
        labels: tuple[str, ...],
        group: Group,
    ) -> Ref:
        kind: Join = "residual" if isinstance(block, Residual) else "concat"
        node = Node(len(self.nodes), path, block, inputs, labels, depth, join=kind, group=group)
        self.nodes.append(node)
        group.members.append(node)
        return Ref(node.index)

    def open(
        self,
        path: str,
        block: Block | None,
        kind: str,
        row: bool,
        depth: int,
        entry: Ref,
        parent: Group,
    ) -> Group:
        group = Group(path, block, kind, row, depth, entry)
        group.first = len(self.nodes)
        parent.members.append(group)
        return group

    def close(self, group: Group, out: Ref) -> None:
        group.output = out
        group.last = len(self.nodes) - 1
        if group.last >= group.first:
            last = self.nodes[group.last]
            last.closes = (*last.closes, group)

    # -- names ---------------------------------------------------------------------------

    def resolve(self, text: str, layer: LayerModel | None, where: str) -> Ref:
        """The output a ``from`` (or ``outputs``) entry names."""
        if not isinstance(text, str) or not text:
            raise self.error(f"from: expected a layer name, got {shown(text)}", layer, where)
        for table in (self.names, self.paths):
            if text in table:
                return table[text]
        head, dot, tail = text.rpartition(".")
        if dot and tail.isdigit():
            for table in (self.names, self.paths):
                if head in table and table[head].index == 0:
                    return Ref(table[head].node, int(tail), picked=True)
        later = text in _all_names(self.network) or text.rpartition(".")[0] in _all_names(
            self.network
        )
        what = "outputs" if layer is None else "from"
        if later:
            raise self.error(
                f"{what}: {shown(text)} is not an earlier layer: a layer takes only the outputs of "
                f"layers before it (a later one would make a cycle)",
                layer,
                where,
            )
        known = [*self.names, *self.paths]
        close = difflib.get_close_matches(text, known, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise self.error(f"{what}: no earlier layer is named {shown(text)}{hint}", layer, where)

    def error(self, message: str, layer: LayerModel | None, path: str) -> SpecValidationError:
        line = layer.line if layer is not None else None
        name = layer.name if layer is not None else None
        problem_path = path if layer is not None else None
        return SpecValidationError(Problem(message, self.network.source, line, problem_path, name))


def _all_names(network: Network) -> set[str]:
    """Every layer name in the spec (for telling a later layer from a missing one)."""
    names: set[str] = set()

    def walk(layers: list[LayerSpec]) -> None:
        for layer in layers:
            if layer.name:
                names.add(layer.name)
            if isinstance(layer, Block):
                for _, children in layer.children():
                    walk(children)

    walk(network.layers)
    return names
