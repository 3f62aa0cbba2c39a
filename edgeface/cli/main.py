"""The `edgeface` command: a thin shell that parses, calls one library function and prints.

Each verb lives in its own module under edgeface/cli/ and is registered in COMMANDS. Command modules import
torch (or anything heavy) inside their functions, never at module level, so `edgeface verify` works on a
device that has only the runtime installed.
"""

from __future__ import annotations

import importlib
import sys
import traceback

import click

from edgeface import __version__, quiet
from edgeface.errors import EdgefaceError

# command name -> "module:attribute" of a click command
COMMANDS: dict[str, str] = {
    "eval": "edgeface.cli.eval_cmd:eval_cmd",
    "export": "edgeface.cli.export_cmd:export_cmd",
    "models": "edgeface.cli.models_cmd:models_cmd",
    "pack": "edgeface.cli.pack_cmd:pack_cmd",
    "prune": "edgeface.cli.prune_cmd:prune_cmd",
    "quantize": "edgeface.cli.quantize_cmd:quantize_cmd",
    "verify": "edgeface.cli.runtime_cmd:verify_cmd",
    "enroll": "edgeface.cli.runtime_cmd:enroll_cmd",
    "identify": "edgeface.cli.runtime_cmd:identify_cmd",
    "gallery": "edgeface.cli.runtime_cmd:gallery_cmd",
    "profile": "edgeface.cli.runtime_cmd:profile_cmd",
    "watch": "edgeface.cli.watch_cmd:watch_cmd",
    "threshold": "edgeface.cli.threshold_cmd:threshold_cmd",
    "compare": "edgeface.cli.compare_cmd:compare_cmd",
}


class LazyGroup(click.Group):
    """Import a verb's module only when that verb runs (or --help lists it)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        ref = COMMANDS.get(name)
        if ref is None:
            return None
        module_name, _, attr = ref.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name and not e.name.startswith("edgeface"):
                raise EdgefaceError(
                    f"'edgeface {name}' needs the '{e.name}' package; install the full toolkit: "
                    "pip install 'edgeface[full]'"
                ) from None
            raise
        return getattr(module, attr)  # type: ignore[no-any-return]


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgeface")
@click.option("--debug", is_flag=True, help="Show the full traceback when a command fails.")
@click.option(
    "--verbose", "-v", is_flag=True, help="Also show warnings and log lines of the libraries edgeface uses."
)
@click.option("--quiet", "-q", is_flag=True, help="No `note:` lines (warnings and errors still show).")
def cli(debug: bool, verbose: bool, quiet: bool) -> None:
    """Compress, export and run face-recognition models on devices."""


def _end_progress_bars() -> None:
    """An error must start a line of its own: a progress bar still drawn (tqdm leaves the cursor after it
    while it runs) is closed first, kept on screen where it stopped, and ended with a newline."""
    std = sys.modules.get("tqdm.std")
    if std is None:
        return
    for bar in list(getattr(std.tqdm, "_instances", ())):
        try:
            bar.leave = True
            bar.close()
        except Exception:  # a bar that cannot draw must not hide the error itself
            pass


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def main(argv: list[str] | None = None) -> int:
    """Entry point: every failure becomes one `error:` line on stderr and a non-zero exit.

    Exit codes: 2 a user mistake (bad option, path or file), 1 our failure on the user's model or an
    internal error, 3 an export that failed its parity check, 130 interrupted. `--debug` (anywhere before
    the verb) adds the traceback.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    before_verb = args[: next((i for i, a in enumerate(args) if a in COMMANDS), len(args))]
    debug = "--debug" in before_verb
    quiet.configure(verbose=debug or bool({"-v", "--verbose"} & set(before_verb)))
    quiet.silence_notes(bool({"-q", "--quiet"} & set(before_verb)))  # each run decides (tests run many)
    try:
        cli.main(args=args, prog_name="edgeface", standalone_mode=False)
    except EdgefaceError as e:
        _end_progress_bars()
        if debug:
            traceback.print_exc()
        click.echo(f"error: {e}", err=True)
        return e.exit_code
    except click.exceptions.Abort:
        click.echo("error: aborted", err=True)
        return 130
    except click.exceptions.NoArgsIsHelpError as e:
        click.echo(e.ctx.get_help() if e.ctx else str(e), err=True)
        return 2
    except click.UsageError as e:
        hint = f" (see 'edgeface {e.ctx.info_name} --help')" if e.ctx and e.ctx.parent else ""
        click.echo(f"error: {e.format_message().strip().splitlines()[0]}{hint}", err=True)
        return 2
    except click.ClickException as e:
        click.echo(f"error: {e.format_message().strip().splitlines()[0]}", err=True)
        return e.exit_code
    except KeyboardInterrupt:
        _end_progress_bars()
        click.echo("error: interrupted", err=True)
        return 130
    except Exception as e:
        _end_progress_bars()
        if debug:
            traceback.print_exc()
        click.echo(
            f"error: internal failure ({type(e).__name__}: {_first_line(e)}); "
            "run with --debug for the traceback and report it",
            err=True,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
