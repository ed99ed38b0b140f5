"""The ``robustgan`` command line (typer): one module per command group, registered here.
Errors a user can cause print one line and exit 2 (``main``)."""

from __future__ import annotations

import sys

import typer

from robustgan.cli import demo, evaluation, reports, training
from robustgan.cli.common import err_console
from robustgan.errors import Interrupted, RobustganError
from robustgan.runtime import keep_freed_memory
from robustgan.version import __version__

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train and evaluate GAN-based adversarial defenses (ATGAN, GAN-AT) and their baselines.")


def _print_version(asked: bool) -> None:
    if asked:
        sys.stdout.write(f"robustgan {__version__}\n")
        raise typer.Exit()


@app.callback()
def _options(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                          help="Print the version and exit")):
    """Train and evaluate GAN-based adversarial defenses (ATGAN, GAN-AT) and their baselines."""


app.command()(training.train)
app.command("eval")(evaluation.eval_)
for command in (evaluation.curve, evaluation.check, evaluation.saliency, training.sweep, reports.report,
                evaluation.trends, evaluation.predict, reports.card, reports.frontier, demo.demo):
    app.command()(command)


def main(argv: list[str] | None = None):
    """The console script: ``argv`` (default: the command line) without the program name."""
    keep_freed_memory()  # every command's CPU steps: no page faults on each step's activations
    try:
        app(args=argv, prog_name="robustgan")
    except RobustganError as err:
        text = str(err) if isinstance(err, Interrupted) else f"error: {err}"
        err_console.print(text, highlight=False, markup=False, soft_wrap=True)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
