"""Specs out as ONNX model files, for the runtimes that take them.

The spec is built with ``build_module`` and written by torch's ONNX exporter, the
``torch.export``-based one torch supports (``torch.onnx.export(..., dynamo=True)``; it
needs onnxscript). Its older TorchScript exporter is deprecated and is not used.

What the file holds:

- The graph's inputs and outputs carry the spec's names (``input`` and ``output`` for a
  spec with one of each; the ``inputs:`` and ``outputs:`` keys of a version 2 spec), in
  the spec's order, as float32 tensors of the spec's shapes. With ``dynamic_batch`` the
  first dimension of each is the symbol ``batch``.
- The weights are torch's random initialisation, drawn from a fixed seed. Normalisation
  layers start as an identity in torch (scale 1, shift 0, running mean 0, variance 1);
  their scale, shift and running statistics are drawn too, so that the file computes a
  function in which every layer matters, and no two weight tensors are equal (the
  exporter stores equal tensors once).
- The graph is in evaluation mode, and by default optimised as the exporter does it:
  constants folded and a BatchNormalization right after a Conv, ConvTranspose or Gemm
  folded into that layer's weight and bias (the layer gains a bias if it had none), as
  runtimes would do anyway. ``fold_batchnorm=False`` keeps every BatchNormalization
  node; the graph is then constant-folded only.
- The default opset is torch's (20 with torch 2.13); the exporter writes opsets 18 and
  up. Older opsets would go through a version converter that fails on common graphs
  (Identity, Split), so they are refused rather than written as something else.
- One file: weights are stored inside it, unless they pass protobuf's 2 GB limit, when
  they go to ``FILE.data`` beside it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from convcalc.analysis import analyze
from convcalc.errors import ConvCalcError, TorchNotInstalledError
from convcalc.loader import load_spec
from convcalc.report import Report
from convcalc.spec import Network

__all__ = ["MIN_OPSET", "export_onnx", "onnx_module", "opset_range"]

# torch's exporter implements the ONNX ops of opset 18 (its "torchlib"); it writes older
# opsets only through a version converter, which fails on common graphs.
MIN_OPSET = 18
_MAX_OPSET_FALLBACK = 23  # torch.onnx's own maximum (torch 2.13), if it does not say
_EXTRA = "pip install 'convcalc[onnx]'"


def export_onnx(
    spec: str | os.PathLike[str] | Mapping[str, Any] | Network,
    path: str | os.PathLike[str],
    *,
    opset: int | None = None,
    dynamic_batch: bool = False,
    fold_batchnorm: bool = True,
    seed: int = 0,
) -> list[Path]:
    """Write the spec as an ONNX model file at ``path``; returns the files written (the
    model, and ``path.data`` beside it for weights over 2 GB).

    ``opset`` is the ai.onnx opset (default: torch's); ``dynamic_batch`` makes the first
    dimension of every input and output the symbol ``batch``. Nothing is left at
    ``path`` if the export fails.
    """
    network = load_spec(spec)
    report = analyze(network)
    where = _source(network)
    destination = Path(path)
    torch = _import(where)
    if opset is not None:
        low, high = opset_range()
        if not low <= opset <= high:
            raise ConvCalcError(
                f"{where}: torch's ONNX exporter writes opset {low} to {high}, not {opset}"
            )
    folder = _scratch_folder(destination)  # before the slow part: a bad path fails fast
    try:
        module = onnx_module(network, seed=seed, report=report)
        program = _export(torch, module, report, where, opset, dynamic_batch, fold_batchnorm)
        program.model.graph.name = network.name
        program.model.doc_string = f"{network.name}, exported by convcalc from {where}."
        scratch = folder / destination.name
        with _quiet():
            program.save(scratch, external_data=False)  # over 2 GB: FILE.data beside it
        written = []
        for file in sorted(folder.iterdir()):  # the model first: FILE sorts before FILE.data
            target = destination.with_name(file.name)
            os.replace(file, target)
            written.append(target)
        return written
    except OSError as error:
        raise ConvCalcError(f"{destination}: cannot write it ({_reason(error)})") from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def onnx_module(
    spec: str | os.PathLike[str] | Mapping[str, Any] | Network,
    *,
    seed: int = 0,
    report: Report | None = None,
) -> Any:
    """The module ``export_onnx`` writes: ``build_module``'s, in evaluation mode, its
    weights drawn from ``seed`` (normalisation layers' too). The same seed gives the same
    weights, so a test can run the module beside the file."""
    network = report.network if report is not None and report.network else load_spec(spec)
    torch = _import(_source(network))
    from convcalc.torch_bridge import build_module

    with torch.random.fork_rng(devices=[]):  # the caller's random state is left alone
        torch.manual_seed(seed)
        module = build_module(network, report=report)
        with torch.no_grad():
            for layer in module.modules():
                _draw_normalisation(torch, layer)
    return module.eval()


def opset_range() -> tuple[int, int]:
    """The lowest and highest ai.onnx opset ``export_onnx`` writes with this torch and
    onnx."""
    import onnx
    import torch.onnx

    constants = getattr(torch.onnx, "_constants", None)
    highest = getattr(constants, "ONNX_MAX_OPSET", _MAX_OPSET_FALLBACK)
    return MIN_OPSET, min(int(highest), onnx.defs.onnx_opset_version())


def _draw_normalisation(torch: Any, layer: Any) -> None:
    """Random scale, shift and running statistics for a normalisation layer."""
    nn = torch.nn
    norms = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
    if not isinstance(layer, norms):
        return
    for name, low, high in (
        ("weight", 0.5, 1.5),
        ("bias", -0.5, 0.5),
        ("running_mean", -0.5, 0.5),
        ("running_var", 0.5, 1.5),
    ):
        tensor = getattr(layer, name, None)
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
            tensor.uniform_(low, high)


def _export(
    torch: Any,
    module: Any,
    report: Report,
    where: str,
    opset: int | None,
    dynamic_batch: bool,
    fold_batchnorm: bool,
) -> Any:
    """torch's ONNX program of the module (not yet saved)."""
    # the example inputs set only shapes (the graph does not depend on values); zeros
    # leave the caller's random state alone
    inputs = tuple(torch.zeros(*shape) for shape in report.input_shapes.values())
    dynamic_shapes: tuple[Any, ...] | None = None
    if dynamic_batch:
        batch = torch.export.Dim("batch")
        per_input = tuple({0: batch} for _ in inputs)
        # one input is forward(x); several are forward(*inputs), one argument
        dynamic_shapes = per_input if len(inputs) == 1 else (per_input,)
    try:
        with _quiet(), _lrn_as_one_node(torch, module) as translations:
            program = torch.onnx.export(
                module,
                inputs,
                None,
                dynamo=True,
                opset_version=opset,
                input_names=list(report.input_shapes),
                output_names=list(report.outputs),
                dynamic_shapes=dynamic_shapes,
                optimize=fold_batchnorm,
                verbose=False,
                custom_translation_table=translations,
            )
            if not fold_batchnorm:
                _optimise_keeping_batchnorm(program.model)
    except ModuleNotFoundError as error:
        missing = (error.name or "a package").split(".")[0]
        raise ConvCalcError(
            f"{where}: exporting to ONNX needs {missing}, which is not installed: {_EXTRA}"
        ) from None
    except Exception as error:  # the exporter's errors are many pages; one line of it
        raise ConvCalcError(
            f"{where}: torch's ONNX exporter failed: {_first_line(error)}"
        ) from None
    return program


_LRN_OP = "convcalc::local_response_norm"


@contextlib.contextmanager
def _lrn_as_one_node(torch: Any, module: Any) -> Iterator[dict[Any, Any]]:
    """While exporting, each ``nn.LocalResponseNorm`` of ``module`` calls one opaque op,
    written as ONNX's ``LRN`` node (torch's exporter would write its arithmetic: Pow,
    Pad, AveragePool, Mul, Add, Div, which no runtime or importer reads as LRN)."""
    layers = [m for m in module.modules() if isinstance(m, torch.nn.LocalResponseNorm)]
    if not layers:
        yield {}
        return
    op = _lrn_op(torch)
    for layer in layers:
        layer.forward = lambda x, m=layer: op(x, m.size, m.alpha, m.beta, m.k)
    try:
        yield {op.default: _lrn_onnx}
    finally:
        for layer in layers:
            del layer.forward


def _lrn_op(torch: Any) -> Any:
    """``torch.ops.convcalc.local_response_norm``, defined on first use."""
    namespace, name = _LRN_OP.split("::")
    if not hasattr(getattr(torch.ops, namespace), name):
        torch.library.define(
            _LRN_OP, "(Tensor x, int size, float alpha, float beta, float k) -> Tensor"
        )

        def compute(x: Any, size: int, alpha: float, beta: float, k: float) -> Any:
            return torch.nn.functional.local_response_norm(x, size, alpha, beta, k)

        def shape(x: Any, size: int, alpha: float, beta: float, k: float) -> Any:
            return torch.empty_like(x)

        torch.library.impl(_LRN_OP, "CompositeExplicitAutograd")(compute)
        torch.library.register_fake(_LRN_OP)(shape)

    return getattr(getattr(torch.ops, namespace), name)


def _lrn_onnx(x: Any, size: int, alpha: float, beta: float, k: float) -> Any:
    """ONNX's LRN: x / (k + alpha/size · sum of squares over ``size`` channels)^beta,
    torch's formula."""
    from onnxscript import opset18

    return opset18.LRN(x, size=size, alpha=alpha, beta=beta, bias=k)


def _optimise_keeping_batchnorm(model: Any) -> None:
    """What the exporter's optimiser does that matters here, but for folding BatchNorm
    (its optimiser has no switch for that one rule): fold constants (the shape arithmetic
    around every op), and drop the zero bias it gives a layer without one."""
    import onnxscript.optimizer
    import onnxscript.rewriter
    from onnxscript.rewriter.rules import common

    onnxscript.optimizer.fold_constants(model)
    onnxscript.rewriter.rewrite(
        model,
        [
            common.remove_optional_bias_from_conv_rule,
            common.remove_optional_bias_from_conv_transpose_rule,
            common.remove_optional_bias_from_gemm_rule,
        ],
    )
    onnxscript.optimizer.remove_unused_nodes(model)


def _import(where: str) -> Any:
    """torch and onnx, or one sentence naming the extra that installs them."""
    try:
        import onnx  # noqa: F401
        import torch
    except ModuleNotFoundError as error:
        missing = (error.name or "a package").split(".")[0]
        message = f"{where}: exporting to ONNX needs {missing}, which is not installed: {_EXTRA}"
        if missing == "torch":
            raise TorchNotInstalledError(message) from None
        raise ConvCalcError(message) from None
    return torch


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter's warnings (deprecations inside torch, axis-name notes) kept here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _scratch_folder(destination: Path) -> Path:
    """A new folder beside ``destination``, where the files are written before they are
    moved into place (so a failed export leaves nothing half-written)."""
    if destination.is_dir():
        raise ConvCalcError(f"{destination}: is a folder; give a file name such as model.onnx")
    parent = destination.parent
    try:
        return Path(tempfile.mkdtemp(prefix=".convcalc-onnx-", dir=parent))
    except OSError as error:
        raise ConvCalcError(f"{destination}: cannot write it ({_reason(error)})") from None


def _reason(error: OSError) -> str:
    if isinstance(error, FileNotFoundError):
        return "no such folder"
    return (error.strerror or str(error)).lower()


def _source(network: Network) -> str:
    return network.source if network.source and network.source != "<dict>" else "spec"


def _first_line(error: BaseException) -> str:
    """What went wrong first, in one short line: the first line of the innermost cause's
    message (the exporter wraps it in pages of advice), without colour codes."""
    import re

    while error.__cause__ is not None:
        error = error.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    line = f"{type(error).__name__}: {line}" if line else type(error).__name__
    return line if len(line) <= 300 else line[:299] + "…"
