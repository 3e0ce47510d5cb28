"""Quantities with units, and device profiles (shipped and from files)."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from convcalc.devices import DEVICES, FAMILIES, DeviceProfile, device_profile
from convcalc.errors import ConvCalcError, DeviceProfileError
from convcalc.units import parse_bytes, parse_count, parse_rate, parse_seconds


@pytest.mark.parametrize(
    ("parse", "text", "value"),
    [
        (parse_count, "5M", 5_000_000),
        (parse_count, "600k", 600_000),
        (parse_count, "600K", 600_000),
        (parse_count, "1.2G", 1_200_000_000),
        (parse_count, "4_000", 4000),
        (parse_count, "1e3", 1000),
        (parse_count, 2500, 2500),
        (parse_count, "3Mi", 3 * 2**20),
        (parse_bytes, "200MiB", 200 * 2**20),
        (parse_bytes, "1.5GiB", 1_610_612_736),
        (parse_bytes, "16 GiB", 16 * 2**30),
        (parse_bytes, "900MB", 900_000_000),
        (parse_bytes, "512", 512),
        (parse_bytes, "512B", 512),
        (parse_bytes, "1KiB", 1024),
        (parse_bytes, "1kB", 1000),
        (parse_rate, "3.35TB/s", 3_350_000_000_000),
        (parse_rate, "989.4TFLOP/s", 989_400_000_000_000),
        (parse_rate, "19.5TFLOPS", 19_500_000_000_000),
        (parse_rate, "2e12", 2_000_000_000_000),
        (parse_seconds, "20ms", Fraction(1, 50)),
        (parse_seconds, "1.5s", Fraction(3, 2)),
        (parse_seconds, "300us", Fraction(3, 10_000)),
        (parse_seconds, "300µs", Fraction(3, 10_000)),
        (parse_seconds, "7ns", Fraction(7, 10**9)),
        (parse_seconds, "2", 2),
        (parse_count, "-5M", -5_000_000),  # the caller says what must be positive
    ],
)
def test_quantities_parse_exactly(parse, text, value):
    assert parse(text) == value


@pytest.mark.parametrize(
    ("parse", "text", "message"),
    [
        (parse_count, "5MM", "unknown unit 'MM'"),
        (parse_count, "5-M", "unknown unit '-M'"),
        (parse_count, "M", "does not parse"),
        (parse_count, "", "does not parse"),
        (parse_count, "5 MiB", "unknown unit 'MiB'"),
        (parse_bytes, "16GB/s", "unknown unit"),
        (parse_bytes, "lots", "does not parse"),
        (parse_seconds, "20 minutes", "unknown unit 'minutes'"),
        (parse_count, float("nan"), "not a finite number"),
        (parse_count, None, "not a number"),
        (parse_count, True, "not a number"),
    ],
)
def test_bad_quantities_are_one_sentence(parse, text, message):
    with pytest.raises(ValueError, match=message):
        parse(text)


@given(
    st.integers(min_value=0, max_value=10**6),
    st.integers(min_value=0, max_value=999),
    st.sampled_from(["", "k", "M", "G", "T", "Ki", "Mi", "Gi", "Ti"]),
)
def test_a_decimal_with_any_prefix_is_exact(whole, thousandths, prefix):
    scale = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}.get(prefix)
    scale = scale or {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}[prefix]
    text = f"{whole}.{thousandths:03d}{prefix}B"
    assert parse_bytes(text) == (whole + Fraction(thousandths, 1000)) * scale


def test_shipped_profiles_are_complete():
    assert {"h100-sxm", "a100-sxm", "l4", "t4", "rtx-4090", "jetson-orin", "raspberry-pi-5"} <= set(
        DEVICES
    )
    for profile in DEVICES.values():
        assert profile.source.startswith("https://")
        assert profile.peak["float32"] > 0 and profile.bandwidth > 0
    # the figures as the data sheets print them (dense)
    assert DEVICES["a100-sxm"].peak["float16"] == 312e12
    assert DEVICES["h100-sxm"].bandwidth == 3.35e12


def test_a_profile_file_reads_back(tmp_path):
    path = tmp_path / "laptop.yaml"
    path.write_text(
        "description: a laptop\nsource: measured\nbandwidth: 25GB/s\n"
        "peak: {float32: 400GFLOP/s}\nefficiency: {conv: 0.7, depthwise: 0.2}\noverhead: 15us\n"
    )
    profile = device_profile(path)
    assert profile.name == "laptop"
    assert profile.bandwidth == 25e9 and profile.peak == {"float32": 400e9}
    assert profile.efficiency == {"conv": 0.7, "depthwise": 0.2}
    assert profile.overhead == pytest.approx(15e-6)
    again = tmp_path / "again.yaml"
    again.write_text(profile.to_yaml())
    assert device_profile(again) == profile


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("source: x\npeak: {float32: 1T}\n", "bandwidth: missing"),
        ("source: x\nbandwidth: -3GB/s\npeak: {float32: 1T}\n", "bandwidth: .*must be positive"),
        (
            "source: x\nbandwidth: 3GB/s\npeak: {float32: 0}\n",
            "peak: peak float32 must be positive",
        ),
        ("source: x\nbandwidth: 3GB/s\npeak: {float8: 1T}\n", "unknown dtype 'float8'"),
        ("source: x\nbandwidth: 3GB/s\npeak: 1T\n", "give the peak FLOP/s per dtype"),
        ("source: x\nbandwidth: fast\npeak: {float32: 1T}\n", "'fast' does not parse"),
        (
            "source: x\nbandwidth: 3GB/s\npeak: {float32: 1T}\nefficiency: {conv: 2}\n",
            r"efficiency conv must be in \(0, 1\]",
        ),
        (
            "source: x\nbandwidth: 3GB/s\npeak: {float32: 1T}\nefficiency: {gemm: 0.5}\n",
            "unknown layer family 'gemm'",
        ),
        ("source: x\nbandwidth: 3GB/s\npeak: {float32: 1T}\nspeed: 3\n", "speed: unknown field"),
        ("bandwidth: [3GB/s\n", "laptop.yaml:2: the device profile is not valid YAML"),
        ("- 1\n- 2\n", "a device profile is a mapping"),
    ],
)
def test_bad_profile_files_are_one_sentence(tmp_path, text, message):
    path = tmp_path / "laptop.yaml"
    path.write_text(text)
    with pytest.raises(DeviceProfileError, match=message) as caught:
        device_profile(path)
    assert str(caught.value).startswith(str(path))
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 300


@pytest.mark.parametrize(
    ("name", "suggestion"), [("h100", "h100-sxm"), ("rtx4090", "rtx-4090"), ("orin", None)]
)
def test_an_unknown_profile_suggests_the_closest(name, suggestion):
    with pytest.raises(DeviceProfileError, match="unknown device profile") as caught:
        device_profile(name)
    if suggestion:
        assert f"did you mean {suggestion!r}" in str(caught.value)
    assert isinstance(caught.value, ConvCalcError)


def test_a_missing_profile_file_is_one_sentence(tmp_path):
    with pytest.raises(DeviceProfileError, match="cannot read the device profile"):
        device_profile(tmp_path / "missing.yaml")


def test_a_dtype_the_profile_lacks_is_refused():
    with pytest.raises(DeviceProfileError, match="no peak rate for float64"):
        DEVICES["t4"].peak_rate("float64")


def test_families_are_the_ones_profiles_take():
    profile = DeviceProfile(
        name="x", source="x", bandwidth="1GB/s", peak={"float32": "1G"}, efficiency={"copy": 1}
    )
    assert set(profile.efficiency) <= set(FAMILIES)
