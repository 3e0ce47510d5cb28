"""The arithmetic, one tiny function per formula, exactly as PyTorch computes it.

Sizes are per spatial dimension. Python's ``//`` rounds toward negative infinity,
which is what ATen's ``div_rtn`` does for pooling; for convolutions a size that
would round differently is rejected before it matters.
"""

from __future__ import annotations

import math
from fractions import Fraction

__all__ = [
    "adaptive_window",
    "adaptive_window_widths",
    "conv_output_size",
    "conv_transpose_output_size",
    "effective_kernel",
    "pool_output_size",
    "same_padding",
    "uncovered_pixels",
    "upsample_output_size",
]


def effective_kernel(kernel: int, dilation: int = 1) -> int:
    """Span of a dilated kernel in input pixels: d·(k−1) + 1.

    >>> effective_kernel(3, dilation=2)
    5
    """
    return dilation * (kernel - 1) + 1


def conv_output_size(
    size: int, kernel: int, stride: int = 1, padding: int | tuple[int, int] = 0, dilation: int = 1
) -> int:
    """⌊(n + p_left + p_right − d·(k−1) − 1) / s⌋ + 1, the output size of a convolution.

    ``padding`` is the same on both sides, or ``(left, right)``.

    >>> conv_output_size(224, kernel=11, stride=4, padding=2)
    55
    >>> conv_output_size(28, kernel=3, padding=1)
    28
    """
    left, right = (padding, padding) if isinstance(padding, int) else padding
    return (size + left + right - effective_kernel(kernel, dilation)) // stride + 1


def pool_output_size(
    size: int,
    kernel: int,
    stride: int,
    padding: int = 0,
    dilation: int = 1,
    ceil_mode: bool = False,
) -> int:
    """Output size of max/avg pooling, ATen's ``pooling_output_shape``.

    With ``ceil_mode`` the division rounds up, but a window that would start in the
    right padding is dropped.

    >>> pool_output_size(5, kernel=2, stride=2, padding=1, ceil_mode=True)
    3
    >>> pool_output_size(6, kernel=3, stride=2, ceil_mode=True)
    3
    """
    numerator = size + 2 * padding - effective_kernel(kernel, dilation)
    if ceil_mode:
        numerator += stride - 1
    output = numerator // stride + 1
    if ceil_mode and (output - 1) * stride >= size + padding:
        output -= 1
    return output


def conv_transpose_output_size(
    size: int,
    kernel: int,
    stride: int = 1,
    padding: int = 0,
    output_padding: int = 0,
    dilation: int = 1,
) -> int:
    """(n − 1)·s − 2p + d·(k − 1) + output_padding + 1, the output size of a transposed conv.

    >>> conv_transpose_output_size(7, kernel=4, stride=2, padding=1)
    14
    >>> conv_transpose_output_size(7, kernel=3, stride=2, padding=1, output_padding=1)
    14
    """
    return (size - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1


def same_padding(kernel: int, dilation: int = 1) -> tuple[int, int]:
    """(left, right) padding of ``padding='same'``: the odd pixel goes right/bottom.

    >>> same_padding(4)
    (1, 2)
    >>> same_padding(3, dilation=2)
    (2, 2)
    """
    total = dilation * (kernel - 1)
    return total // 2, total - total // 2


def adaptive_window(size: int, output_size: int, index: int) -> tuple[int, int]:
    """[start, end) of output ``index``'s window in adaptive pooling, as ATen computes it.

    >>> [adaptive_window(10, 3, i) for i in range(3)]
    [(0, 4), (3, 7), (6, 10)]
    """
    start = (index * size) // output_size
    end = -((-(index + 1) * size) // output_size)
    return start, end


def adaptive_window_widths(size: int, output_size: int) -> tuple[int, ...]:
    """The distinct widths of adaptive pooling's windows, smallest first, found without
    walking the windows (an output_size of 10**18 is answered at once).

    With n = q·o + r, window i is ⌈(i+1)·n/o⌉ − ⌊i·n/o⌋ = q + ⌈(f + r)/o⌉ wide, where
    f = i·r mod o runs over the multiples of gcd(r, o) below o.

    >>> adaptive_window_widths(10, 3), adaptive_window_widths(5, 3), adaptive_window_widths(8, 4)
    ((4,), (2, 3), (2,))
    """
    whole, rest = divmod(size, output_size)
    if rest == 0:
        return (whole,)
    if math.gcd(rest, output_size) == rest:  # then f + r never passes o
        return (whole + 1,)
    return (whole + 1, whole + 2)


def uncovered_pixels(
    size: int, kernel: int, stride: int, padding_left: int, dilation: int, output_size: int
) -> int:
    """How many trailing input pixels no window reaches (floor division drops them).

    AlexNet's first conv, kernel 11 and stride 4, on a 224 input: the last window ends
    at pixel 222, so pixel 223 is never seen.

    >>> uncovered_pixels(224, kernel=11, stride=4, padding_left=0, dilation=1, output_size=54)
    1
    >>> uncovered_pixels(227, kernel=11, stride=4, padding_left=0, dilation=1, output_size=55)
    0
    """
    last_covered = (
        (output_size - 1) * stride - padding_left + effective_kernel(kernel, dilation) - 1
    )
    return max(0, size - 1 - last_covered)


def upsample_output_size(size: int, scale_factor: float) -> int:
    """⌊n · scale⌋, the output size of ``nn.Upsample`` with a scale factor.

    >>> upsample_output_size(7, 2.0)
    14
    >>> upsample_output_size(5, 1.5)
    7
    """
    return math.floor(float(size) * scale_factor)


def as_number(value: Fraction | int) -> int | float:
    """An exact fraction as a JSON number: an int when whole.

    >>> as_number(Fraction(8, 2)), as_number(Fraction(1, 2))
    (4, 0.5)
    """
    if isinstance(value, int):
        return value
    if value.denominator == 1:
        return value.numerator
    return round(float(value), 6)
