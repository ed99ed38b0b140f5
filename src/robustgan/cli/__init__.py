"""The ``robustgan`` command line (typer): one module per command group, registered here.
Errors a user can cause print one line and exit 2 (``main``)."""

from __future__ import annotations

import inspect
import sys

import typer
from typer._click.exceptions import NoArgsIsHelpError, UsageError  # click as typer 0.29 vendors it (pinned)

from robustgan import distributed
from robustgan.cli import demo, evaluation, reports, training
from robustgan.cli.common import err_console
from robustgan.errors import Interrupted, RobustganError
from robustgan.runtime import apply_mkldnn_switch, keep_freed_memory
from robustgan.version import __version__

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Train and evaluate GAN-based adversarial defenses (ATGAN, GAN-AT) and their baselines.")


def _print_version(asked: bool) -> None:
    if asked:
        sys.stdout.write(f"robustgan {__version__}\n")
        raise typer.Exit()


@app.callback()
def _options(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                          help="Print the version and exit")):
    """Train and evaluate GAN-based adversarial defenses (ATGAN, GAN-AT) and their baselines."""


def terminal_help(doc: str) -> str:
    """A command's docstring as its --help: prose paragraphs reflow to the terminal, example
    lines (those starting with ``robustgan``) are kept as written (click's ``\\b`` marker)."""
    paragraphs = inspect.cleandoc(doc).split("\n\n")
    return "\n\n".join("\b\n" + p if p.lstrip().startswith("robustgan ") else p for p in paragraphs)


COMMANDS = {"train": training.train, "eval": evaluation.eval_, "curve": evaluation.curve, "check": evaluation.check,
            "saliency": evaluation.saliency, "sweep": training.sweep, "report": reports.report,
            "trends": evaluation.trends, "predict": evaluation.predict, "card": reports.card,
            "frontier": reports.frontier, "demo": demo.demo}
for name, command in COMMANDS.items():
    app.command(name, help=terminal_help(command.__doc__),
                context_settings={"max_content_width": 120})(command)


def main(argv: list[str] | None = None):
    """The console script: ``argv`` (default: the command line) without the program name.
    A torchrun rank leaves through ``distributed.leave`` (no interpreter finalization)."""
    code = run_command(argv)
    if distributed.world().enabled:
        distributed.leave(code)
    sys.exit(code)


def run_command(argv: list[str] | None) -> int:
    """Run one command; its exit code (errors a user can cause print one line and give 2)."""
    keep_freed_memory()  # every command's CPU steps: no page faults on each step's activations
    apply_mkldnn_switch()
    try:
        code = app(args=argv, prog_name="robustgan", standalone_mode=False)
    except NoArgsIsHelpError as err:  # no command: the help, on stderr, and exit 2 (as click does)
        err_console.print(err.ctx.get_help(), highlight=False, markup=False, soft_wrap=True)
        return 2
    except UsageError as err:  # a missing argument, an unknown option, a value of the wrong type
        command = err.ctx.command_path if err.ctx is not None else "robustgan"
        err_console.print(f"error: {err.format_message()} (see {command} --help)", highlight=False, markup=False,
                          soft_wrap=True)
        return 2
    except typer.Abort:
        err_console.print("interrupted")
        return 130
    except RobustganError as err:
        text = str(err) if isinstance(err, Interrupted) else f"error: {err}"
        err_console.print(text, highlight=False, markup=False, soft_wrap=True)
        return err.exit_code
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130
    if code == 130:  # typer turns Ctrl-C into Exit(130)
        err_console.print("interrupted")
    return code if isinstance(code, int) else 0  # typer.Exit(k) and --help return their code here
