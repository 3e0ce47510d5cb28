"""convcalc: shapes, parameters, MACs, memory and receptive fields of CNNs from a YAML spec.

>>> import convcalc
>>> spec = {"input": [1, 28, 28], "layers": ["flatten", {"type": "linear", "out_features": 10}]}
>>> report = convcalc.analyze(spec)
>>> report.totals.params
7850
"""

import importlib
from typing import TYPE_CHECKING, Any

from convcalc.analysis import analyze
from convcalc.compare import Comparison, compare
from convcalc.errors import (
    ConvCalcError,
    DataError,
    DeviceProfileError,
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

if TYPE_CHECKING:
    from convcalc.cost import Estimate, LayerEstimate, estimate
    from convcalc.devices import DEVICES, DeviceProfile, device_profile
    from convcalc.fitting import FitReport, fit

__version__ = "0.1.0"

# Imported on first use, so that `import convcalc` and `convcalc shape` stay fast.
_LAZY = {
    "Estimate": "convcalc.cost",
    "LayerEstimate": "convcalc.cost",
    "estimate": "convcalc.cost",
    "DEVICES": "convcalc.devices",
    "DeviceProfile": "convcalc.devices",
    "device_profile": "convcalc.devices",
    "FitReport": "convcalc.fitting",
    "fit": "convcalc.fitting",
    "from_onnx": "convcalc.onnx_import",  # onnx itself is imported by the call
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'convcalc' has no attribute {name!r}")


def from_torch(module: Any, input_shape: Any, **options: Any) -> Network:
    """A PyTorch module as a spec, captured with torch.export (see ``convcalc.torch_import``;
    the module is not named ``from_torch``, so importing it never replaces this function)."""
    from convcalc.torch_import import from_torch as trace

    return trace(module, input_shape, **options)


def profile(spec: Any, **options: Any) -> Any:
    """Measure each layer's latency next to the estimate (imports torch; see
    ``convcalc.profiling``)."""
    from convcalc.profiling import profile as measure

    return measure(spec, **options)


def calibrate(device: str = "cpu", **options: Any) -> "DeviceProfile":
    """Measure this machine as a device profile (imports torch; see ``convcalc.profiling``)."""
    from convcalc.profiling import calibrate as measure

    return measure(device, **options)


def build_module(spec: Any, **overrides: Any) -> Any:
    """The spec as a ``torch.nn.Module`` (imports torch; see ``convcalc.torch_bridge``)."""
    from convcalc.torch_bridge import build_module as build

    return build(spec, **overrides)


__all__ = [
    "DEVICES",
    "Comparison",
    "ConvCalcError",
    "DataError",
    "DeviceProfile",
    "DeviceProfileError",
    "Estimate",
    "FitReport",
    "LayerEstimate",
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
    "calibrate",
    "compare",
    "device_profile",
    "estimate",
    "fit",
    "from_onnx",
    "from_torch",
    "load_spec",
    "profile",
]
