"""Known cases for every size formula, checked by hand and against the torch documentation."""

from __future__ import annotations

import pytest

from convcalc.formulas import (
    adaptive_window,
    conv_output_size,
    conv_transpose_output_size,
    pool_output_size,
    same_padding,
    uncovered_pixels,
    upsample_output_size,
)


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "padding", "dilation", "expected"),
    [
        (224, 11, 4, 2, 1, 55),  # AlexNet conv1 (torchvision)
        (227, 11, 4, 0, 1, 55),  # AlexNet conv1 (paper)
        (224, 11, 4, 0, 1, 54),  # the paper's "224": 54.25 floors to 54
        (28, 3, 1, 1, 1, 28),  # 'same' by hand
        (5, 3, 1, 0, 1, 3),  # 5×5 image, 3×3 filter -> 3×3
        (32, 5, 1, 0, 1, 28),  # LeNet C1
        (7, 3, 2, 0, 1, 3),
        (7, 3, 1, 0, 2, 3),  # dilation 2: span 5
        (10, 3, 3, 1, 1, 4),
        (1, 1, 1, 0, 1, 1),
        (224, 7, 2, 3, 1, 112),  # ResNet stem
        (3, 5, 1, 0, 1, -1),  # kernel larger than input: the layer is refused
    ],
)
def test_conv_output_size(size, kernel, stride, padding, dilation, expected):
    assert conv_output_size(size, kernel, stride, padding, dilation) == expected


def test_conv_output_size_asymmetric_padding():
    assert conv_output_size(10, 4, 1, (1, 2)) == 10


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "padding", "dilation", "ceil_mode", "expected"),
    [
        # the ceil_mode corner cases: the last window would start in the right padding
        (5, 2, 2, 1, 1, True, 3),
        (7, 2, 3, 1, 1, True, 3),
        (9, 4, 4, 2, 1, True, 3),
        (5, 2, 2, 1, 1, False, 3),
        (6, 3, 2, 0, 1, True, 3),
        (6, 3, 2, 0, 1, False, 2),
        (55, 3, 2, 0, 1, False, 27),  # AlexNet pool1
        (112, 3, 2, 1, 1, False, 56),  # ResNet stem pool
        (7, 2, 2, 0, 1, True, 4),
        (7, 2, 2, 0, 1, False, 3),
        (10, 3, 1, 0, 2, False, 6),  # dilated max pool
        (1, 1, 1, 0, 1, True, 1),
    ],
)
def test_pool_output_size(size, kernel, stride, padding, dilation, ceil_mode, expected):
    assert pool_output_size(size, kernel, stride, padding, dilation, ceil_mode) == expected


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "padding", "output_padding", "dilation", "expected"),
    [
        (7, 4, 2, 1, 0, 1, 14),  # DCGAN-style upsampling doubles the size
        (7, 3, 2, 1, 1, 1, 14),
        (7, 3, 2, 1, 0, 1, 13),
        (1, 4, 1, 0, 0, 1, 4),
        (5, 3, 1, 0, 0, 2, 9),
        (4, 3, 3, 0, 2, 1, 14),
    ],
)
def test_conv_transpose_output_size(
    size, kernel, stride, padding, output_padding, dilation, expected
):
    assert (
        conv_transpose_output_size(size, kernel, stride, padding, output_padding, dilation)
        == expected
    )


@pytest.mark.parametrize(
    ("kernel", "dilation", "expected"),
    [
        (3, 1, (1, 1)),
        (4, 1, (1, 2)),
        (1, 1, (0, 0)),
        (3, 2, (2, 2)),
        (2, 3, (1, 2)),
        (5, 1, (2, 2)),
    ],
)
def test_same_padding(kernel, dilation, expected):
    assert same_padding(kernel, dilation) == expected


@pytest.mark.parametrize(
    ("size", "output", "expected"),
    [
        (10, 3, [(0, 4), (3, 7), (6, 10)]),
        (7, 7, [(i, i + 1) for i in range(7)]),
        (5, 1, [(0, 5)]),
        (5, 2, [(0, 3), (2, 5)]),
        (3, 6, [(0, 1), (0, 1), (1, 2), (1, 2), (2, 3), (2, 3)]),
    ],
)
def test_adaptive_window(size, output, expected):
    assert [adaptive_window(size, output, i) for i in range(output)] == expected


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "padding", "dilation", "output", "expected"),
    [
        (224, 11, 4, 0, 1, 54, 1),
        (227, 11, 4, 0, 1, 55, 0),
        (56, 1, 2, 0, 1, 28, 1),  # ResNet's 1×1 stride-2 shortcut
        (224, 11, 4, 2, 1, 55, 0),
        (10, 3, 3, 0, 1, 3, 1),
        (11, 2, 2, 0, 1, 5, 1),
    ],
)
def test_uncovered_pixels(size, kernel, stride, padding, dilation, output, expected):
    assert uncovered_pixels(size, kernel, stride, padding, dilation, output) == expected


@pytest.mark.parametrize(
    ("size", "scale", "expected"),
    [(7, 2.0, 14), (5, 1.5, 7), (3, 0.5, 1), (10, 0.3, 3), (1, 2.5, 2)],
)
def test_upsample_output_size(size, scale, expected):
    assert upsample_output_size(size, scale) == expected
