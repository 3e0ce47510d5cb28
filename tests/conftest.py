"""Shared fixtures and the --regen-golden flag."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# Hypothesis profiles: "default" for CI, "thorough" for local runs
# (HYPOTHESIS_PROFILE=thorough pytest, or pytest --hypothesis-profile=thorough).
_QUIET = [HealthCheck.too_slow, HealthCheck.filter_too_much]
settings.register_profile("default", max_examples=2000, deadline=None, suppress_health_check=_QUIET)
settings.register_profile(
    "thorough", max_examples=10_000, deadline=None, suppress_health_check=_QUIET
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

ROOT = Path(__file__).resolve().parent.parent
SPECS_DIR = ROOT / "specs"
GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
SPEC_FILES = sorted(SPECS_DIR.glob("*.yaml"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--regen-golden",
        action="store_true",
        default=False,
        help="rewrite the golden files of printed tables instead of comparing with them",
    )


@pytest.fixture
def regen_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--regen-golden"))


@pytest.fixture
def write_spec(tmp_path: Path):
    """Write YAML text to a file and return its path."""

    def write(text: str, name: str = "spec.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write


_TORCHVISION_OPS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)


@pytest.fixture(scope="session")
def torchvision_models():
    """``torchvision.models`` (0.28.0), the referee for the model zoo; tests only.

    The wheel is a CUDA build whose compiled ops do not load beside the CPU torch, so
    ``import torchvision`` fails at ``torchvision::nms``. Defining the two op schemas
    first lets its pure-Python model definitions and weight metadata import.
    """
    import torch

    if not _KEEP:
        library = torch.library.Library("torchvision", "DEF")
        for schema in _TORCHVISION_OPS:
            library.define(schema)
        _KEEP.append(library)  # the definitions live as long as the library object
    import torchvision.models

    return torchvision.models


_KEEP: list[object] = []


CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def headless_chromium(profile: Path, accept_prompts: bool = False):
    """Debian's headless Chromium under Selenium (never Selenium Manager, which would go
    to the internet), or a skip when it is not installed; the caller quits it."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(
            "Debian's chromium and chromium-driver are not installed (.ci/run installs them)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--window-size=1400,900", f"--user-data-dir={profile}",
    ):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    if accept_prompts:
        options.unhandled_prompt_behavior = "accept"  # "leave the page with unsaved edits?"
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
