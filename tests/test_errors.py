"""Every bad spec gets one precise message naming the file, the line and the layer path."""

from __future__ import annotations

import time

import pytest
from click.testing import CliRunner

import convcalc
from convcalc.cli import cli

HEAD = "name: bad\ninput: [3, 32, 32]\nlayers:\n"

# (spec text, exception class, the exact first line of the message after "spec.yaml")
CASES = {
    "yaml_syntax": (
        HEAD + "  - {type: conv2d, out_channels: 8, kernel_size: 3\n  - relu\n",
        convcalc.SpecSyntaxError,
        ":6: YAML syntax error: did not find expected ',' or '}' (column 1)",
    ),
    "unknown_type": (
        HEAD + "  - {type: conv2dd, out_channels: 8, kernel_size: 3}\n",
        convcalc.SpecValidationError,
        ":4: layers.0: unknown layer type 'conv2dd'; did you mean 'conv2d'?",
    ),
    "unknown_bare_type": (
        HEAD + "  - {type: conv2d, out_channels: 8, kernel_size: 3}\n  - rellu\n",
        convcalc.SpecValidationError,
        ":5: layers.1: unknown layer type 'rellu'; did you mean 'relu'?",
    ),
    "misspelt_field": (
        HEAD + "  - {type: conv2d, name: conv1, out_channels: 8, kernal_size: 3}\n",
        convcalc.SpecValidationError,
        ":4: layers.0 (conv1): unknown field 'kernal_size'; did you mean 'kernel_size'?",
    ),
    "zero_kernel": (
        HEAD + "  - type: conv2d\n    out_channels: 8\n    kernel_size: 0\n",
        convcalc.SpecValidationError,
        ":6: layers.0: kernel_size: must be a positive integer or a list of them, got 0",
    ),
    "negative_stride": (
        HEAD + "  - {type: maxpool2d, kernel_size: 2, stride: [2, -1]}\n",
        convcalc.SpecValidationError,
        ":4: layers.0: stride: must be a positive integer or a list of them, got [2, -1]",
    ),
    "zero_channels": (
        HEAD + "  - {type: conv2d, out_channels: 0, kernel_size: 3}\n",
        convcalc.SpecValidationError,
        ":4: layers.0: out_channels: must be a positive integer, got 0",
    ),
    "output_too_small": (
        HEAD
        + "  - {type: conv2d, out_channels: 8, kernel_size: 5, stride: 4}\n"
        + "  - {type: conv2d, name: conv2, out_channels: 8, kernel_size: 9}\n",
        convcalc.ShapeError,
        ":5: layers.1 (conv2): output size in H would be -1: "
        "⌊(7 + 2·0 − 1·(9−1) − 1) / 1⌋ + 1 = -1; the input is too small",
    ),
    "out_channels_groups": (
        HEAD + "  - {type: conv2d, out_channels: 10, kernel_size: 3, groups: 3}\n",
        convcalc.SpecValidationError,
        ":4: layers.0: out_channels (10) is not divisible by groups (3)",
    ),
    "in_channels_groups": (
        HEAD + "  - {type: conv2d, out_channels: 4, kernel_size: 3, groups: 2}\n",
        convcalc.ShapeError,
        ":4: layers.0: in_channels (3) is not divisible by groups (2)",
    ),
    "rank_mismatch": (
        "input: [3, 32]\nlayers:\n  - {type: conv2d, out_channels: 4, kernel_size: 3}\n",
        convcalc.ShapeError,
        ":3: layers.0: conv2d expects input [N, C, H, W] but gets [1, 3, 32] (3 dimensions)",
    ),
    "linear_without_flatten": (
        HEAD + "  - {type: conv2d, out_channels: 4, kernel_size: 3}\n"
        "  - {type: linear, name: fc, out_features: 10}\n",
        convcalc.ShapeError,
        ":5: layers.1 (fc): linear gets the multi-dimensional shape [1, 4, 30, 30]; add a "
        "flatten layer before it (or give in_features: 30 to apply it to the last dimension only)",
    ),
    "declared_in_channels": (
        HEAD + "  - {type: conv2d, in_channels: 1, out_channels: 4, kernel_size: 3}\n",
        convcalc.ShapeError,
        ":4: layers.0: in_channels is 1 but the incoming shape [1, 3, 32, 32] has 3 channels",
    ),
    "residual_shapes": (
        HEAD
        + "  - type: residual\n"
        + "    layers:\n"
        + "      - {type: conv2d, out_channels: 8, kernel_size: 3, padding: 1}\n",
        convcalc.ShapeError,
        ":4: layers.0: residual: the body's output [1, 8, 32, 32] and the identity "
        "shortcut's output [1, 3, 32, 32] must have the same shape",
    ),
    "concat_sizes": (
        HEAD
        + "  - type: concat\n"
        + "    branches:\n"
        + "      - [{type: conv2d, out_channels: 8, kernel_size: 3}]\n"
        + "      - []\n",
        convcalc.ShapeError,
        ":4: layers.0: concat: branch 0 gives [1, 8, 30, 30] but branch 1 gives "
        "[1, 3, 32, 32]; all dimensions but the channels must agree",
    ),
    "same_with_stride": (
        HEAD + "  - {type: conv2d, out_channels: 4, kernel_size: 3, stride: 2, padding: same}\n",
        convcalc.SpecValidationError,
        ":4: layers.0: padding 'same' needs stride 1 (torch refuses it for strided "
        "convolutions), got stride 2",
    ),
    "reflect_too_large": (
        "input: [1, 4, 4]\nlayers:\n"
        "  - {type: conv2d, out_channels: 4, kernel_size: 3, padding: 4, padding_mode: reflect}\n",
        convcalc.ShapeError,
        ":3: layers.0: reflect padding 4 must be smaller than the input size 4 in H",
    ),
    "repeat_zero": (
        HEAD + "  - {type: repeat, times: 0, layers: [relu]}\n",
        convcalc.SpecValidationError,
        ":4: layers.0: times: must be a positive integer, got 0",
    ),
    "repeat_too_many": (  # nested: the outer repeat's copies take it past the limit
        HEAD
        + "  - type: repeat\n    times: 1000\n    layers:\n"
        + "      - {type: repeat, times: 1000, layers: [relu]}\n",
        convcalc.SpecValidationError,
        ":4: layers.0: times: 1000 copies of 1,001 layers take the spec past 100,000 layers; "
        "refusing to analyse it",
    ),
    "repeat_huge_times": (
        HEAD
        + "  - relu\n  - type: sequential\n    name: body\n    layers:\n"
        + "      - type: repeat\n        name: blocks4\n        times: 1000000000\n"
        + "        layers: [{type: conv2d, out_channels: 3, kernel_size: 1}, relu]\n",
        convcalc.SpecValidationError,
        ":8: layers.1.0 (blocks4): times: 1000000000 copies of 3 layers take the spec past "
        "100,000 layers; refusing to analyse it",
    ),
    "repeat_nested_inner_too_many": (  # the inner repeat alone is past the limit
        HEAD
        + "  - type: repeat\n    times: 2\n    layers:\n"
        + "      - {type: repeat, name: inner, times: 1000000, layers: [relu]}\n",
        convcalc.SpecValidationError,
        ":7: layers.0.0 (inner): times: 1000000 copies of 1 layer take the spec past 100,000 "
        "layers; refusing to analyse it",
    ),
    "repeats_add_up": (  # none alone is past the limit: the one that crosses it is named
        HEAD
        + "  - {type: repeat, times: 40000, layers: [relu]}\n"
        + "  - {type: repeat, times: 40000, layers: [relu]}\n"
        + "  - {type: repeat, name: third, times: 40000, layers: [relu]}\n",
        convcalc.SpecValidationError,
        ":6: layers.2 (third): times: 40000 copies of 1 layer take the spec past 100,000 "
        "layers; refusing to analyse it",
    ),
    "repeat_in_a_block": (  # times is a block parameter: counted once it is known
        "version: 2\ninput: [3, 32, 32]\nblocks:\n  stage:\n    params: {n: null}\n"
        + "    layers:\n      - {type: conv2d, out_channels: 3, kernel_size: 1}\n"
        + "      - {type: repeat, name: reps, times: n, layers: [relu]}\n"
        + "layers:\n  - relu\n  - {type: stage, name: s1, n: 1000000000}\n",
        convcalc.SpecValidationError,
        ":8: layers.1.1 (reps): times: 1000000000 copies of 1 layer take the spec past "
        "100,000 layers (in block 'stage', used on line 11); refusing to analyse it",
    ),
    "repeat_written_in_a_block": (
        "version: 2\ninput: [3, 32, 32]\nblocks:\n  stage:\n    layers:\n"
        + "      - {type: repeat, name: reps, times: 1000000000, layers: [relu]}\n"
        + "layers:\n  - {type: stage, name: s1}\n",
        convcalc.SpecValidationError,
        ":6: layers.0.0 (reps): times: 1000000000 copies of 1 layer take the spec past "
        "100,000 layers (in block 'stage', used on line 8); refusing to analyse it",
    ),
    "blocks_within_blocks_too_many": (  # 10 × 10 × 10 × 10 × 10 layers through blocks
        "version: 2\ninput: [3, 32, 32]\nblocks:\n"
        + "".join(f"  b{i}: {{layers: [{', '.join([f'b{i + 1}'] * 10)}]}}\n" for i in range(4))
        + "  b4: {layers: [relu, relu, relu, relu, relu, relu, relu, relu, relu, relu]}\n"
        + "layers: [relu, b0]\n",
        convcalc.SpecValidationError,
        ":9: layers.1: block 'b0' expands to more than 100,000 layers through the blocks it "
        "uses; refusing to analyse it",
    ),
    "blocks_nested_too_deep": (  # each block nests two levels and uses the next
        "version: 2\ninput: [3, 32, 32]\nblocks:\n"
        + "".join(
            f"  b{i}: {{layers: [{{type: sequential, layers: [{{type: residual, layers: "
            f"[b{i + 1}]}}]}}]}}\n"
            for i in range(30)
        )
        + "  b30: {layers: [relu]}\nlayers: [b0]\n",
        convcalc.SpecValidationError,
        ":20: layers.0"
        + ".0.0.body.0" * 16
        + ".0.0: layers nest more than 50 levels deep here (blocks within blocks); refusing "
        "to analyse it",
    ),
    "yaml_nested_too_deep": (
        HEAD + "  - " + "{type: sequential, layers: [" * 60 + "relu" + "]}" * 60 + "\n",
        convcalc.SpecSyntaxError,
        ":4: the YAML nests lists and mappings more than 100 levels deep; refusing to load it",
    ),
    "number_past_int64": (
        HEAD + "  - {type: conv2d, out_channels: 1" + "0" * 5000 + ", kernel_size: 3}\n",
        convcalc.SpecSyntaxError,
        ":4: the number 10000000000000000000000000000… is larger than any size a tensor can "
        "have (2**63 - 1) (column 34)",
    ),
    "bad_timestamp": (
        "input: [3, 32, 32]\ncreated: 2023-02-30\nlayers: [relu]\n",
        convcalc.SpecSyntaxError,
        ":2: '2023-02-30' is not a valid timestamp (column 10)",
    ),
    "control_character": (
        HEAD + "  - relu\x07\n",
        convcalc.SpecSyntaxError,
        ":4: the character U+0007 (column 9) is not allowed in YAML",
    ),
    "infinite_scale_factor": (
        HEAD + "  - {type: upsample, scale_factor: .inf}\n",
        convcalc.SpecValidationError,
        ":4: layers.0: scale_factor: must be a positive number or a list of them, got inf",
    ),
    "output_past_int64": (
        HEAD + "  - {type: repeat, times: 80, layers: [{type: upsample, scale_factor: 2}]}\n",
        convcalc.ShapeError,
        ":4: layers.0.57: output size in H would be ⌊4611686018427387904 · 2⌋, larger than "
        "any tensor can have (2**63 - 1)",
    ),
    "expression_too_large": (
        "version: 2\ninput: [3, 32, 32]\nblocks:\n  b:\n    params: {w: 99999}\n"
        + "    layers: [{type: conv2d, kernel_size: 1, out_channels: w * w * w * w * w}]\n"
        + "layers: [b]\n",
        convcalc.SpecValidationError,
        ":7: layers.0: block 'b': 'w * w * w * w * w' is too large",
    ),
    "not_a_mapping": (
        "- conv2d\n- relu\n",
        convcalc.SpecSyntaxError,
        ":1: the spec must be a mapping with 'input' and 'layers', got a list",
    ),
    "empty_file": (
        "",
        convcalc.SpecSyntaxError,
        ":1: the spec is empty; it needs at least 'input' and 'layers'",
    ),
    "python_tag": (
        HEAD + "  - !!python/object/apply:os.system ['echo hi']\n",
        convcalc.SpecSyntaxError,
        ":4: the YAML tag 'tag:yaml.org,2002:python/object/apply:os.system' is refused: specs are "
        "loaded safely and tags that construct objects are not allowed",
    ),
    "missing_field": (
        HEAD + "  - {type: linear}\n",
        convcalc.SpecValidationError,
        ":4: layers.0: missing required field 'out_features'",
    ),
    "bad_literal": (
        HEAD + "  - {type: conv2d, out_channels: 4, kernel_size: 3, padding_mode: mirror}\n",
        convcalc.SpecValidationError,
        ":4: layers.0: padding_mode: must be 'zeros', 'reflect', 'replicate' or 'circular', "
        "got 'mirror'",
    ),
    "nested_path": (
        HEAD
        + "  - type: sequential\n    name: stage1\n    layers:\n"
        + "      - type: residual\n        layers:\n          - relu\n"
        + "        shortcut:\n"
        + "          - {type: conv2d, out_channels: 3, kernel_size: 1, strid: 1}\n",
        convcalc.SpecValidationError,
        ":11: layers.0.0.shortcut.0: unknown field 'strid'; did you mean 'stride'?",
    ),
    "duplicate_key": (
        HEAD + "  - {type: conv2d, out_channels: 4, kernel_size: 3, out_channels: 5}\n",
        convcalc.SpecSyntaxError,
        ":4: YAML syntax error: duplicate key 'out_channels' (first on line 4) (column 53)",
    ),
    "pixelshuffle_channels": (
        "input: [6, 8, 8]\nlayers:\n  - {type: pixelshuffle, upscale_factor: 2}\n",
        convcalc.ShapeError,
        ":3: layers.0: pixelshuffle needs channels divisible by upscale_factor² = 4, but the "
        "incoming shape [1, 6, 8, 8] has 6 channels",
    ),
    "pixelunshuffle_size": (
        "input: [3, 8, 9]\nlayers:\n  - {type: pixelunshuffle, downscale_factor: 2}\n",
        convcalc.ShapeError,
        ":3: layers.0: pixelunshuffle needs H and W divisible by downscale_factor 2, but the "
        "incoming shape [1, 3, 8, 9] has W = 9",
    ),
    "reflection_pad_too_large": (
        "input: [3, 4, 6]\nlayers:\n  - {type: reflectionpad2d, padding: [1, 1, 4, 0]}\n",
        convcalc.ShapeError,
        ":3: layers.0: reflection padding 4 must be smaller than the input size 4 in H",
    ),
    "circular_pad_too_large": (
        "input: [3, 4]\nlayers:\n  - {type: circularpad1d, padding: [5, 0]}\n",
        convcalc.ShapeError,
        ":3: layers.0: circular padding 5 must be at most the input size 4 in L (torch wraps "
        "around once only)",
    ),
    "pad_crops_too_much": (
        "input: [3, 4]\nlayers:\n  - {type: constantpad1d, padding: [-5, 3], value: 0}\n",
        convcalc.ShapeError,
        ":3: layers.0: padding [-5, 3] crops 5 pixels from the input size 4 in L: more than there "
        "are",
    ),
    "unflatten_product": (
        "input: [6, 8, 8]\nlayers:\n  - {type: unflatten, dim: 1, unflattened_size: [4, 2]}\n",
        convcalc.ShapeError,
        ":3: layers.0: unflattened_size [4, 2] does not multiply up to 6, the size of dimension 1 "
        "of the incoming shape [1, 6, 8, 8]",
    ),
    "unflatten_two_unknown": (
        "input: [6, 8, 8]\nlayers:\n  - {type: unflatten, dim: 1, unflattened_size: [-1, -1]}\n",
        convcalc.SpecValidationError,
        ":3: layers.0: unflattened_size: sizes must be positive, with at most one -1, got [-1, -1]",
    ),
    "unflatten_scalar": (
        "input: [6, 8, 8]\nlayers:\n  - {type: unflatten, dim: 1, unflattened_size: 6}\n",
        convcalc.SpecValidationError,
        ":3: layers.0: unflattened_size: must be a list, got 6",
    ),
    "channelshuffle_groups": (
        "input: [3, 8, 8]\nlayers:\n  - {type: channelshuffle, groups: 2}\n",
        convcalc.ShapeError,
        ":3: layers.0: the 3 channels do not divide into groups (2)",
    ),
    "permute_not_a_permutation": (
        "input: [3, 8, 8]\nlayers:\n  - {type: permute, order: [0, 1, 1, 2]}\n",
        convcalc.ShapeError,
        ":3: layers.0: order [0, 1, 1, 2] is not a permutation of 0 … 3",
    ),
    "permute_length": (
        "input: [3, 8, 8]\nlayers:\n  - {type: permute, order: [0, 2, 1]}\n",
        convcalc.ShapeError,
        ":3: layers.0: order [0, 2, 1] has 3 entries for the 4 dimensions of the incoming shape "
        "[1, 3, 8, 8]",
    ),
    "prelu_parameters": (
        "input: [3, 8, 8]\nlayers:\n  - {type: prelu, num_parameters: 4}\n",
        convcalc.ShapeError,
        ":3: layers.0: num_parameters is 4 but the incoming shape [1, 3, 8, 8] has 3 channels "
        "(give 1 or 3)",
    ),
    "mean_twice": (
        "input: [3, 8, 8]\nlayers:\n  - {type: mean, dim: [2, -2]}\n",
        convcalc.ShapeError,
        ":3: layers.0: dim [2, -2] names dimension 2 twice for the incoming shape [1, 3, 8, 8]",
    ),
    "hardtanh_range": (
        "input: [3, 8, 8]\nlayers:\n  - {type: hardtanh, min_val: 1, max_val: 0}\n",
        convcalc.SpecValidationError,
        ":3: layers.0: max_val (0) must be greater than min_val (1)",
    ),
    "stochasticdepth_mode": (
        "input: [3, 8, 8]\nlayers:\n  - {type: stochasticdepth, p: 0.1, mode: col}\n",
        convcalc.SpecValidationError,
        ":3: layers.0: mode: must be 'row' or 'batch', got 'col'",
    ),
    "layernorm2d_rank": (
        "input: [3, 8]\nlayers:\n  - {type: layernorm2d}\n",
        convcalc.ShapeError,
        ":3: layers.0: layernorm2d expects input [N, C, H, W] but gets [1, 3, 8] (3 dimensions)",
    ),
    "top_level_field": (
        "input: [3, 0, 32]\nlayers: [relu]\n",
        convcalc.SpecValidationError,
        ":1: input.1: must be a positive integer, got 0",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_error_message(case, write_spec):
    text, error_class, expected = CASES[case]
    path = write_spec(text)
    with pytest.raises(error_class) as raised:
        convcalc.analyze(path)
    first = str(raised.value).splitlines()[0]
    assert first == f"{path}{expected}"


@pytest.mark.parametrize("case", sorted(CASES))
def test_cli_prints_the_message_and_exits_1(case, write_spec):
    text, _, expected = CASES[case]
    path = write_spec(text)
    for command in ("shape", "check"):
        result = CliRunner().invoke(cli, [command, str(path)])
        assert result.exit_code == 1, result.output
        assert f"error: {path}{expected}" in result.stderr
        assert "Traceback" not in result.output
        assert result.stdout == ""


def test_expansion_is_refused_quickly(write_spec):
    # nine levels of aliases: 10**9 layers if expanded
    lines = [
        "input: [3, 8, 8]",
        "x-0: &l0 [relu, relu, relu, relu, relu, relu, relu, relu, relu, relu]",
    ]
    for level in range(1, 9):
        lines.append(
            f"x-{level}: &l{level} ["
            + ", ".join([f"{{type: sequential, layers: *l{level - 1}}}"] * 10)
            + "]"
        )
    lines.append("layers: *l8")
    path = write_spec("\n".join(lines) + "\n")
    start = time.perf_counter()
    # refused while loading: the aliases would expand to more than a million values
    with pytest.raises(convcalc.SpecSyntaxError, match="more than 1,000,000 values"):
        convcalc.analyze(path)
    assert time.perf_counter() - start < 5  # generous: a hang would take hours


def test_check_lists_every_problem(write_spec):
    path = write_spec(
        HEAD
        + "  - {type: conv2d, out_channels: 0, kernel_size: 3}\n"
        + "  - {type: maxpool2d, kernal_size: 2}\n"
        + "  - {type: dropout, p: 1.5}\n"
    )
    result = CliRunner().invoke(cli, ["check", str(path)])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"error: {path}:4: layers.0: out_channels: must be a positive integer, got 0",
        f"error: {path}:5: layers.1: unknown field 'kernal_size'; did you mean 'kernel_size'?",
        f"error: {path}:6: layers.2: p: must be a probability between 0 and 1, got 1.5",
    ]


def test_dict_specs_name_the_source():
    with pytest.raises(convcalc.SpecValidationError) as raised:
        convcalc.analyze({"input": [1, 8, 8], "layers": [{"type": "conv9d"}]})
    assert (
        str(raised.value) == "<dict>: layers.0: unknown layer type 'conv9d'; did you mean 'conv3d'?"
    )


def test_overrides_are_validated():
    with pytest.raises(
        convcalc.SpecValidationError, match="batch_size: must be a positive integer, got 0"
    ):
        convcalc.analyze({"input": [1, 8, 8], "layers": ["relu"]}, batch_size=0)


def _laughs(levels: int) -> str:
    """A 'billion laughs' spec: `levels` levels of aliases, nine each, under layers."""
    lines = ["input: [3, 8, 8]", "x-0: &l0 [relu, relu, relu, relu, relu, relu, relu, relu, relu]"]
    for i in range(1, levels + 1):
        lines.append(f"x-{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    lines.append(f"layers: *l{levels}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("levels", [4, 6, 9])
def test_a_billion_laughs_is_refused_small(write_spec, levels):
    """Regression (issue 12): nine levels took 104 s, 16.5 GB and printed 2.1 GB. Aliases
    are counted, never expanded, and every value a message quotes is cut short."""
    path = write_spec(_laughs(levels))
    result = CliRunner().invoke(cli, ["shape", str(path)])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert len(result.stderr.encode()) < 2048
    if levels >= 6:  # 9**7 values: past the bound before anything walks them
        assert "expands to more than 1,000,000 values through its aliases" in result.stderr


def test_values_in_messages_are_cut_short():
    from convcalc.errors import MAX_SHOWN, shown

    assert len(shown(list(range(100_000)))) <= MAX_SHOWN
    assert len(shown("x" * 100_000)) <= MAX_SHOWN


def test_a_message_lists_the_first_problems_and_counts_the_rest():
    from convcalc.errors import SpecValidationError

    with pytest.raises(SpecValidationError) as caught:
        convcalc.load_spec({"input": [3, 8, 8], "layers": [[1]] * 20})
    assert len(caught.value.problems) == 20
    assert str(caught.value).endswith("... and 15 more problems")


def test_blocks_past_the_limit_are_refused_before_any_is_expanded(monkeypatch):
    """Regression: bare block names (``layers: [b1, b1]``) were not counted, so 10**5
    layers were validated one block call at a time before the limit was noticed."""
    from convcalc import spec

    calls = []
    expand = spec._call_block
    monkeypatch.setattr(spec, "_call_block", lambda *args: calls.append(args) or expand(*args))
    with pytest.raises(convcalc.SpecValidationError, match="expands to more than 100,000"):
        convcalc.load_spec(CASES["blocks_within_blocks_too_many"][0])
    assert calls == []


def test_layers_nested_to_the_limit_are_analysed():
    """MAX_NESTING (50 levels of layer lists) and MAX_DEPTH (100 levels of YAML) leave
    room for any real network, and the analysis gets through 50 levels without running
    out of stack."""
    from convcalc.loader import MAX_DEPTH
    from convcalc.spec import MAX_NESTING

    deepest = (MAX_DEPTH - 2) // 2  # sequentials the YAML can hold
    text = HEAD + "  - " + "{type: sequential, layers: [" * deepest + "relu" + "]}" * deepest
    assert len(convcalc.analyze(text + "\n").rows) == deepest + 1
    chain = (MAX_NESTING - 2) // 2  # blocks each adding two levels of layer lists
    blocks = "".join(
        f"  b{i}: {{layers: [{{type: sequential, layers: [b{i + 1}]}}]}}\n" for i in range(chain)
    )
    text = f"version: 2\ninput: [3, 8, 8]\nblocks:\n{blocks}  b{chain}: {{layers: [relu]}}\n"
    report = convcalc.analyze(text + "layers: [b0]\n")
    assert max(row.depth for row in report.rows) == 2 * chain + 2
