"""Device profiles: what a roofline estimate needs to know about a machine.

A profile gives the peak arithmetic rate per dtype (FLOP/s) and the memory bandwidth
(bytes/s), where the numbers come from, and optionally what ``convcalc calibrate``
measured: the fraction of the roofline each layer family reaches (``efficiency``) and a
fixed cost per layer (``overhead``: dispatch, kernel launch). The shipped profiles are
data-sheet peaks (dense, without structured sparsity); a measured profile is a YAML file
with the same fields::

    name: my-laptop
    description: 8-core laptop CPU
    source: measured by convcalc calibrate
    bandwidth: 25GB/s
    peak: {float32: 400GFLOP/s}
    efficiency: {conv: 0.7, depthwise: 0.15, pointwise: 0.6, linear: 0.5}
    overhead: 15us
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from convcalc.errors import DeviceProfileError, shown
from convcalc.units import parse_bytes, parse_rate, parse_seconds

__all__ = ["DEVICES", "FAMILIES", "DeviceProfile", "device_profile"]

# The layer families a profile may give an efficiency for (see ``Leaf.cost_family``).
FAMILIES = ("conv", "depthwise", "pointwise", "linear", "pool", "elementwise", "copy")

DTYPES = ("float16", "bfloat16", "float32", "float64")


class DeviceProfile(BaseModel):
    """Peak rates and bandwidth of one device, and where they come from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = ""
    source: str = Field(description="the data sheet, or how the numbers were measured")
    bandwidth: float = Field(description="memory bandwidth, bytes/s (3.35TB/s)")
    peak: dict[str, float] = Field(description="peak FLOP/s per dtype (989TFLOP/s)")
    memory: int | None = Field(default=None, description="device memory, bytes (80GB)")
    efficiency: dict[str, float] = Field(
        default_factory=dict, description="fraction of the roofline each family reaches"
    )
    overhead: float = Field(default=0.0, description="fixed seconds per layer (15us)")
    notes: str = ""

    @field_validator("bandwidth", mode="before")
    @classmethod
    def _bandwidth(cls, value: Any) -> float:
        return _positive(parse_rate(value), "bandwidth")

    @field_validator("memory", mode="before")
    @classmethod
    def _memory(cls, value: Any) -> int | None:
        return None if value is None else int(_positive(parse_bytes(value), "memory"))

    @field_validator("overhead", mode="before")
    @classmethod
    def _overhead(cls, value: Any) -> float:
        seconds = float(parse_seconds(value))
        if seconds < 0:
            raise ValueError(f"overhead must not be negative, got {value!r}")
        return seconds

    @field_validator("peak", mode="before")
    @classmethod
    def _peak(cls, value: Any) -> dict[str, float]:
        if not isinstance(value, Mapping) or not value:
            raise ValueError("give the peak FLOP/s per dtype, e.g. {float32: 19.5TFLOP/s}")
        unknown = [key for key in value if key not in DTYPES]
        if unknown:
            raise ValueError(f"unknown dtype {unknown[0]!r}; use {', '.join(DTYPES)}")
        return {key: _positive(parse_rate(rate), f"peak {key}") for key, rate in value.items()}

    @field_validator("efficiency", mode="before")
    @classmethod
    def _efficiency(cls, value: Any) -> dict[str, float]:
        if not isinstance(value, Mapping):
            raise ValueError("give the efficiency per layer family, e.g. {conv: 0.7}")
        result = {}
        for family, factor in value.items():
            if family not in FAMILIES:
                raise ValueError(f"unknown layer family {family!r}; use {', '.join(FAMILIES)}")
            number = float(factor) if isinstance(factor, (int, float)) else math.nan
            if not 0 < number <= 1:
                raise ValueError(f"efficiency {family} must be in (0, 1], got {factor!r}")
            result[family] = number
        return result

    def peak_rate(self, dtype: str) -> float:
        """Peak FLOP/s at ``dtype``; a dtype the profile does not list is refused."""
        if dtype not in self.peak:
            raise DeviceProfileError(
                f"device profile {self.name!r} gives no peak rate for {dtype} "
                f"(it has {', '.join(self.peak)})"
            )
        return self.peak[dtype]

    def to_yaml(self) -> str:
        """The profile as a YAML file ``device_profile`` reads back."""
        data = self.model_dump(exclude_defaults=True)
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def _positive(value: Fraction, what: str) -> float:
    if value <= 0:
        raise ValueError(f"{what} must be positive, got {value}")
    return float(value)


_NVIDIA = "https://www.nvidia.com/content/dam/en-zz/Solutions/"

# Data-sheet peaks, dense (the sheets print twice these for structured sparsity).
_SHIPPED: dict[str, dict[str, Any]] = {
    "h100-sxm": {
        "description": "NVIDIA H100 SXM5 80 GB",
        "source": "https://resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet",
        "bandwidth": "3.35TB/s",
        "memory": "80GB",
        "peak": {
            "float64": "34TFLOP/s",
            "float32": "67TFLOP/s",
            "float16": "989.4TFLOP/s",
            "bfloat16": "989.4TFLOP/s",
        },
        "notes": "float32 without TF32 tensor cores (494.7 TFLOP/s with them)",
    },
    "a100-sxm": {
        "description": "NVIDIA A100 SXM4 80 GB",
        "source": _NVIDIA
        + "Data-Center/a100/pdf/nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf",
        "bandwidth": "2039GB/s",
        "memory": "80GB",
        "peak": {
            "float64": "9.7TFLOP/s",
            "float32": "19.5TFLOP/s",
            "float16": "312TFLOP/s",
            "bfloat16": "312TFLOP/s",
        },
        "notes": "float32 without TF32 tensor cores (156 TFLOP/s with them)",
    },
    "l4": {
        "description": "NVIDIA L4 24 GB",
        "source": "https://www.nvidia.com/en-us/data-center/l4/ (L4 data sheet)",
        "bandwidth": "300GB/s",
        "memory": "24GB",
        "peak": {"float32": "30.3TFLOP/s", "float16": "121TFLOP/s", "bfloat16": "121TFLOP/s"},
    },
    "t4": {
        "description": "NVIDIA T4 16 GB",
        "source": _NVIDIA + "Data-Center/tesla-t4/t4-tensor-core-datasheet-951643.pdf",
        "bandwidth": "320GB/s",
        "memory": "16GB",
        "peak": {"float32": "8.1TFLOP/s", "float16": "65TFLOP/s"},
    },
    "rtx-4090": {
        "description": "NVIDIA GeForce RTX 4090 24 GB",
        "source": "https://images.nvidia.com/aem-dam/Solutions/geforce/ada/"
        "nvidia-ada-gpu-architecture.pdf (appendix A)",
        "bandwidth": "1008GB/s",
        "memory": "24GB",
        "peak": {"float32": "82.6TFLOP/s", "float16": "165.2TFLOP/s", "bfloat16": "165.2TFLOP/s"},
        "notes": "float16 with float32 accumulation (330.3 TFLOP/s with float16 accumulation)",
    },
    "jetson-orin": {
        "description": "NVIDIA Jetson AGX Orin 64 GB (GPU, MAXN)",
        "source": _NVIDIA + "gtcf21/jetson-orin/nvidia-jetson-agx-orin-technical-brief.pdf",
        "bandwidth": "204.8GB/s",
        "memory": "64GB",
        "peak": {"float32": "5.3TFLOP/s", "float16": "42.5TFLOP/s"},
        "notes": "float16 is half the brief's dense INT8 GPU rate (85 TOPS)",
    },
    "raspberry-pi-5": {
        "description": "Raspberry Pi 5 (4× Cortex-A76 at 2.4 GHz, LPDDR4X-4267, 32-bit bus)",
        "source": "https://datasheets.raspberrypi.com/rpi5/raspberry-pi-5-product-brief.pdf",
        "bandwidth": "17.07GB/s",
        "peak": {"float32": "153.6GFLOP/s", "float16": "307.2GFLOP/s"},
        "notes": "derived: 4 cores × 2 NEON FMA pipes × 4 float32 lanes × 2 FLOP × 2.4 GHz; "
        "bandwidth 4267 MT/s × 4 bytes",
    },
}

DEVICES: dict[str, DeviceProfile] = {
    name: DeviceProfile(name=name, **fields) for name, fields in _SHIPPED.items()
}


def device_profile(name_or_path: str | os.PathLike[str] | DeviceProfile) -> DeviceProfile:
    """A shipped profile by name, or a profile file (YAML); an unknown name is refused
    with the closest shipped one suggested."""
    if isinstance(name_or_path, DeviceProfile):
        return name_or_path
    text = os.fspath(name_or_path)
    if text in DEVICES:
        return DEVICES[text]
    path = Path(text)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return _read_profile(path)
    close = difflib.get_close_matches(text.lower(), DEVICES, n=1, cutoff=0.4)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise DeviceProfileError(
        f"unknown device profile {shown(text)}{hint}: give a shipped profile "
        f"({', '.join(DEVICES)}) or a profile file (.yaml)"
    )


def _read_profile(path: Path) -> DeviceProfile:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")[:100_000])
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise DeviceProfileError(f"{path}: cannot read the device profile: {reason}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(error, "problem", None) or "not valid YAML"
        raise DeviceProfileError(
            f"{where}: the device profile is not valid YAML: {problem}"
        ) from None
    if not isinstance(data, dict):
        raise DeviceProfileError(f"{path}: a device profile is a mapping (name, bandwidth, peak)")
    data.setdefault("name", path.stem)
    data.setdefault("source", str(path))
    try:
        return DeviceProfile.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "profile"
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "missing":
            message = "missing (a profile needs name, source, bandwidth and peak)"
        elif first["type"] == "extra_forbidden":
            message = f"unknown field; use {', '.join(DeviceProfile.model_fields)}"
        raise DeviceProfileError(f"{path}: {field}: {message[:300]}") from None
