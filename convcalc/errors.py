"""The exceptions convcalc raises.

Every error the library raises on purpose derives from one base, so a caller
(and the CLI) can catch exactly that::

    ConvCalcError
    ├── SpecError                something is wrong with a spec; str() names file:line, layer path
    │   ├── SpecSyntaxError      the file is not readable YAML, is empty, or is not a mapping
    │   ├── SpecValidationError  a field has a bad value, is unknown or is missing
    │   └── ShapeError           the layers do not fit together (sizes, channels, dimensions)
    ├── DataError                training data that is missing, unreadable or does not fit
    ├── TrainingError            training cannot start or go on (NaN loss, no CUDA, resume)
    ├── ModelImportError         a PyTorch model that cannot be imported as a spec
    ├── MapsError                an image, filters, layer or weights `maps` cannot use
    ├── DeviceProfileError       an unknown device profile or a profile file that does not parse
    └── TorchNotInstalledError   a command needs PyTorch and it is not installed

Low-level code (the layer models and formulas) raises plain ``ValueError`` with a
short message; the loader and the calculator add the context once (file, line,
layer path) and re-raise one of the classes above ``from None``.
"""

from __future__ import annotations

import reprlib
from dataclasses import dataclass

__all__ = [
    "ConvCalcError",
    "DataError",
    "DeviceProfileError",
    "MapsError",
    "ModelImportError",
    "Problem",
    "ShapeError",
    "SpecError",
    "SpecSyntaxError",
    "SpecValidationError",
    "TorchNotInstalledError",
    "TrainingError",
]


class ConvCalcError(Exception):
    """Base class of every error convcalc raises on purpose."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a spec, located as precisely as we can.

    >>> str(Problem("kernel too big", "net.yaml", 4, "layers.1", "conv"))
    'net.yaml:4: layers.1 (conv): kernel too big'
    >>> str(Problem("kernel too big", "", 4))
    'line 4: kernel too big'
    """

    message: str
    source: str | None = None
    line: int | None = None
    path: str | None = None
    layer_name: str | None = None

    def __str__(self) -> str:
        if self.source == "":  # text with no name (the playground's editor): "line 4"
            where = "spec" if self.line is None else f"line {self.line}"
        else:
            where = self.source or "<spec>"
            if self.line is not None:
                where += f":{self.line}"
        if self.path:
            name = self.layer_name
            layer = self.path if not name else f"{self.path} ({_cut(name, MAX_NAME_SHOWN)})"
            return f"{where}: {layer}: {self.message}"
        return f"{where}: {self.message}"


class DeviceProfileError(ConvCalcError):
    """An unknown device profile, or a profile file with missing or bad values."""


class SpecError(ConvCalcError):
    """A spec that cannot be analysed. ``problems`` lists every problem found."""

    def __init__(self, problems: list[Problem] | Problem | str) -> None:
        if isinstance(problems, str):  # a bare message; the caller adds the location later
            problems = Problem(problems)
        self.problems = [problems] if isinstance(problems, Problem) else list(problems)
        lines: list[str] = []
        size = 0
        for problem in self.problems[:MAX_PROBLEMS_SHOWN]:
            line = _cut(str(problem), MAX_LINE_BYTES)
            size += len(line.encode())
            if lines and size > MAX_MESSAGE_BYTES:
                break
            lines.append(line)
        if len(self.problems) > len(lines):  # every one stays in .problems
            lines.append(f"... and {len(self.problems) - len(lines)} more problems")
        super().__init__("\n".join(lines))

    @property
    def first(self) -> Problem:
        return self.problems[0]


class SpecSyntaxError(SpecError):
    """The file cannot be read as a YAML mapping."""


class SpecValidationError(SpecError):
    """A field of the spec has a bad, unknown or missing value."""


class ShapeError(SpecError):
    """The layers do not fit together: sizes, channels or number of dimensions."""


class DataError(ConvCalcError):
    """Training data that is missing, unreadable, or does not fit the spec. The message
    names the file (or source) and the bad value."""


class TrainingError(ConvCalcError):
    """Training cannot start or cannot go on: a NaN loss, no CUDA, a run that cannot
    be resumed."""


class ModelImportError(ConvCalcError):
    """A PyTorch model that cannot be imported as a spec: it cannot be loaded, traced, or
    uses an operation a spec cannot express (the message names it and where)."""


class MapsError(ConvCalcError):
    """An image, a filter array, a layer name or weights that ``convcalc maps`` cannot use."""


class TorchNotInstalledError(ConvCalcError):
    """A command needs PyTorch and it is not installed."""


MAX_SHOWN = 200  # characters of a value quoted in a message
MAX_NAME_SHOWN = 60  # characters of a layer's name in a location
MAX_PROBLEMS_SHOWN = 5  # problems a message lists (all are in SpecError.problems),
MAX_LINE_BYTES = 500  # each cut to this (a value is cut shorter where it is quoted),
MAX_MESSAGE_BYTES = 1500  # and no more of them than fit in this: a message stays under 2 KB


def _cut(text: str, limit: int) -> str:
    """``text``, cut to ``limit`` bytes of UTF-8 with an ellipsis.

    >>> _cut("abcdef", 4), _cut("abc", 4)
    ('a…', 'abc')
    """
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[: limit - 3].decode(errors="ignore") + "…"


class _Repr(reprlib.Repr):
    """reprlib's short repr, also for subclasses of list, dict and str (the loader's
    line-numbered values), which reprlib would otherwise print in full first."""

    def repr1(self, x: object, level: int) -> str:
        if isinstance(x, list) and type(x) is not list:
            x = list(x)
        elif isinstance(x, dict) and type(x) is not dict:
            x = dict(x)
        elif isinstance(x, str) and type(x) is not str:
            x = str(x)
        return super().repr1(x, level)


_REPR = _Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict = 3, 6, 6
_REPR.maxstring = _REPR.maxother = MAX_SHOWN


def shown(value: object, limit: int = MAX_SHOWN) -> str:
    """``repr(value)``, cut to ``limit`` characters with an ellipsis: a message quotes a
    value, never megabytes of it.

    >>> shown("x" * 1000, 12)
    "'xxxxxxxxxx…"
    >>> shown([1, 2])
    '[1, 2]'
    """
    text = _REPR.repr(value)  # never builds the whole repr of a huge value
    return text if len(text) <= limit else text[: limit - 1] + "…"
