"""ONNX files in (``from_onnx``, ``convcalc import-onnx``), held to onnx and to torch.

Hand-made graphs (``onnx.helper``), one per supported op: the import analyses exactly as
the equivalent hand-written spec, its output shapes are ``onnx.shape_inference``'s and
its parameters the initialisers' element counts; ops without weights also compute what
onnxruntime computes (DepthToSpace's two modes, SpaceToDepth, channel shuffle, pads,
resizes). torchvision models exported with ``torch.onnx.export`` analyse as
``from_torch`` analyses the model (BatchNorm kept); a file whose BatchNorm the exporter
folded is counted as the file has it. Bad files each fail in one sentence.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
import time
import warnings

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import convcalc
from convcalc.cli import cli
from convcalc.errors import ModelImportError
from convcalc.onnx_import import from_onnx, import_onnx

from .test_zoo import CLASSIFICATION, SEGMENTATION

RNG = np.random.default_rng(0)


def weight(name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array(RNG.standard_normal(shape).astype(np.float32), name)


def ints(name: str, values: list[int]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, dtype=np.int64), name)


def floats(name: str, values: list[float]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, dtype=np.float32), name)


def node(op: str, inputs: list[str], outputs: list[str] | str = "y", **attrs) -> onnx.NodeProto:
    """A node named as torch's exporter names them (``/module/Op``), a number added to
    the second of an op: ``/slice/Slice_1``."""
    outputs = [outputs] if isinstance(outputs, str) else outputs
    count = _NAMES[op] = _NAMES.get(op, -1) + 1
    name = f"/{op.lower()}/{op}" + (f"_{count}" if count else "")
    return helper.make_node(op, inputs, outputs, name=name, **attrs)


_NAMES: dict[str, int] = {}


def model(
    nodes: list[onnx.NodeProto],
    initializers: list[onnx.TensorProto],
    shape: tuple[int, ...],
    opset: int = 17,
    outputs: tuple[str, ...] = ("y",),
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "test",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, *shape])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        initializers,
    )
    made = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    made.ir_version = 8
    onnx.checker.check_model(onnx.shape_inference.infer_shapes(made, strict_mode=True))
    return made


# (id, nodes, initialisers, input shape, the equivalent layers, opset, onnxruntime referee)
CASES = [
    ("conv", [node("Conv", ["x", "w", "b"], pads=[1, 1, 1, 1], strides=[2, 2])],
     [weight("w", 8, 3, 3, 3), weight("b", 8)], (3, 16, 16),
     [{"type": "conv2d", "out_channels": 8, "kernel_size": 3, "stride": 2, "padding": 1}],
     17, False),
    ("conv-asymmetric-pads", [node("Conv", ["x", "w"], pads=[0, 0, 1, 1], strides=[2, 2])],
     [weight("w", 8, 3, 3, 3)], (3, 16, 16),
     [{"type": "zeropad2d", "padding": [0, 1, 0, 1]},
      {"type": "conv2d", "out_channels": 8, "kernel_size": 3, "stride": 2, "bias": False}],
     17, False),
    ("conv-same-upper", [node("Conv", ["x", "w"], auto_pad="SAME_UPPER", strides=[2, 2])],
     [weight("w", 4, 3, 3, 3)], (3, 15, 15),
     [{"type": "conv2d", "out_channels": 4, "kernel_size": 3, "stride": 2, "padding": 1,
       "bias": False}], 17, False),
    ("conv1d-grouped-dilated", [node("Conv", ["x", "w"], group=2, dilations=[2])],
     [weight("w", 6, 2, 3)], (4, 20),
     [{"type": "conv1d", "out_channels": 6, "kernel_size": 3, "groups": 2, "dilation": 2,
       "bias": False}], 17, False),
    ("convtranspose", [node("ConvTranspose", ["x", "w", "b"], strides=[2, 2], pads=[1, 1, 1, 1],
                            output_padding=[1, 1])],
     [weight("w", 4, 6, 3, 3), weight("b", 6)], (4, 8, 8),
     [{"type": "convtranspose2d", "out_channels": 6, "kernel_size": 3, "stride": 2,
       "padding": 1, "output_padding": 1}], 17, False),
    ("gemm", [node("Gemm", ["x", "w", "b"], transB=1)], [weight("w", 10, 16), weight("b", 10)],
     (16,), [{"type": "linear", "out_features": 10}], 17, False),
    ("gemm-untransposed", [node("Gemm", ["x", "w"])], [weight("w", 16, 10)], (16,),
     [{"type": "linear", "out_features": 10, "bias": False}], 17, False),
    ("matmul-add", [node("MatMul", ["x", "w"], "m"), node("Add", ["m", "b"])],
     [weight("w", 16, 8), weight("b", 8)], (5, 16),
     [{"type": "linear", "in_features": 16, "out_features": 8}], 17, False),
    ("matmul", [node("MatMul", ["x", "w"])], [weight("w", 16, 8)], (5, 16),
     [{"type": "linear", "in_features": 16, "out_features": 8, "bias": False}], 17, False),
    ("batchnorm", [node("BatchNormalization", ["x", "s", "b", "m", "v"], epsilon=1e-3)],
     [weight("s", 4), weight("b", 4), weight("m", 4), floats("v", [1.0] * 4)], (4, 6, 6),
     [{"type": "batchnorm2d", "eps": 1e-3}], 17, False),
    ("maxpool", [node("MaxPool", ["x"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                      ceil_mode=1)], [], (2, 10, 10),
     [{"type": "maxpool2d", "kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True}],
     17, True),
    ("avgpool", [node("AveragePool", ["x"], kernel_shape=[2, 2], strides=[2, 2])], [], (2, 9, 9),
     [{"type": "avgpool2d", "kernel_size": 2, "stride": 2, "count_include_pad": False}], 17, True),
    ("globalavgpool", [node("GlobalAveragePool", ["x"])], [], (2, 5, 5),
     [{"type": "adaptiveavgpool2d", "output_size": 1}], 17, True),
    ("globalmaxpool", [node("GlobalMaxPool", ["x"])], [], (2, 5, 7),
     [{"type": "adaptivemaxpool2d", "output_size": 1}], 17, True),
    ("relu", [node("Relu", ["x"])], [], (3, 4, 4), ["relu"], 17, True),
    ("sigmoid", [node("Sigmoid", ["x"])], [], (3, 4, 4), ["sigmoid"], 17, True),
    ("tanh", [node("Tanh", ["x"])], [], (3, 4, 4), ["tanh"], 17, True),
    ("hardsigmoid", [node("HardSigmoid", ["x"], alpha=1 / 6)], [], (3, 4, 4), ["hardsigmoid"],
     17, True),
    ("hardswish", [node("HardSwish", ["x"])], [], (3, 4, 4), ["hardswish"], 17, True),
    ("silu", [node("Sigmoid", ["x"], "s"), node("Mul", ["x", "s"])], [], (3, 4, 4), ["silu"],
     17, True),
    ("leakyrelu", [node("LeakyRelu", ["x"], alpha=0.2)], [], (3, 4, 4),
     [{"type": "leakyrelu", "negative_slope": 0.2}], 17, True),
    ("prelu", [node("PRelu", ["x", "slope"])], [weight("slope", 3, 1, 1)], (3, 4, 4),
     [{"type": "prelu", "num_parameters": 3}], 17, False),
    ("elu", [node("Elu", ["x"], alpha=0.5)], [], (3, 4, 4), [{"type": "elu", "alpha": 0.5}],
     17, True),
    ("selu", [node("Selu", ["x"])], [], (3, 4, 4), ["selu"], 17, True),
    ("softplus", [node("Softplus", ["x"])], [], (3, 4, 4), ["softplus"], 17, True),
    ("gelu", [node("Gelu", ["x"], approximate="tanh")], [], (3, 4, 4),
     [{"type": "gelu", "approximate": "tanh"}], 20, True),
    ("clip-relu6", [node("Clip", ["x", "lo", "hi"])], [floats("lo", [0.0]), floats("hi", [6.0])],
     (3, 4, 4), ["relu6"], 17, True),
    ("clip-hardtanh", [node("Clip", ["x", "lo", "hi"])],
     [floats("lo", [-2.0]), floats("hi", [3.0])], (3, 4, 4),
     [{"type": "hardtanh", "min_val": -2.0, "max_val": 3.0}], 17, True),
    ("clip-relu", [node("Clip", ["x", "lo"])], [floats("lo", [0.0])], (3, 4, 4), ["relu"],
     17, True),
    ("add-residual", [node("Conv", ["x", "w"], "c", pads=[1, 1, 1, 1]), node("Add", ["c", "x"])],
     [weight("w", 3, 3, 3, 3)], (3, 8, 8),
     [{"type": "conv2d", "name": "c", "out_channels": 3, "kernel_size": 3, "padding": 1,
       "bias": False}, {"type": "add", "from": ["c", "input"]}], 17, False),
    ("mul-gate", [node("GlobalAveragePool", ["x"], "p"), node("Sigmoid", ["p"], "g"),
                  node("Mul", ["x", "g"])], [], (3, 8, 8),
     [{"type": "adaptiveavgpool2d", "output_size": 1}, {"type": "sigmoid", "name": "g"},
      {"type": "mul", "from": ["input", "g"]}], 17, True),
    ("concat", [node("Relu", ["x"], "r"), node("Concat", ["x", "r"], axis=1)], [], (3, 4, 4),
     [{"type": "relu", "name": "r"}, {"type": "cat", "from": ["input", "r"]}], 17, True),
    ("split-13", [node("Split", ["x", "sizes"], ["a", "b"], axis=1), node("Add", ["a", "b"])],
     [ints("sizes", [2, 2])], (4, 3, 3),
     [{"type": "split", "name": "s", "split_size_or_sections": 2},
      {"type": "add", "from": ["s.0", "s.1"]}], 13, True),
    ("split-18-uneven", [node("Split", ["x"], ["a", "b"], axis=1, num_outputs=2),
                         node("Concat", ["b", "a"], axis=1)], [], (5, 3, 3),
     [{"type": "split", "name": "s", "split_size_or_sections": 3},
      {"type": "cat", "from": ["s.1", "s.0"]}], 18, True),
    ("slices-are-a-split", [node("Slice", ["x", "s0", "e0", "ax"], "a"),
                            node("Slice", ["x", "s1", "e1", "ax"], "b"), node("Mul", ["a", "b"])],
     [ints("s0", [0]), ints("e0", [3]), ints("s1", [3]), ints("e1", [2**62]), ints("ax", [1])],
     (6, 2, 2), [{"type": "split", "name": "s", "split_size_or_sections": 3},
                 {"type": "mul", "from": ["s.0", "s.1"]}], 17, True),
    ("flatten", [node("Flatten", ["x"], axis=1)], [], (3, 4, 4), ["flatten"], 17, True),
    ("reshape-flatten", [node("Reshape", ["x", "shape"])], [ints("shape", [1, -1])], (3, 4, 4),
     ["flatten"], 17, True),
    ("reshape-unflatten", [node("Reshape", ["x", "shape"])], [ints("shape", [0, 3, 4, 4])], (48,),
     [{"type": "unflatten", "dim": 1, "unflattened_size": [3, 4, 4]}], 17, True),
    # torch's exporter writes some as_strided views as elements gathered from a flat copy
    ("gathered-permute", [node("Reshape", ["x", "flat"], "f"), node("Gather", ["f", "idx"])],
     [ints("flat", [-1]), numpy_helper.from_array(
         np.arange(24).reshape(1, 2, 3, 4).transpose(0, 2, 3, 1).copy(), "idx")], (2, 3, 4),
     [{"type": "permute", "order": [0, 2, 3, 1]}], 17, True),
    ("gathered-permute-reshape", [node("Reshape", ["x", "flat"], "f"),
                                  node("Gather", ["f", "idx"])],
     [ints("flat", [-1]), numpy_helper.from_array(
         np.arange(24).reshape(1, 2, 3, 4).transpose(0, 2, 3, 1).reshape(1, 12, 2), "idx")],
     (2, 3, 4),
     [{"type": "permute", "order": [0, 2, 3, 1]}, {"type": "flatten", "start_dim": 1,
                                                   "end_dim": 2}], 17, True),
    ("gathered-view", [node("Reshape", ["x", "flat"], "f"), node("Gather", ["f", "idx"])],
     [ints("flat", [-1]), numpy_helper.from_array(np.arange(8).reshape(1, 8, 1, 1), "idx")],
     (8,), [{"type": "unflatten", "dim": 1, "unflattened_size": [8, 1, 1]}], 17, True),
    ("reshape-computed", [node("Shape", ["x"], "sh"), node("Gather", ["sh", "zero"], "n", axis=0),
                          node("Unsqueeze", ["n", "zeros"], "n1"),
                          node("Concat", ["n1", "minus"], "target", axis=0),
                          node("Reshape", ["x", "target"])],
     [ints("zeros", [0]), numpy_helper.from_array(np.array(0, dtype=np.int64), "zero"),
      ints("minus", [-1])], (3, 4, 4), ["flatten"], 17, True),
    ("resize-scales", [node("Resize", ["x", "", "scales"], mode="nearest")],
     [floats("scales", [1, 1, 2, 2])], (3, 4, 5),
     [{"type": "upsample", "scale_factor": 2, "mode": "nearest"}], 17, False),
    ("resize-sizes-linear", [node("Resize", ["x", "", "", "sizes"], mode="linear",
                                  coordinate_transformation_mode="align_corners")],
     [ints("sizes", [1, 3, 7, 9])], (3, 4, 5),
     [{"type": "upsample", "size": [7, 9], "mode": "bilinear", "align_corners": True}], 17, True),
    ("pad-constant", [node("Pad", ["x", "pads", "v"])],
     [ints("pads", [0, 0, 1, 2, 0, 0, 3, 4]), floats("v", [0.5])], (3, 4, 4),
     [{"type": "constantpad2d", "padding": [2, 4, 1, 3], "value": 0.5}], 17, True),
    ("pad-reflect", [node("Pad", ["x", "pads"], mode="reflect")],
     [ints("pads", [0, 0, 1, 1, 0, 0, 1, 1])], (3, 4, 4),
     [{"type": "reflectionpad2d", "padding": 1}], 17, True),
    ("pad-edge", [node("Pad", ["x", "pads"], mode="edge")],
     [ints("pads", [0, 0, 0, 2, 0, 0, 0, 1])], (3, 4, 4),
     [{"type": "replicationpad2d", "padding": [2, 1, 0, 0]}], 17, True),
    ("reducemean-13", [node("ReduceMean", ["x"], axes=[2, 3], keepdims=1)], [], (3, 4, 4),
     [{"type": "mean", "dim": [2, 3], "keepdim": True}], 13, True),
    ("reducemean-18", [node("ReduceMean", ["x", "axes"], keepdims=0)], [ints("axes", [-1])],
     (3, 4, 5), [{"type": "mean", "dim": 3}], 18, True),
    ("channels-last-layernorm",
     [node("Transpose", ["x"], "t", perm=[0, 2, 3, 1]),
      node("LayerNormalization", ["t", "s", "b"], "n", axis=-1, epsilon=1e-6),
      node("Transpose", ["n"], perm=[0, 3, 1, 2])],
     [weight("s", 8), weight("b", 8)], (8, 4, 4),
     [{"type": "permute", "order": [0, 2, 3, 1]},
      {"type": "layernorm", "normalized_shape": 8, "eps": 1e-6},
      {"type": "permute", "order": [0, 3, 1, 2]}], 17, False),
    ("softmax", [node("Softmax", ["x"], axis=1)], [], (10,), [{"type": "softmax", "dim": 1}], 17,
     True),
    ("logsoftmax", [node("LogSoftmax", ["x"], axis=-1)], [], (4, 10),
     [{"type": "logsoftmax", "dim": 2}], 17, True),
    ("dropout-identity", [node("Dropout", ["x"], "d"), node("Identity", ["d"], "i"),
                          node("Relu", ["i"])], [], (3, 4, 4), ["relu"], 17, True),
    ("lrn", [node("LRN", ["x"], size=5, alpha=1e-3, beta=0.5, bias=2.0)], [], (8, 4, 4),
     [{"type": "localresponsenorm", "size": 5, "alpha": 1e-3, "beta": 0.5, "k": 2.0}], 17, True),
    ("instancenorm", [node("InstanceNormalization", ["x", "s", "b"])],
     [weight("s", 3), weight("b", 3)], (3, 4, 4), [{"type": "instancenorm2d", "affine": True}],
     17, False),
    ("depthtospace-crd", [node("DepthToSpace", ["x"], blocksize=2, mode="CRD")], [], (8, 3, 3),
     [{"type": "pixelshuffle", "upscale_factor": 2}], 17, True),
    ("depthtospace-dcr", [node("DepthToSpace", ["x"], blocksize=2)], [], (8, 3, 3),
     [{"type": "channelshuffle", "groups": 4}, {"type": "pixelshuffle", "upscale_factor": 2}],
     17, True),
    ("spacetodepth", [node("SpaceToDepth", ["x"], blocksize=2)], [], (3, 4, 6),
     [{"type": "pixelunshuffle", "downscale_factor": 2}, {"type": "channelshuffle", "groups": 3}],
     17, True),
    ("channel-shuffle", [node("Reshape", ["x", "split"], "r"),
                         node("Transpose", ["r"], "t", perm=[0, 2, 1, 3, 4]),
                         node("Reshape", ["t", "back"])],
     [ints("split", [1, 2, 3, 4, 4]), ints("back", [1, 6, 4, 4])], (6, 4, 4),
     [{"type": "channelshuffle", "groups": 2}], 17, True),
    ("layerscale", [node("Mul", ["x", "gamma"])], [weight("gamma", 3, 1, 1)], (3, 4, 4),
     [{"type": "layerscale"}], 17, False),
]  # fmt: skip


def _case_model(case) -> onnx.ModelProto:
    _, nodes, initializers, shape, _, opset, _ = case
    return model(nodes, initializers, shape, opset)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_each_op_imports_as_its_layers(case):
    _, _, initializers, shape, layers, _, _ = case
    made = _case_model(case)
    network = from_onnx(made)
    report = convcalc.analyze(network)
    expected = convcalc.analyze({"version": 2, "input": list(shape), "layers": layers})
    assert [r.type for r in report.rows] == [r.type for r in expected.rows]
    assert [r.output_shape for r in report.rows] == [r.output_shape for r in expected.rows]
    assert [r.params for r in report.rows] == [r.params for r in expected.rows]
    assert report.totals.macs == expected.totals.macs
    # the referees: onnx's shape inference and the initialisers the layers read as weights
    inferred = onnx.shape_inference.infer_shapes(made, strict_mode=True, data_prop=True)
    values = {v.name: v for v in (*inferred.graph.value_info, *inferred.graph.output)}
    dims = tuple(d.dim_value for d in values["y"].type.tensor_type.shape.dim)
    assert report.output_shape == dims
    buffers = {"m", "v"}  # batch norm's running statistics
    weights = sum(
        int(np.prod(t.dims))
        for t in initializers
        if t.data_type == TensorProto.FLOAT
        and t.name not in buffers
        and len(t.dims) > 0
        and t.name not in ("lo", "hi", "v", "scales")
    )
    assert report.totals.params == weights


@pytest.mark.parametrize("case", [c for c in CASES if c[6]], ids=[c[0] for c in CASES if c[6]])
def test_ops_without_weights_compute_what_onnxruntime_computes(case):
    """The imported spec built as torch modules gives onnxruntime's outputs: the mode of
    DepthToSpace, the order SpaceToDepth writes, pads in torch's order, ..."""
    import onnxruntime
    import torch

    from convcalc.torch_bridge import build_module

    made = _case_model(case)
    network = from_onnx(made)
    x = RNG.standard_normal((1, *case[3])).astype(np.float32)
    session = onnxruntime.InferenceSession(
        made.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    (expected,) = session.run(None, {"x": x})
    module = build_module(network).eval()
    with torch.no_grad():
        got = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_layer_names_are_the_module_paths():
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="/layer1/layer1.0/conv1/Conv"),
        helper.make_node("Relu", ["c"], ["r"], name="/layer1/layer1.0/relu/Relu"),
        helper.make_node("Add", ["r", "c"], ["y"], name="/layer1/layer1.0/Add"),
    ]
    made = model(nodes, [weight("w", 3, 3, 1, 1)], (3, 4, 4))
    names = [layer.name for layer in from_onnx(made).layers]
    assert names == ["layer1.0.conv1", "layer1.0.relu", "layer1.0.add"]


def test_several_outputs_and_a_symbolic_batch():
    graph = helper.make_graph(
        [node("Relu", ["x"], "a"), node("Sigmoid", ["a"], "b")],
        "two",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in ("a", "b")],
    )
    made = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    report = convcalc.analyze(from_onnx(made))
    assert list(report.outputs.values()) == [(1, 3, 4, 4), (1, 3, 4, 4)]


def test_a_symbolic_size_takes_the_given_input_shape():
    graph = helper.make_graph(
        [node("Conv", ["x", "w"], "y")],
        "sym",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [weight("w", 8, 3, 3, 3)],
    )
    made = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert convcalc.analyze(from_onnx(made, input_shape=(3, 10, 12))).output_shape == (1, 8, 8, 10)
    with pytest.raises(ModelImportError, match=r"input 'x' has the shape \[batch, 3, H, W\]"):
        from_onnx(made)


# -- models exported from torch --------------------------------------------------------------

# every construct once: residuals, SE gates (SiLU, sigmoid), channel shuffle and chunk,
# concatenations, layer norm through permutes and layer scale, inception branches
CI_MODELS = ["resnet18", "mobilenet_v3_small", "efficientnet_b0", "shufflenet_v2_x0_5",
             "densenet121", "convnext_tiny", "squeezenet1_1", "googlenet"]  # fmt: skip


@contextlib.contextmanager
def _quiet():
    sink = io.StringIO()
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(sink),
        contextlib.redirect_stderr(sink),
    ):
        warnings.simplefilter("ignore")
        yield


def _export(module, shape, path, *, keep_batchnorm: bool) -> None:
    """``torch.onnx.export`` with its warnings and progress lines silenced. BatchNorm is
    kept by the legacy exporter in TrainingMode.PRESERVE (the module in eval mode);
    otherwise the default (dynamo) exporter folds it into the convolution before it."""
    import torch

    x = torch.zeros(1, *shape)
    with _quiet():
        if keep_batchnorm:
            torch.onnx.export(
                module, (x,), str(path), dynamo=False, training=torch.onnx.TrainingMode.PRESERVE
            )
        else:
            torch.onnx.export(module, (x,), str(path), dynamo=True, external_data=False)


def _size(name: str) -> int:
    return 299 if name == "inception_v3" else 520 if name in SEGMENTATION else 224


@pytest.fixture(scope="session")
def exported(torchvision_models, tmp_path_factory):
    """name -> (the torchvision model, its ONNX file with BatchNorm kept), cached."""
    directory = tmp_path_factory.mktemp("onnx")
    cache: dict[str, tuple[object, object]] = {}

    def get(name: str):
        if name not in cache:
            import torch

            torch.manual_seed(0)
            kwargs: dict[str, object] = {}
            if name in ("googlenet", "inception_v3"):
                kwargs = {"aux_logits": False, "init_weights": False}
            elif name in SEGMENTATION:
                kwargs = {"weights_backbone": None}
            module = torchvision_models.get_model(name, weights=None, **kwargs).eval()
            path = directory / f"{name}.onnx"
            size = _size(name)
            _export(module, (3, size, size), path, keep_batchnorm=True)
            cache[name] = (module, path)
        return cache[name]

    return get


# torch's exporter merges cat(cat(a, b), c) into one Concat (Inception-v3's Mixed_7b/7c):
# those cat rows are not in the file
_MERGED_CATS = {"inception_v3"}


def _same_analysis(onnx_network, torch_network, name: str = "") -> None:
    a, b = convcalc.analyze(onnx_network), convcalc.analyze(torch_network)
    assert a.totals.params == b.totals.params
    assert a.totals.buffers == b.totals.buffers
    assert a.totals.macs == b.totals.macs
    assert a.output_shape == b.output_shape
    # the exporters leave out what is the identity at inference (dropout)
    cats = name in _MERGED_CATS
    assert _shapes(a, cats) == _shapes(b, cats)


def _shapes(report, without_cats: bool = False) -> list[tuple[int, ...]]:
    skipped = ("dropout", "identity", "stochasticdepth", *(("cat",) if without_cats else ()))
    return sorted(r.output_shape for r in report.rows if not r.type.startswith(skipped))


@pytest.mark.parametrize("name", CI_MODELS)
def test_torchvision_exports_analyse_as_from_torch(exported, name):
    from convcalc.torch_import import from_torch

    module, path = exported(name)
    _same_analysis(from_onnx(path), from_torch(module, (3, 224, 224)))


def test_a_folded_batchnorm_is_counted_as_the_file_has_it(torchvision_models, exported, tmp_path):
    """The default exporter folds each BatchNorm into the convolution before it: the file
    has convolutions with a bias and no BatchNorm, and so has the spec."""
    import torch

    module = torchvision_models.resnet18(weights=None).eval()
    channels = 0
    with torch.no_grad():  # statistics that fold into non-zero biases (a zero one is dropped)
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                channels += m.num_features
                for tensor in (m.weight, m.bias, m.running_mean):
                    tensor.uniform_(0.5, 1.5)
    path = tmp_path / "folded.onnx"
    _export(module, (3, 224, 224), path, keep_batchnorm=False)
    file = onnx.load(str(path))
    assert not any(n.op_type == "BatchNormalization" for n in file.graph.node)
    network = from_onnx(path)
    report = convcalc.analyze(network)
    assert not any(r.type.startswith("batchnorm") for r in report.rows)
    assert all(layer.bias for layer in network.layers if layer.type == "conv2d")
    weights = [t for t in file.graph.initializer if t.data_type == TensorProto.FLOAT]
    assert report.totals.params == sum(int(np.prod(t.dims)) for t in weights)
    kept = convcalc.analyze(from_onnx(exported("resnet18")[1]))
    # each BatchNorm's 2·C parameters became the convolution's C biases
    assert report.totals.params == kept.totals.params - channels
    assert report.totals.macs == kept.totals.macs
    assert report.output_shape == kept.output_shape


def _zoo_names() -> list[str]:
    return [n for n in CLASSIFICATION + SEGMENTATION if n not in CI_MODELS]


@pytest.mark.zoo
@pytest.mark.parametrize("name", _zoo_names())
def test_zoo_exports_analyse_as_from_torch(exported, name):
    from convcalc.torch_import import from_torch

    module, path = exported(name)
    size = _size(name)
    _same_analysis(from_onnx(path), from_torch(module, (3, size, size)), name)


# -- bad input --------------------------------------------------------------------------------


def _one_sentence(error: pytest.ExceptionInfo, *parts: str) -> None:
    message = str(error.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, message


def test_a_file_that_is_not_onnx(tmp_path):
    path = tmp_path / "notes.onnx"
    path.write_text("name: resnet\nlayers: []\n")
    with pytest.raises(ModelImportError) as error:
        from_onnx(path)
    _one_sentence(error, str(path), "is not an ONNX model")


def test_a_truncated_file(tmp_path):
    data = _case_model(CASES[0]).SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelImportError) as error:
        from_onnx(path)
    _one_sentence(error, str(path), "is not an ONNX model")


def test_random_bytes(tmp_path):
    path = tmp_path / "noise.onnx"
    path.write_bytes(np.random.default_rng(1).bytes(100_000))
    with pytest.raises(ModelImportError) as error:
        from_onnx(path)
    _one_sentence(error, str(path), "is not an ONNX model")


def test_a_missing_file(tmp_path):
    with pytest.raises(ModelImportError) as error:
        from_onnx(tmp_path / "none.onnx")
    _one_sentence(error, "none.onnx", "cannot read the file")


def _external(tmp_path):
    made = model([node("Conv", ["x", "w"])], [weight("w", 64, 3, 7, 7)], (3, 16, 16))
    path = tmp_path / "external.onnx"
    onnx.save_model(made, str(path), save_as_external_data=True, location="external.onnx.data",
                    size_threshold=0)  # fmt: skip
    return path


def test_external_data_is_not_read_but_must_be_there(tmp_path):
    path = _external(tmp_path)
    assert convcalc.analyze(from_onnx(path)).totals.params == 64 * 3 * 7 * 7
    (tmp_path / "external.onnx.data").unlink()
    with pytest.raises(ModelImportError) as error:
        from_onnx(path)
    _one_sentence(error, str(path), "'external.onnx.data'", "is missing")


def test_external_data_cut_short(tmp_path):
    path = _external(tmp_path)
    data = tmp_path / "external.onnx.data"
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(ModelImportError) as error:
        from_onnx(path)
    _one_sentence(error, str(path), "is shorter")


def _symbolic(inputs: int) -> onnx.ModelProto:
    names = ["x", "z"][:inputs]
    graph = helper.make_graph(
        [node("Add", names, "y") if inputs == 2 else node("Relu", names, "y")],
        "sym",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 3, "H", "W"]) for n in names],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_symbolic_input_without_a_shape(tmp_path):
    path = tmp_path / "sym.onnx"
    onnx.save(_symbolic(1), str(path))
    with pytest.raises(ModelImportError) as error:
        from_onnx(path)
    _one_sentence(error, str(path), "'x'", "--input")


def test_several_inputs_of_unknown_shape(tmp_path):
    path = tmp_path / "two.onnx"
    onnx.save(_symbolic(2), str(path))
    with pytest.raises(ModelImportError) as error:
        from_onnx(path)
    _one_sentence(error, str(path), "2 graph inputs (x, z)")
    with pytest.raises(ModelImportError) as error:
        from_onnx(path, input_shape=(3, 4, 4))
    _one_sentence(error, "mapping")
    shapes = {"x": (3, 4, 4), "z": (3, 4, 4)}
    assert convcalc.analyze(from_onnx(path, input_shape=shapes)).output_shape == (1, 3, 4, 4)


@pytest.mark.parametrize(
    ("nodes", "initializers", "op", "name"),
    [
        ([helper.make_node("Erf", ["x"], ["y"], name="/block/Erf")], [], "Erf", "/block/Erf"),
        ([helper.make_node("Add", ["x", "c"], ["y"], name="bias_add")], [floats("c", [1.0])],
         "Add", "bias_add"),
        ([helper.make_node("MatMul", ["x", "x"], ["y"], name="mm")], [], "MatMul", "mm"),
        ([helper.make_node("Transpose", ["x"], ["y"], perm=[1, 0, 2, 3], name="t")], [],
         "Transpose", "t"),
        ([helper.make_node("Reshape", ["x", "flat"], ["f"], name="flat"),  # not a view
          helper.make_node("Gather", ["f", "idx"], ["y"], name="pick")],
         [ints("flat", [-1]), ints("idx", list(range(63, -1, -1)))], "Reshape", "flat"),
    ],
)  # fmt: skip
def test_an_op_outside_the_supported_set(tmp_path, nodes, initializers, op, name):
    path = tmp_path / "op.onnx"
    shape = (4, 4, 4)
    graph = helper.make_graph(
        nodes,
        "op",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, *shape])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializers,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(ModelImportError) as error:
        from_onnx(path)
    _one_sentence(error, str(path), f"node {op} {name} (", "cannot be expressed in a spec")


@pytest.mark.parametrize(
    "make",
    [
        lambda: ([helper.make_node("ConstantOfShape", ["s"], ["c"], name="/fill")],
                 [ints("s", [1, 1, 30_000, 30_000])]),
        lambda: ([helper.make_node("Expand", ["one", "s"], ["c"], name="/fill")],
                 [floats("one", [1.0]), ints("s", [1, 1, 30_000, 30_000])]),
        lambda: ([helper.make_node("Range", ["a", "b", "d"], ["c"], name="/fill")],
                 [numpy_helper.from_array(np.array(v, dtype=np.float32), k)
                  for k, v in (("a", 0), ("b", 1e12), ("d", 1))]),
    ],
    ids=["ConstantOfShape", "Expand", "Range"],
)  # fmt: skip
def test_a_huge_constant_from_a_few_bytes_is_not_computed(tmp_path, make):
    """A 12-byte shape must not make gigabytes (30,000² floats took 9 s and 3.5 GB):
    unused, the graph imports; used, it is refused in one sentence."""
    fill, initializers = make()
    path = tmp_path / "fill.onnx"
    for used in (False, True):
        relu = helper.make_node("Relu", ["x"], ["r"], name="/relu/Relu")
        last = helper.make_node("Add", ["r", "c"], ["y"], name="/add/Add") if used else None
        graph = helper.make_graph(
            [*fill, relu, *([last] if last else [])],
            "fill",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 1, 1])],
            [helper.make_tensor_value_info("y" if used else "r", TensorProto.FLOAT, None)],
            initializers,
        )
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
        start = time.perf_counter()
        if used:
            with pytest.raises(ModelImportError) as error:
                from_onnx(path)
            _one_sentence(error, str(path), "/fill", "more than 16,777,216 elements")
        else:
            assert convcalc.analyze(from_onnx(path)).output_shape == (1, 1, 1, 1)
        assert time.perf_counter() - start < 1.0


def test_bad_files_fail_fast(tmp_path):
    path = tmp_path / "big.onnx"
    path.write_bytes(b"\x0a" + np.random.default_rng(2).bytes(20_000_000))
    start = time.perf_counter()
    with pytest.raises(ModelImportError):
        from_onnx(path)
    assert time.perf_counter() - start < 1.0


# -- the command -------------------------------------------------------------------------------


def test_import_onnx_writes_a_spec_that_analyses_as_the_model(tmp_path):
    path = tmp_path / "case.onnx"
    onnx.save(_case_model(CASES[0]), str(path))
    out = tmp_path / "spec.yaml"
    result = CliRunner().invoke(cli, ["import-onnx", str(path), "-o", str(out), "--name", "tiny"])
    assert result.exit_code == 0, result.output
    spec = convcalc.analyze(out)
    assert spec.name == "tiny"
    assert spec.totals.params == convcalc.analyze(from_onnx(path)).totals.params
    assert out.read_text().startswith(
        "# Imported by convcalc from case.onnx (ONNX), input [3, 16, 16]."
    )


def test_import_onnx_takes_the_input_shape(tmp_path):
    path = tmp_path / "sym.onnx"
    onnx.save(_symbolic(1), str(path))
    result = CliRunner().invoke(cli, ["import-onnx", str(path), "--input", "3,8,8"])
    assert result.exit_code == 0, result.output
    assert "input: [3, 8, 8]" in result.stdout


@pytest.mark.parametrize("content", [b"not onnx at all", b""])
def test_import_onnx_of_a_bad_file_is_one_line(tmp_path, content):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    result = CliRunner().invoke(cli, ["import-onnx", str(path)])
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"error: {path}: ")
    assert "Traceback" not in result.output


def test_import_onnx_of_a_directory_or_a_missing_file_is_one_line(tmp_path):
    for path, reason in ((tmp_path, "is not a file"), (tmp_path / "no.onnx", "cannot read")):
        result = CliRunner().invoke(cli, ["import-onnx", str(path)])
        assert result.exit_code == 1, result.output
        assert result.stderr.startswith(f"error: {path}: {reason}")
        assert result.stderr.count("\n") == 1


def _matmul_of(weight_tensor: onnx.TensorProto) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="/fc/MatMul")],
        "fc",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, weight_tensor.dims[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [weight_tensor],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_weights_declared_without_their_data_are_refused(tmp_path):
    """A 10**12-element weight with no data (a cut or hand-edited file) is refused in a
    sentence, quickly and without allocating it; a real weight of the same kind is read."""
    path = tmp_path / "huge.onnx"
    empty = onnx.TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1_000_000, 1_000_000])
    onnx.save(_matmul_of(empty), str(path))
    start = time.perf_counter()
    with pytest.raises(ModelImportError) as error:
        from_onnx(path)
    assert time.perf_counter() - start < 1.0
    _one_sentence(
        error, str(path), "'w' declares 1,000,000,000,000 elements", "the file has 13 bytes for it"
    )
    onnx.save(_matmul_of(weight("w", 16, 4)), str(path))
    assert convcalc.analyze(from_onnx(path)).totals.params == 64


def test_import_onnx_of_an_unsupported_op_is_one_line(tmp_path):
    path = tmp_path / "erf.onnx"
    graph = helper.make_graph(
        [helper.make_node("Erf", ["x"], ["y"], name="/gelu/Erf")],
        "erf",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    result = CliRunner().invoke(cli, ["import-onnx", str(path)])
    assert result.exit_code == 1
    assert result.stderr == (
        f"error: {path}: node Erf /gelu/Erf (an op convcalc has no layer for) cannot be "
        "expressed in a spec\n"
    )


def test_import_onnx_with_notes(tmp_path):
    path = tmp_path / "pads.onnx"
    onnx.save(_case_model(CASES[1]), str(path))
    imported = import_onnx(path)
    assert imported.notes == [
        "1 convolution padded unevenly, each written as a zero-padding layer and the "
        f"convolution (first: {CASES[1][1][0].name})"
    ]


def test_convcalc_and_its_shape_command_never_import_onnx():
    code = (
        "import sys, convcalc\n"
        "from click.testing import CliRunner\n"
        "from convcalc.cli import cli\n"
        "from tests.conftest import SPECS_DIR\n"
        "result = CliRunner().invoke(cli, ['shape', str(SPECS_DIR / 'resnet18.yaml')])\n"
        "assert result.exit_code == 0, result.output\n"
        "loaded = {'onnx', 'onnxruntime', 'onnxscript'} & set(sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    from .conftest import ROOT

    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, cwd=ROOT)
