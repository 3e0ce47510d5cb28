"""convcalc: shapes, parameters, MACs, memory and receptive fields of CNNs from a YAML spec.

>>> import convcalc
>>> spec = {"input": [1, 28, 28], "layers": ["flatten", {"type": "linear", "out_features": 10}]}
>>> report = convcalc.analyze(spec)
>>> report.totals.params
7850
"""

from convcalc.analysis import analyze
from convcalc.errors import (
    ConvCalcError,
    Problem,
    ShapeError,
    SpecError,
    SpecSyntaxError,
    SpecValidationError,
)
from convcalc.loader import load_spec
from convcalc.report import LayerRow, Report, SpecWarning, Totals
from convcalc.spec import Network

__version__ = "0.1.0"

__all__ = [
    "ConvCalcError",
    "LayerRow",
    "Network",
    "Problem",
    "Report",
    "ShapeError",
    "SpecError",
    "SpecSyntaxError",
    "SpecValidationError",
    "SpecWarning",
    "Totals",
    "__version__",
    "analyze",
    "load_spec",
]
