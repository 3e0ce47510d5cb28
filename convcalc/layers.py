"""Leaf layers: one pydantic model per layer family, each with its fields and its rules.

A family covers the 1d/2d/3d variants of one ``torch.nn`` class (``type`` is the
lower-cased class name). ``infer(input_shape)`` returns the output shape, the
parameter, buffer and MAC counts, and how the spatial dimensions map onto the
input (for receptive fields). Shapes always include the batch dimension.

Adding a layer kind means one class here, listed in ``LEAF_CLASSES``.
"""

import enum
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.json_schema import SkipJsonSchema

from convcalc.errors import ShapeError, shown
from convcalc.fields import (
    Bool,
    Float,
    FloatOrFloats,
    Int,
    NonNegativeIntOrInts,
    OutputSize,
    Padding,
    PositiveInt,
    PositiveIntOrInts,
    Probability,
    SignedIntOrInts,
    per_dim,
)
from convcalc.formulas import (
    adaptive_window_widths,
    conv_output_size,
    conv_transpose_output_size,
    effective_kernel,
    pool_output_size,
    same_padding,
    uncovered_pixels,
    upsample_output_size,
)
from convcalc.receptive_field import Window

Shape = tuple[int, ...]

LINE_KEY = "__line__"  # where the loader puts a layer's YAML line

# Whether layers write out their formulas (``shape --explain``); off by default, since
# the text costs more than the arithmetic.
_EXPLAIN: ContextVar[bool] = ContextVar("convcalc_explain", default=False)


def explaining() -> bool:
    """Whether ``infer`` should fill ``LayerResult.explanation``."""
    return _EXPLAIN.get()


@contextmanager
def explained() -> Iterator[None]:
    """Layers explain their numbers inside this block."""
    token = _EXPLAIN.set(True)
    try:
        yield
    finally:
        _EXPLAIN.reset(token)


SPATIAL_NAMES = {1: ("L",), 2: ("H", "W"), 3: ("D", "H", "W")}
LAYOUTS = {0: "[N, C]", 1: "[N, C, L]", 2: "[N, C, H, W]", 3: "[N, C, D, H, W]"}
_UNITS = {"L": "position", "D": "slice", "H": "row", "W": "column"}


class SpatialMap(enum.Enum):
    """How a layer maps positions, when it is not a sliding window."""

    POINTWISE = "pointwise"  # output position i depends on input position i only
    DENSE = "dense"  # spatial structure is gone (flatten, linear)


@dataclass(frozen=True, slots=True)
class LayerResult:
    """What one leaf layer does to one input shape."""

    output_shape: Shape
    params: int = 0
    buffers: int = 0
    macs: int = 0
    windows: tuple[Window, ...] | SpatialMap = SpatialMap.POINTWISE
    arguments: str = ""
    warnings: tuple[str, ...] = ()
    # Input pixels no window reaches: the trailing ones floor division drops (which
    # depends on the input size), and those a stride skips. Not reported inside a
    # residual's shortcut, whose input the body sees in full.
    dropped: str = ""
    skipped: str = ""
    # A layer with several outputs (split, chunk): the shapes after ``output_shape``.
    extra_outputs: tuple[Shape, ...] = ()
    # Each parameter tensor as (torch's attribute name, size); the sizes add up to params.
    parameter_tensors: tuple[tuple[str, int], ...] = ()
    # How the numbers come about: each output size and the parameters, as formulas with
    # this layer's numbers substituted (``shape --explain``).
    explanation: tuple[str, ...] = ()

    @property
    def coverage_warnings(self) -> tuple[str, ...]:
        return tuple(message for message in (self.dropped, self.skipped) if message)


@dataclass(frozen=True, slots=True)
class Saved:
    """What autograd keeps of one layer for the backward pass (training mode, on CPU).

    Measured with ``torch.autograd.graph.saved_tensors_hooks``; the tests hold every
    family to it. Parameters, which autograd also saves, are not activations.
    """

    tensor: Literal["input", "output"] | None = "input"
    extra_bytes: int = 0  # tensors made only to be saved: pooling indices, masks, statistics
    shares_input: bool = False  # the output is the input's storage (views, in-place layers)
    input_for_its_gradient: bool = False  # the input too, when the input needs a gradient
    weight_grad_only: bool = False  # saved only when the layer's weight trains


NOTHING_SAVED = Saved(None)
SAME_STORAGE = Saved(None, shares_input=True)


def _stat_bytes(itemsize: int) -> int:
    """Normalisation statistics are kept in at least float32."""
    return max(itemsize, 4)


def format_shape(shape: Shape) -> str:
    """``[1, 64, 55, 55]``."""
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _fmt(values: tuple[Any, ...]) -> str:
    """One number when all dimensions agree, else ``3×1``."""
    return str(values[0]) if len(set(values)) == 1 else "×".join(str(v) for v in values)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _fail(message: str) -> ShapeError:
    return ShapeError(message)


class LayerModel(BaseModel):
    """Fields every layer and block has."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    name: str | None = None
    trainable: Bool = True  # Keras' name; false freezes the layer's parameters
    # Where the input comes from (spec v2): the name of an earlier layer (or ``input``,
    # or ``name.0`` for one piece of a split), a list of them for a merge; without it
    # the previous layer's output.
    from_: str | list[str] | None = Field(default=None, alias="from")
    # The spec line this layer was written on, when loaded from YAML (for messages).
    line: SkipJsonSchema[int | None] = Field(default=None, alias=LINE_KEY, exclude=True, repr=False)


class Leaf(LayerModel):
    """A layer with no children: it maps one tensor shape to another."""

    type: str
    # Parameter tensors (torch's names: weight, bias) frozen while the others train;
    # ``trainable: false`` freezes them all.
    frozen: tuple[str, ...] = ()
    torch_names: ClassVar[tuple[str, ...]]
    # -- per-family hooks, with defaults (other modules read these, never a table) ----
    # torch.nn has no such class: torch_bridge builds the class of this name from
    # convcalc.torch_modules, and `export --to pytorch` copies that class's source.
    custom_module: ClassVar[bool] = False
    # Leaves position and extent of the receptive field alone: a receptive-field
    # measurement (verify) replaces it by an identity.
    identity_for_receptive_field: ClassVar[bool] = False
    # Drawn inside the box of the layer before it (activations, normalisation).
    drawn_folded: ClassVar[bool] = False
    # torch.nn.functional / torch / Tensor calls without arguments that are a layer of
    # this family (from_torch maps them): call name -> layer type.
    functional_names: ClassVar[dict[str, str]] = {}
    # How `convcalc draw` colours it (a legend entry: conv, pool, norm, reshape, ...;
    # empty: activation when drawn folded, else other) and names it inside another
    # layer's box (type -> short label, e.g. batchnorm2d -> BN; the type itself if absent).
    draw_family: ClassVar[str] = ""
    short_labels: ClassVar[dict[str, str]] = {}
    # What a roofline estimate counts it as (convcalc.cost; a device profile's efficiency
    # is per family): conv, depthwise, pointwise, linear, pool, elementwise, copy (moves
    # data, computes nothing) or view (moves nothing: flatten, a split, dropout in eval).
    cost_family: ClassVar[str] = "elementwise"

    @property
    def dims(self) -> int:
        """Spatial dimensions of the 1d/2d/3d variant, 0 for layers without."""
        tail = self.type[-2:]
        return int(tail[0]) if tail in ("1d", "2d", "3d") else 0

    @property
    def torch_name(self) -> str:
        """The ``torch.nn`` class this layer is."""
        return next(n for n in self.torch_names if n.lower() == self.type)

    # Takes several inputs (add, mul, cat): ``infer_many`` instead of ``infer``.
    merges: ClassVar[bool] = False

    def infer(self, input_shape: Shape) -> LayerResult:
        raise NotImplementedError

    def infer_many(self, input_shapes: Sequence[Shape], labels: Sequence[str]) -> LayerResult:
        """The layer on several inputs (``labels`` name them in messages); a layer that
        does not merge takes exactly one."""
        if len(input_shapes) != 1:
            raise _fail(
                f"{self.type} takes one input, got {len(input_shapes)} ({', '.join(labels)}); "
                f"only merge layers (add, mul, cat) take several"
            )
        return self.infer(input_shapes[0])

    def saved(self, input_shape: Shape, output_shape: Shape, itemsize: int) -> Saved:
        """What backward needs from this layer (by default: its input)."""
        return Saved("input")

    def family(self, input_shape: Shape) -> str:
        """The cost family of this layer on this input (``cost_family`` by default)."""
        return self.cost_family

    def traffic(self, input_shapes: Sequence[Shape], result: LayerResult) -> tuple[int, int]:
        """Elements read and written in one pass, in evaluation: every input, parameter
        and buffer read once, every output written once; a view moves nothing, and an
        in-place layer writes over its input (nothing new)."""
        if self.family(input_shapes[0]) == "view":
            return 0, 0
        read = sum(math.prod(shape) for shape in input_shapes) + result.params + result.buffers
        if getattr(self, "inplace", False):
            return read, 0
        outputs = (result.output_shape, *result.extra_outputs)
        return read, sum(math.prod(shape) for shape in outputs)

    def trainable_params(self, result: LayerResult) -> int:
        """The parameters that train: all but those of the tensors ``frozen`` names."""
        if not self.frozen:
            return result.params
        sizes = dict(result.parameter_tensors)
        for name in self.frozen:
            if name not in sizes:
                have = ", ".join(sizes) or "none"
                raise _fail(f"frozen: {self.type} has no parameter {shown(name)} (it has: {have})")
        return result.params - sum(sizes[name] for name in set(self.frozen))

    # -- helpers shared by the families ---------------------------------------------------

    def _require_rank(self, shape: Shape, *ranks: int) -> None:
        if len(shape) in ranks:
            return
        wanted = " or ".join(LAYOUTS.get(r - 2, f"{r}-d") for r in ranks)
        raise _fail(
            f"{self.type} expects input {wanted} but gets {format_shape(shape)} "
            f"({len(shape)} dimensions)"
        )

    def _check_declared(self, field: str, declared: int | None, actual: int, shape: Shape) -> int:
        if declared is not None and declared != actual:
            raise _fail(
                f"{field} is {declared} but the incoming shape {format_shape(shape)} "
                f"has {actual} {'channel' if actual == 1 else 'channels'}"
            )
        return actual

    def _check_lengths(self, **values: Any) -> None:
        """Per-dimension lists must have one value per spatial dimension."""
        for field, value in values.items():
            if isinstance(value, tuple) and len(value) != self.dims:
                raise ValueError(
                    f"{field}: {self.type} takes one value or {self.dims}, "
                    f"got {len(value)}: {shown(list(value))}"
                )


def _window_warnings(
    spatial: Shape,
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    padding_left: tuple[int, ...],
    dilation: tuple[int, ...],
    output: tuple[int, ...],
) -> tuple[str, str]:
    """Input pixels that no window ever reaches: (dropped trailing ones, skipped ones),
    as messages for ``LayerResult``, empty when there are none."""
    names = SPATIAL_NAMES[len(spatial)]
    dropped = []
    skipped = []
    for name, n, k, s, p, d, o in zip(
        names, spatial, kernel, stride, padding_left, dilation, output
    ):
        lost = uncovered_pixels(n, k, s, p, d, o)
        if lost:
            dropped.append(f"{_plural(lost, _UNITS[name])} ({name})")
        # taps t·d (t < k) reach the multiples of gcd(d, s) modulo s, s / gcd of them
        reached = min(k, s // math.gcd(d, s))
        if reached < s:
            skipped.append(f"{s - reached} of every {s} in {name}")
    dropped_message = skipped_message = ""
    if dropped:
        dropped_message = (
            f"the last {' and '.join(dropped)} of its {'×'.join(map(str, spatial))} input "
            f"are never covered by a window (kernel {_fmt(kernel)}, stride {_fmt(stride)}, "
            f"padding {_fmt(padding_left)}): floor division drops them"
        )
    if skipped:
        skipped_message = (
            f"stride {_fmt(stride)} skips input pixels that no kernel tap reaches: "
            + ", ".join(skipped)
        )
    return dropped_message, skipped_message


def conv_formula(n: int, k: int, s: int, pl: int, pr: int, d: int, out: int) -> str:
    """The convolution output-size formula with its numbers, for messages.

    >>> conv_formula(224, 11, 4, 2, 2, 1, 55)
    '⌊(224 + 2·2 − 1·(11−1) − 1) / 4⌋ + 1 = 55'
    """
    pad = f"2·{pl}" if pl == pr else f"{pl} + {pr}"
    return f"⌊({n} + {pad} − {d}·({k}−1) − 1) / {s}⌋ + 1 = {out}"


def pool_formula(n: int, k: int, s: int, p: int, d: int, ceil_mode: bool, out: int) -> str:
    """The pooling output-size formula with its numbers, for messages.

    >>> for part in pool_formula(5, 2, 2, 1, 1, True, 3).split(", "):
    ...     print(part)
    ⌈(5 + 2·1 − 1·(2−1) − 1) / 2⌉ + 1 = 4
    minus 1 as the last window would start in the padding = 3
    """
    if not ceil_mode:
        return f"⌊({n} + 2·{p} − {d}·({k}−1) − 1) / {s}⌋ + 1 = {out}"
    raw = -(-(n + 2 * p - d * (k - 1) - 1) // s) + 1
    text = f"⌈({n} + 2·{p} − {d}·({k}−1) − 1) / {s}⌉ + 1 = {raw}"
    if raw != out:
        text += f", minus 1 as the last window would start in the padding = {out}"
    return text


def _times(values: Sequence[int]) -> str:
    return "·".join(map(str, values))


def _weight_and_bias(weight: int, bias: int) -> tuple[tuple[str, int], ...]:
    """The parameter tensors of a layer with a weight and, when ``bias`` is not 0, a bias.

    >>> _weight_and_bias(27, 3)
    (('weight', 27), ('bias', 3))
    """
    return (("weight", weight), ("bias", bias)) if bias else (("weight", weight),)


def _params_line(weights: Sequence[int], bias: int, total: int) -> str:
    """``params: (11·11·3/1)·64 + 64 = 23,296``-style line from the weight's factors."""
    return f"params: {_times(weights)}{f' + {bias}' if bias else ''} = {total:,}"


def _too_small(names: tuple[str, ...], outputs: tuple[int, ...], formulas: list[str]) -> None:
    for name, out, formula in zip(names, outputs, formulas):
        if out < 1:
            raise _fail(f"output size in {name} would be {out}: {formula}; the input is too small")


# ---------------------------------------------------------------------------------------
# Convolutions


class Conv(Leaf):
    """``nn.Conv1d``/``Conv2d``/``Conv3d``."""

    draw_family: ClassVar[str] = "conv"
    torch_names: ClassVar[tuple[str, ...]] = ("Conv1d", "Conv2d", "Conv3d")
    type: Literal["conv1d", "conv2d", "conv3d"]
    in_channels: PositiveInt | None = None
    out_channels: PositiveInt
    kernel_size: PositiveIntOrInts
    stride: PositiveIntOrInts = 1
    padding: Padding = 0
    dilation: PositiveIntOrInts = 1
    groups: PositiveInt = 1
    bias: Bool = True
    padding_mode: Literal["zeros", "reflect", "replicate", "circular"] = "zeros"

    def family(self, input_shape: Shape) -> str:
        """depthwise (one group per input channel), pointwise (1×1, dense) or conv."""
        if self.groups > 1 and self.groups == input_shape[1]:
            return "depthwise"
        if self.groups == 1 and all(k == 1 for k in per_dim(self.kernel_size, self.dims)):
            return "pointwise"
        return "conv"

    @model_validator(mode="after")
    def _check(self) -> "Conv":
        padding = None if isinstance(self.padding, str) else self.padding
        self._check_lengths(
            kernel_size=self.kernel_size,
            stride=self.stride,
            padding=padding,
            dilation=self.dilation,
        )
        if self.out_channels % self.groups:
            raise ValueError(
                f"out_channels ({self.out_channels}) is not divisible by groups ({self.groups})"
            )
        if self.padding == "same" and any(s != 1 for s in per_dim(self.stride, self.dims)):
            raise ValueError(
                f"padding 'same' needs stride 1 (torch refuses it for strided convolutions), "
                f"got stride {self.stride}"
            )
        return self

    def paddings(self) -> tuple[tuple[int, int], ...]:
        """(left, right) padding per spatial dimension, resolving 'same' and 'valid'."""
        kernel = per_dim(self.kernel_size, self.dims)
        dilation = per_dim(self.dilation, self.dims)
        if self.padding == "same":
            return tuple(same_padding(k, d) for k, d in zip(kernel, dilation))
        if self.padding == "valid":
            return ((0, 0),) * self.dims
        return tuple((p, p) for p in per_dim(self.padding, self.dims))  # type: ignore[arg-type]

    def infer(self, input_shape: Shape) -> LayerResult:
        dims = self.dims
        self._require_rank(input_shape, dims + 2)
        batch, channels, *spatial_list = input_shape
        spatial = tuple(spatial_list)
        self._check_declared("in_channels", self.in_channels, channels, input_shape)
        if channels % self.groups:
            raise _fail(f"in_channels ({channels}) is not divisible by groups ({self.groups})")
        kernel = per_dim(self.kernel_size, dims)
        stride = per_dim(self.stride, dims)
        dilation = per_dim(self.dilation, dims)
        pads = self.paddings()
        names = SPATIAL_NAMES[dims]
        if self.padding_mode != "zeros":
            for name, n, (pl, pr) in zip(names, spatial, pads):
                limit_ok = max(pl, pr) < n if self.padding_mode == "reflect" else max(pl, pr) <= n
                if self.padding_mode != "replicate" and not limit_ok:
                    bound = "smaller than" if self.padding_mode == "reflect" else "at most"
                    raise _fail(
                        f"{self.padding_mode} padding {max(pl, pr)} must be {bound} the input "
                        f"size {n} in {name}"
                    )
        output = tuple(
            conv_output_size(n, k, s, lr, d)
            for n, k, s, lr, d in zip(spatial, kernel, stride, pads, dilation)
        )
        if min(output) < 1:
            _too_small(
                names,
                output,
                [
                    conv_formula(n, k, s, pl, pr, d, o)
                    for n, k, s, (pl, pr), d, o in zip(
                        spatial, kernel, stride, pads, dilation, output
                    )
                ],
            )
        per_output = (channels // self.groups) * math.prod(kernel)
        params = per_output * self.out_channels + (self.out_channels if self.bias else 0)
        macs = batch * self.out_channels * math.prod(output) * per_output
        left = tuple(p[0] for p in pads)
        dropped, skipped = _window_warnings(spatial, kernel, stride, left, dilation, output)
        arguments = f"k={_fmt(kernel)} s={_fmt(stride)} p="
        arguments += self.padding if isinstance(self.padding, str) else _fmt(left)
        if any(d != 1 for d in dilation):
            arguments += f" d={_fmt(dilation)}"
        if self.groups != 1:
            arguments += f" g={self.groups}"
        if not self.bias:
            arguments += " bias=False"
        if self.padding_mode != "zeros":
            arguments += f" {self.padding_mode}"
        explanation: Any = ()
        if explaining():  # formula text only when asked for (shape --explain)
            explanation = [
                f"{name}: {conv_formula(n, k, s, pl, pr, d, o)}"
                + (f" (padding 'same': {pl} before, {pr} after)" if self.padding == "same" else "")
                for name, n, k, s, (pl, pr), d, o in zip(
                    names, spatial, kernel, stride, pads, dilation, output
                )
            ]
            weight = f"({_times(kernel)}·{channels}/{self.groups})·{self.out_channels}"
            explanation.append(
                f"params: {weight}{f' + {self.out_channels}' if self.bias else ''} = {params:,}"
            )
            explanation.append(
                f"MACs: {batch}·{self.out_channels}·{_times(output)}·({_times(kernel)}·{channels}"
                f"/{self.groups}) = {macs:,}"
            )
        return LayerResult(
            output_shape=(batch, self.out_channels, *output),
            params=params,
            parameter_tensors=_weight_and_bias(
                per_output * self.out_channels, self.out_channels if self.bias else 0
            ),
            macs=macs,
            explanation=tuple(explanation),
            windows=tuple(
                Window(effective_kernel(k, d), s, p)
                for k, s, p, d in zip(kernel, stride, left, dilation)
            ),
            arguments=arguments,
            dropped=dropped,
            skipped=skipped,
        )

    def saved(self, input_shape: Shape, output_shape: Shape, itemsize: int) -> Saved:
        pads = self.paddings()
        reflects = self.padding_mode in ("reflect", "replicate")  # their backward reads it
        if self.padding_mode != "zeros":  # torch pads a copy of the input first
            grown = [pl + pr for pl, pr in pads]
        elif any(pl != pr for pl, pr in pads):  # 'same' with an even kernel: the extra pixel
            grown = [pr - pl for pl, pr in pads]
        else:
            return Saved("input")
        batch, channels, *spatial = input_shape
        padded = batch * channels * math.prod(n + g for n, g in zip(spatial, grown))
        return Saved(None, padded * itemsize, input_for_its_gradient=reflects)


class ConvTranspose(Leaf):
    """``nn.ConvTranspose1d``/``2d``/``3d``."""

    cost_family: ClassVar[str] = "conv"

    draw_family: ClassVar[str] = "convtranspose"
    torch_names: ClassVar[tuple[str, ...]] = (
        "ConvTranspose1d",
        "ConvTranspose2d",
        "ConvTranspose3d",
    )
    type: Literal["convtranspose1d", "convtranspose2d", "convtranspose3d"]
    in_channels: PositiveInt | None = None
    out_channels: PositiveInt
    kernel_size: PositiveIntOrInts
    stride: PositiveIntOrInts = 1
    padding: NonNegativeIntOrInts = 0
    output_padding: NonNegativeIntOrInts = 0
    groups: PositiveInt = 1
    bias: Bool = True
    dilation: PositiveIntOrInts = 1
    padding_mode: Literal["zeros"] = "zeros"

    @model_validator(mode="after")
    def _check(self) -> "ConvTranspose":
        self._check_lengths(
            kernel_size=self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            output_padding=self.output_padding,
            dilation=self.dilation,
        )
        if self.out_channels % self.groups:
            raise ValueError(
                f"out_channels ({self.out_channels}) is not divisible by groups ({self.groups})"
            )
        stride = per_dim(self.stride, self.dims)
        dilation = per_dim(self.dilation, self.dims)
        for op, s, d in zip(per_dim(self.output_padding, self.dims), stride, dilation):
            if op >= s and op >= d:
                raise ValueError(
                    f"output_padding ({op}) must be smaller than the stride ({s}) or the "
                    f"dilation ({d})"
                )
        return self

    def infer(self, input_shape: Shape) -> LayerResult:
        dims = self.dims
        self._require_rank(input_shape, dims + 2)
        batch, channels, *spatial_list = input_shape
        spatial = tuple(spatial_list)
        self._check_declared("in_channels", self.in_channels, channels, input_shape)
        if channels % self.groups:
            raise _fail(f"in_channels ({channels}) is not divisible by groups ({self.groups})")
        kernel = per_dim(self.kernel_size, dims)
        stride = per_dim(self.stride, dims)
        padding = per_dim(self.padding, dims)
        output_padding = per_dim(self.output_padding, dims)
        dilation = per_dim(self.dilation, dims)
        output = tuple(
            conv_transpose_output_size(n, k, s, p, op, d)
            for n, k, s, p, op, d in zip(spatial, kernel, stride, padding, output_padding, dilation)
        )
        if min(output) < 1:
            _too_small(
                SPATIAL_NAMES[dims],
                output,
                [
                    f"({n} − 1)·{s} − 2·{p} + {d}·({k}−1) + {op} + 1 = {o}"
                    for n, k, s, p, op, d, o in zip(
                        spatial, kernel, stride, padding, output_padding, dilation, output
                    )
                ],
            )
        per_input = (self.out_channels // self.groups) * math.prod(kernel)
        params = channels * per_input + (self.out_channels if self.bias else 0)
        # Each input pixel is multiplied into every kernel tap of its group's outputs.
        macs = batch * channels * math.prod(spatial) * per_input
        arguments = f"k={_fmt(kernel)} s={_fmt(stride)} p={_fmt(padding)}"
        if any(output_padding):
            arguments += f" op={_fmt(output_padding)}"
        if any(d != 1 for d in dilation):
            arguments += f" d={_fmt(dilation)}"
        if self.groups != 1:
            arguments += f" g={self.groups}"
        if not self.bias:
            arguments += " bias=False"
        # Output o sees inputs (o + p − d·(k−1))/s … (o + p)/s: stride 1/s in input pixels.
        windows = tuple(
            Window(
                Fraction(d * (k - 1), s) + 1,
                Fraction(1, s),
                Fraction(d * (k - 1) - p, s),
            )
            for k, s, p, d in zip(kernel, stride, padding, dilation)
        )
        explanation: Any = ()
        if explaining():  # formula text only when asked for (shape --explain)
            explanation = [
                f"{name}: ({n} − 1)·{s} − 2·{p} + {d}·({k}−1) + {op} + 1 = {o}"
                for name, n, k, s, p, op, d, o in zip(
                    SPATIAL_NAMES[dims], spatial, kernel, stride, padding, output_padding,
                    dilation, output,
                )
            ]  # fmt: skip
            weight = f"{channels}·({self.out_channels}/{self.groups})·{_times(kernel)}"
            explanation.append(
                f"params: {weight}{f' + {self.out_channels}' if self.bias else ''} = {params:,}"
            )
            explanation.append(
                f"MACs: {batch}·{channels}·{_times(spatial)}·({self.out_channels}/{self.groups})"
                f"·{_times(kernel)} = {macs:,} (every input pixel times every tap)"
            )
        return LayerResult(
            output_shape=(batch, self.out_channels, *output),
            params=params,
            parameter_tensors=_weight_and_bias(
                channels * per_input, self.out_channels if self.bias else 0
            ),
            macs=macs,
            windows=windows,
            arguments=arguments,
            explanation=tuple(explanation),
        )


# ---------------------------------------------------------------------------------------
# Pooling


def _refuse_indices(return_indices: bool) -> None:
    if return_indices:
        raise ValueError(
            "return_indices: true makes the layer return (values, indices); convcalc models "
            "layers that return one tensor"
        )


class _Pool(Leaf):
    draw_family: ClassVar[str] = "pool"
    kernel_size: PositiveIntOrInts
    stride: PositiveIntOrInts | None = None
    padding: NonNegativeIntOrInts = 0
    ceil_mode: Bool = False

    def _pool(self, input_shape: Shape, dilation_value: int | tuple[int, ...]) -> LayerResult:
        dims = self.dims
        self._require_rank(input_shape, dims + 2)
        batch, channels, *spatial_list = input_shape
        spatial = tuple(spatial_list)
        kernel = per_dim(self.kernel_size, dims)
        stride = kernel if self.stride is None else per_dim(self.stride, dims)
        padding = per_dim(self.padding, dims)
        dilation = per_dim(dilation_value, dims)
        for k, p in zip(kernel, padding):
            if p > k // 2:
                raise _fail(
                    f"padding {p} is more than half the kernel size {k} "
                    f"(torch requires padding ≤ kernel_size / 2)"
                )
        output = tuple(
            pool_output_size(n, k, s, p, d, self.ceil_mode)
            for n, k, s, p, d in zip(spatial, kernel, stride, padding, dilation)
        )
        if min(output) < 1:
            _too_small(
                SPATIAL_NAMES[dims],
                output,
                [
                    pool_formula(n, k, s, p, d, self.ceil_mode, o)
                    for n, k, s, p, d, o in zip(spatial, kernel, stride, padding, dilation, output)
                ],
            )
        dropped, skipped = _window_warnings(spatial, kernel, stride, padding, dilation, output)
        arguments = f"k={_fmt(kernel)} s={_fmt(stride)} p={_fmt(padding)}"
        if any(d != 1 for d in dilation):
            arguments += f" d={_fmt(dilation)}"
        if self.ceil_mode:
            arguments += " ceil"
        return LayerResult(
            output_shape=(batch, channels, *output),
            explanation=(
                tuple(
                    f"{name}: {pool_formula(n, k, s, p, d, self.ceil_mode, o)}"
                    for name, n, k, s, p, d, o in zip(
                        SPATIAL_NAMES[dims], spatial, kernel, stride, padding, dilation, output
                    )
                )
            )
            if explaining()
            else (),
            windows=tuple(
                Window(effective_kernel(k, d), s, p)
                for k, s, p, d in zip(kernel, stride, padding, dilation)
            ),
            arguments=arguments,
            dropped=dropped,
            skipped=skipped,
        )


class MaxPool(_Pool):
    """``nn.MaxPool1d``/``2d``/``3d``."""

    cost_family: ClassVar[str] = "pool"

    torch_names: ClassVar[tuple[str, ...]] = ("MaxPool1d", "MaxPool2d", "MaxPool3d")
    type: Literal["maxpool1d", "maxpool2d", "maxpool3d"]
    dilation: PositiveIntOrInts = 1
    return_indices: Bool = False

    @model_validator(mode="after")
    def _check(self) -> "MaxPool":
        self._check_lengths(
            kernel_size=self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
        )
        _refuse_indices(self.return_indices)
        return self

    def infer(self, input_shape: Shape) -> LayerResult:
        return self._pool(input_shape, self.dilation)

    def saved(self, input_shape: Shape, output_shape: Shape, itemsize: int) -> Saved:
        return Saved("input", 8 * math.prod(output_shape))  # and int64 indices


class AvgPool(_Pool):
    """``nn.AvgPool1d``/``2d``/``3d``."""

    torch_names: ClassVar[tuple[str, ...]] = ("AvgPool1d", "AvgPool2d", "AvgPool3d")
    type: Literal["avgpool1d", "avgpool2d", "avgpool3d"]
    count_include_pad: Bool = True
    divisor_override: PositiveInt | None = None

    @model_validator(mode="after")
    def _check(self) -> "AvgPool":
        self._check_lengths(kernel_size=self.kernel_size, stride=self.stride, padding=self.padding)
        if self.divisor_override is not None and self.dims == 1:
            raise ValueError("divisor_override: avgpool1d has no divisor_override (2d and 3d only)")
        return self

    def infer(self, input_shape: Shape) -> LayerResult:
        if self.dims == 3 and len(input_shape) == 5:
            # ATen's avg_pool3d also refuses an unpadded input smaller than the kernel
            for name, n, k in zip(SPATIAL_NAMES[3], input_shape[2:], per_dim(self.kernel_size, 3)):
                if n < k:
                    raise _fail(
                        f"avgpool3d: the input size {n} in {name} is smaller than the kernel "
                        f"size {k} (torch refuses it, whatever the padding)"
                    )
        return self._pool(input_shape, 1)


class AdaptivePool(Leaf):
    """``nn.AdaptiveAvgPool1d``/``2d``/``3d`` and ``nn.AdaptiveMaxPool1d``/``2d``/``3d``."""

    cost_family: ClassVar[str] = "pool"

    draw_family: ClassVar[str] = "adaptive"
    torch_names: ClassVar[tuple[str, ...]] = (
        "AdaptiveAvgPool1d",
        "AdaptiveAvgPool2d",
        "AdaptiveAvgPool3d",
        "AdaptiveMaxPool1d",
        "AdaptiveMaxPool2d",
        "AdaptiveMaxPool3d",
    )
    type: Literal[
        "adaptiveavgpool1d",
        "adaptiveavgpool2d",
        "adaptiveavgpool3d",
        "adaptivemaxpool1d",
        "adaptivemaxpool2d",
        "adaptivemaxpool3d",
    ]
    output_size: OutputSize
    return_indices: Bool = False

    @model_validator(mode="after")
    def _check(self) -> "AdaptivePool":
        if isinstance(self.output_size, tuple) and len(self.output_size) != self.dims:
            raise ValueError(
                f"output_size: {self.type} takes one value or {self.dims}, "
                f"got {len(self.output_size)}: {list(self.output_size)}"
            )
        if self.dims == 1 and isinstance(self.output_size, tuple) and None in self.output_size:
            raise ValueError(f"output_size: {self.type} takes no null (2d and 3d only)")
        if "avg" in self.type and "return_indices" in self.model_fields_set:
            raise ValueError(f"return_indices: {self.type} has no return_indices")
        _refuse_indices(self.return_indices)
        return self

    def infer(self, input_shape: Shape) -> LayerResult:
        dims = self.dims
        self._require_rank(input_shape, dims + 2)
        batch, channels, *spatial = input_shape
        wanted = (
            (self.output_size,) * dims if isinstance(self.output_size, int) else self.output_size
        )
        output = tuple(n if o is None else o for n, o in zip(spatial, wanted))
        windows = []
        for n, o in zip(spatial, output):
            if n % o == 0:
                windows.append(Window(n // o, n // o, 0))
            else:  # uneven windows: the widest one, at the average stride
                widest = adaptive_window_widths(n, o)[-1]
                windows.append(Window(widest, Fraction(n, o), 0))
        explanation: Any = ()
        if explaining():  # formula text only when asked for (shape --explain)
            explanation = []
            for name, n, o in zip(SPATIAL_NAMES[dims], spatial, output):
                widths = adaptive_window_widths(n, o)
                explanation.append(
                    f"{name}: {o} (output_size); window i covers ⌊i·{n}/{o}⌋ … "
                    f"⌈(i+1)·{n}/{o}⌉ − 1, {' or '.join(map(str, widths))} wide"
                )
        return LayerResult(
            output_shape=(batch, channels, *output),
            windows=tuple(windows),
            arguments=f"out={'×'.join(map(str, output))}",
            explanation=tuple(explanation),
        )

    def saved(self, input_shape: Shape, output_shape: Shape, itemsize: int) -> Saved:
        if "max" in self.type:
            return Saved("input", 8 * math.prod(output_shape))  # and int64 indices
        if all(n == 1 for n in output_shape[2:]):
            return NOTHING_SAVED  # torch takes the mean, whose backward needs no tensor
        return Saved("input")


# ---------------------------------------------------------------------------------------
# Normalisation


class BatchNorm(Leaf):
    """``nn.BatchNorm1d``/``2d``/``3d``: 2·C parameters, 2·C + 1 buffers."""

    draw_family: ClassVar[str] = "norm"
    short_labels: ClassVar[dict[str, str]] = {
        "batchnorm1d": "BN",
        "batchnorm2d": "BN",
        "batchnorm3d": "BN",
    }
    torch_names: ClassVar[tuple[str, ...]] = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d")
    identity_for_receptive_field: ClassVar[bool] = True
    drawn_folded: ClassVar[bool] = True
    type: Literal["batchnorm1d", "batchnorm2d", "batchnorm3d"]
    num_features: PositiveInt | None = None
    eps: Float = 1e-5
    momentum: Float | None = 0.1
    affine: Bool = True
    track_running_stats: Bool = True

    def infer(self, input_shape: Shape) -> LayerResult:
        ranks = (2, 3) if self.dims == 1 else (self.dims + 2,)
        self._require_rank(input_shape, *ranks)
        channels = self._check_declared(
            "num_features", self.num_features, input_shape[1], input_shape
        )
        warnings: tuple[str, ...] = ()
        if math.prod(input_shape) // channels == 1 and not self.track_running_stats:
            raise _fail(
                f"{format_shape(input_shape)} has one value per channel: without running "
                f"statistics batch norm cannot normalise it (torch refuses it)"
            )
        if math.prod(input_shape) // channels == 1:
            warnings = (
                f"{format_shape(input_shape)} has one value per channel: torch refuses to "
                f"train batch norm on it (use batch_size > 1)",
            )
        return LayerResult(
            output_shape=input_shape,
            params=2 * channels if self.affine else 0,
            parameter_tensors=_weight_and_bias(channels, channels) if self.affine else (),
            buffers=2 * channels + 1 if self.track_running_stats else 0,
            arguments="" if self.affine else "affine=False",
            warnings=warnings,
            explanation=(_norm_explanation(channels, self.affine, self.track_running_stats))
            if explaining()
            else (),
        )

    def saved(self, input_shape: Shape, output_shape: Shape, itemsize: int) -> Saved:
        return Saved("input", 2 * input_shape[1] * _stat_bytes(itemsize))  # mean, 1/std


def _norm_explanation(channels: int, affine: bool, running: bool) -> tuple[str, ...]:
    lines = [
        f"params: 2·{channels} = {2 * channels:,} (a scale and a shift per channel)"
        if affine
        else "params: 0 (affine: false)"
    ]
    if running:
        lines.append(
            f"buffers: 2·{channels} + 1 = {2 * channels + 1:,} (running mean and variance, "
            f"and the batch count)"
        )
    return tuple(lines)


class InstanceNorm(Leaf):
    """``nn.InstanceNorm1d``/``2d``/``3d`` (no parameters unless affine)."""

    draw_family: ClassVar[str] = "norm"
    short_labels: ClassVar[dict[str, str]] = {
        "instancenorm1d": "IN",
        "instancenorm2d": "IN",
        "instancenorm3d": "IN",
    }
    torch_names: ClassVar[tuple[str, ...]] = ("InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d")
    identity_for_receptive_field: ClassVar[bool] = True
    drawn_folded: ClassVar[bool] = True
    type: Literal["instancenorm1d", "instancenorm2d", "instancenorm3d"]
    num_features: PositiveInt | None = None
    eps: Float = 1e-5
    momentum: Float | None = 0.1
    affine: Bool = False
    track_running_stats: Bool = False

    def infer(self, input_shape: Shape) -> LayerResult:
        self._require_rank(input_shape, self.dims + 2)
        channels = self._check_declared(
            "num_features", self.num_features, input_shape[1], input_shape
        )
        warnings: tuple[str, ...] = ()
        if math.prod(input_shape[2:]) == 1 and not self.track_running_stats:
            raise _fail(
                f"{format_shape(input_shape)} has one spatial element: without running "
                f"statistics instance norm cannot normalise it (torch refuses it)"
            )
        if math.prod(input_shape[2:]) == 1:
            warnings = (
                f"{format_shape(input_shape)} has one spatial element: torch refuses to train "
                f"instance norm on it",
            )
        return LayerResult(
            output_shape=input_shape,
            params=2 * channels if self.affine else 0,
            parameter_tensors=_weight_and_bias(channels, channels) if self.affine else (),
            buffers=2 * channels + 1 if self.track_running_stats else 0,
            arguments="affine" if self.affine else "",
            warnings=warnings,
            explanation=(_norm_explanation(channels, self.affine, self.track_running_stats))
            if explaining()
            else (),
        )

    def saved(self, input_shape: Shape, output_shape: Shape, itemsize: int) -> Saved:
        # torch runs batch norm over [1, N·C, ...]: its mean and 1/std, and the
        # weight (and running statistics) repeated N times
        per_instance = 2 * _stat_bytes(itemsize) + itemsize * (
            self.affine + 2 * self.track_running_stats
        )
        return Saved("input", input_shape[0] * input_shape[1] * per_instance)


class GroupNorm(Leaf):
    """``nn.GroupNorm``: C must divide into ``num_groups``."""

    draw_family: ClassVar[str] = "norm"
    short_labels: ClassVar[dict[str, str]] = {"groupnorm": "GN"}
    torch_names: ClassVar[tuple[str, ...]] = ("GroupNorm",)
    identity_for_receptive_field: ClassVar[bool] = True
    drawn_folded: ClassVar[bool] = True
    type: Literal["groupnorm"]
    num_groups: PositiveInt
    num_channels: PositiveInt | None = None
    eps: Float = 1e-5
    affine: Bool = True

    def infer(self, input_shape: Shape) -> LayerResult:
        if len(input_shape) < 2:
            raise _fail(f"groupnorm expects input [N, C, ...], got {format_shape(input_shape)}")
        channels = self._check_declared(
            "num_channels", self.num_channels, input_shape[1], input_shape
        )
        if channels % self.num_groups:
            raise _fail(
                f"the {channels} channels do not divide into num_groups ({self.num_groups})"
            )
        if input_shape[0] * channels // self.num_groups * math.prod(input_shape[2:]) == 1:
            raise _fail(
                f"groupnorm needs more than one value per group, but {format_shape(input_shape)} "
                f"in {self.num_groups} groups has one (torch refuses it)"
            )
        return LayerResult(
            output_shape=input_shape,
            params=2 * channels if self.affine else 0,
            parameter_tensors=_weight_and_bias(channels, channels) if self.affine else (),
            arguments=f"groups={self.num_groups}",
            explanation=(_norm_explanation(channels, self.affine, False)) if explaining() else (),
        )

    def saved(self, input_shape: Shape, output_shape: Shape, itemsize: int) -> Saved:
        return Saved("input", 2 * input_shape[0] * self.num_groups * _stat_bytes(itemsize))


class LayerNorm(Leaf):
    """``nn.LayerNorm``; ``normalized_shape`` defaults to every dimension after the batch."""

    draw_family: ClassVar[str] = "norm"
    short_labels: ClassVar[dict[str, str]] = {"layernorm": "LN"}
    torch_names: ClassVar[tuple[str, ...]] = ("LayerNorm",)
    identity_for_receptive_field: ClassVar[bool] = True
    drawn_folded: ClassVar[bool] = True
    type: Literal["layernorm"]
    normalized_shape: PositiveIntOrInts | None = None
    eps: Float = 1e-5
    elementwise_affine: Bool = True
    bias: Bool = True

    def normalized(self, input_shape: Shape) -> Shape:
        if self.normalized_shape is None:
            return input_shape[1:]
        if isinstance(self.normalized_shape, int):
            return (self.normalized_shape,)
        return tuple(self.normalized_shape)

    def infer(self, input_shape: Shape) -> LayerResult:
        normalized = self.normalized(input_shape)
        if len(normalized) >= len(input_shape) or input_shape[-len(normalized) :] != normalized:
            raise _fail(
                f"normalized_shape {list(normalized)} does not match the trailing dimensions "
                f"of the incoming shape {format_shape(input_shape)}"
            )
        size = math.prod(normalized)
        params = 0
        if self.elementwise_affine:
            params = 2 * size if self.bias else size
        which = "a weight and a bias" if self.bias else "a weight"
        explanation: Any = ()
        if explaining():  # formula text only when asked for (shape --explain)
            explanation = (
                f"params: {params // size}·{_times(normalized)} = {params:,} ({which} per element)"
                if params
                else "params: 0 (elementwise_affine: false)",
            )
        return LayerResult(
            output_shape=input_shape,
            params=params,
            parameter_tensors=_weight_and_bias(size, size if self.bias else 0)
            if self.elementwise_affine
            else (),
            arguments=f"over {list(normalized)}",
            explanation=explanation,
        )

    def saved(self, input_shape: Shape, output_shape: Shape, itemsize: int) -> Saved:
        outer = math.prod(input_shape[: len(input_shape) - len(self.normalized(input_shape))])
        return Saved("input", 2 * outer * _stat_bytes(itemsize))


class LocalResponseNorm(Leaf):
    """``nn.LocalResponseNorm`` across channels (AlexNet's LRN)."""

    draw_family: ClassVar[str] = "norm"
    short_labels: ClassVar[dict[str, str]] = {"localresponsenorm": "LRN"}
    torch_names: ClassVar[tuple[str, ...]] = ("LocalResponseNorm",)
    identity_for_receptive_field: ClassVar[bool] = True
    drawn_folded: ClassVar[bool] = True
    type: Literal["localresponsenorm"]
    size: PositiveInt
    alpha: Float = 1e-4
    beta: Float = 0.75
    k: Float = 1.0

    def infer(self, input_shape: Shape) -> LayerResult:
        if len(input_shape) < 3:
            raise _fail(
                f"localresponsenorm expects input [N, C, ...] with at least 3 dimensions, "
                f"got {format_shape(input_shape)}"
            )
        return LayerResult(output_shape=input_shape, arguments=f"size={self.size}")

    def saved(self, input_shape: Shape, output_shape: Shape, itemsize: int) -> Saved:
        # torch composes it: x², padded across channels for an average pool, then a
        # power and a division that each keep a tensor of the input's size
        batch, channels, *spatial = input_shape
        padded = batch * (channels + self.size - 1) * math.prod(spatial)
        return Saved("input", (padded + 2 * math.prod(input_shape)) * itemsize)


# ---------------------------------------------------------------------------------------
# Element-wise layers


class Activation(Leaf):
    """Parameter-free activations with an ``inplace`` flag."""

    short_labels: ClassVar[dict[str, str]] = {
        "relu": "ReLU",
        "relu6": "ReLU6",
        "silu": "SiLU",
        "hardswish": "h-swish",
        "hardsigmoid": "h-sigmoid",
    }
    torch_names: ClassVar[tuple[str, ...]] = ("ReLU", "ReLU6", "SiLU", "Hardswish", "Hardsigmoid")
    identity_for_receptive_field: ClassVar[bool] = True
    drawn_folded: ClassVar[bool] = True
    functional_names: ClassVar[dict[str, str]] = {
        "relu": "relu", "relu_": "relu", "relu6": "relu6", "silu": "silu",
        "hardswish": "hardswish", "hardsigmoid": "hardsigmoid",
    }  # fmt: skip
    type: Literal["relu", "relu6", "silu", "hardswish", "hardsigmoid"]
    inplace: Bool = False

    def infer(self, input_shape: Shape) -> LayerResult:
        return LayerResult(output_shape=input_shape)

    def saved(self, input_shape: Shape, output_shape: Shape, itemsize: int) -> Saved:
        if self.type == "relu":  # backward reads the result
            return Saved("output", shares_input=self.inplace)
        if self.inplace:  # autograd keeps a copy of the input it overwrites
            return Saved(None, math.prod(input_shape) * itemsize, shares_input=True)
        return Saved("input")


class Elementwise(Leaf):
    """Parameter-free layers without arguments."""

    torch_names: ClassVar[tuple[str, ...]] = ("Sigmoid", "Tanh", "Identity")
    identity_for_receptive_field: ClassVar[bool] = True
    drawn_folded: ClassVar[bool] = True
    functional_names: ClassVar[dict[str, str]] = {"sigmoid": "sigmoid", "tanh": "tanh"}
    type: Literal["sigmoid", "tanh", "identity"]

    def family(self, input_shape: Shape) -> str:
        return "view" if self.type == "identity" else "elementwise"

    def infer(self, input_shape: Shape) -> LayerResult:
        return LayerResult(output_shape=input_shape)

    def saved(self, input_shape: Shape, output_shape: Shape, itemsize: int) -> Saved:
        return SAME_STORAGE if self.type == "identity" else Saved("output")


class LeakyReLU(Leaf):
    short_labels: ClassVar[dict[str, str]] = {"leakyrelu": "LeakyReLU"}
    torch_names: ClassVar[tuple[str, ...]] = ("LeakyReLU",)
    identity_for_receptive_field: ClassVar[bool] = True
    drawn_folded: ClassVar[bool] = True
    type: Literal["leakyrelu"]
    negative_slope: Float = 0.01
    inplace: Bool = False

    def infer(self, input_shape: Shape) -> LayerResult:
        return LayerResult(output_shape=input_shape, arguments=f"slope={self.negative_slope:g}")

    def saved(self, input_shape: Shape, output_shape: Shape, itemsize: int) -> Saved:
        return Saved("output", shares_input=True) if self.inplace else Saved("input")


class ELU(Leaf):
    torch_names: ClassVar[tuple[str, ...]] = ("ELU",)
    identity_for_receptive_field: ClassVar[bool] = True
    drawn_folded: ClassVar[bool] = True
    type: Literal["elu"]
    alpha: Float = 1.0
    inplace: Bool = False

    def infer(self, input_shape: Shape) -> LayerResult:
        return LayerResult(output_shape=input_shape, arguments=f"alpha={self.alpha:g}")

    def saved(self, input_shape: Shape, output_shape: Shape, itemsize: int) -> Saved:
        return Saved("output", shares_input=True) if self.inplace else Saved("input")


class GELU(Leaf):
    short_labels: ClassVar[dict[str, str]] = {"gelu": "GELU"}
    torch_names: ClassVar[tuple[str, ...]] = ("GELU",)
    identity_for_receptive_field: ClassVar[bool] = True
    drawn_folded: ClassVar[bool] = True
    type: Literal["gelu"]
    approximate: Literal["none", "tanh"] = "none"

    def infer(self, input_shape: Shape) -> LayerResult:
        return LayerResult(
            output_shape=input_shape,
            arguments="" if self.approximate == "none" else f"approximate={self.approximate}",
        )


class Softmax(Leaf):
    """``nn.Softmax`` and ``nn.LogSoftmax``."""

    torch_names: ClassVar[tuple[str, ...]] = ("Softmax", "LogSoftmax")
    identity_for_receptive_field: ClassVar[bool] = True
    drawn_folded: ClassVar[bool] = True
    type: Literal["softmax", "logsoftmax"]
    dim: Int | None = None

    def infer(self, input_shape: Shape) -> LayerResult:
        rank = len(input_shape)
        warnings: tuple[str, ...] = ()
        if self.dim is None:
            implicit = 0 if rank in (0, 1, 3) else 1
            warnings = (
                f"no dim given: torch picks dim {implicit} of {format_shape(input_shape)} "
                f"implicitly and warns; set dim explicitly",
            )
        elif not -rank <= self.dim < rank:
            raise _fail(
                f"dim {self.dim} is out of range for the incoming shape "
                f"{format_shape(input_shape)} (expected {-rank} to {rank - 1})"
            )
        # Softmax over a spatial dimension mixes positions; over channels it is pointwise.
        spatial_dim = self.dim is not None and (self.dim % rank) >= 2
        return LayerResult(
            output_shape=input_shape,
            windows=SpatialMap.DENSE if spatial_dim else SpatialMap.POINTWISE,
            arguments="" if self.dim is None else f"dim={self.dim}",
            warnings=warnings,
        )

    def saved(self, input_shape: Shape, output_shape: Shape, itemsize: int) -> Saved:
        return Saved("output")


class Dropout(Leaf):
    """``nn.Dropout`` and the channel-wise ``Dropout1d``/``2d``/``3d``."""

    cost_family: ClassVar[str] = "view"

    short_labels: ClassVar[dict[str, str]] = {
        "dropout1d": "dropout", "dropout2d": "dropout", "dropout3d": "dropout"
    }  # fmt: skip
    torch_names: ClassVar[tuple[str, ...]] = ("Dropout", "Dropout1d", "Dropout2d", "Dropout3d")
    identity_for_receptive_field: ClassVar[bool] = True
    drawn_folded: ClassVar[bool] = True
    type: Literal["dropout", "dropout1d", "dropout2d", "dropout3d"]
    p: Probability = 0.5
    inplace: Bool = False

    def infer(self, input_shape: Shape) -> LayerResult:
        warnings: tuple[str, ...] = ()
        if self.dims == 1:
            self._require_rank(input_shape, 2, 3)
        elif self.dims and len(input_shape) != self.dims + 2:
            # torch accepts other ranks with a deprecation warning
            warnings = (
                f"{self.type} expects input {LAYOUTS[self.dims]} but gets "
                f"{format_shape(input_shape)}; torch warns and drops whole channels anyway",
            )
        return LayerResult(output_shape=input_shape, arguments=f"p={self.p:g}", warnings=warnings)

    def saved(self, input_shape: Shape, output_shape: Shape, itemsize: int) -> Saved:
        # On CPU the output is input × a noise tensor of the input's dtype, which backward
        # keeps: one value per element, or per channel for Dropout1d/2d/3d.
        if self.p == 0:
            return SAME_STORAGE
        per_element = math.prod(input_shape[:2] if self.dims else input_shape)
        noise = 1 if self.p == 1 else per_element  # p = 1 multiplies by a zero scalar
        return Saved(None, noise * itemsize, shares_input=self.inplace)


class Flatten(Leaf):
    """``nn.Flatten``: merges ``start_dim`` … ``end_dim`` (batch stays by default)."""

    cost_family: ClassVar[str] = "view"

    draw_family: ClassVar[str] = "reshape"
    torch_names: ClassVar[tuple[str, ...]] = ("Flatten",)
    type: Literal["flatten"]
    start_dim: Int = 1
    end_dim: Int = -1

    def infer(self, input_shape: Shape) -> LayerResult:
        rank = len(input_shape)
        for field, value in (("start_dim", self.start_dim), ("end_dim", self.end_dim)):
            if not -rank <= value < rank:
                raise _fail(
                    f"{field} {value} is out of range for the incoming shape "
                    f"{format_shape(input_shape)} (expected {-rank} to {rank - 1})"
                )
        start, end = self.start_dim % rank, self.end_dim % rank
        if start > end:
            raise _fail(
                f"start_dim {self.start_dim} comes after end_dim {self.end_dim} for the "
                f"incoming shape {format_shape(input_shape)}"
            )
        merged = math.prod(input_shape[start : end + 1])
        output = (*input_shape[:start], merged, *input_shape[end + 1 :])
        merged_dims = input_shape[start : end + 1]
        return LayerResult(
            output_shape=output,
            windows=SpatialMap.POINTWISE if start == end else SpatialMap.DENSE,
            explanation=((f"dimensions {start}–{end}: {_times(merged_dims)} = {merged:,}",))
            if explaining()
            else (),
        )

    def saved(self, input_shape: Shape, output_shape: Shape, itemsize: int) -> Saved:
        return SAME_STORAGE  # a view


class Linear(Leaf):
    """``nn.Linear`` on the last dimension; after a spatial output it wants a flatten first."""

    cost_family: ClassVar[str] = "linear"

    draw_family: ClassVar[str] = "linear"
    torch_names: ClassVar[tuple[str, ...]] = ("Linear",)
    type: Literal["linear"]
    in_features: PositiveInt | None = None
    out_features: PositiveInt
    bias: Bool = True

    def infer(self, input_shape: Shape) -> LayerResult:
        features = input_shape[-1]
        if len(input_shape) > 2 and self.in_features is None:
            raise _fail(
                f"linear gets the multi-dimensional shape {format_shape(input_shape)}; add a "
                f"flatten layer before it (or give in_features: {features} to apply it to the "
                f"last dimension only)"
            )
        if self.in_features is not None and self.in_features != features:
            raise _fail(
                f"in_features is {self.in_features} but the incoming shape "
                f"{format_shape(input_shape)} has {features} features in its last dimension"
            )
        params = features * self.out_features + (self.out_features if self.bias else 0)
        rows = math.prod(input_shape[:-1])
        macs = rows * features * self.out_features
        return LayerResult(
            output_shape=(*input_shape[:-1], self.out_features),
            params=params,
            parameter_tensors=_weight_and_bias(
                features * self.out_features, self.out_features if self.bias else 0
            ),
            macs=macs,
            windows=SpatialMap.DENSE,
            arguments=f"{features}→{self.out_features}" + ("" if self.bias else " bias=False"),
            explanation=(
                (
                    _params_line(
                        [features, self.out_features], self.out_features if self.bias else 0, params
                    ),
                    f"MACs: {rows}·{features}·{self.out_features} = {macs:,}",
                )
            )
            if explaining()
            else (),
        )

    def saved(self, input_shape: Shape, output_shape: Shape, itemsize: int) -> Saved:
        # the input is needed only for the weight's gradient
        return Saved("input", weight_grad_only=True)


class Upsample(Leaf):
    """``nn.Upsample``: a fixed ``size`` or a ``scale_factor``."""

    cost_family: ClassVar[str] = "copy"

    draw_family: ClassVar[str] = "upsample"
    torch_names: ClassVar[tuple[str, ...]] = ("Upsample",)
    type: Literal["upsample"]
    size: PositiveIntOrInts | None = None
    scale_factor: FloatOrFloats | None = None
    mode: Literal[
        "nearest", "linear", "bilinear", "bicubic", "trilinear", "area", "nearest-exact"
    ] = "nearest"
    align_corners: Bool | None = None
    recompute_scale_factor: Bool | None = None

    _MODE_RANKS: ClassVar[dict[str, int]] = {
        "linear": 3,
        "bilinear": 4,
        "bicubic": 4,
        "trilinear": 5,
    }

    @model_validator(mode="after")
    def _check(self) -> "Upsample":
        if (self.size is None) == (self.scale_factor is None):
            raise ValueError("give exactly one of size and scale_factor")
        if self.align_corners is not None and self.mode not in self._MODE_RANKS:
            raise ValueError(
                f"align_corners can only be set with the interpolating modes linear, bilinear, "
                f"bicubic and trilinear, not mode {self.mode!r}"
            )
        return self

    def infer(self, input_shape: Shape) -> LayerResult:
        self._require_rank(input_shape, 3, 4, 5)
        batch, channels, *spatial = input_shape
        dims = len(spatial)
        needed = self._MODE_RANKS.get(self.mode)
        if needed is not None and needed != len(input_shape):
            raise _fail(
                f"mode {self.mode!r} needs a {needed}-d input {LAYOUTS[needed - 2]}, "
                f"got {format_shape(input_shape)}"
            )
        if self.size is not None:
            sizes = per_dim(self.size, dims)
            if len(sizes) != dims:
                raise _fail(
                    f"size {list(sizes)} has {len(sizes)} values for {dims} spatial "
                    f"dimensions of {format_shape(input_shape)}"
                )
            output = sizes
            scales = tuple(Fraction(o, n) for o, n in zip(output, spatial))
            arguments = f"size={_fmt(output)} {self.mode}"
        else:
            assert self.scale_factor is not None  # the validator requires size or scale_factor
            factors: tuple[float, ...] = (
                self.scale_factor
                if isinstance(self.scale_factor, tuple)
                else (self.scale_factor,) * dims
            )
            if len(factors) != dims:
                raise _fail(
                    f"scale_factor {list(factors)} has {len(factors)} values for {dims} "
                    f"spatial dimensions of {format_shape(input_shape)}"
                )
            for name, n, f in zip(SPATIAL_NAMES[dims], spatial, factors):
                if not float(n) * f < 2.0**63:  # also inf: no tensor has that size
                    raise _fail(
                        f"output size in {name} would be ⌊{n} · {f:g}⌋, larger than any "
                        f"tensor can have (2**63 - 1)"
                    )
            output = tuple(upsample_output_size(n, f) for n, f in zip(spatial, factors))
            _too_small(
                SPATIAL_NAMES[dims],
                output,
                [f"⌊{n} · {f:g}⌋ = {o}" for n, f, o in zip(spatial, factors, output)],
            )
            scales = tuple(Fraction(f).limit_denominator(10_000) for f in factors)
            arguments = f"×{_fmt(tuple(f'{f:g}' for f in factors))} {self.mode}"
        explanation: tuple[str, ...] = ()
        if not explaining():
            pass
        elif self.size is not None:
            explanation = tuple(
                f"{name}: {o} (size)" for name, o in zip(SPATIAL_NAMES[dims], output)
            )
        else:
            explanation = tuple(
                f"{name}: ⌊{n} · {f:g}⌋ = {o}"
                for name, n, f, o in zip(SPATIAL_NAMES[dims], spatial, factors, output)
            )
        return LayerResult(
            output_shape=(batch, channels, *output),
            windows=tuple(self._window(scale) for scale in scales),
            arguments=arguments,
            explanation=explanation,
        )

    def saved(self, input_shape: Shape, output_shape: Shape, itemsize: int) -> Saved:
        if self.mode == "area" and any(n != 1 for n in output_shape[2:]):
            return Saved("input")  # adaptive average pooling
        return NOTHING_SAVED  # backward needs only the sizes

    def _window(self, scale: Fraction) -> Window:
        """Nearest reads input ⌊o/scale⌋; linear modes read the 2 pixels around
        (o + ½)/scale − ½, bicubic the 4 around it (borders, where torch clamps, aside)."""
        if self.mode not in self._MODE_RANKS:
            return Window(1, 1 / scale, 0)
        shift = (1 - 1 / scale) / 2
        if self.mode == "bicubic":
            return Window(4, 1 / scale, shift + 1)
        return Window(2, 1 / scale, shift)


class _Pad(Leaf):
    """The padding families: padding is (left, right[, top, bottom[, front, back]]) as in
    torch, one number for every side, and negative values crop."""

    cost_family: ClassVar[str] = "copy"

    draw_family: ClassVar[str] = "pad"
    padding: SignedIntOrInts

    @model_validator(mode="after")
    def _check_padding(self) -> "_Pad":
        if isinstance(self.padding, tuple) and len(self.padding) != 2 * self.dims:
            raise ValueError(
                f"padding: {self.type} takes one value or {2 * self.dims} "
                f"(left, right{', top, bottom' if self.dims > 1 else ''}"
                f"{', front, back' if self.dims > 2 else ''}), got {len(self.padding)}: "
                f"{list(self.padding)}"
            )
        return self

    def pads(self) -> tuple[tuple[int, int], ...]:
        """(before, after) per spatial dimension, in dimension order (D, H, W)."""
        flat = per_dim(self.padding, 2 * self.dims)
        # torch lists the last dimension first: (left, right, top, bottom, front, back).
        pairs = [(flat[2 * i], flat[2 * i + 1]) for i in range(self.dims)]
        return tuple(reversed(pairs))

    def _check_limits(self, spatial: Sequence[int], pads: tuple[tuple[int, int], ...]) -> None:
        """Refuse padding torch cannot apply to this input. Constant padding crops first
        (negative values), so it may not crop more than there is."""
        for name, n, (a, b) in zip(SPATIAL_NAMES[self.dims], spatial, pads):
            if n + min(a, 0) + min(b, 0) < 0:
                raise _fail(
                    f"padding {[a, b]} crops {-min(a, 0) - min(b, 0)} pixels from the input "
                    f"size {n} in {name}: more than there are"
                )

    def _arguments(self) -> str:
        return f"p={list(per_dim(self.padding, 2 * self.dims))}"

    def infer(self, input_shape: Shape) -> LayerResult:
        self._require_rank(input_shape, self.dims + 2)
        batch, channels, *spatial = input_shape
        pads = self.pads()
        self._check_limits(spatial, pads)
        output = tuple(n + a + b for n, (a, b) in zip(spatial, pads))
        _too_small(
            SPATIAL_NAMES[self.dims],
            output,
            [f"{n} + {a} + {b} = {o}" for n, (a, b), o in zip(spatial, pads, output)],
        )
        return LayerResult(
            output_shape=(batch, channels, *output),
            explanation=(
                tuple(
                    f"{name}: {n} + {a} + {b} = {o}"
                    for name, n, (a, b), o in zip(SPATIAL_NAMES[self.dims], spatial, pads, output)
                )
            )
            if explaining()
            else (),
            windows=tuple(Window(1, 1, a) for a, _ in pads),
            arguments=self._arguments(),
        )

    def saved(self, input_shape: Shape, output_shape: Shape, itemsize: int) -> Saved:
        return NOTHING_SAVED


class ZeroPad(_Pad):
    """``nn.ZeroPad1d``/``2d``/``3d``."""

    torch_names: ClassVar[tuple[str, ...]] = ("ZeroPad1d", "ZeroPad2d", "ZeroPad3d")
    type: Literal["zeropad1d", "zeropad2d", "zeropad3d"]


class ConstantPad(_Pad):
    """``nn.ConstantPad1d``/``2d``/``3d``: ``value`` is required, as in torch."""

    torch_names: ClassVar[tuple[str, ...]] = ("ConstantPad1d", "ConstantPad2d", "ConstantPad3d")
    type: Literal["constantpad1d", "constantpad2d", "constantpad3d"]
    value: Float

    def _arguments(self) -> str:
        return f"{super()._arguments()} value={self.value:g}"


class ReflectionPad(_Pad):
    """``nn.ReflectionPad1d``/``2d``/``3d``: the border pixel is not repeated, so each side's
    padding must be smaller than the input size."""

    torch_names: ClassVar[tuple[str, ...]] = (
        "ReflectionPad1d",
        "ReflectionPad2d",
        "ReflectionPad3d",
    )
    type: Literal["reflectionpad1d", "reflectionpad2d", "reflectionpad3d"]

    def _check_limits(self, spatial: Sequence[int], pads: tuple[tuple[int, int], ...]) -> None:
        for name, n, (a, b) in zip(SPATIAL_NAMES[self.dims], spatial, pads):
            if max(a, b) >= n:
                raise _fail(
                    f"reflection padding {max(a, b)} must be smaller than the input size {n} "
                    f"in {name}"
                )

    def saved(self, input_shape: Shape, output_shape: Shape, itemsize: int) -> Saved:
        return Saved(None, input_for_its_gradient=True)  # backward reads the input


class ReplicationPad(_Pad):
    """``nn.ReplicationPad1d``/``2d``/``3d``: any padding (the border pixel repeats)."""

    torch_names: ClassVar[tuple[str, ...]] = (
        "ReplicationPad1d",
        "ReplicationPad2d",
        "ReplicationPad3d",
    )
    type: Literal["replicationpad1d", "replicationpad2d", "replicationpad3d"]

    def _check_limits(self, spatial: Sequence[int], pads: tuple[tuple[int, int], ...]) -> None:
        pass  # it crops and pads in one step: only the output size counts

    def saved(self, input_shape: Shape, output_shape: Shape, itemsize: int) -> Saved:
        return Saved(None, input_for_its_gradient=True)  # backward reads the input


class CircularPad(_Pad):
    """``nn.CircularPad1d``/``2d``/``3d``: wraps around at most once."""

    torch_names: ClassVar[tuple[str, ...]] = ("CircularPad1d", "CircularPad2d", "CircularPad3d")
    type: Literal["circularpad1d", "circularpad2d", "circularpad3d"]

    def _check_limits(self, spatial: Sequence[int], pads: tuple[tuple[int, int], ...]) -> None:
        super()._check_limits(spatial, pads)
        for name, n, (a, b) in zip(SPATIAL_NAMES[self.dims], spatial, pads):
            if max(a, b) > n:
                raise _fail(
                    f"circular padding {max(a, b)} must be at most the input size {n} in "
                    f"{name} (torch wraps around once only)"
                )


# ---------------------------------------------------------------------------------------
# More activations


def _inplace_copy(input_shape: Shape, itemsize: int, inplace: bool) -> Saved:
    """Backward reads the input; in place, autograd first keeps a copy of it."""
    if inplace:
        return Saved(None, math.prod(input_shape) * itemsize, shares_input=True)
    return Saved("input")


class PReLU(Leaf):
    """``nn.PReLU``: one learnable slope, or one per channel (``num_parameters`` = C)."""

    short_labels: ClassVar[dict[str, str]] = {"prelu": "PReLU"}
    torch_names: ClassVar[tuple[str, ...]] = ("PReLU",)
    identity_for_receptive_field: ClassVar[bool] = True
    drawn_folded: ClassVar[bool] = True
    type: Literal["prelu"]
    num_parameters: PositiveInt = 1
    init: Float = 0.25

    def infer(self, input_shape: Shape) -> LayerResult:
        channels = input_shape[1] if len(input_shape) >= 2 else 1
        if self.num_parameters not in (1, channels):
            raise _fail(
                f"num_parameters is {self.num_parameters} but the incoming shape "
                f"{format_shape(input_shape)} has {_plural(channels, 'channel')} "
                f"(give 1 or {channels})"
            )
        per = "one slope" if self.num_parameters == 1 else "a slope per channel"
        return LayerResult(
            output_shape=input_shape,
            params=self.num_parameters,
            parameter_tensors=(("weight", self.num_parameters),),
            arguments=f"slopes={self.num_parameters}",
            explanation=((f"params: {self.num_parameters} = {self.num_parameters} ({per})",))
            if explaining()
            else (),
        )


class Mish(Leaf):
    """``nn.Mish``: x·tanh(softplus(x))."""

    torch_names: ClassVar[tuple[str, ...]] = ("Mish",)
    identity_for_receptive_field: ClassVar[bool] = True
    drawn_folded: ClassVar[bool] = True
    functional_names: ClassVar[dict[str, str]] = {"mish": "mish"}
    type: Literal["mish"]
    inplace: Bool = False

    def infer(self, input_shape: Shape) -> LayerResult:
        return LayerResult(output_shape=input_shape)

    def saved(self, input_shape: Shape, output_shape: Shape, itemsize: int) -> Saved:
        return _inplace_copy(input_shape, itemsize, self.inplace)


class Softplus(Leaf):
    """``nn.Softplus``: log(1 + exp(β·x))/β, linear above ``threshold``."""

    torch_names: ClassVar[tuple[str, ...]] = ("Softplus",)
    identity_for_receptive_field: ClassVar[bool] = True
    drawn_folded: ClassVar[bool] = True
    type: Literal["softplus"]
    beta: Float = 1.0
    threshold: Float = 20.0

    def infer(self, input_shape: Shape) -> LayerResult:
        return LayerResult(
            output_shape=input_shape, arguments=f"beta={self.beta:g} threshold={self.threshold:g}"
        )


class SELU(Leaf):
    """``nn.SELU``: a scaled ELU with fixed constants, saved as ELU is."""

    torch_names: ClassVar[tuple[str, ...]] = ("SELU",)
    identity_for_receptive_field: ClassVar[bool] = True
    drawn_folded: ClassVar[bool] = True
    functional_names: ClassVar[dict[str, str]] = {"selu": "selu", "selu_": "selu"}
    type: Literal["selu"]
    inplace: Bool = False

    def infer(self, input_shape: Shape) -> LayerResult:
        return LayerResult(output_shape=input_shape)

    def saved(self, input_shape: Shape, output_shape: Shape, itemsize: int) -> Saved:
        return Saved("output", shares_input=True) if self.inplace else Saved("input")


class CELU(Leaf):
    """``nn.CELU``: max(0, x) + min(0, α·(exp(x/α) − 1)), saved as ELU is."""

    torch_names: ClassVar[tuple[str, ...]] = ("CELU",)
    identity_for_receptive_field: ClassVar[bool] = True
    drawn_folded: ClassVar[bool] = True
    type: Literal["celu"]
    alpha: Float = 1.0
    inplace: Bool = False

    @model_validator(mode="after")
    def _check(self) -> "CELU":
        if self.alpha == 0:
            raise ValueError("alpha: celu divides by alpha, which must not be 0")
        return self

    def infer(self, input_shape: Shape) -> LayerResult:
        return LayerResult(output_shape=input_shape, arguments=f"alpha={self.alpha:g}")

    def saved(self, input_shape: Shape, output_shape: Shape, itemsize: int) -> Saved:
        return Saved("output", shares_input=True) if self.inplace else Saved("input")


class Hardtanh(Leaf):
    """``nn.Hardtanh``: clamps to [min_val, max_val]."""

    torch_names: ClassVar[tuple[str, ...]] = ("Hardtanh",)
    identity_for_receptive_field: ClassVar[bool] = True
    drawn_folded: ClassVar[bool] = True
    type: Literal["hardtanh"]
    min_val: Float = -1.0
    max_val: Float = 1.0
    inplace: Bool = False

    @model_validator(mode="after")
    def _check(self) -> "Hardtanh":
        if self.max_val <= self.min_val:
            raise ValueError(
                f"max_val ({self.max_val:g}) must be greater than min_val ({self.min_val:g})"
            )
        return self

    def infer(self, input_shape: Shape) -> LayerResult:
        return LayerResult(
            output_shape=input_shape, arguments=f"[{self.min_val:g}, {self.max_val:g}]"
        )

    def saved(self, input_shape: Shape, output_shape: Shape, itemsize: int) -> Saved:
        return _inplace_copy(input_shape, itemsize, self.inplace)


class Shrink(Leaf):
    """``nn.Hardshrink`` and ``nn.Softshrink``: zero within ±lambd."""

    torch_names: ClassVar[tuple[str, ...]] = ("Hardshrink", "Softshrink")
    identity_for_receptive_field: ClassVar[bool] = True
    drawn_folded: ClassVar[bool] = True
    type: Literal["hardshrink", "softshrink"]
    lambd: Float = 0.5

    @model_validator(mode="after")
    def _check(self) -> "Shrink":
        if self.type == "softshrink" and self.lambd < 0:
            raise ValueError(f"lambd: softshrink needs lambd ≥ 0, got {self.lambd:g}")
        return self

    def infer(self, input_shape: Shape) -> LayerResult:
        return LayerResult(output_shape=input_shape, arguments=f"lambd={self.lambd:g}")


class ComposedActivation(Leaf):
    """``nn.Softsign``, ``nn.Tanhshrink`` and ``nn.LogSigmoid``: torch composes them from
    several operations, which keep more than the input."""

    torch_names: ClassVar[tuple[str, ...]] = ("Softsign", "Tanhshrink", "LogSigmoid")
    identity_for_receptive_field: ClassVar[bool] = True
    drawn_folded: ClassVar[bool] = True
    functional_names: ClassVar[dict[str, str]] = {
        "softsign": "softsign", "tanhshrink": "tanhshrink", "logsigmoid": "logsigmoid",
    }  # fmt: skip
    type: Literal["softsign", "tanhshrink", "logsigmoid"]

    def infer(self, input_shape: Shape) -> LayerResult:
        return LayerResult(output_shape=input_shape)

    def saved(self, input_shape: Shape, output_shape: Shape, itemsize: int) -> Saved:
        size = math.prod(input_shape) * itemsize
        if self.type == "tanhshrink":  # x − tanh(x): tanh keeps its result
            return Saved(None, size)
        # softsign: x / (1 + |x|) keeps x and 1 + |x|; logsigmoid: x and a buffer
        return Saved("input", size)


# ---------------------------------------------------------------------------------------
# More reshaping


def _sizes_list(field: str, value: int | tuple[int, ...]) -> tuple[int, ...]:
    if not isinstance(value, tuple):
        raise ValueError(f"{field}: must be a list, got {shown(value)}")
    return value


def _dim_in_range(field: str, value: int, shape: Shape) -> int:
    rank = len(shape)
    if not -rank <= value < rank:
        raise _fail(
            f"{field} {value} is out of range for the incoming shape {format_shape(shape)} "
            f"(expected {-rank} to {rank - 1})"
        )
    return value % rank


class Unflatten(Leaf):
    """``nn.Unflatten``: splits dimension ``dim`` into ``unflattened_size`` (-1 once: the
    rest)."""

    cost_family: ClassVar[str] = "view"

    draw_family: ClassVar[str] = "reshape"
    torch_names: ClassVar[tuple[str, ...]] = ("Unflatten",)
    type: Literal["unflatten"]
    dim: Int
    unflattened_size: SignedIntOrInts

    @model_validator(mode="after")
    def _check(self) -> "Unflatten":
        sizes = _sizes_list("unflattened_size", self.unflattened_size)
        if any(s < 1 and s != -1 for s in sizes) or sizes.count(-1) > 1:
            raise ValueError(
                f"unflattened_size: sizes must be positive, with at most one -1, got {list(sizes)}"
            )
        return self

    def infer(self, input_shape: Shape) -> LayerResult:
        dim = _dim_in_range("dim", self.dim, input_shape)
        sizes = _sizes_list("unflattened_size", self.unflattened_size)
        n = input_shape[dim]
        known = math.prod(s for s in sizes if s != -1)
        if (n % known if -1 in sizes else n != known) or n == 0:
            raise _fail(
                f"unflattened_size {list(sizes)} does not multiply up to {n}, the size of "
                f"dimension {dim} of the incoming shape {format_shape(input_shape)}"
            )
        resolved = tuple(n // known if s == -1 else s for s in sizes)
        return LayerResult(
            output_shape=(*input_shape[:dim], *resolved, *input_shape[dim + 1 :]),
            windows=SpatialMap.POINTWISE if len(sizes) == 1 else SpatialMap.DENSE,
            arguments=f"dim {dim} → {list(resolved)}",
        )

    def saved(self, input_shape: Shape, output_shape: Shape, itemsize: int) -> Saved:
        return SAME_STORAGE  # a view


class PixelShuffle(Leaf):
    """``nn.PixelShuffle``: [N, C·r², H, W] → [N, C, H·r, W·r]."""

    cost_family: ClassVar[str] = "copy"

    draw_family: ClassVar[str] = "upsample"
    torch_names: ClassVar[tuple[str, ...]] = ("PixelShuffle",)
    type: Literal["pixelshuffle"]
    upscale_factor: PositiveInt

    def infer(self, input_shape: Shape) -> LayerResult:
        self._require_rank(input_shape, 4)
        batch, channels, height, width = input_shape
        r = self.upscale_factor
        if channels % (r * r):
            raise _fail(
                f"pixelshuffle needs channels divisible by upscale_factor² = {r * r}, but the "
                f"incoming shape {format_shape(input_shape)} has {channels} channels"
            )
        step = Fraction(1, r)  # output pixel o reads input pixel ⌊o / r⌋
        return LayerResult(
            output_shape=(batch, channels // (r * r), height * r, width * r),
            windows=(Window(1, step, 0), Window(1, step, 0)),
            arguments=f"×{r}",
            explanation=((f"H: {height}·{r} = {height * r}", f"W: {width}·{r} = {width * r}"))
            if explaining()
            else (),
        )

    def saved(self, input_shape: Shape, output_shape: Shape, itemsize: int) -> Saved:
        return NOTHING_SAVED


class PixelUnshuffle(Leaf):
    """``nn.PixelUnshuffle``: [N, C, H·r, W·r] → [N, C·r², H, W]."""

    cost_family: ClassVar[str] = "copy"

    draw_family: ClassVar[str] = "reshape"
    torch_names: ClassVar[tuple[str, ...]] = ("PixelUnshuffle",)
    type: Literal["pixelunshuffle"]
    downscale_factor: PositiveInt

    def infer(self, input_shape: Shape) -> LayerResult:
        self._require_rank(input_shape, 4)
        batch, channels, height, width = input_shape
        r = self.downscale_factor
        for name, n in (("H", height), ("W", width)):
            if n % r:
                raise _fail(
                    f"pixelunshuffle needs H and W divisible by downscale_factor {r}, but the "
                    f"incoming shape {format_shape(input_shape)} has {name} = {n}"
                )
        return LayerResult(
            output_shape=(batch, channels * r * r, height // r, width // r),
            windows=(Window(r, r, 0), Window(r, r, 0)),
            arguments=f"÷{r}",
            explanation=((f"H: {height} / {r} = {height // r}", f"W: {width} / {r} = {width // r}"))
            if explaining()
            else (),
        )

    def saved(self, input_shape: Shape, output_shape: Shape, itemsize: int) -> Saved:
        return NOTHING_SAVED


class ChannelShuffle(Leaf):
    """``nn.ChannelShuffle`` (ShuffleNet): reorders the channels across ``groups``."""

    cost_family: ClassVar[str] = "copy"

    draw_family: ClassVar[str] = "reshape"
    torch_names: ClassVar[tuple[str, ...]] = ("ChannelShuffle",)
    type: Literal["channelshuffle"]
    groups: PositiveInt

    def infer(self, input_shape: Shape) -> LayerResult:
        if len(input_shape) < 3:
            raise _fail(
                f"channelshuffle expects input [N, C, ...] with at least 3 dimensions, "
                f"got {format_shape(input_shape)}"
            )
        if input_shape[1] % self.groups:
            raise _fail(f"the {input_shape[1]} channels do not divide into groups ({self.groups})")
        return LayerResult(output_shape=input_shape, arguments=f"groups={self.groups}")

    def saved(self, input_shape: Shape, output_shape: Shape, itemsize: int) -> Saved:
        return NOTHING_SAVED


class Permute(Leaf):
    """``torch.permute`` as a layer (torch.nn has none); ``order`` is torch's ``dims``."""

    cost_family: ClassVar[str] = "view"

    draw_family: ClassVar[str] = "reshape"
    torch_names: ClassVar[tuple[str, ...]] = ("Permute",)
    custom_module: ClassVar[bool] = True
    type: Literal["permute"]
    # torch.permute's `dims`, under another name: every leaf's `dims` is its 1d/2d/3d.
    order: SignedIntOrInts

    @model_validator(mode="after")
    def _check(self) -> "Permute":
        _sizes_list("order", self.order)
        return self

    def infer(self, input_shape: Shape) -> LayerResult:
        dims = _sizes_list("order", self.order)
        rank = len(input_shape)
        if len(dims) != rank:
            raise _fail(
                f"order {list(dims)} has {len(dims)} entries for the {rank} dimensions of the "
                f"incoming shape {format_shape(input_shape)}"
            )
        order = [_dim_in_range("order entry", d, input_shape) for d in dims]
        if sorted(order) != list(range(rank)):
            raise _fail(f"order {list(dims)} is not a permutation of 0 … {rank - 1}")
        # Positions keep their meaning only while the spatial dimensions stay in place.
        spatial_kept = order[2:] == list(range(2, rank))
        return LayerResult(
            output_shape=tuple(input_shape[d] for d in order),
            windows=SpatialMap.POINTWISE if spatial_kept else SpatialMap.DENSE,
            arguments=f"{order}",
        )

    def saved(self, input_shape: Shape, output_shape: Shape, itemsize: int) -> Saved:
        return SAME_STORAGE  # a view


class Mean(Leaf):
    """``torch.mean`` over ``dim`` as a layer (torch.nn has none); 0 MACs, like pooling."""

    cost_family: ClassVar[str] = "pool"

    torch_names: ClassVar[tuple[str, ...]] = ("Mean",)
    custom_module: ClassVar[bool] = True
    type: Literal["mean"]
    dim: SignedIntOrInts
    keepdim: Bool = False

    def infer(self, input_shape: Shape) -> LayerResult:
        dims = self.dim if isinstance(self.dim, tuple) else (self.dim,)
        reduced = [_dim_in_range("dim", d, input_shape) for d in dims]
        if len(set(reduced)) < len(reduced):
            twice = next(d for d in reduced if reduced.count(d) > 1)
            raise _fail(
                f"dim {list(dims)} names dimension {twice} twice for the incoming shape "
                f"{format_shape(input_shape)}"
            )
        output = tuple(
            1 if i in reduced else n
            for i, n in enumerate(input_shape)
            if self.keepdim or i not in reduced
        )
        windows: tuple[Window, ...] | SpatialMap = SpatialMap.DENSE
        if self.keepdim:  # like global pooling over the reduced spatial dimensions
            windows = tuple(
                Window(n, n, 0) if i in reduced else Window(1, 1, 0)
                for i, n in enumerate(input_shape)
                if i >= 2
            )
            if not any(i >= 2 for i in reduced):
                windows = SpatialMap.POINTWISE
        return LayerResult(
            output_shape=output,
            windows=windows,
            arguments=f"dim={sorted(reduced)}" + (" keepdim" if self.keepdim else ""),
        )

    def saved(self, input_shape: Shape, output_shape: Shape, itemsize: int) -> Saved:
        return NOTHING_SAVED  # backward needs only the sizes


# ---------------------------------------------------------------------------------------
# Norms and regularisers torch.nn lacks (classes in convcalc.torch_modules)


class LayerNorm2d(Leaf):
    """Layer norm over the channels of [N, C, H, W] at each position (ConvNeXt's)."""

    draw_family: ClassVar[str] = "norm"
    short_labels: ClassVar[dict[str, str]] = {"layernorm2d": "LN"}
    torch_names: ClassVar[tuple[str, ...]] = ("LayerNorm2d",)
    custom_module: ClassVar[bool] = True
    identity_for_receptive_field: ClassVar[bool] = True
    drawn_folded: ClassVar[bool] = True
    type: Literal["layernorm2d"]
    num_channels: PositiveInt | None = None
    eps: Float = 1e-6
    elementwise_affine: Bool = True
    bias: Bool = True

    def infer(self, input_shape: Shape) -> LayerResult:
        self._require_rank(input_shape, 4)
        channels = self._check_declared(
            "num_channels", self.num_channels, input_shape[1], input_shape
        )
        per = (2 if self.bias else 1) if self.elementwise_affine else 0
        which = "a weight and a bias" if self.bias else "a weight"
        return LayerResult(
            output_shape=input_shape,
            params=per * channels,
            parameter_tensors=_weight_and_bias(channels, channels if self.bias else 0)
            if self.elementwise_affine
            else (),
            arguments="over C" + ("" if self.elementwise_affine else " affine=False"),
            explanation=(
                (
                    f"params: {per}·{channels} = {per * channels:,} ({which} per channel)"
                    if per
                    else "params: 0 (elementwise_affine: false)",
                )
            )
            if explaining()
            else (),
        )

    def saved(self, input_shape: Shape, output_shape: Shape, itemsize: int) -> Saved:
        batch, _, height, width = input_shape
        return Saved("input", 2 * batch * height * width * _stat_bytes(itemsize))


class LayerScale(Leaf):
    """A learnable scale per channel (ConvNeXt's layer scale): x · γ, γ of size C."""

    torch_names: ClassVar[tuple[str, ...]] = ("LayerScale",)
    custom_module: ClassVar[bool] = True
    identity_for_receptive_field: ClassVar[bool] = True
    drawn_folded: ClassVar[bool] = True
    type: Literal["layerscale"]
    num_channels: PositiveInt | None = None
    init_value: Float = 1e-6

    def infer(self, input_shape: Shape) -> LayerResult:
        if len(input_shape) < 2:
            raise _fail(f"layerscale expects input [N, C, ...], got {format_shape(input_shape)}")
        channels = self._check_declared(
            "num_channels", self.num_channels, input_shape[1], input_shape
        )
        return LayerResult(
            output_shape=input_shape,
            params=channels,
            parameter_tensors=(("gamma", channels),),
            arguments=f"init={self.init_value:g}",
            explanation=((f"params: {channels} = {channels:,} (a scale per channel)",))
            if explaining()
            else (),
        )

    def saved(self, input_shape: Shape, output_shape: Shape, itemsize: int) -> Saved:
        return Saved("input", weight_grad_only=True)  # for γ's gradient only


class StochasticDepth(Leaf):
    """torchvision's ``StochasticDepth`` (alias ``droppath``): drops whole samples (row)
    or the whole batch with probability ``p`` in training; the identity at inference."""

    cost_family: ClassVar[str] = "view"

    short_labels: ClassVar[dict[str, str]] = {
        "stochasticdepth": "drop path",
        "droppath": "drop path",
    }
    torch_names: ClassVar[tuple[str, ...]] = ("StochasticDepth", "DropPath")
    custom_module: ClassVar[bool] = True
    identity_for_receptive_field: ClassVar[bool] = True
    drawn_folded: ClassVar[bool] = True
    type: Literal["stochasticdepth", "droppath"]
    p: Probability
    mode: Literal["row", "batch"] = "row"

    def infer(self, input_shape: Shape) -> LayerResult:
        return LayerResult(output_shape=input_shape, arguments=f"p={self.p:g} {self.mode}")

    def saved(self, input_shape: Shape, output_shape: Shape, itemsize: int) -> Saved:
        if self.p == 0:
            return SAME_STORAGE  # torchvision returns the input itself
        noise = input_shape[0] if self.mode == "row" else 1  # one value per sample, or one
        return Saved(None, noise * itemsize)


LEAF_CLASSES: tuple[type[Leaf], ...] = (
    Conv,
    ConvTranspose,
    MaxPool,
    AvgPool,
    AdaptivePool,
    BatchNorm,
    InstanceNorm,
    GroupNorm,
    LayerNorm,
    LocalResponseNorm,
    Activation,
    Elementwise,
    LeakyReLU,
    ELU,
    GELU,
    Softmax,
    Dropout,
    Flatten,
    Linear,
    Upsample,
    ZeroPad,
    ConstantPad,
    ReflectionPad,
    ReplicationPad,
    CircularPad,
    PReLU,
    Mish,
    Softplus,
    SELU,
    CELU,
    Hardtanh,
    Shrink,
    ComposedActivation,
    Unflatten,
    PixelShuffle,
    PixelUnshuffle,
    ChannelShuffle,
    Permute,
    Mean,
    LayerNorm2d,
    LayerScale,
    StochasticDepth,
)
