"""ONNX model files as specs (version 2), read with the ``onnx`` package alone.

Every node of the graph becomes a named leaf layer of a flat spec, with ``from:``
wherever its input is not the previous layer's output, as ``from_torch`` writes them.
Layers are named after the module path the exporter recorded (torch's legacy exporter
names nodes ``/layer1/layer1.0/conv1/Conv``, its dynamo exporter keeps the path in the
node's ``pkg.torch.onnx.name_scopes``): ``layer1.0.conv1``; other node names are used as
they are.

Constant inputs (initialisers, ``Constant`` nodes, and shape arithmetic such as
``Shape -> Gather -> Concat`` that the shapes make constant) are read as the layer's
arguments (a ``Reshape``'s shape, a ``Resize``'s scales, a ``Clip``'s bounds);
initialisers a layer reads as weights (a ``Conv``'s weight and bias, a
``BatchNormalization``'s scale and bias) are its parameters, its running mean and
variance are buffers. Only the initialisers' dimensions are read, never their data, so
a model that keeps its weights in external data files is imported without loading them;
the files must still be there (a model without them is incomplete, and refused).

The imported spec is checked before it is returned: every layer's output shape is the
one ``onnx.shape_inference`` gives the value it stands for, and the parameter count is
the element count of the initialisers the layers read as weights (an initialiser read
by two nodes is counted for each: a spec cannot share weights). A BatchNormalization
that the exporter folded into the convolution before it is a convolution with a bias,
as the file has it. What has no spec layer is refused in one sentence naming the file,
the node's op type and its name; nothing is returned half-made.
"""

from __future__ import annotations

import itertools
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convcalc.analysis import analyze
from convcalc.errors import ModelImportError
from convcalc.importing import count, first_line, plain, reshape_layer, snake
from convcalc.loader import build_network
from convcalc.spec import LAYER_TYPES, Network

__all__ = ["ImportedOnnx", "from_onnx", "import_onnx"]

MAX_FILE_BYTES = 2**31  # protobuf's own limit for one message
MAX_CONSTANT_ELEMENTS = 2**24  # a constant computed from others (64 MiB of float32)
_INT64_MAX = 2**63 - 1

# Ops that take one tensor and are a layer without arguments.
_SIMPLE = {
    "Relu": "relu",
    "Sigmoid": "sigmoid",
    "Tanh": "tanh",
    "HardSwish": "hardswish",
    "Selu": "selu",
    "Softplus": "softplus",
    "Mish": "mish",
    "Softsign": "softsign",
}

# Ops that hand their (first) input on unchanged at inference.
_ALIASES = {"Identity", "Dropout"}

# Ops evaluated when every input is constant (shape arithmetic the exporters write).
_FOLDABLE = {
    "Constant", "Identity", "Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Slice",
    "Cast", "Add", "Sub", "Mul", "Div", "Reshape", "Range", "ConstantOfShape", "Floor",
    "Ceil", "Neg", "Sqrt", "Equal", "Where", "Expand", "ReduceProd", "Min", "Max", "Abs",
    "CastLike", "Transpose",
}  # fmt: skip

# Ops whose node names are module paths (``/features/features.0/Conv``) made by the
# module itself; other ops made inside a module get ``.op`` after its path.
_FUNCTIONAL = {
    "Add", "Mul", "Concat", "Split", "Slice", "Reshape", "Flatten", "Transpose", "Squeeze",
    "Unsqueeze", "ReduceMean", "Pad",
}  # fmt: skip


@dataclass
class ImportedOnnx:
    """An imported ONNX model: the spec, and notes on what was read how."""

    network: Network
    notes: list[str] = field(default_factory=list)


def from_onnx(
    path_or_model: str | os.PathLike[str] | Any,
    *,
    input_shape: Sequence[int] | Mapping[str, Sequence[int]] | None = None,
    name: str | None = None,
) -> Network:
    """The spec of an ONNX model (a file's path or an ``onnx.ModelProto``).

    Shapes come from the graph inputs' declared shapes, the batch dimension dropped;
    ``input_shape`` (one sample, channels first; a mapping of input names to shapes for
    several inputs) replaces them, and is needed where a declared dimension is symbolic.
    """
    return import_onnx(path_or_model, input_shape=input_shape, name=name).network


def import_onnx(
    path_or_model: str | os.PathLike[str] | Any,
    *,
    input_shape: Sequence[int] | Mapping[str, Sequence[int]] | None = None,
    name: str | None = None,
) -> ImportedOnnx:
    """``from_onnx``, with notes on what the import did (folded constants, ...)."""
    model, source, base_dir = _load(path_or_model)
    return _Importer(model, source, base_dir, input_shape, name).run()


# -- reading the file ----------------------------------------------------------------------


def _load(path_or_model: Any) -> tuple[Any, str, Path | None]:
    """(the ModelProto, the name messages give it, the directory of its external data)."""
    import onnx

    if isinstance(path_or_model, onnx.ModelProto):
        return path_or_model, f"<{path_or_model.graph.name or 'onnx model'}>", None
    if not isinstance(path_or_model, (str, os.PathLike)):
        raise ModelImportError(
            f"from_onnx takes a file path or an onnx.ModelProto, not {type(path_or_model).__name__}"
        )
    path = Path(path_or_model)
    source = str(path)
    try:
        size = path.stat().st_size
    except OSError as error:
        raise ModelImportError(f"{source}: cannot read the file: {error.strerror}") from None
    if not path.is_file():
        raise ModelImportError(f"{source}: is not a file")
    if size > MAX_FILE_BYTES:
        raise ModelImportError(
            f"{source}: the file is {size:,} bytes, more than an ONNX protobuf can hold "
            f"(weights that large belong in external data files)"
        )
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ModelImportError(f"{source}: cannot read the file: {error.strerror}") from None
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception:
        raise ModelImportError(
            f"{source}: is not an ONNX model (the protobuf does not parse: a truncated or "
            f"corrupt file, or another format)"
        ) from None
    del data
    if not model.ir_version or not model.HasField("graph") or not model.graph.node:
        raise ModelImportError(
            f"{source}: is not an ONNX model (no IR version or no graph nodes in it)"
        )
    _check_external_data(model, source, path.parent)
    _check_data(model, source)
    return model, source, path.parent


def _check_data(model: Any, source: str) -> None:
    """Every initialiser stored in the file holds data for its elements (at least a byte
    each, however encoded): dimensions alone, as a cut or hand-edited file has, are not
    a model, and only the dimensions are read after this."""
    import onnx

    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            continue
        elements = math.prod(tensor.dims)
        held = tensor.ByteSize()  # computed, not copied
        if elements > held:
            raise ModelImportError(
                f"{source}: initialiser {tensor.name!r} declares {elements:,} elements "
                f"({' × '.join(map(str, tensor.dims))}) but the file has {held:,} bytes for "
                f"it: a cut or corrupt file"
            )


def _check_external_data(model: Any, source: str, base_dir: Path) -> None:
    """Every external data file the initialisers name is there and long enough (only
    their dimensions are read, but a file without its data is not a usable model)."""
    import onnx

    sizes: dict[str, int] = {}
    for tensor in model.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        target = (base_dir / location).resolve()
        if not location or Path(location).is_absolute() or ".." in Path(location).parts:
            raise ModelImportError(
                f"{source}: initialiser {tensor.name!r} names its external data file "
                f"{location!r}, which is not a path inside the model's directory"
            )
        if location not in sizes:
            try:
                sizes[location] = target.stat().st_size
            except OSError:
                raise ModelImportError(
                    f"{source}: the external data file {location!r} of initialiser "
                    f"{tensor.name!r} is missing (it belongs beside the model file)"
                ) from None
        end = int(info.get("offset", 0) or 0) + int(info.get("length", 0) or 0)
        if end > sizes[location]:
            raise ModelImportError(
                f"{source}: the external data file {location!r} is shorter ({sizes[location]:,} "
                f"bytes) than initialiser {tensor.name!r} needs ({end:,})"
            )


# -- the importer ----------------------------------------------------------------------------


@dataclass
class _Value:
    """A data value of the graph: the spec's name for it and its shape (with batch)."""

    ref: str
    shape: tuple[int, ...]


class _Importer:
    def __init__(
        self,
        model: Any,
        source: str,
        base_dir: Path | None,
        input_shape: Sequence[int] | Mapping[str, Sequence[int]] | None,
        name: str | None,
    ) -> None:
        import numpy
        import onnx

        self.onnx = onnx
        self.np = numpy
        self.model = model
        self.graph = model.graph
        self.source = source
        self.base_dir = base_dir
        self.given = input_shape
        self.name = name or _spec_name(
            Path(source).stem if base_dir is not None else self.graph.name or "onnx_model"
        )
        self.initializers = {t.name: t for t in self.graph.initializer}
        self.constants: dict[str, Any] = {}  # value -> numpy array (read lazily)
        self.shapes_types: dict[str, int] = {}  # value -> its onnx element type
        self.params: dict[str, str] = {}  # value -> the initialiser it is (through Identity)
        self.values: dict[str, _Value] = {}
        self.layers: list[dict[str, Any]] = []
        self.used_names: set[str] = set()
        self.last_output: str | None = None
        self.notes: list[str] = []
        self.padded: list[str] = []  # nodes padded unevenly (a zeropad layer first)
        self.failed: dict[str, ModelImportError] = {}  # constant -> why it does not fold
        self.shuffle_inputs: dict[int, str] = {}  # channel shuffle's last node -> its input
        self.weights: int = 0  # elements of the initialisers read as parameters
        self.checks: list[tuple[str, str, tuple[int, ...]]] = []  # (layer, value, shape)
        # several outputs: the layers making them take the outputs' names (p3, p4, p5)
        self.output_names = {
            value.name: _spec_name(value.name)
            for value in self.graph.output
            if len(self.graph.output) > 1 and _spec_name(value.name)
        }
        # protobuf makes a new Python object for an element on each access: the list
        # keeps one per node, so that id(node) names it
        self.nodes = list(self.graph.node)
        self.consumers: dict[str, list[Any]] = {}
        for node in self.nodes:
            for value in node.input:
                if value:
                    self.consumers.setdefault(value, []).append(node)
        self.absorbed: set[int] = set()  # nodes handled with another node
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)

    # -- inputs and shapes -----------------------------------------------------------------

    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        """Each graph input's shape for one sample (the batch dimension dropped)."""
        inputs = [i for i in self.graph.input if i.name not in self.initializers]
        if not inputs:
            raise ModelImportError(f"{self.source}: the graph has no inputs")
        declared: dict[str, tuple[int | str, ...]] = {}
        for value in inputs:
            tensor = value.type.tensor_type
            if not value.type.HasField("tensor_type") or not tensor.HasField("shape"):
                declared[value.name] = ("?",)
                continue
            dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                    for d in tensor.shape.dim]  # fmt: skip
            declared[value.name] = tuple(dims[1:]) if dims else ()
        names = list(declared)
        given = self.given
        if given is not None and not isinstance(given, Mapping):
            if len(names) > 1:
                raise ModelImportError(
                    f"{self.source}: the graph has {len(names)} inputs ({', '.join(names)}); "
                    f"give input_shape as a mapping of input names to shapes"
                )
            given = {names[0]: given}
        given = dict(given or {})
        unknown = [k for k in given if k not in declared]
        if unknown:
            raise ModelImportError(
                f"{self.source}: input_shape names {unknown[0]!r}, which is not a graph input "
                f"(the inputs are {', '.join(names)})"
            )
        shapes: dict[str, tuple[int, ...]] = {}
        symbolic = []
        for key, declared_dims in declared.items():
            if key in given:
                shapes[key] = tuple(int(n) for n in given[key])
            elif declared_dims and all(isinstance(d, int) and d > 0 for d in declared_dims):
                shapes[key] = tuple(int(d) for d in declared_dims)
            else:
                symbolic.append(key)
        if len(symbolic) > 1:
            raise ModelImportError(
                f"{self.source}: {len(symbolic)} graph inputs ({', '.join(symbolic)}) have no "
                f"fixed shape; give each one's shape (input_shape as a mapping, or --input "
                f"for a model with one input)"
            )
        if symbolic:
            shown = ", ".join(str(d) for d in declared[symbolic[0]])
            raise ModelImportError(
                f"{self.source}: input {symbolic[0]!r} has the shape [batch, {shown}], not "
                f"fixed numbers; give one sample's shape with --input (input_shape=...)"
            )
        return shapes

    def inferred_shapes(
        self, shapes: dict[str, tuple[int, ...]], folded: dict[str, Any]
    ) -> dict[str, tuple[int, ...]]:
        """Every value's shape by ``onnx.shape_inference`` at batch 1, on a copy of the
        graph that holds only the small initialisers (the large ones are inputs there),
        and the constants ``folded`` already (value -> array) in place of their nodes."""
        onnx = self.onnx
        helper = onnx.helper
        graph = self.graph
        skeleton = helper.make_graph([], graph.name or "graph", [], list(graph.output))
        skeleton.node.extend(
            n for n in self.nodes if not (n.output and all(o in folded for o in n.output))
        )
        for key, array in folded.items():
            skeleton.initializer.append(onnx.numpy_helper.from_array(array, key))
        for key, shape in shapes.items():
            original = next(i for i in graph.input if i.name == key)
            elem = original.type.tensor_type.elem_type or onnx.TensorProto.FLOAT
            skeleton.input.append(helper.make_tensor_value_info(key, elem, [1, *shape]))
        for tensor in graph.initializer:
            if self._small(tensor):
                skeleton.initializer.append(tensor)
            else:
                skeleton.input.append(
                    helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims))
                )
        light = helper.make_model(skeleton, opset_imports=list(self.model.opset_import))
        light.ir_version = self.model.ir_version
        for function in self.model.functions:
            light.functions.append(function)
        try:
            inferred = onnx.shape_inference.infer_shapes(light, strict_mode=True)
        except Exception as error:
            raise ModelImportError(
                f"{self.source}: onnx shape inference fails on the graph at these input shapes "
                f"({first_line(error)})"
            ) from None
        found: dict[str, tuple[int, ...]] = {}
        for info in (*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input):
            tensor = info.type.tensor_type
            if not info.type.HasField("tensor_type") or not tensor.HasField("shape"):
                continue
            self.shapes_types[info.name] = tensor.elem_type
            dims = tensor.shape.dim
            if all(d.HasField("dim_value") for d in dims):
                found[info.name] = tuple(int(d.dim_value) for d in dims)
        return found

    def _small(self, tensor: Any) -> bool:
        return bool(
            tensor.data_location != self.onnx.TensorProto.EXTERNAL
            and math.prod(tensor.dims) <= 4096
        )

    # -- the walk --------------------------------------------------------------------------

    def run(self) -> ImportedOnnx:
        shapes = self.input_shapes()
        folded: dict[str, Any] = {}
        for _ in range(3):  # shapes make constants (Shape -> Gather), which make shapes
            self.shapes = self.inferred_shapes(shapes, folded)
            self.constants, self.params, self.absorbed = {}, {}, set()
            data = self.fold_constants(set(shapes))
            new = {
                key: array
                for key, array in self.constants.items()
                if key not in folded and key not in self.initializers and array.size <= 4096
            }
            if not new or all(key in self.shapes for key in data):
                break
            folded.update(new)
        for key, shape in shapes.items():
            ref = _spec_name(key) if len(shapes) > 1 else "input"
            self.values[key] = _Value(ref, (1, *shape))
            self.used_names.add(ref)
        self.input_names = {key: self.values[key].ref for key in shapes}
        self.last_output = next(iter(self.values.values())).ref
        self.silu = self._silu_pairs()
        self.shuffles = self._channel_shuffles()
        self.slices = self._slice_groups()
        for node in self.nodes:
            self.node(node)
        outputs = []
        for output in self.graph.output:
            if output.name not in self.values:
                raise ModelImportError(
                    f"{self.source}: the graph output {output.name!r} is a constant, which a "
                    f"spec cannot return"
                )
            outputs.append(self.values[output.name].ref)
        if not self.layers:
            raise ModelImportError(f"{self.source}: the graph returns its input unchanged")
        spec: dict[str, Any] = {"version": 2, "name": self.name}
        if len(shapes) == 1:
            spec["input"] = list(next(iter(shapes.values())))
        else:
            spec["inputs"] = {self.input_names[k]: list(v) for k, v in shapes.items()}
        spec["layers"] = self.layers
        if outputs != [self.layers[-1]["name"]]:
            spec["outputs"] = outputs
        try:
            network = build_network(spec, self.source)
            report = analyze(network)
        except Exception as error:
            raise ModelImportError(
                f"{self.source}: the spec imported from it does not analyse: {first_line(error)}"
            ) from None
        self._check(report)
        if self.padded:
            self.notes.append(
                f"{count(len(self.padded), 'convolution')} padded unevenly, each written as a "
                f"zero-padding layer and the convolution (first: {self.padded[0]})"
            )
        return ImportedOnnx(network, self.notes)

    def _check(self, report: Any) -> None:
        """Each layer's output shape is shape inference's; the parameters are the
        initialisers read as weights."""
        rows = {row.name: row for row in report.rows if row.name}
        for layer, value, shape in self.checks:
            row = rows.get(layer)
            if row is not None and tuple(row.output_shape) != shape:
                raise ModelImportError(
                    f"{self.source}: layer {layer} gives {list(row.output_shape)} where onnx "
                    f"shape inference gives {value!r} the shape {list(shape)}"
                )
        if report.totals.params != self.weights:
            raise ModelImportError(
                f"{self.source}: the imported spec counts {report.totals.params:,} parameters, "
                f"but its layers read initialisers of {self.weights:,} elements"
            )

    def fold_constants(self, inputs: set[str]) -> set[str]:
        """Evaluate every node that computes from constants only (and ``Shape``, which
        the fixed shapes make constant), before any layer is made: the arguments of the
        layers are then known wherever they are read."""
        data = set(inputs)
        self.failed = {}
        for node in self.nodes:
            reads = [v for v in node.input if v]
            sized = bool(reads) and (  # only the data's shape or type is read
                (node.op_type == "Shape" and reads[0] in self.shapes)
                or (node.op_type == "CastLike" and reads[0] not in data)
            )
            if not sized and any(v in data for v in reads):
                data.update(o for o in node.output if o)
                continue
            self.absorbed.add(id(node))
            bad = next((v for v in reads if v in self.failed), None)
            if bad is not None:
                self.failed.update({o: self.failed[bad] for o in node.output if o})
                continue
            try:
                self.fold(node)
            except ModelImportError as error:
                self.failed.update({o: error for o in node.output if o})
        return data

    def node(self, node: Any) -> None:
        if id(node) in self.absorbed:
            return
        op = node.op_type
        if node.domain not in ("", "ai.onnx"):
            raise self.unsupported(node, f"an op of the domain {node.domain!r}")
        for value in node.input:
            if value in self.failed:
                raise self.failed[value]
        if op in _ALIASES:
            if node.input[0] not in self.values:
                raise self.unsupported(node, "a constant where the data goes")
            if any(o and self.consumers.get(o) for o in node.output[1:]):
                raise self.unsupported(node, "a dropout whose mask is used")
            self.values[node.output[0]] = self.values[node.input[0]]
            return
        handler = getattr(self, f"op_{op}", None)
        if handler is None:
            raise self.unsupported(node, "an op convcalc has no layer for")
        handler(node)

    # -- constants -------------------------------------------------------------------------

    def constant(self, value: str) -> Any:
        """The numpy array of a constant value, or None when it is data."""
        if not value:
            return None
        if value in self.constants:
            return self.constants[value]
        tensor = self.initializers.get(value)
        if tensor is None:
            return None
        array = self._array(tensor)
        self.constants[value] = array
        return array

    def _array(self, tensor: Any) -> Any:
        from onnx import numpy_helper

        if tensor.data_location == self.onnx.TensorProto.EXTERNAL:
            if self.base_dir is None:
                raise ModelImportError(
                    f"{self.source}: initialiser {tensor.name!r} is in an external data file, "
                    f"and a ModelProto does not say where; import the file by its path"
                )
            copy = self.onnx.TensorProto()
            copy.CopyFrom(tensor)
            from onnx.external_data_helper import load_external_data_for_tensor

            load_external_data_for_tensor(copy, str(self.base_dir))
            copy.data_location = self.onnx.TensorProto.DEFAULT
            del copy.external_data[:]
            tensor = copy
        return numpy_helper.to_array(tensor)

    def _is_param(self, value: str) -> bool:
        return value in self.initializers or value in self.params

    def is_constant(self, value: str) -> bool:
        return bool(value) and (value in self.constants or value in self.initializers)

    def dims(self, value: str) -> tuple[int, ...]:
        """A constant's shape without reading its data."""
        tensor = self.initializers.get(self.params.get(value, value))
        if tensor is not None:
            return tuple(int(d) for d in tensor.dims)
        return tuple(self.constants[value].shape)

    def fold(self, node: Any) -> None:
        """A node of constants only: evaluated (shape arithmetic), or an alias of an
        initialiser (the legacy exporter's Identity of a shared tensor)."""
        op = node.op_type
        if op == "Identity" and self._is_param(node.input[0]):
            self.params[node.output[0]] = self.params.get(node.input[0], node.input[0])
            return
        if op not in _FOLDABLE:
            raise self.unsupported(node, "an op on constants only, which a spec cannot hold")
        try:
            results = self._evaluate(node)
        except ModelImportError:
            raise
        except Exception as error:
            raise self.unsupported(
                node, f"an op on constants convcalc cannot evaluate ({first_line(error)})"
            ) from None
        for key, result in zip(node.output, results):
            self.constants[key] = result

    def _evaluate(self, node: Any) -> list[Any]:
        np = self.np
        op = node.op_type
        attrs = _attributes(node)
        if op == "Constant":
            if "value" in attrs:
                return [self._array(attrs["value"])]
            for key in ("value_int", "value_float"):
                if key in attrs:
                    return [np.array(attrs[key])]
            for key in ("value_ints", "value_floats"):
                if key in attrs:
                    return [np.array(list(attrs[key]))]
            raise ValueError("a Constant without a value")
        if op == "Shape":
            shape = self.shapes.get(node.input[0])
            if shape is None:
                shape = self.dims(node.input[0])
            start, end = attrs.get("start", 0), attrs.get("end", None)
            return [np.array(shape[start:end], dtype=np.int64)]
        reads = node.input[:1] if op == "CastLike" else node.input
        inputs: list[Any] = [self.constant(v) if v else None for v in reads]
        if any(i is None for i, v in zip(inputs, node.input) if v):
            raise ValueError("an input that is no constant")
        x = inputs[0]
        if op in ("Identity",):
            return [x]
        if op == "Gather":
            return [np.take(x, inputs[1], axis=attrs.get("axis", 0))]
        if op in ("Unsqueeze", "Squeeze"):
            axes: Any = attrs.get("axes")
            if axes is None and len(inputs) > 1 and inputs[1] is not None:
                axes = inputs[1].tolist()
            if op == "Squeeze":
                return [np.squeeze(x, axis=tuple(axes) if axes is not None else None)]
            for a in sorted(int(a) % (x.ndim + len(axes)) for a in axes):
                x = np.expand_dims(x, a)
            return [x]
        if op == "Concat":
            return [np.concatenate(inputs, axis=attrs["axis"])]
        if op == "Slice":
            starts, ends = inputs[1], inputs[2]
            axes = inputs[3] if len(inputs) > 3 and inputs[3] is not None else range(len(starts))
            steps = inputs[4] if len(inputs) > 4 and inputs[4] is not None else [1] * len(starts)
            index = [slice(None)] * x.ndim
            for s, e, a, st in zip(starts, ends, axes, steps):
                index[int(a)] = slice(int(s), int(e), int(st))
            return [x[tuple(index)]]
        if op == "Cast":
            return [x.astype(self.onnx.helper.tensor_dtype_to_np_dtype(attrs["to"]))]
        if op == "CastLike":
            elem = self.shapes_types.get(node.input[1])
            return [x.astype(self.onnx.helper.tensor_dtype_to_np_dtype(elem)) if elem else x]
        if op == "Transpose":
            return [np.transpose(x, attrs.get("perm"))]
        arithmetic = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Min": np.minimum,
                      "Max": np.maximum}  # fmt: skip
        if op in arithmetic:
            result = inputs[0]
            for other in inputs[1:]:
                result = arithmetic[op](result, other)
            return [result]
        if op == "Div":
            if np.issubdtype(x.dtype, np.integer):
                return [x // inputs[1]]
            return [x / inputs[1]]
        unary = {"Floor": np.floor, "Ceil": np.ceil, "Neg": np.negative, "Sqrt": np.sqrt,
                 "Abs": np.abs}  # fmt: skip
        if op in unary:
            return [unary[op](x)]
        if op == "Equal":
            return [np.equal(x, inputs[1])]
        if op == "Where":
            return [np.where(x, inputs[1], inputs[2])]
        if op == "Reshape":
            target = [int(t) for t in inputs[1]]
            target = [x.shape[i] if t == 0 else t for i, t in enumerate(target)]
            return [x.reshape(target)]
        if op == "Expand":
            shape = np.broadcast_shapes(x.shape, tuple(int(n) for n in inputs[1]))
            return [x * np.ones(_bounded(shape), dtype=x.dtype)]
        if op == "Range":
            length = math.ceil((float(inputs[1]) - float(x)) / float(inputs[2]))
            _bounded((max(length, 0),))
            return [np.arange(x, inputs[1], inputs[2])]
        if op == "ConstantOfShape":
            value = attrs.get("value")
            fill = self._array(value).reshape(-1)[0] if value is not None else np.float32(0)
            return [np.full(_bounded(tuple(int(n) for n in x)), fill)]
        if op == "ReduceProd":
            return [np.prod(x, keepdims=bool(attrs.get("keepdims", 1)))]
        raise ValueError(f"no evaluation for {op}")

    def attribute(self, node: Any, index: int, what: str) -> Any:
        """A constant input of ``node`` read as an argument (None when absent)."""
        if index >= len(node.input) or not node.input[index]:
            return None
        value = node.input[index]
        if value in self.values:
            raise self.unsupported(node, f"a {what} computed from the data, not a constant")
        array = self.constant(value) if value not in self.params else None
        if array is None and value in self.params:
            array = self.constant(self.params[value])
        if array is None:
            raise self.unsupported(node, f"a {what} convcalc cannot follow")
        return array

    def weight(self, node: Any, index: int, what: str = "weight") -> tuple[int, ...] | None:
        """The shape of a parameter input (an initialiser), counted as parameters."""
        if index >= len(node.input) or not node.input[index]:
            return None
        value = node.input[index]
        tensor = self.initializers.get(self.params.get(value, value))
        if tensor is None:
            if value in self.values:
                raise self.unsupported(node, f"a {what} computed from the data")
            if value in self.constants:  # a Constant node: its data are the weights
                shape = tuple(self.constants[value].shape)
                self.weights += math.prod(shape)
                return shape
            raise self.unsupported(node, f"a {what} convcalc cannot follow")
        shape = tuple(int(d) for d in tensor.dims)
        self.weights += math.prod(shape)
        return shape

    def buffer(self, node: Any, index: int) -> None:
        """A constant input read as a buffer (running statistics): not parameters."""
        if index < len(node.input) and node.input[index] in self.values:
            raise self.unsupported(node, "running statistics computed from the data")

    # -- emitting layers -------------------------------------------------------------------

    def x(self, node: Any, index: int = 0) -> _Value:
        value = node.input[index] if index < len(node.input) else ""
        if value not in self.values:
            raise self.unsupported(node, "a constant where the data goes")
        return self.values[value]

    def shape_of(self, node: Any, value: str) -> tuple[int, ...]:
        shape = self.shapes.get(value)
        if shape is None:
            raise self.unsupported(node, f"an output ({value}) onnx shape inference gives no shape")
        return shape

    def emit(
        self,
        layer: dict[str, Any],
        node: Any,
        inputs: list[_Value],
        output: str | None = None,
        suffix: str = "",
        inner: tuple[int, ...] | None = None,
    ) -> str:
        """Append ``layer`` reading ``inputs``; ``output`` (the node's first by default) is
        then its value, or a value of the import's own of shape ``inner`` (a node written
        as two layers). Returns the layer's name."""
        kind = layer["type"]
        base = self.layer_name(node)
        named = output if output is not None else node.output[0]
        if inner is None and kind not in ("split", "chunk") and named in self.output_names:
            base, suffix = self.output_names[named], ""
        name = self._unique(f"{base}.{suffix}" if suffix else base)
        refs = [i.ref for i in inputs]
        entry: dict[str, Any] = {"type": kind, "name": name}
        if refs != [self.last_output]:
            entry["from"] = refs[0] if len(refs) == 1 else refs
        entry.update({k: v for k, v in layer.items() if k != "type"})
        try:
            LAYER_TYPES[kind].model_validate(entry)
        except Exception as error:
            raise ModelImportError(
                f"{self.source}: node {node.op_type} {node.name or '(unnamed)'} maps to a "
                f"{kind} layer that convcalc refuses: {first_line(error)}"
            ) from None
        self.layers.append(entry)
        self.last_output = None if kind in ("split", "chunk") else name
        if inner is not None and output is not None:
            self.values[output] = _Value(name, inner)
        elif output is not None or kind not in ("split", "chunk"):
            key = output if output is not None else node.output[0]
            shape = self.shape_of(node, key)
            self.values[key] = _Value(name, shape)
            self.checks.append((name, key, shape))
        return name

    def layer_name(self, node: Any) -> str:
        path = _module_path(node)
        if path and node.op_type in _FUNCTIONAL:
            return f"{path}.{snake(node.op_type)}"
        return path or _spec_name(node.name) or snake(node.op_type)

    def _unique(self, name: str) -> str:
        candidate, k = name, 1
        while (
            candidate in self.used_names
            or candidate == "input"
            or re.fullmatch(r"layers(\.\d+)*", candidate)
        ):
            k += 1
            candidate = f"{name}_{k}"
        self.used_names.add(candidate)
        return candidate

    def unsupported(self, node: Any, what: str) -> ModelImportError:
        return ModelImportError(
            f"{self.source}: node {node.op_type} {node.name or '(unnamed)'} ({what}) cannot "
            f"be expressed in a spec"
        )

    # -- patterns --------------------------------------------------------------------------

    def _silu_pairs(self) -> dict[int, str]:
        """``Mul(x, Sigmoid(x))`` nodes (SiLU) -> x; their Sigmoid is absorbed."""
        found: dict[int, str] = {}
        producers = {o: n for n in self.nodes for o in n.output}
        for node in self.nodes:
            if node.op_type != "Mul" or len(node.input) != 2:
                continue
            for a, b in (node.input, node.input[::-1]):
                sigmoid = producers.get(b)
                if (
                    sigmoid is not None
                    and sigmoid.op_type == "Sigmoid"
                    and sigmoid.input[0] == a
                    and len(self.consumers.get(b, [])) == 1
                    and b not in {o.name for o in self.graph.output}
                ):
                    found[id(node)] = a
                    self.absorbed.add(id(sigmoid))
                    break
        return found

    def _channel_shuffles(self) -> dict[int, int]:
        """Reshape [N, C, ...] -> [N, g, C/g, ...], Transpose(0, 2, 1, ...), Reshape back:
        the last Reshape -> g (a channelshuffle); the first two are absorbed."""
        found: dict[int, int] = {}
        for node in self.nodes:
            if node.op_type != "Reshape":
                continue
            before, split = self.shapes.get(node.input[0]), self.shapes.get(node.output[0])
            if before is None or split is None or len(before) < 3:
                continue
            if (
                len(split) != len(before) + 1
                or split[:1] != before[:1]
                or split[1] * split[2] != before[1]
                or split[3:] != before[2:]
            ):
                continue
            users = self.consumers.get(node.output[0], [])
            if len(users) != 1 or users[0].op_type != "Transpose":
                continue
            transpose = users[0]
            perm = list(_attributes(transpose).get("perm", []))
            if perm != [0, 2, 1, *range(3, len(split))]:
                continue
            after = self.consumers.get(transpose.output[0], [])
            if len(after) != 1 or after[0].op_type != "Reshape":
                continue
            if self.shapes.get(after[0].output[0]) != before:
                continue
            self.absorbed.update((id(node), id(transpose)))
            found[id(after[0])] = split[1]
            self.shuffle_inputs[id(after[0])] = node.input[0]
        return found

    def _slice_groups(self) -> dict[int, tuple[int, list[Any]]]:
        """Slices of one value along one axis that tile it (the legacy exporter's
        ``chunk``): the first Slice -> (axis, the slices in order); the others absorbed."""
        groups: dict[tuple[str, int], list[tuple[int, int, Any]]] = {}
        for node in self.nodes:
            if node.op_type != "Slice" or not node.input:
                continue
            shape = self.shapes.get(node.input[0])
            try:
                ranges = self._slice_range(node, shape)
            except Exception:
                continue
            if ranges is not None:
                axis, start, end = ranges
                groups.setdefault((node.input[0], axis), []).append((start, end, node))
        found: dict[int, tuple[int, list[Any]]] = {}
        for (value, axis), members in groups.items():
            members.sort(key=lambda m: m[0])
            size = self.shapes[value][axis]
            position = 0
            for start, end, _ in members:
                if start != position:
                    break
                position = end
            if position != size or len(members) < 2:
                continue
            nodes = [m[2] for m in members]
            found[id(nodes[0])] = (axis, nodes)
            self.absorbed.update(id(n) for n in nodes[1:])
        return found

    def _slice_range(self, node: Any, shape: tuple[int, ...] | None) -> tuple[int, int, int] | None:
        """(axis, start, end) of a Slice on one axis with step 1 and constant bounds."""
        if shape is None:
            return None
        attrs = _attributes(node)
        if "starts" in attrs:  # opset < 10
            starts, ends, axes = attrs["starts"], attrs["ends"], attrs.get("axes")
            steps = None
        else:
            starts, ends = self._try_constant(node, 1), self._try_constant(node, 2)
            axes, steps = self._try_constant(node, 3), self._try_constant(node, 4)
            if starts is None or ends is None:
                return None
        starts, ends = list(map(int, starts)), list(map(int, ends))
        axes = list(map(int, axes)) if axes is not None else list(range(len(starts)))
        if len(starts) != 1 or (steps is not None and list(map(int, steps)) != [1]):
            return None
        axis = axes[0] % len(shape)
        n = shape[axis]
        start, end = starts[0], ends[0]
        start = max(0, min(n, start + n if start < 0 else start))
        end = max(0, min(n, end + n if end < 0 else end))
        return axis, start, end

    def _try_constant(self, node: Any, index: int) -> Any:
        if index >= len(node.input) or not node.input[index]:
            return None
        value = node.input[index]
        if value in self.values:
            return None
        return self.constant(value)

    # -- ops -------------------------------------------------------------------------------

    def _conv_padding(
        self, node: Any, attrs: dict[str, Any], spatial: tuple[int, ...], out: tuple[int, ...],
        kernel: tuple[int, ...], strides: tuple[int, ...], dilations: tuple[int, ...],
    ) -> tuple[list[int], list[int]]:  # fmt: skip
        """(begins, ends) of the padding of each spatial dimension."""
        d = len(kernel)
        auto = attrs.get("auto_pad", "NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            total = [
                max(0, (o - 1) * s + (k - 1) * dl + 1 - n)
                for o, s, k, dl, n in zip(out, strides, kernel, dilations, spatial)
            ]
            small = [t // 2 for t in total]
            large = [t - t // 2 for t in total]
            return (small, large) if auto == "SAME_UPPER" else (large, small)
        if auto == "VALID":
            return [0] * d, [0] * d
        pads = list(attrs.get("pads", [0] * (2 * d)))
        return pads[:d], pads[d:]

    def _pad_first(
        self, node: Any, x: _Value, begins: list[int], ends: list[int]
    ) -> tuple[_Value, Any]:
        """The input, after a zero-padding layer when the padding is asymmetric; the
        padding the layer itself then takes."""
        if begins == ends:
            return x, plain(begins)
        torch_order = [p for b, e in zip(begins[::-1], ends[::-1]) for p in (b, e)]
        d = len(begins)
        shape = (*x.shape[:2], *(n + b + e for n, b, e in zip(x.shape[2:], begins, ends)))
        name = self._unique(f"{self.layer_name(node)}.pad")
        entry: dict[str, Any] = {"type": f"zeropad{d}d", "name": name}
        if x.ref != self.last_output:
            entry["from"] = x.ref
        entry["padding"] = plain(torch_order)
        self.layers.append(entry)
        self.last_output = name
        self.padded.append(node.name or name)
        return _Value(name, shape), 0

    def op_Conv(self, node: Any) -> None:
        self._conv(node, transposed=False)

    def op_ConvTranspose(self, node: Any) -> None:
        self._conv(node, transposed=True)

    def _conv(self, node: Any, transposed: bool) -> None:
        x = self.x(node)
        w = self.weight(node, 1)
        assert w is not None
        bias = self.weight(node, 2, "bias") is not None
        attrs = _attributes(node)
        d = len(w) - 2
        if d not in (1, 2, 3):
            raise self.unsupported(node, f"a {d}-dimensional convolution")
        kernel = tuple(int(k) for k in attrs.get("kernel_shape", w[2:]))
        strides = tuple(int(s) for s in attrs.get("strides", [1] * d))
        dilations = tuple(int(s) for s in attrs.get("dilations", [1] * d))
        groups = int(attrs.get("group", 1))
        out = self.shape_of(node, node.output[0])
        layer: dict[str, Any] = {
            "type": f"{'convtranspose' if transposed else 'conv'}{d}d",
            "out_channels": w[1] * groups if transposed else w[0],
            "kernel_size": plain(kernel),
            "stride": plain(strides),
        }
        if transposed:
            if "output_shape" in attrs or attrs.get("auto_pad", "NOTSET") not in (
                "NOTSET", b"NOTSET"
            ):  # fmt: skip
                raise self.unsupported(node, "a transposed convolution given its output shape")
            pads = list(attrs.get("pads", [0] * (2 * d)))
            if pads[:d] != pads[d:]:
                raise self.unsupported(node, f"a transposed convolution with padding {pads}")
            layer["padding"] = plain(pads[:d])
            layer["output_padding"] = plain(attrs.get("output_padding", [0] * d))
        else:
            begins, ends = self._conv_padding(
                node, attrs, x.shape[2:], out[2:], kernel, strides, dilations
            )
            x, padding = self._pad_first(node, x, begins, ends)
            layer["padding"] = padding
        layer.update({"dilation": plain(dilations), "groups": groups, "bias": bias})
        self.emit(layer, node, [x])

    def op_Gemm(self, node: Any) -> None:
        x = self.x(node)
        attrs = _attributes(node)
        if attrs.get("transA", 0):
            raise self.unsupported(node, "a Gemm of the transposed data")
        w = self.weight(node, 1)
        assert w is not None
        if len(w) != 2 or len(x.shape) != 2:
            raise self.unsupported(node, "a Gemm on more than two dimensions")
        out_features, in_features = (w[0], w[1]) if attrs.get("transB", 0) else (w[1], w[0])
        bias = self.weight(node, 2, "bias")
        if bias is not None and math.prod(bias) != out_features:
            raise self.unsupported(node, f"a bias of shape {list(bias)}, not one per output")
        layer = {"type": "linear", "in_features": in_features, "out_features": out_features,
                 "bias": bias is not None}  # fmt: skip
        self.emit(layer, node, [x])

    def op_MatMul(self, node: Any) -> None:
        x = self.x(node)
        if node.input[1] in self.values:
            raise self.unsupported(node, "a product of two data tensors")
        w = self.weight(node, 1)
        assert w is not None
        if len(w) != 2 or len(x.shape) < 2:
            raise self.unsupported(node, f"a product with a weight of shape {list(w)}")
        layer: dict[str, Any] = {"type": "linear", "in_features": w[0], "out_features": w[1]}
        output = node.output[0]
        users = self.consumers.get(output, [])
        bias_node = users[0] if len(users) == 1 and users[0].op_type == "Add" else None
        if bias_node is not None and output not in {o.name for o in self.graph.output}:
            other = [v for v in bias_node.input if v != output]
            if (
                len(other) == 1
                and (self.is_constant(other[0]) or other[0] in self.params)
                and math.prod(self.dims(other[0])) == w[1]
            ):
                self.weight(bias_node, list(bias_node.input).index(other[0]), "bias")
                self.absorbed.add(id(bias_node))
                layer["bias"] = True
                self.emit(layer, node, [x], output=bias_node.output[0])
                return
        layer["bias"] = False
        self.emit(layer, node, [x])

    def op_BatchNormalization(self, node: Any) -> None:
        x = self.x(node)
        if any(o and self.consumers.get(o) for o in node.output[1:]):
            raise self.unsupported(node, "a batch norm in training mode")
        scale, _ = self.weight(node, 1, "scale"), self.weight(node, 2, "bias")
        self.buffer(node, 3)
        self.buffer(node, 4)
        attrs = _attributes(node)
        channels = x.shape[1]
        assert scale is not None
        if math.prod(scale) != channels:
            raise self.unsupported(node, f"a scale of shape {list(scale)}")
        layer = {
            "type": f"batchnorm{max(len(x.shape) - 2, 1)}d",
            "num_features": channels,
            "eps": _f32(attrs.get("epsilon", 1e-5)),
            "momentum": round(1.0 - float(attrs.get("momentum", 0.9)), 6),
        }
        self.emit(layer, node, [x])

    def op_InstanceNormalization(self, node: Any) -> None:
        x = self.x(node)
        self.weight(node, 1, "scale"), self.weight(node, 2, "bias")
        layer = {
            "type": f"instancenorm{max(len(x.shape) - 2, 1)}d",
            "num_features": x.shape[1],
            "eps": _f32(_attributes(node).get("epsilon", 1e-5)),
            "affine": True,
        }
        self.emit(layer, node, [x])

    def op_LayerNormalization(self, node: Any) -> None:
        x = self.x(node)
        attrs = _attributes(node)
        if any(o and self.consumers.get(o) for o in node.output[1:]):
            raise self.unsupported(node, "a layer norm whose statistics are used")
        axis = int(attrs.get("axis", -1)) % len(x.shape)
        if axis == 0:
            raise self.unsupported(node, "a layer norm over the batch")
        normalized = list(x.shape[axis:])
        scale = self.weight(node, 1, "scale")
        bias = self.weight(node, 2, "bias")
        for tensor in (scale, bias):
            if tensor is not None and math.prod(tensor) != math.prod(normalized):
                raise self.unsupported(node, f"a scale or bias of shape {list(tensor)}")
        layer = {
            "type": "layernorm",
            "normalized_shape": plain(normalized) if len(normalized) == 1 else normalized,
            "eps": _f32(attrs.get("epsilon", 1e-5)),
            "elementwise_affine": True,
            "bias": bias is not None,
        }
        self.emit(layer, node, [x])

    def op_LRN(self, node: Any) -> None:
        attrs = _attributes(node)
        layer = {
            "type": "localresponsenorm",
            "size": int(attrs["size"]),
            "alpha": _f32(attrs.get("alpha", 1e-4)),
            "beta": _f32(attrs.get("beta", 0.75)),
            "k": _f32(attrs.get("bias", 1.0)),
        }
        self.emit(layer, node, [self.x(node)])

    def _pool(self, node: Any, kind: str) -> None:
        x = self.x(node)
        if any(o and self.consumers.get(o) for o in node.output[1:]):
            raise self.unsupported(node, "a max pooling whose indices are used")
        attrs = _attributes(node)
        kernel = tuple(int(k) for k in attrs["kernel_shape"])
        d = len(kernel)
        strides = tuple(int(s) for s in attrs.get("strides", [1] * d))
        dilations = tuple(int(s) for s in attrs.get("dilations", [1] * d))
        out = self.shape_of(node, node.output[0])
        begins, ends = self._conv_padding(
            node, attrs, x.shape[2:], out[2:], kernel, strides, dilations
        )
        if begins != ends:
            raise self.unsupported(node, f"a pooling padded unevenly ({begins} and {ends})")
        layer: dict[str, Any] = {
            "type": f"{kind}pool{d}d",
            "kernel_size": plain(kernel),
            "stride": plain(strides),
            "padding": plain(begins),
            "ceil_mode": bool(attrs.get("ceil_mode", 0)),
        }
        if kind == "max":
            layer["dilation"] = plain(dilations)
        elif dilations != (1,) * d:
            raise self.unsupported(node, "a dilated average pooling")
        else:
            layer["count_include_pad"] = bool(attrs.get("count_include_pad", 0))
        self.emit(layer, node, [x])

    def op_MaxPool(self, node: Any) -> None:
        self._pool(node, "max")

    def op_AveragePool(self, node: Any) -> None:
        self._pool(node, "avg")

    def op_GlobalAveragePool(self, node: Any) -> None:
        x = self.x(node)
        self.emit({"type": f"adaptiveavgpool{len(x.shape) - 2}d", "output_size": 1}, node, [x])

    def op_GlobalMaxPool(self, node: Any) -> None:
        x = self.x(node)
        self.emit({"type": f"adaptivemaxpool{len(x.shape) - 2}d", "output_size": 1}, node, [x])

    # activations

    def _simple(self, node: Any) -> None:
        self.emit({"type": _SIMPLE[node.op_type]}, node, [self.x(node)])

    op_Relu = op_Sigmoid = op_Tanh = op_HardSwish = op_Softplus = op_Mish = _simple
    op_Softsign = _simple

    def op_Selu(self, node: Any) -> None:
        attrs = _attributes(node)
        alpha, gamma = (
            attrs.get("alpha", 1.67326319217681884765625),
            attrs.get("gamma", 1.05070102214813232421875),
        )
        if abs(alpha - 1.6732632) > 1e-6 or abs(gamma - 1.0507010) > 1e-6:
            raise self.unsupported(node, f"a SELU with alpha {alpha} and gamma {gamma}")
        self._simple(node)

    def op_HardSigmoid(self, node: Any) -> None:
        attrs = _attributes(node)
        alpha, beta = float(attrs.get("alpha", 0.2)), float(attrs.get("beta", 0.5))
        if abs(alpha - 1 / 6) > 1e-6 or abs(beta - 0.5) > 1e-6:
            raise self.unsupported(node, f"a hard sigmoid with alpha {alpha} (torch's is 1/6)")
        self.emit({"type": "hardsigmoid"}, node, [self.x(node)])

    def op_LeakyRelu(self, node: Any) -> None:
        slope = _f32(_attributes(node).get("alpha", 0.01))
        self.emit({"type": "leakyrelu", "negative_slope": slope}, node, [self.x(node)])

    def op_Elu(self, node: Any) -> None:
        alpha = _f32(_attributes(node).get("alpha", 1.0))
        self.emit({"type": "elu", "alpha": alpha}, node, [self.x(node)])

    def op_Celu(self, node: Any) -> None:
        alpha = _f32(_attributes(node).get("alpha", 1.0))
        self.emit({"type": "celu", "alpha": alpha}, node, [self.x(node)])

    def op_Gelu(self, node: Any) -> None:
        approximate = _attributes(node).get("approximate", "none")
        self.emit({"type": "gelu", "approximate": approximate}, node, [self.x(node)])

    def op_PRelu(self, node: Any) -> None:
        x = self.x(node)
        slope = self.weight(node, 1, "slope")
        assert slope is not None
        slopes = math.prod(slope)
        if slopes not in (1, x.shape[1] if len(x.shape) > 1 else 1) or (
            slopes > 1 and len([s for s in slope if s != 1]) > 1
        ):
            raise self.unsupported(node, f"a slope of shape {list(slope)}, not one per channel")
        self.emit({"type": "prelu", "num_parameters": slopes}, node, [x])

    def op_Clip(self, node: Any) -> None:
        attrs = _attributes(node)
        low: float | None
        high: float | None
        if "min" in attrs or "max" in attrs or self.opset < 11:
            low, high = attrs.get("min"), attrs.get("max")
        else:
            lows, highs = self.attribute(node, 1, "minimum"), self.attribute(node, 2, "maximum")
            low = None if lows is None else _f32(lows.reshape(-1)[0])
            high = None if highs is None else _f32(highs.reshape(-1)[0])
        if low is not None and low < -3.0e38:
            low = None
        if high is not None and high > 3.0e38:
            high = None
        x = self.x(node)
        if low == 0.0 and high is None:
            self.emit({"type": "relu"}, node, [x])
        elif low == 0.0 and high == 6.0:
            self.emit({"type": "relu6"}, node, [x])
        elif low is not None and high is not None and high > low:
            self.emit({"type": "hardtanh", "min_val": low, "max_val": high}, node, [x])
        else:
            raise self.unsupported(node, f"a clip to [{low}, {high}]")

    def _softmax(self, node: Any, kind: str) -> None:
        x = self.x(node)
        rank = len(x.shape)
        default = -1 if self.opset >= 13 else 1
        axis = int(_attributes(node).get("axis", default)) % rank
        if self.opset < 13 and axis != rank - 1:
            raise self.unsupported(node, "a softmax over several dimensions (before opset 13)")
        self.emit({"type": kind, "dim": axis}, node, [x])

    def op_Softmax(self, node: Any) -> None:
        self._softmax(node, "softmax")

    def op_LogSoftmax(self, node: Any) -> None:
        self._softmax(node, "logsoftmax")

    # merges and splits

    def _arithmetic(self, node: Any, kind: str) -> None:
        data = [v for v in node.input if v in self.values]
        if id(node) in self.silu:
            self.emit({"type": "silu"}, node, [self.values[self.silu[id(node)]]])
            return
        if len(data) == len(node.input):
            self.emit({"type": kind}, node, [self.values[v] for v in node.input])
            return
        x = self.values[data[0]]
        constant = next(v for v in node.input if v not in self.values)
        shape = self.dims(constant)
        per_channel = (x.shape[1], *(1,) * (len(x.shape) - 2)) if len(x.shape) > 1 else ()
        if (
            kind == "mul"
            and self._is_param(constant)
            and shape in (per_channel, (1, *per_channel))
            and len(x.shape) > 2
        ):
            self.weight(node, list(node.input).index(constant), "scale")
            self.emit({"type": "layerscale", "num_channels": x.shape[1]}, node, [x])
            return
        what = "adds a constant to" if kind == "add" else "multiplies by a constant"
        raise self.unsupported(node, f"an op that {what} the data")

    def op_Add(self, node: Any) -> None:
        self._arithmetic(node, "add")

    def op_Mul(self, node: Any) -> None:
        self._arithmetic(node, "mul")

    def op_Sum(self, node: Any) -> None:
        self._arithmetic(node, "add")

    def op_Concat(self, node: Any) -> None:
        if any(v not in self.values for v in node.input):
            raise self.unsupported(node, "a concatenation with a constant")
        inputs = [self.values[v] for v in node.input]
        axis = int(_attributes(node)["axis"]) % len(inputs[0].shape)
        self.emit({"type": "cat", "dim": axis}, node, inputs)

    def op_Split(self, node: Any) -> None:
        x = self.x(node)
        axis = int(_attributes(node).get("axis", 0)) % len(x.shape)
        sizes = [self.shape_of(node, o)[axis] for o in node.output]
        self._split(node, x, axis, sizes, list(node.output))

    def _split(self, node: Any, x: _Value, axis: int, sizes: list[int], outputs: list[str]) -> None:
        if axis == 0:
            raise self.unsupported(node, "a split of the batch")
        sections: Any = sizes
        if len(set(sizes[:-1])) == 1 and sizes[-1] <= sizes[0]:
            sections = sizes[0]
        name = self.emit(
            {"type": "split", "split_size_or_sections": sections, "dim": axis}, node, [x]
        )
        for k, output in enumerate(outputs):
            if output:
                shape = self.shape_of(node, output)
                self.values[output] = _Value(f"{name}.{k}", shape)

    def op_Slice(self, node: Any) -> None:
        group = self.slices.get(id(node))
        if group is None:
            raise self.unsupported(node, "a slice that is not one piece of a split")
        axis, nodes = group
        x = self.x(node)
        sizes = [self.shape_of(n, n.output[0])[axis] for n in nodes]
        self._split(node, x, axis, sizes, [n.output[0] for n in nodes])

    # reshaping

    def _reshape(self, node: Any) -> None:
        if id(node) in self.shuffles:
            source = self.values[self.shuffle_inputs[id(node)]]
            groups = self.shuffles[id(node)]
            self.emit({"type": "channelshuffle", "groups": groups}, node, [source])
            return
        x = self.x(node)
        after = self.shape_of(node, node.output[0])
        layer = reshape_layer(x.shape, after, first=1)
        if layer is None and len(after) == 1 and self._gathered_view(node, x):
            return
        if layer is None:
            if x.shape == after:
                self.values[node.output[0]] = x
                return
            raise self.unsupported(
                node,
                f"a reshape of {list(x.shape)} to {list(after)}, no flatten or unflatten",
            )
        self.emit(layer, node, [x])

    op_Reshape = op_Flatten = op_Squeeze = op_Unsqueeze = _reshape

    def _gathered_view(self, node: Any, x: _Value) -> bool:
        """A view written as its elements picked from a flat copy (torch's exporter writes
        some ``as_strided`` so: Reshape to 1-D, then Gather of constant indices): the
        permute or reshape it is, written for both nodes. False when it is neither."""
        readers = self.consumers.get(node.output[0], [])
        if (
            len(readers) != 1
            or readers[0].op_type != "Gather"
            or node.output[0] in {value.name for value in self.graph.output}
        ):
            return False
        gather = readers[0]
        indices = self._try_constant(gather, 1)
        if indices is None or int(_attributes(gather).get("axis", 0)) != 0:
            return False
        np = self.np
        flat = np.arange(math.prod(x.shape)).reshape(x.shape)
        picked = np.asarray(indices).reshape(-1)
        shape = tuple(int(n) for n in np.shape(indices))
        if shape[:1] != x.shape[:1]:
            return False  # the batch moves
        for order in itertools.permutations(range(1, len(x.shape))):
            moved = flat.transpose((0, *order))
            if np.array_equal(moved.reshape(-1), picked):
                break
        else:
            return False
        self.absorbed.add(id(gather))
        out, permuted = gather.output[0], tuple(moved.shape)
        reshaped = reshape_layer(permuted, shape, first=1)
        if list(order) != sorted(order):
            permute = {"type": "permute", "order": [0, *order]}
            if reshaped is None:
                self.emit(permute, gather, [x])
                return True
            self.emit(permute, gather, [x], output=out, inner=permuted)
            x = self.values[out]
        if reshaped is not None:
            self.emit(reshaped, gather, [x], suffix="view")
        else:
            self.values[out] = x
        return True

    def op_Transpose(self, node: Any) -> None:
        x = self.x(node)
        rank = len(x.shape)
        perm = [int(p) for p in _attributes(node).get("perm", range(rank)[::-1])]
        if perm == list(range(rank)):
            self.values[node.output[0]] = x
            return
        if perm[0] != 0:
            raise self.unsupported(node, f"a transpose that moves the batch ({perm})")
        self.emit({"type": "permute", "order": perm}, node, [x])

    def op_ReduceMean(self, node: Any) -> None:
        x = self.x(node)
        attrs = _attributes(node)
        axes = attrs.get("axes")
        if axes is None and len(node.input) > 1:
            array = self.attribute(node, 1, "list of axes")
            axes = None if array is None else array.tolist()
        if not axes:
            raise self.unsupported(node, "a mean over every dimension, the batch included")
        dims = sorted(int(a) % len(x.shape) for a in axes)
        if 0 in dims:
            raise self.unsupported(node, "a mean over the batch")
        layer = {"type": "mean", "dim": dims[0] if len(dims) == 1 else dims,
                 "keepdim": bool(attrs.get("keepdims", 1))}  # fmt: skip
        self.emit(layer, node, [x])

    def op_Resize(self, node: Any) -> None:
        x = self.x(node)
        attrs = _attributes(node)
        rank = len(x.shape)
        out = self.shape_of(node, node.output[0])
        if out[:2] != x.shape[:2] or rank < 3:
            raise self.unsupported(node, "a resize of the batch or the channels")
        mode = attrs.get("mode", "nearest")
        transform = attrs.get("coordinate_transformation_mode", "half_pixel")
        modes = {"nearest": "nearest", "cubic": "bicubic",
                 "linear": {3: "linear", 4: "bilinear", 5: "trilinear"}.get(rank, "")}  # fmt: skip
        kind = modes.get(mode, "")
        if not kind or (mode == "cubic" and rank != 4):
            raise self.unsupported(node, f"a resize in mode {mode!r} on {rank} dimensions")
        scales = None
        if node.op_type == "Upsample":
            array = self.attribute(node, 1, "scale") if len(node.input) > 1 else None
            scales = array.tolist() if array is not None else attrs.get("scales")
        elif len(node.input) > 2 and node.input[2]:
            array = self.attribute(node, 2, "scale")
            scales = array.tolist() if array is not None and array.size else None
        layer: dict[str, Any] = {"type": "upsample", "mode": kind}
        if scales and list(scales[:2]) == [1.0, 1.0]:
            factors = [float(s) for s in scales[2:]]
            layer["scale_factor"] = plain([int(f) if f.is_integer() else f for f in factors])
        else:
            layer["size"] = plain(list(out[2:]))
        if kind != "nearest":
            layer["align_corners"] = transform == "align_corners"
        self.emit(layer, node, [x])

    op_Upsample = op_Resize

    def op_Pad(self, node: Any) -> None:
        x = self.x(node)
        attrs = _attributes(node)
        rank = len(x.shape)
        if "pads" in attrs:
            pads = list(attrs["pads"])
            value = float(attrs.get("value", 0.0))
        else:
            array = self.attribute(node, 1, "padding")
            pads = [int(p) for p in array.tolist()]
            fill = self.attribute(node, 2, "fill value") if len(node.input) > 2 else None
            value = float(fill.reshape(-1)[0]) if fill is not None and fill.size else 0.0
            axes_array = self.attribute(node, 3, "list of axes") if len(node.input) > 3 else None
            if axes_array is not None:
                full = [0] * (2 * rank)
                axes = [int(a) % rank for a in axes_array.tolist()]
                for i, a in enumerate(axes):
                    full[a], full[rank + a] = pads[i], pads[len(axes) + i]
                pads = full
        begins, ends = pads[:rank], pads[rank:]
        if any(begins[:2]) or any(ends[:2]) or rank < 3:
            raise self.unsupported(node, "a padding of the batch or the channels")
        d = rank - 2
        torch_order = [p for b, e in zip(begins[2:][::-1], ends[2:][::-1]) for p in (b, e)]
        mode = attrs.get("mode", "constant")
        kinds = {"reflect": "reflectionpad", "edge": "replicationpad", "wrap": "circularpad"}
        if mode == "constant":
            layer: dict[str, Any] = {"type": f"zeropad{d}d", "padding": plain(torch_order)}
            if value != 0.0:
                layer = {"type": f"constantpad{d}d", "padding": plain(torch_order), "value": value}
        elif mode in kinds:
            layer = {"type": f"{kinds[mode]}{d}d", "padding": plain(torch_order)}
        else:
            raise self.unsupported(node, f"padding in mode {mode!r}")
        self.emit(layer, node, [x])

    def op_DepthToSpace(self, node: Any) -> None:
        x = self.x(node)
        attrs = _attributes(node)
        block = int(attrs["blocksize"])
        if attrs.get("mode", "DCR") == "DCR":
            # DCR reads channel (i·b + j)·C' + c where torch's pixel shuffle (CRD) reads
            # c·b² + i·b + j: a channel shuffle in b² groups first makes them the same
            self.emit(
                {"type": "channelshuffle", "groups": block * block},
                node,
                [x],
                output=f"{node.output[0]}/shuffle",
                suffix="shuffle",
                inner=x.shape,
            )
            x = self.values[f"{node.output[0]}/shuffle"]
        self.emit({"type": "pixelshuffle", "upscale_factor": block}, node, [x])

    def op_SpaceToDepth(self, node: Any) -> None:
        # ONNX writes channel (i·b + j)·C + c; torch's pixel unshuffle c·b² + i·b + j:
        # a channel shuffle in C groups after it makes them the same
        x = self.x(node)
        block = int(_attributes(node)["blocksize"])
        channels = x.shape[1]
        if channels == 1:
            self.emit({"type": "pixelunshuffle", "downscale_factor": block}, node, [x])
            return
        inner = f"{node.output[0]}/unshuffle"
        self.emit(
            {"type": "pixelunshuffle", "downscale_factor": block},
            node,
            [x],
            output=inner,
            suffix="unshuffle",
            inner=self.shape_of(node, node.output[0]),
        )
        self.emit({"type": "channelshuffle", "groups": channels}, node, [self.values[inner]])


# -- helpers ---------------------------------------------------------------------------------


def _bounded(shape: tuple[int, ...]) -> tuple[int, ...]:
    """``shape``, when a constant of it is small enough to compute (shape arithmetic
    is; a few bytes of a file must not make gigabytes here)."""
    if math.prod(shape) > MAX_CONSTANT_ELEMENTS:
        raise ValueError(
            f"a constant of shape {list(shape)}, more than {MAX_CONSTANT_ELEMENTS:,} elements"
        )
    return shape


def _attributes(node: Any) -> dict[str, Any]:
    from onnx import helper

    values = {}
    for attribute in node.attribute:
        value = helper.get_attribute_value(attribute)
        if isinstance(value, bytes):
            value = value.decode()
        values[attribute.name] = value
    return values


def _module_path(node: Any) -> str:
    """The module path an exporter recorded for ``node`` (``layer1.0.conv1``), or ''."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            scopes = re.findall(r"'([^']*)'", prop.value)
            modules = [s for s in scopes[1:-1] if s]
            if modules:
                return _spec_name(modules[-1])
    name = node.name or ""
    if name.startswith("/") and name.count("/") >= 2:
        # each scope is the attribute's name, a container's children prefixed with the
        # container's: /layer1/layer1.0/conv1/Conv is layer1.0.conv1
        parts: list[str] = []
        for part in name.strip("/").split("/")[:-1]:
            if parts and part.startswith(parts[-1] + "."):
                parts[-1] = part
            elif part:
                parts.append(part)
        return _spec_name(".".join(parts))
    return ""


def _spec_name(text: str) -> str:
    """``text`` as a layer name: printable, no spaces or slashes, dots kept."""
    cleaned = re.sub(r"[^\w.\-]+", "_", str(text)).strip("._-")
    return cleaned[:120]


def _f32(value: Any) -> float:
    """A float attribute (stored as float32) as its shortest decimal: 1e-05, not
    9.999999747378752e-06.

    >>> _f32(9.999999747378752e-06)
    1e-05
    """
    import numpy

    return float(str(numpy.float32(value)))
