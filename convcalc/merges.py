"""Layers on several tensors (spec v2): ``add``, ``mul``, ``cat``, and ``split`` /
``chunk``, which give several.

A merge names its inputs with ``from: [a, b]``; its shape rule is torch's
(broadcasting for ``add`` and ``mul``, so ``[N, C, H, W] * [N, C, 1, 1]`` is a
squeeze-excitation gate). A split's pieces are ``name.0``, ``name.1``, … .
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from convcalc.errors import ShapeError
from convcalc.fields import Int, PositiveInt
from convcalc.layers import LayerResult, Leaf, Saved, SpatialMap, _dim_in_range, format_shape

__all__ = ["MERGE_CLASSES", "Arithmetic", "Cat", "Merge", "Split", "broadcast_shape"]

Shape = tuple[int, ...]
# A split or chunk into more pieces than this is refused (each piece is an output).
MAX_PIECES = 100_000


def broadcast_shape(shapes: Sequence[Shape]) -> Shape | None:
    """torch's broadcasting: dimensions aligned from the right, each equal or 1.

    >>> broadcast_shape([(2, 8, 5, 5), (2, 8, 1, 1)])
    (2, 8, 5, 5)
    >>> broadcast_shape([(2, 8, 5, 5), (2, 4, 5, 5)]) is None
    True
    """
    rank = max(len(shape) for shape in shapes)
    padded = [(1,) * (rank - len(shape)) + tuple(shape) for shape in shapes]
    out = []
    for sizes in zip(*padded):
        wide = {n for n in sizes if n != 1}
        if len(wide) > 1:
            return None
        out.append(wide.pop() if wide else 1)
    return tuple(out)


class Merge(Leaf):
    """A layer that takes several inputs (named with ``from``)."""

    merges: ClassVar[bool] = True

    def infer(self, input_shape: Shape) -> LayerResult:
        return self.infer_many([input_shape], ["its input"])

    def saved_operands(
        self, shapes: Sequence[Shape], grads: Sequence[bool], itemsize: int
    ) -> tuple[list[int], int]:
        """What backward keeps: which inputs (by position), and the bytes of tensors made
        only to be kept. By default nothing (sums and concatenations need only sizes)."""
        return [], 0


class Arithmetic(Merge):
    """``add`` and ``mul``: ``a + b + …`` and ``a * b * …`` with torch's broadcasting."""

    torch_names: ClassVar[tuple[str, ...]] = ("Add", "Mul")
    custom_module: ClassVar[bool] = True
    type: Literal["add", "mul"]

    def infer_many(self, input_shapes: Sequence[Shape], labels: Sequence[str]) -> LayerResult:
        if len(input_shapes) < 2:
            raise ShapeError(
                f"{self.type} needs at least two inputs (from: [a, b]), got {len(input_shapes)}"
            )
        shape = broadcast_shape(input_shapes)
        if shape is None:
            described = " and ".join(
                f"{label} {format_shape(s)}" for label, s in zip(labels, input_shapes)
            )
            raise ShapeError(
                f"{self.type}: {described} cannot be broadcast together (each dimension, "
                f"aligned from the right, must be equal or 1)"
            )
        return LayerResult(output_shape=shape)

    def saved(self, input_shape: Shape, output_shape: Shape, itemsize: int) -> Saved:
        return Saved(None)

    def saved_operands(
        self, shapes: Sequence[Shape], grads: Sequence[bool], itemsize: int
    ) -> tuple[list[int], int]:
        """``a * b * c`` runs as ``(a * b) * c``: each product keeps each operand whose
        partner needs a gradient, the partial products being new tensors."""
        if self.type == "add":
            return [], 0
        kept: list[int] = []
        extra = 0
        left_grad, left_shape = grads[0], shapes[0]
        for i in range(1, len(shapes)):
            if grads[i] and i == 1:
                kept.append(0)
            elif grads[i]:
                extra += math.prod(left_shape) * itemsize  # the partial product so far
            if left_grad:
                kept.append(i)
            left_grad = left_grad or grads[i]
            left_shape = broadcast_shape([left_shape, shapes[i]]) or left_shape
        return kept, extra


class Cat(Merge):
    """``torch.cat`` of the inputs along ``dim`` (channels by default)."""

    cost_family: ClassVar[str] = "copy"

    torch_names: ClassVar[tuple[str, ...]] = ("Cat",)
    custom_module: ClassVar[bool] = True
    type: Literal["cat"]
    dim: Int = 1

    def infer_many(self, input_shapes: Sequence[Shape], labels: Sequence[str]) -> LayerResult:
        first = input_shapes[0]
        dim = _dim_in_range("dim", self.dim, first)
        for label, shape in zip(labels[1:], input_shapes[1:]):
            if len(shape) != len(first) or any(
                a != b for i, (a, b) in enumerate(zip(shape, first)) if i != dim
            ):
                raise ShapeError(
                    f"cat: {labels[0]} gives {format_shape(first)} but {label} gives "
                    f"{format_shape(shape)}; all dimensions but dim {dim} must agree"
                )
        output = list(first)
        output[dim] = sum(shape[dim] for shape in input_shapes)
        return LayerResult(
            output_shape=tuple(output),
            windows=SpatialMap.POINTWISE if dim < 2 else SpatialMap.DENSE,
            arguments=f"dim={self.dim}",
        )

    def saved(self, input_shape: Shape, output_shape: Shape, itemsize: int) -> Saved:
        return Saved(None)  # backward of cat needs only the sizes


class Split(Leaf):
    """``torch.split`` (pieces of ``split_size_or_sections``) and ``torch.chunk``
    (``chunks`` pieces, the last one smaller), along ``dim``: several outputs."""

    cost_family: ClassVar[str] = "view"

    torch_names: ClassVar[tuple[str, ...]] = ("Split", "Chunk")
    custom_module: ClassVar[bool] = True
    type: Literal["split", "chunk"]
    split_size_or_sections: (
        PositiveInt | Annotated[list[PositiveInt], Field(min_length=1)] | None
    ) = None
    chunks: PositiveInt | None = None
    dim: Int = 1

    @model_validator(mode="after")
    def _check(self) -> Split:
        if self.type == "split" and (self.split_size_or_sections is None or self.chunks):
            raise ValueError("split takes split_size_or_sections (a size or a list of sizes)")
        if self.type == "chunk" and (self.chunks is None or self.split_size_or_sections):
            raise ValueError("chunk takes chunks (how many pieces)")
        return self

    def _pieces(self, size: int, step: int) -> list[int]:
        """Sizes of the pieces of ``step`` (the last one shorter) that ``size`` is cut in."""
        count = -(-size // step)
        if count > MAX_PIECES:
            raise ShapeError(
                f"{self.type} would cut {size} into {count:,} pieces of {step}; more than "
                f"{MAX_PIECES:,} outputs are refused"
            )
        return [min(step, size - start) for start in range(0, size, step)]

    def infer(self, input_shape: Shape) -> LayerResult:
        dim = _dim_in_range("dim", self.dim, input_shape)
        size = input_shape[dim]
        if self.type == "chunk":
            assert self.chunks is not None
            step = -(-size // self.chunks)  # torch.chunk: pieces of ⌈n / chunks⌉
            sizes = self._pieces(size, step)
        elif isinstance(self.split_size_or_sections, list):
            sizes = list(self.split_size_or_sections)
            if sum(sizes) != size:
                raise ShapeError(
                    f"split: the sections {sizes} add up to {sum(sizes)}, but dim {self.dim} "
                    f"of {format_shape(input_shape)} has {size}"
                )
        else:
            assert self.split_size_or_sections is not None
            sizes = self._pieces(size, self.split_size_or_sections)
        shapes = []
        for piece in sizes:
            shape = list(input_shape)
            shape[dim] = piece
            shapes.append(tuple(shape))
        return LayerResult(
            output_shape=shapes[0],
            extra_outputs=tuple(shapes[1:]),
            windows=SpatialMap.POINTWISE if dim < 2 else SpatialMap.DENSE,
            arguments=f"{len(sizes)} pieces of {'/'.join(map(str, sizes))} along dim {self.dim}",
        )

    def saved(self, input_shape: Shape, output_shape: Shape, itemsize: int) -> Saved:
        return Saved(None, shares_input=True)  # views of the input


MERGE_CLASSES: tuple[type[Leaf], ...] = (Arithmetic, Cat, Split)
