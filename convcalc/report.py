"""What ``analyze`` returns: frozen rows, totals and warnings, and their JSON form."""

from __future__ import annotations

import html
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from convcalc.receptive_field import ReceptiveField

if TYPE_CHECKING:
    from convcalc.cost import Estimate
    from convcalc.devices import DeviceProfile
    from convcalc.spec import Network

__all__ = [
    "DTYPE_BYTES",
    "OPTIMIZER_STATES",
    "LayerRow",
    "Report",
    "SpecWarning",
    "Totals",
    "TrainingMemory",
]

DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}

# Tensors of the parameters' size an optimizer keeps: SGD its momentum buffer, Adam and
# AdamW the first and second moments.
OPTIMIZER_STATES = {"sgd": 1, "adam": 2, "adamw": 2}

Shape = tuple[int, ...]


@dataclass(frozen=True, slots=True)
class LayerRow:
    """One layer or block of the network, in depth-first order."""

    path: str
    name: str | None
    type: str
    depth: int
    input_shape: Shape
    output_shape: Shape
    params: int
    trainable_params: int
    buffers: int
    macs: int
    output_bytes: int
    receptive_field: ReceptiveField | None
    saved_bytes: int = 0  # activations autograd keeps for backward, first kept here
    explanation: tuple[str, ...] = ()  # the formulas behind the numbers (shape --explain)
    arguments: str = ""
    is_block: bool = False
    line: int | None = None
    # Layers with several inputs or outputs (merges, splits): all their shapes; and
    # the outputs a layer with ``from`` reads (their paths, ``path.k`` for a piece).
    input_shapes: tuple[Shape, ...] = ()
    output_shapes: tuple[Shape, ...] = ()
    sources: tuple[str, ...] = ()
    # Memory traffic of one pass in evaluation (a block's: its layers' and its join's),
    # and the layer's cost family (convcalc.cost; empty for a block).
    bytes_read: int = 0
    bytes_written: int = 0
    family: str = ""

    @property
    def non_trainable_params(self) -> int:
        return self.params - self.trainable_params

    @property
    def flops(self) -> int:
        """2 per multiply-accumulate, as torch.utils.flop_counter counts them."""
        return 2 * self.macs

    @property
    def arithmetic_intensity(self) -> float | None:
        """FLOPs per byte moved; None when the layer moves nothing."""
        moved = self.bytes_read + self.bytes_written
        return self.flops / moved if moved else None

    @property
    def label(self) -> str:
        """``layers.0 (conv1)``: the path, and the name when there is one."""
        return f"{self.path} ({self.name})" if self.name else self.path

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "name": self.name,
            "type": self.type,
            "depth": self.depth,
            "input_shape": list(self.input_shape),
            "output_shape": list(self.output_shape),
            "params": self.params,
            "trainable_params": self.trainable_params,
            "buffers": self.buffers,
            "macs": self.macs,
            "output_bytes": self.output_bytes,
            "saved_bytes": self.saved_bytes,
            "receptive_field": None
            if self.receptive_field is None
            else self.receptive_field.to_dict(),
            "arguments": self.arguments,
            "is_block": self.is_block,
            "explanation": list(self.explanation),
            **({"input_shapes": [list(s) for s in self.input_shapes]} if self.input_shapes else {}),
            **(
                {"output_shapes": [list(s) for s in self.output_shapes]}
                if self.output_shapes
                else {}
            ),
            **({"from": list(self.sources)} if self.sources else {}),
            "bytes_read": self.bytes_read,
            "bytes_written": self.bytes_written,
            "arithmetic_intensity": self.arithmetic_intensity,
            **({"family": self.family} if self.family else {}),
        }


@dataclass(frozen=True, slots=True)
class Totals:
    """Whole-network sums. MACs count conv, transposed conv and linear only, bias excluded."""

    params: int
    trainable_params: int
    buffers: int
    macs: int
    param_bytes: int
    activation_bytes: int
    input_bytes: int
    largest_activation_bytes: int
    largest_activation_path: str | None
    saved_bytes: int = 0
    # The first layer whose receptive field is larger than the input (from there on
    # every unit sees the whole input and its padding), if any.
    field_covers_input_path: str | None = None
    bytes_read: int = 0  # memory traffic of one pass in evaluation
    bytes_written: int = 0
    # The most activation bytes alive at once in a forward pass without autograd (the
    # inputs included), as eager PyTorch runs the spec's module: analysis.inference_peak.
    peak_inference_bytes: int = 0

    @property
    def non_trainable_params(self) -> int:
        return self.params - self.trainable_params

    @property
    def arithmetic_intensity(self) -> float | None:
        """FLOPs per byte moved, over the whole network."""
        moved = self.bytes_read + self.bytes_written
        return self.flops / moved if moved else None

    @property
    def flops(self) -> int:
        """FLOPs as torch.utils.flop_counter counts them: 2 per multiply-accumulate."""
        return 2 * self.macs

    def to_dict(self) -> dict[str, Any]:
        return {
            "params": self.params,
            "trainable_params": self.trainable_params,
            "non_trainable_params": self.non_trainable_params,
            "buffers": self.buffers,
            "macs": self.macs,
            "flops": self.flops,
            "param_bytes": self.param_bytes,
            "activation_bytes": self.activation_bytes,
            "input_bytes": self.input_bytes,
            "largest_activation_bytes": self.largest_activation_bytes,
            "largest_activation_path": self.largest_activation_path,
            "saved_bytes": self.saved_bytes,
            "field_covers_input_path": self.field_covers_input_path,
            "bytes_read": self.bytes_read,
            "bytes_written": self.bytes_written,
            "arithmetic_intensity": self.arithmetic_intensity,
            "peak_inference_bytes": self.peak_inference_bytes,
        }


@dataclass(frozen=True, slots=True)
class TrainingMemory:
    """Bytes one training step holds at its peak, estimated from the spec.

    weights (parameters and buffers) + gradients (trainable parameters) + optimizer
    state + the activations autograd saves for backward. Transient buffers (the
    gradients flowing back through the activations, convolution workspaces) and the
    framework's own memory are not counted.
    """

    optimizer: str
    batch_size: int
    weights: int
    gradients: int
    optimizer_state: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer_state + self.activations

    def to_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer,
            "batch_size": self.batch_size,
            "weights_bytes": self.weights,
            "gradients_bytes": self.gradients,
            "optimizer_state_bytes": self.optimizer_state,
            "activations_bytes": self.activations,
            "total_bytes": self.total,
        }


@dataclass(frozen=True, slots=True)
class SpecWarning:
    """Something legal but probably unintended, at one layer."""

    path: str
    message: str
    name: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        layer = self.path if not self.name else f"{self.path} ({self.name})"
        return f"{layer}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "message": self.message}


@dataclass(frozen=True, repr=False)
class Report:
    """The analysis of one network at one input shape: ``rows`` (iterate the report for
    them), ``row(path_or_name)``, ``totals``, ``warnings``; ``render()`` for text."""

    name: str
    input_shape: Shape
    dtype: str
    rows: tuple[LayerRow, ...]
    totals: Totals
    warnings: tuple[SpecWarning, ...]
    source: str | None = None
    network: Network | None = field(default=None, compare=False, repr=False)
    # Every input's and every output's shape (with batch) by name.
    input_shapes: dict[str, Shape] = field(default_factory=dict)
    outputs: dict[str, Shape] = field(default_factory=dict)
    explained: bool = False  # the rows carry their formulas (analyze(..., explain=True))

    def __repr__(self) -> str:
        return (
            f"<Report {self.name}: {len(self.rows)} rows, input {list(self.input_shape)}, "
            f"output {list(self.output_shape)}, {self.totals.params:,} params, "
            f"{self.totals.macs:,} MACs>"
        )

    def __iter__(self) -> Iterator[LayerRow]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def output_shape(self) -> Shape:
        """The network's (first) output shape (with batch)."""
        if self.outputs:
            return next(iter(self.outputs.values()))
        return self.top_level_output().output_shape

    def training_memory(self, optimizer: str = "sgd") -> TrainingMemory:
        """The memory a training step needs with this optimizer (sgd with momentum,
        adam or adamw), at this report's batch size and dtype."""
        if optimizer not in OPTIMIZER_STATES:
            raise ValueError(
                f"unknown optimizer {optimizer!r}; use one of {', '.join(OPTIMIZER_STATES)}"
            )
        itemsize = DTYPE_BYTES[self.dtype]
        totals = self.totals
        trainable = totals.trainable_params * itemsize
        return TrainingMemory(
            optimizer=optimizer,
            batch_size=self.input_shape[0],
            weights=(totals.params + totals.buffers) * itemsize,
            gradients=trainable,
            optimizer_state=OPTIMIZER_STATES[optimizer] * trainable,
            activations=totals.saved_bytes,
        )

    def row(self, path_or_name: str) -> LayerRow:
        """The row with this path, or else the first with this name."""
        for row in self.rows:
            if row.path == path_or_name:
                return row
        for row in self.rows:
            if row.name == path_or_name:
                return row
        raise KeyError(path_or_name)

    def top_level_output(self) -> LayerRow:
        """The last row at depth 1: the network's output."""
        return next(row for row in reversed(self.rows) if row.depth == 1)

    def to_dict(self, depth: int | None = None) -> dict[str, Any]:
        """Exactly what ``convcalc shape --format json [--depth N]`` prints."""
        return {
            "name": self.name,
            "input_shape": list(self.input_shape),
            "output_shape": list(self.output_shape),
            **(
                {"input_shapes": {k: list(v) for k, v in self.input_shapes.items()}}
                if len(self.input_shapes) > 1
                else {}
            ),
            **(
                {"outputs": {k: list(v) for k, v in self.outputs.items()}}
                if len(self.outputs) > 1
                else {}
            ),
            "dtype": self.dtype,
            "layers": [row.to_dict() for row in self.rows if depth is None or row.depth <= depth],
            "totals": self.totals.to_dict(),
            "warnings": [warning.to_dict() for warning in self.warnings],
        }

    def render(
        self,
        format: str = "table",
        depth: int | None = None,
        optimizer: str | None = None,
        explain: bool = False,
        traffic: bool = False,
        device_profile: str | DeviceProfile | None = None,
    ) -> str:
        """The report as text: table, markdown, github, csv or json; with ``optimizer``
        (sgd, adam, adamw) the training-memory estimate too; with ``explain`` each
        layer's formulas; with ``traffic`` the bytes each layer moves; with
        ``device_profile`` (a shipped profile's name or a file) each layer's estimated
        time on that device."""
        from convcalc.formatting import render

        cost = None if device_profile is None else self.estimate(device_profile)
        return render(self, format, depth, optimizer, explain, traffic, cost)

    def estimate(self, device_profile: str | DeviceProfile) -> Estimate:
        """The roofline estimate of every layer on a device (``convcalc.cost``)."""
        from convcalc.cost import estimate

        return estimate(self, device_profile)

    def __str__(self) -> str:
        return self.render()

    def _repr_html_(self) -> str:
        """Jupyter: the picture and the table. Big networks are drawn to depth 1."""
        from convcalc.draw import html_table, svg_picture
        from convcalc.errors import ConvCalcError

        picture = ""
        if self.network is not None:
            depth = None if len(self.rows) <= 40 else 1
            try:
                svg = svg_picture(self.network, self, depth)
                picture = f'<div style="overflow-x: auto">{svg}</div>'
            except ConvCalcError as error:  # no Graphviz: the table alone, and why
                picture = f"<p>{html.escape(str(error))}</p>"
        return html_table(self, picture)
