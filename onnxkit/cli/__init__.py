"""The ``onnxkit`` command. Each command is a thin shell over the Python API, in a module of its own
(``optimize``, ``passes``, ``bench``, ``export``, ``demo``; ``check``, ``reduce`` and ``inspect`` in
``onnxkit.diagnose_cli``, ``debug quant`` in ``onnxkit.debug_cli``, the deployment commands in
``onnxkit.deploy.cli``); ``options`` holds the options they share.

User errors (``OnnxkitError``) print ``error: ...`` and a ``Note:`` hint on stderr, without a traceback,
and exit 2 (1 for a failed parity or pass). Any other exception is a bug in onnxkit and keeps its traceback.
``optimize`` exits 0 when every pass did its job within tolerance, 1 when a pass failed, was rolled back, or
was kept by ``--on-fail warn`` although it failed parity, and 2 on a user error. Ctrl-C exits 130 with one
line. A command given ``--json`` also prints every error as JSON on stdout (``{"error": ..., "hint": ...,
"exit_code": ...}``), since CI scripts parse stdout.
"""

from __future__ import annotations

import json
import os
import traceback
from typing import Any

import click

from onnxkit.cli.options import (
    VERBOSE,
    check_output_path,
    load_data_option,
    parse_dims,
    tolerance_options,
    tolerance_overrides,
    verbose_option,
)
from onnxkit.errors import OnnxkitError

__all__ = [
    "check_output_path",
    "load_data_option",
    "main",
    "parse_dims",
    "tolerance_options",
    "tolerance_overrides",
    "verbose_option",
]

# The exit status of a run stopped by Ctrl-C, as shells report a process ended by SIGINT (128 + 2).
INTERRUPTED_EXIT_CODE = 130


class OnnxkitGroup(click.Group):
    """A click group that turns ``OnnxkitError`` into one clean line and an exit code, Ctrl-C into one line and
    exit 130, and, for a command given ``--json``, also prints the error as JSON on stdout (usage errors too)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta[_ARGUMENTS] = list(args)  # the command line as given, for _wants_json
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        as_json = _wants_json(self, ctx.meta.get(_ARGUMENTS, []))
        try:
            return super().invoke(ctx)
        except OnnxkitError as e:
            if ctx.meta.get(VERBOSE) and e.__cause__ is not None:
                click.echo("".join(traceback.format_exception(e.__cause__)).rstrip(), err=True)
            _report_error(e.message, e.hint, e.exit_code, as_json)
            if os.environ.get("ONNXKIT_DEBUG"):
                raise
            ctx.exit(e.exit_code)
        except click.UsageError as e:
            if as_json:  # click prints its usage lines on stderr as ever; stdout still gets JSON
                _print_json_error(e.format_message(), None, e.exit_code)
            raise
        except KeyboardInterrupt:
            # Saves are atomic and their temporaries removed on the way out: no partial output is left.
            _report_error("interrupted; no partial output was left", None, INTERRUPTED_EXIT_CODE, as_json)
            ctx.exit(INTERRUPTED_EXIT_CODE)


_ARGUMENTS = "onnxkit.arguments"


def _wants_json(group: click.Group, args: list[str]) -> bool:
    """Whether the command line ``args`` names a command whose ``--json`` prints on stdout (a flag, not a file
    path: ``bench --json FILE`` writes a file), and gives it."""
    command: click.Command | None = group
    for arg in args:
        if not isinstance(command, click.Group):
            break
        command = command.commands.get(arg)
    if command is None or "--json" not in args:
        return False
    return any(isinstance(p, click.Option) and p.is_flag and "--json" in p.opts for p in command.params)


def _report_error(message: str, hint: str | None, exit_code: int, as_json: bool) -> None:
    click.echo(f"error: {message}", err=True)
    if hint:
        click.echo(f"Note: {hint}", err=True)
    if as_json:
        _print_json_error(message, hint, exit_code)


def _print_json_error(message: str, hint: str | None, exit_code: int) -> None:
    click.echo(json.dumps({"error": message, "hint": hint, "exit_code": exit_code}, indent=2))


@click.group(cls=OnnxkitGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="onnxkit")
def main() -> None:
    """onnxkit: optimize, quantize and verify ONNX models.

    Every step is a pass; `onnxkit passes` lists them. A parity check compares each pass's output with its
    input in ONNX Runtime, so an optimized model that gives different answers is never reported as success.
    """


# Each command registers itself on main when its module is imported: optimize, passes, bench, export, demo;
# check, reduce and inspect (which look at models without changing them), debug quant, and the deployment
# commands (deploy-check, to-ort) with optimize's --target.
from onnxkit import debug_cli, diagnose_cli  # noqa: E402, F401
from onnxkit.cli import bench, demo, export, optimize, passes  # noqa: E402, F401
from onnxkit.deploy import cli as deploy_cli  # noqa: E402, F401
