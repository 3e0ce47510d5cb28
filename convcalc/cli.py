"""The ``convcalc`` command. Only this module prints and chooses exit codes.

Exit codes: 0 success, 1 a bad spec (one message per problem, never a traceback),
2 bad usage (click's own).
"""

from __future__ import annotations

import contextlib
import gc
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from convcalc import __version__
from convcalc.analysis import analyze
from convcalc.errors import ConvCalcError
from convcalc.report import DTYPE_BYTES, OPTIMIZER_STATES

__all__ = ["cli", "main"]

_FORMATS = ("table", "markdown", "github", "csv", "json")


class _Group(click.Group):
    """Prints a ``ConvCalcError`` as its message and exits 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConvCalcError as error:
            _print_error(error)
            ctx.exit(1)


def _print_error(error: ConvCalcError) -> None:
    """The message, each of its lines after ``error:``, on stderr."""
    click.echo(f"error: {error}".replace("\n", "\nerror: "), err=True)


@contextlib.contextmanager
def _extra(name: str) -> Iterator[None]:
    """A command's modules, or one sentence saying which extra installs what is missing."""
    try:
        yield
    except ModuleNotFoundError as error:
        missing = (error.name or "a package").split(".")[0]
        missing = {"PIL": "Pillow", "sklearn": "scikit-learn"}.get(missing, missing)
        extra = "tensorboard" if missing == "tensorboard" else name
        raise ConvCalcError(
            f"this command needs {missing}, which is not installed: pip install 'convcalc[{extra}]'"
        ) from None


class _ShapeParam(click.ParamType):  # type: ignore[type-arg,unused-ignore]
    """``3,227,227`` (or ``3x227x227``): one sample's shape, channels first."""

    name = "C,H,W"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple):
            return value
        parts = [p for p in re.split(r"[,x×\s]+", str(value).strip()) if p]
        try:
            shape = tuple(int(p) for p in parts)
        except ValueError:
            shape = ()
        if not 1 <= len(shape) <= 4 or min(shape) < 1:
            self.fail(
                f"{value!r} is not a shape; give 1 to 4 positive integers such as 3,224,224",
                param,
                ctx,
            )
        return shape


class _RangeParam(click.ParamType):  # type: ignore[type-arg,unused-ignore]
    """``3`` or ``1:7`` (both ends included)."""

    name = "N|A:B"

    def __init__(self, low: int = 1) -> None:
        self.low = low

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, (int, range)):
            return value
        match = re.fullmatch(r"\s*(\d+)\s*(?::\s*(\d+)\s*)?", str(value))
        if match is None:
            self.fail(f"{value!r} is not a number or a range such as 1:7", param, ctx)
        low = int(match.group(1))
        high = int(match.group(2)) if match.group(2) else None
        if low < self.low or (high is not None and high < low):
            self.fail(f"{value!r}: give numbers from {self.low} up, the smaller first", param, ctx)
        return low if high is None else range(low, high + 1)


# Paths are checked by the loader, so a missing file or a directory is one sentence, exit 1.
_spec_argument = click.argument("spec", type=click.Path())


def _shape_options(function: Any) -> Any:
    """``--input`` and ``--batch-size``: override the spec's."""
    function = click.option(
        "--batch-size", type=click.IntRange(min=1), help="Override the spec's batch size."
    )(function)
    function = click.option(
        "--input",
        "input_shape",
        type=_ShapeParam(),
        help="Override the spec's input shape, e.g. 3,227,227 (one sample, channels first).",
    )(function)
    return function


def _override_options(function: Any) -> Any:
    """``--input``, ``--batch-size`` and ``--dtype``."""
    function = click.option(
        "--dtype",
        type=click.Choice(list(DTYPE_BYTES)),
        help="Element type for memory figures (default: the spec's, else float32).",
    )(function)
    return _shape_options(function)


def _format_option(*choices: str, help: str | None = None) -> Callable[[Any], Any]:
    """``--format/-f`` among ``choices``, the first the default."""
    return click.option(
        "--format",
        "-f",
        "output_format",
        type=click.Choice(list(choices)),
        default=choices[0],
        show_default=True,
        help=help,
    )


def _budget_option(function: Any) -> Any:
    """``--budget QUANTITY=LIMIT``, repeatable, over the spec's ``budget:``."""
    return click.option(
        "--budget",
        multiple=True,
        metavar="QUANTITY=LIMIT",
        help="Exit 1 when a number exceeds this limit (over the spec's budget:): params=5M, "
        "macs=600M, activation_memory=200MiB, training_memory=8GiB@adam, "
        "latency=20ms@jetson-orin; repeat for several.",
    )(function)


def _over_budget(report: Any, options: tuple[str, ...]) -> list[Any]:
    """The limits of the spec's budget and ``--budget`` that the report exceeds."""
    from pydantic import ValidationError

    from convcalc.budget import budget_from_options, over_budget

    try:
        extra = budget_from_options(options)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        raise ConvCalcError(f"--budget: {where + ': ' if where else ''}{message}") from None
    except ValueError as error:
        raise ConvCalcError(str(error)) from None
    network = report.network
    budget = network.budget if network is not None else None
    if budget is not None and extra is not None:
        budget = budget.merged(extra)
    budget = budget or extra
    return [] if budget is None else over_budget(report, budget)


def _print_budget(report: Any, exceeded: list[Any]) -> None:
    for line in exceeded:
        click.echo(f"error: {report.source or '<spec>'}: budget: {line}", err=True)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="convcalc")
def cli() -> None:
    """Shapes, parameters, MACs, memory and receptive fields of CNNs from a YAML spec."""


@cli.command()
@_spec_argument
@_format_option(*_FORMATS, help="table, markdown or github for people; csv or json for programs.")
@click.option(
    "--depth",
    type=click.IntRange(min=1),
    help="Show layers down to this nesting depth (1 = top level); blocks keep their sums.",
)
@click.option(
    "--optimizer",
    type=click.Choice(list(OPTIMIZER_STATES)),
    help="Also estimate the memory of a training step with this optimizer (sgd = with "
    "momentum): weights, gradients, optimizer state and activations saved for backward.",
)
@click.option(
    "--explain",
    is_flag=True,
    help="Under each layer, its output-size and parameter formulas with its numbers.",
)
@click.option(
    "--traffic",
    is_flag=True,
    help="Columns for the bytes each layer reads and writes and its FLOPs per byte "
    "(always in csv and json).",
)
@click.option(
    "--device-profile",
    "device_profile",
    metavar="NAME|FILE",
    help="Estimate each layer's time on a device (roofline): a shipped profile "
    "(`convcalc devices` lists them) or a profile file from `convcalc calibrate`.",
)
@_budget_option
@_override_options
def shape(
    spec: str,
    output_format: str,
    depth: int | None,
    optimizer: str | None,
    explain: bool,
    traffic: bool,
    device_profile: str | None,
    budget: tuple[str, ...],
    input_shape: tuple[int, ...] | None,
    batch_size: int | None,
    dtype: str | None,
) -> None:
    """Print every layer's output shape, params, MACs and receptive field, and totals;
    exit 1 after the table when a budget is exceeded."""
    report = analyze(spec, input=input_shape, batch_size=batch_size, dtype=dtype, explain=explain)
    exceeded = _over_budget(report, budget)  # a bad budget fails before anything is printed
    text = report.render(output_format, depth, optimizer, explain, traffic, device_profile)
    click.echo(text, nl=False)
    if exceeded:
        _print_budget(report, exceeded)
        raise SystemExit(1)


@cli.command(name="fit")
@_spec_argument
@click.option(
    "--memory",
    required=True,
    metavar="BYTES",
    help="The memory to fit in: 16GiB, 200MiB, 900MB, or a number of bytes.",
)
@click.option(
    "--optimizer",
    type=click.Choice(list(OPTIMIZER_STATES)),
    help="The training step's optimizer (sgd = with momentum) [default: adam].",
)
@click.option(
    "--inference", is_flag=True, help="Fit a forward pass without autograd instead of training."
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    help="The batch at which to find the largest input size [default: the spec's].",
)
@click.option(
    "--dtype",
    type=click.Choice(list(DTYPE_BYTES)),
    help="Element type (default: the spec's, else float32).",
)
@_format_option("table", "json", help="table for people, json for programs.")
def fit_command(
    spec: str,
    memory: str,
    optimizer: str | None,
    inference: bool,
    batch_size: int | None,
    dtype: str | None,
    output_format: str,
) -> None:
    """The largest batch size whose memory estimate fits, and the largest input size.

    The estimate is a training step's (weights, gradients, optimizer state, saved
    activations) or, with --inference, a forward pass's (weights and the peak of the
    activations alive at once). Input sizes are those `convcalc sizes` accepts, every
    spatial dimension S, the channels kept.
    """
    from convcalc.fitting import fit

    if inference and optimizer is not None:
        raise click.UsageError("--optimizer is for training; --inference has no optimizer")
    report = fit(
        spec,
        memory,
        optimizer=optimizer or "adam",
        inference=inference,
        batch_size=batch_size,
        dtype=dtype,
    )
    click.echo(report.render(output_format), nl=False)


@cli.command()
@click.argument("specs", nargs=-1, required=True, type=click.Path())
@_budget_option
@_override_options
def check(
    specs: tuple[str, ...],
    budget: tuple[str, ...],
    input_shape: tuple[int, ...] | None,
    batch_size: int | None,
    dtype: str | None,
) -> None:
    """Validate specs (one or several) and hold them to their budgets: a line for each,
    every problem printed; exit 1 if any fails."""
    failed = 0
    for spec in specs:
        try:
            report = analyze(spec, input=input_shape, batch_size=batch_size, dtype=dtype)
            exceeded = _over_budget(report, budget)
        except ConvCalcError as error:
            failed += 1
            _print_error(error)
            continue
        if exceeded:
            failed += 1
            _print_budget(report, exceeded)
            continue
        for warning in report.warnings:
            click.echo(f"warning: {report.source}: {warning}", err=True)
        click.echo(
            f"{spec}: ok: {len(report.rows)} layers, output "
            f"[{', '.join(map(str, report.output_shape))}], {report.totals.params:,} params, "
            f"{report.totals.macs:,} MACs"
        )
    if failed:
        if len(specs) > 1:
            click.echo(f"{failed} of {len(specs)} specs failed", err=True)
        raise SystemExit(1)


@cli.command()
@_spec_argument
@click.option(
    "--device",
    type=click.Choice(["meta", "cpu", "cuda"]),
    default="meta",
    show_default=True,
    help="meta allocates no memory; cpu or cuda run a real forward pass.",
)
@click.option(
    "--all",
    "every_field",
    is_flag=True,
    help="Measure the receptive field of every spatial layer, not only the last one.",
)
@_format_option("table", "json")
@_shape_options
def verify(
    spec: str,
    device: str,
    every_field: bool,
    output_format: str,
    input_shape: tuple[int, ...] | None,
    batch_size: int | None,
) -> None:
    """Build the spec in PyTorch and check every number against it (exit 1 on a mismatch)."""
    from convcalc.verify import render_verify, verify

    report = verify(
        spec, device=device, every_field=every_field, input=input_shape, batch_size=batch_size
    )
    click.echo(render_verify(report, output_format), nl=False)
    if not report.ok:
        click.echo(f"mismatch: {report.first_difference()}", err=True)
        sys.exit(1)


@cli.command()
@click.option("--in", "input_size", type=click.IntRange(min=1), required=True, help="Input size.")
@click.option(
    "--out", "output_size", type=click.IntRange(min=1), required=True, help="Wanted output size."
)
@click.option(
    "--kind",
    type=click.Choice(["conv", "pool", "convtranspose"]),
    default="conv",
    show_default=True,
    help="Convolution, max/avg pooling, or transposed convolution.",
)
@click.option("--kernel", type=_RangeParam(), help="Kernel size, or a range [default: 1:11].")
@click.option("--stride", type=_RangeParam(), help="Stride, or a range [default: 1:8].")
@click.option(
    "--padding",
    type=_RangeParam(low=0),
    help="Padding, or a range [default: 0 up to the dilated kernel − 1; pooling: kernel / 2].",
)
@click.option(
    "--dilation", type=_RangeParam(), help="Dilation, or a range [default: 1:3; pooling: 1]."
)
@click.option(
    "--ceil-mode/--no-ceil-mode", default=None, help="Pooling: fix ceil_mode [default: both]."
)
@click.option(
    "--output-padding",
    type=_RangeParam(low=0),
    help="Transposed convolution: output_padding, or a range [default: all that torch allows].",
)
@_format_option("table", "markdown", "json")
def solve(
    input_size: int,
    output_size: int,
    kind: str,
    kernel: int | range | None,
    stride: int | range | None,
    padding: int | range | None,
    dilation: int | range | None,
    ceil_mode: bool | None,
    output_padding: int | range | None,
    output_format: str,
) -> None:
    """List the kernel, stride, padding and dilation that give an output size, simplest first.

    Exit 1 when nothing within the bounds gives it.
    """
    from convcalc.solve import render_solutions
    from convcalc.solve import solve as find

    solutions = find(
        input_size,
        output_size,
        kind=kind,  # type: ignore[arg-type]
        kernel=kernel,
        stride=stride,
        padding=padding,
        dilation=dilation,
        ceil_mode=ceil_mode,
        output_padding=output_padding,
    )
    if not solutions:
        larger = output_size > input_size and kind != "convtranspose"
        raise ConvCalcError(
            f"no {kind} within the bounds turns {input_size} into {output_size}; "
            + (
                f"a {kind} grows its input only by its padding: for a larger output try "
                f"--kind convtranspose"
                if larger
                else "widen them with --kernel, --stride, --padding or --dilation ranges"
            )
        )
    click.echo(render_solutions(solutions, output_format), nl=False)


@cli.command()
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, writable=True),
    help="Write the schema to this file instead of printing it.",
)
def schema(output: str | None) -> None:
    """Print the JSON Schema of the spec format, for editors and validators.

    With yaml-language-server, start a spec with:
    # yaml-language-server: $schema=<path or URL of this schema>
    """

    from convcalc.schema import spec_schema_text

    _emit(spec_schema_text(), output, say=False)


@cli.command()
@_spec_argument
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option(
    "--device-profile",
    "device_profile",
    metavar="NAME|FILE",
    help="The profile to estimate with (default: what `convcalc calibrate` wrote for this "
    "device, if anything).",
)
@click.option("--runs", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--warmup", type=click.IntRange(min=0), default=3, show_default=True)
@_format_option("table", "json", help="table for people, json for programs.")
@_shape_options
def profile(
    spec: str,
    device: str,
    device_profile: str | None,
    runs: int,
    warmup: int,
    output_format: str,
    input_shape: tuple[int, ...] | None,
    batch_size: int | None,
) -> None:
    """Measure each layer's latency on this machine (median of --runs passes after
    --warmup), next to the roofline estimate and their ratio."""
    with _extra("torch"):
        from convcalc.profiling import default_profile_path
        from convcalc.profiling import profile as measure

    if device_profile is None and default_profile_path(device).exists():
        device_profile = str(default_profile_path(device))
    result = measure(
        spec,
        device=device,
        batch_size=batch_size,
        input=input_shape,
        device_profile=device_profile,
        runs=runs,
        warmup=warmup,
    )
    if output_format == "json":
        import json

        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    from convcalc.formatting import profile_table

    click.echo(profile_table(result), nl=False)


@cli.command()
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, writable=True),
    help="Write the profile here (default: ~/.cache/convcalc/DEVICE.yaml, which `profile` reads).",
)
@click.option("--quick", is_flag=True, help="Smaller problems: a second, rougher figures.")
def calibrate(device: str, output: str | None, quick: bool) -> None:
    """Measure this machine's peak FLOP/s, memory bandwidth, per-layer overhead and each
    layer family's efficiency, and write them as a device profile."""
    with _extra("torch"):
        from convcalc.profiling import calibrate as measure
        from convcalc.profiling import default_profile_path

    result = measure(device, quick=quick, progress=lambda line: click.echo(line, err=True))
    path = Path(output) if output else default_profile_path(device)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(result.to_yaml(), encoding="utf-8")
    click.echo(f"wrote {path}: use it with --device-profile {path}")


@cli.command()
@_format_option("table", "json", help="table for people, json for programs.")
def devices(output_format: str) -> None:
    """List the shipped device profiles for `shape --device-profile`: peak FLOP/s per
    dtype, memory bandwidth, and the data sheet each comes from."""
    import json

    from tabulate import tabulate

    from convcalc.devices import DEVICES

    if output_format == "json":
        data = [profile.model_dump() for profile in DEVICES.values()]
        click.echo(json.dumps(data, indent=2))
        return
    rows = [
        [
            profile.name,
            profile.description,
            f"{profile.peak.get('float32', 0) / 1e12:,.2f}",
            f"{max(profile.peak.values()) / 1e12:,.1f}",
            f"{profile.bandwidth / 1e9:,.1f}",
            profile.source,
        ]
        for profile in DEVICES.values()
    ]
    headers = ["Profile", "Device", "float32 TFLOP/s", "best TFLOP/s", "GB/s", "Source"]
    click.echo(tabulate(rows, headers, disable_numparse=True))


@cli.command()
@_spec_argument
@click.option(
    "--output",
    "-o",
    required=True,
    type=click.Path(dir_okay=False, writable=True),
    help="net.svg for the picture, net.html for a page with the picture and the table.",
)
@click.option(
    "--depth",
    type=click.IntRange(min=1),
    help="Draw blocks at this nesting depth (1 = top level) as one box each.",
)
@_shape_options
def draw(
    spec: str,
    output: str,
    depth: int | None,
    input_shape: tuple[int, ...] | None,
    batch_size: int | None,
) -> None:
    """Draw the network: a box per layer output, residual and concat blocks as such."""
    from pathlib import Path

    from convcalc.draw import draw as picture

    suffix = Path(output).suffix.lower()
    if suffix not in (".svg", ".html", ".htm"):
        raise ConvCalcError(f"{output}: the picture is written as .svg or .html, not {suffix!r}")
    text = picture(
        spec,
        format="svg" if suffix == ".svg" else "html",
        depth=depth,
        input=input_shape,
        batch_size=batch_size,
    )
    Path(output).write_text(text, encoding="utf-8")
    click.echo(f"wrote {output}")


@cli.command(name="import-torch")
@click.argument("factory")
@click.option(
    "--input", "input_shape", type=_ShapeParam(), required=True, help="One sample, e.g. 3,224,224."
)
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write the spec here.")
@click.option("--name", help="The spec's name [default: from the model's class].")
@click.option(
    "--leaf",
    "leaves",
    multiple=True,
    help="A submodule (qualified name or class name) read as the torch.nn layer it derives "
    "from, its own forward not run; repeatable.",
)
def import_torch_command(
    factory: str,
    input_shape: tuple[int, ...],
    output: str | None,
    name: str | None,
    leaves: tuple[str, ...],
) -> None:
    """Turn a PyTorch model (package.module:factory, called with no arguments) into a spec."""

    from convcalc.errors import ModelImportError
    from convcalc.loader import dump_spec
    from convcalc.torch_import import import_model, load_factory, make_on_meta

    make = load_factory(factory)
    try:
        model = make_on_meta(make)  # no memory for the weights where the factory allows
    except Exception as error:
        raise ModelImportError(f"{factory}() raised {type(error).__name__}: {error}") from None
    imported = import_model(model, input_shape, name=name, leaf_modules=leaves)
    header = f"Imported by convcalc from {factory} (torch.export), input {list(input_shape)}."
    if imported.unused:
        header += "\n" + imported.unused_message + "."
        click.echo(f"note: {imported.unused_message}", err=True)
    _emit(dump_spec(imported.network, header), output)


@cli.command(name="import-onnx")
@click.argument("model", type=click.Path())
@click.option(
    "--input",
    "input_shape",
    type=_ShapeParam(),
    help="One sample, e.g. 3,224,224 [default: the model's declared input shape].",
)
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write the spec here.")
@click.option("--name", help="The spec's name [default: the file's name].")
def import_onnx_command(
    model: str, input_shape: tuple[int, ...] | None, output: str | None, name: str | None
) -> None:
    """Turn an ONNX model file into a spec (reads it with onnx alone, no torch)."""

    from convcalc.loader import dump_spec

    with _extra("onnx"):
        from convcalc.onnx_import import import_onnx

        imported = import_onnx(model, input_shape=input_shape, name=name)
    shape = next(iter(imported.network.input_shapes.values()))
    header = f"Imported by convcalc from {Path(model).name} (ONNX), input {list(shape)}."
    for note in imported.notes:
        click.echo(f"note: {note}", err=True)
    _emit(dump_spec(imported.network, header), output)


@cli.command(name="export")
@_spec_argument
@click.option(
    "--to",
    "target",
    type=click.Choice(["pytorch", "onnx"]),
    default="pytorch",
    show_default=True,
    help="pytorch: a module's source code; onnx: a model file for ONNX runtimes.",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False),
    help="Write it here [default: pytorch to standard output; onnx to the spec file's "
    "name with .onnx, in the current folder].",
)
@click.option(
    "--class-name", help="pytorch: the module's class name [default: from the spec's name]."
)
@click.option("--opset", type=int, help="onnx: the ai.onnx opset, 18 or later [default: torch's].")
@click.option(
    "--dynamic-batch", is_flag=True, help="onnx: the batch dimension is a symbol, 'batch'."
)
@click.option(
    "--keep-batchnorm",
    is_flag=True,
    help="onnx: keep BatchNormalization nodes [default: folded into the conv before them].",
)
def export_command(
    spec: str,
    target: str,
    output: str | None,
    class_name: str | None,
    opset: int | None,
    dynamic_batch: bool,
    keep_batchnorm: bool,
) -> None:
    """Write the spec as a standalone PyTorch module file (it imports only torch), or as
    an ONNX model file (with random weights, drawn from a fixed seed)."""
    onnx_only = {
        "--opset": opset is not None,
        "--dynamic-batch": dynamic_batch,
        "--keep-batchnorm": keep_batchnorm,
    }
    if target == "pytorch":
        misplaced = [flag for flag, given in onnx_only.items() if given]
        if misplaced:
            raise click.UsageError(f"{misplaced[0]} is for --to onnx")
        from convcalc.export import export_pytorch

        _emit(export_pytorch(spec, class_name), output)
        return
    if class_name is not None:
        raise click.UsageError("--class-name is for --to pytorch")
    if output == "-":
        raise ConvCalcError("an ONNX model is binary: give a file name with -o, not '-'")
    with _extra("onnx"):
        from convcalc.onnx_export import export_onnx

        written = export_onnx(
            spec,
            output or f"{Path(spec).stem}.onnx",
            opset=opset,
            dynamic_batch=dynamic_batch,
            fold_batchnorm=not keep_batchnorm,
        )
    click.echo(f"wrote {' and '.join(str(path) for path in written)}", err=True)


@cli.command()
@_spec_argument
@click.option(
    "--image", required=True, help="A PNG or JPEG file, or digits:N (scikit-learn's digit N)."
)
@click.option("--weights", type=click.Path(dir_okay=False), help="A model.pt from convcalc train.")
@click.option("--layers", help="Comma-separated layer names or paths [default: every conv].")
@click.option(
    "--filters",
    help="Hand-made filters for the first conv2d: edges, sobel, blur, or FILE.npy.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="For the other weights.")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="maps.png")
def maps(
    spec: str,
    image: str,
    weights: str | None,
    layers: str | None,
    filters: str | None,
    seed: int,
    output: str,
) -> None:
    """Draw an image's activation maps through the spec's layers (and the first filters)."""
    with _extra("train"):
        from convcalc.maps import activation_maps

    chosen = [name.strip() for name in layers.split(",") if name.strip()] if layers else None
    with _extra("train"):  # Pillow and matplotlib are imported when needed
        result = activation_maps(
            spec, image, weights=weights, layers=chosen, filters=filters, seed=seed
        )
        for note in result.notes:
            click.echo(note, err=True)
        result.save(output)
    click.echo(f"wrote {output}", err=True)


@cli.command(name="compare")
@click.argument("spec_a", type=click.Path())
@click.argument("spec_b", type=click.Path())
@_format_option("table", "markdown", "json", help="markdown pastes into a pull request.")
@click.option(
    "--depth",
    type=click.IntRange(min=1),
    help="Pair layers down to this nesting depth (1 = top level); deeper blocks are one "
    "row with their sums [default: every layer].",
)
@_override_options
def compare_command(
    spec_a: str,
    spec_b: str,
    output_format: str,
    depth: int | None,
    input_shape: tuple[int, ...] | None,
    batch_size: int | None,
    dtype: str | None,
) -> None:
    """Two specs side by side: totals with absolute and relative changes, then layer by layer.

    Layers pair by name, or by place and type, and otherwise by order and type, however
    the two specs nest them; a layer on one side only has its own row.
    """
    from convcalc.compare import compare

    comparison = compare(spec_a, spec_b, input=input_shape, batch_size=batch_size, dtype=dtype)
    click.echo(comparison.render(output_format, depth), nl=False)


@cli.command()
@click.argument("spec", required=False, type=click.Path(dir_okay=False))
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="The address to bind.")
@click.option("--open", "open_page", is_flag=True, help="Open the page in the web browser.")
def serve(spec: str | None, port: int, host: str, open_page: bool) -> None:
    """The playground page, served locally: edit a spec and see every number change.

    With SPEC, the page edits that file and saves it back; nothing else on disk is served.
    """
    with _extra("serve"):
        from convcalc.serve import LOOPBACK_NAMES, create_app, is_loopback, listen, run

    if spec is not None and not Path(spec).is_file():
        raise ConvCalcError(f"{spec}: no such file")
    loopback = is_loopback(host)
    app = create_app(
        None if spec is None else Path(spec),
        allowed_hosts=[*LOOPBACK_NAMES, host] if loopback else None,
    )
    sock = listen(host, port)
    bound = sock.getsockname()[1]
    url = f"http://{f'[{host}]' if ':' in host and '[' not in host else host}:{bound}/"
    if not loopback:
        click.echo(
            f"warning: {host} is not loopback: other machines can reach this page "
            "and read and write the spec it serves",
            err=True,
        )
    click.echo(f"convcalc serve: {url} (Ctrl+C stops)")
    if open_page:
        import webbrowser

        webbrowser.open(url)  # the socket listens already: the browser waits for the page
    run(app, sock)


@cli.command()
@_spec_argument
@click.option(
    "--range",
    "sizes",
    type=_RangeParam(),
    help="Candidate sizes A:B, both included [default: 1 to 1024, or the spec's size].",
)
@click.option(
    "--vary",
    metavar="H,W",
    help="The spatial dimensions that take the size S, named as in the spec format (L in "
    "[C, L]; H, W in [C, H, W]; D, H, W in [C, D, H, W]); the others keep the spec's "
    "size [default: all].",
)
@_format_option("table", "markdown", "json")
def sizes(spec: str, sizes: int | range | None, vary: str | None, output_format: str) -> None:
    """Which input sizes pass through the whole network without an error or dropped pixels.

    Every spatial dimension (or those --vary names) takes the size S; for sizes that fail,
    the first layer that fails (or the first that drops input pixels) is named.
    """
    from convcalc.sizes import check_sizes

    candidates = [sizes] if isinstance(sizes, int) else sizes
    click.echo(check_sizes(spec, candidates, vary).render(output_format), nl=False)


@cli.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option(
    "--data",
    help="digits (scikit-learn's bundled 8×8 digits), PATH.npz (arrays x and y) or "
    "mnist:DIR (MNIST idx files).",
)
@click.option("--epochs", type=click.IntRange(min=1), help="Epochs to train [default: 10].")
@click.option("--batch-size", type=click.IntRange(min=1), help="Samples per step [default: 64].")
@click.option("--lr", type=float, help="Learning rate [default: 0.05 for sgd, 0.001 for adam(w)].")
@click.option(
    "--optimizer",
    type=click.Choice(list(OPTIMIZER_STATES)),
    help="sgd (momentum 0.9), adam or adamw [default: adam].",
)
@click.option(
    "--seed", type=int, help="Seed for the weights and the order of samples [default: 0]."
)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), help="[default: cpu]")
@click.option(
    "--validation",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="Fraction of the samples held out, the same split every run [default: 0.2].",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    help="Run directory [default: runs/<spec name>-<timestamp>].",
)
@click.option(
    "--resume",
    type=click.Path(file_okay=False),
    help="Continue the run in this directory from its last finished epoch.",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Show a progress bar per epoch [default: when stderr is a terminal].",
)
@click.option(
    "--tensorboard",
    type=click.Path(file_okay=False),
    help="Write TensorBoard event files here: loss, accuracy, learning rate, first filters.",
)
def train(
    spec: str,
    data: str | None,
    epochs: int | None,
    batch_size: int | None,
    lr: float | None,
    optimizer: str | None,
    seed: int | None,
    device: str | None,
    validation: float | None,
    out: str | None,
    resume: str | None,
    progress: bool | None,
    tensorboard: str | None,
) -> None:
    """Train the spec in PyTorch on real data; compare speed and memory with the estimates."""
    with _extra("train"):
        from convcalc.training import Interrupted, train

    try:
        with _extra("train"):  # tqdm, matplotlib, tensorboard: imported when needed
            train(
                spec,
                data,
                epochs=epochs,
                batch_size=batch_size,
                lr=lr,
                optimizer=optimizer,
                seed=seed,
                device=device,
                validation=validation,
                out=out,
                resume=resume,
                progress=progress,
                echo=click.echo,
                tensorboard=tensorboard,
            )
    except Interrupted as stop:
        if stop.epochs_done:
            saved = f"epochs 1–{stop.epochs_done} are saved in {stop.out}"
            click.echo(
                f"interrupted: {saved}; continue with: convcalc train {spec} --resume {stop.out}",
                err=True,
            )
        else:
            click.echo("interrupted before the first epoch finished; nothing written", err=True)
        sys.exit(130)


def _emit(text: str, output: str | None, say: bool = True) -> None:
    """Print ``text``, or write it to ``output`` (and say so on stderr)."""
    if output is None:
        click.echo(text, nl=False)
        return
    from pathlib import Path

    Path(output).write_text(text, encoding="utf-8")
    if say:
        click.echo(f"wrote {output}", err=True)


def main() -> None:
    """Console-script entry point."""
    try:
        cli(prog_name="convcalc")
    finally:
        # The process is about to end: spare the interpreter's last garbage-collection
        # sweep over the objects pydantic built (about 40 ms of a 0.3 s command).
        gc.freeze()


if __name__ == "__main__":  # pragma: no cover
    main()
