"""convcalc: shapes, parameters, MACs, memory and receptive fields of CNNs from a YAML spec.

>>> import convcalc
>>> spec = {"input": [1, 28, 28], "layers": ["flatten", {"type": "linear", "out_features": 10}]}
>>> report = convcalc.analyze(spec)
>>> report.totals.params
7850
"""

from typing import Any

from convcalc.analysis import analyze
from convcalc.compare import Comparison, compare
from convcalc.errors import (
    ConvCalcError,
    DataError,
    ModelImportError,
    Problem,
    ShapeError,
    SpecError,
    SpecSyntaxError,
    SpecValidationError,
    TorchNotInstalledError,
    TrainingError,
)
from convcalc.loader import load_spec
from convcalc.report import LayerRow, Report, SpecWarning, Totals
from convcalc.spec import Network

__version__ = "0.1.0"


def from_torch(module: Any, input_shape: Any, **options: Any) -> Network:
    """A PyTorch module as a spec, captured with torch.export (see ``convcalc.torch_import``;
    the module is not named ``from_torch``, so importing it never replaces this function)."""
    from convcalc.torch_import import from_torch as trace

    return trace(module, input_shape, **options)


def build_module(spec: Any, **overrides: Any) -> Any:
    """The spec as a ``torch.nn.Module`` (imports torch; see ``convcalc.torch_bridge``)."""
    from convcalc.torch_bridge import build_module as build

    return build(spec, **overrides)


__all__ = [
    "Comparison",
    "ConvCalcError",
    "DataError",
    "LayerRow",
    "ModelImportError",
    "Network",
    "Problem",
    "Report",
    "ShapeError",
    "SpecError",
    "SpecSyntaxError",
    "SpecValidationError",
    "SpecWarning",
    "TorchNotInstalledError",
    "Totals",
    "TrainingError",
    "__version__",
    "analyze",
    "build_module",
    "compare",
    "from_torch",
    "load_spec",
]
