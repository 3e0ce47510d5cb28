"""Receptive fields, with the recurrences of Araujo, Norris and Sim,
"Computing Receptive Fields of Convolutional Neural Networks" (Distill, 2019).

Per spatial dimension a layer's output unit ``u`` sees input pixels
``[u·S − P, u·S − P + r − 1]``: size ``r``, effective stride (jump) ``S`` and
effective padding ``P``. A layer with kernel span ``k``, stride ``s`` and left
padding ``p`` updates them as::

    r ← r + (k − 1)·S        S ← S·s        P ← P + p·S

Values are exact integers, or fractions after upsampling and transposed convs
(stride 1/s).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from convcalc.formulas import as_number

__all__ = ["Number", "ReceptiveField", "Window"]

Number = int | Fraction


@dataclass(frozen=True, slots=True)
class Window:
    """How one spatial dimension of a layer's output maps onto its input."""

    kernel: Number  # span in input pixels: d·(k−1) + 1
    stride: Number
    padding: Number  # on the left/top/front


@dataclass(frozen=True, slots=True)
class ReceptiveField:
    """Size, effective stride and effective padding per spatial dimension."""

    size: tuple[Number, ...]
    stride: tuple[Number, ...]
    padding: tuple[Number, ...]

    @classmethod
    def of_input(cls, spatial_dims: int) -> ReceptiveField:
        """The input itself: every pixel sees one pixel.

        >>> ReceptiveField.of_input(2).to_dict()
        {'size': [1, 1], 'stride': [1, 1], 'padding': [0, 0]}
        """
        return cls((1,) * spatial_dims, (1,) * spatial_dims, (0,) * spatial_dims)

    def through(self, windows: tuple[Window, ...]) -> ReceptiveField:
        """The receptive field after a layer with these windows.

        >>> ReceptiveField.of_input(1).through((Window(3, 1, 1),)).through((Window(3, 2, 1),)).size
        (5,)
        """
        return ReceptiveField(
            tuple(r + (w.kernel - 1) * s for r, s, w in zip(self.size, self.stride, windows)),
            tuple(s * w.stride for s, w in zip(self.stride, windows)),
            tuple(p + w.padding * s for p, s, w in zip(self.padding, self.stride, windows)),
        )

    def union(self, other: ReceptiveField) -> ReceptiveField:
        """What a unit that adds or concatenates two paths sees: both fields together.

        >>> a = ReceptiveField((5,), (1,), (2,))
        >>> a.union(ReceptiveField((1,), (1,), (0,))).to_dict()
        {'size': [5], 'stride': [1], 'padding': [2]}
        """
        size, stride, padding = [], [], []
        for r1, s1, p1, r2, s2, p2 in zip(
            self.size, self.stride, self.padding, other.size, other.stride, other.padding
        ):
            start = max(p1, p2)  # the field of unit 0 starts at −P
            end = max(r1 - p1, r2 - p2)  # ... and ends before r − P
            size.append(start + end)
            stride.append(max(s1, s2))
            padding.append(start)
        return ReceptiveField(tuple(size), tuple(stride), tuple(padding))

    def centre_offsets(self, other: ReceptiveField) -> tuple[Number, ...]:
        """How far apart the centres of two fields are, per dimension (0 when aligned)."""
        return tuple(
            ((r1 - 1) / Fraction(2) - p1) - ((r2 - 1) / Fraction(2) - p2)
            for r1, p1, r2, p2 in zip(self.size, self.padding, other.size, other.padding)
        )

    def to_dict(self) -> dict[str, list[int | float]]:
        return {
            "size": [as_number(v) for v in self.size],
            "stride": [as_number(v) for v in self.stride],
            "padding": [as_number(v) for v in self.padding],
        }
