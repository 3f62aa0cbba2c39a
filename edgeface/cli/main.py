"""The `edgeface` command: a thin shell that parses, calls one library function and prints.

Each verb lives in its own module under edgeface/cli/ and is registered in COMMANDS. Command modules import
torch (or anything heavy) inside their functions, never at module level, so `edgeface verify` works on a
device that has only the runtime installed.
"""

from __future__ import annotations

import importlib
import sys

import click

from edgeface import __version__
from edgeface.errors import EdgefaceError

# command name -> "module:attribute" of a click command
COMMANDS: dict[str, str] = {
    "eval": "edgeface.cli.eval_cmd:eval_cmd",
    "export": "edgeface.cli.export_cmd:export_cmd",
    "models": "edgeface.cli.models_cmd:models_cmd",
    "prune": "edgeface.cli.prune_cmd:prune_cmd",
    "quantize": "edgeface.cli.quantize_cmd:quantize_cmd",
    "verify": "edgeface.cli.runtime_cmd:verify_cmd",
    "enroll": "edgeface.cli.runtime_cmd:enroll_cmd",
    "identify": "edgeface.cli.runtime_cmd:identify_cmd",
    "gallery": "edgeface.cli.runtime_cmd:gallery_cmd",
    "profile": "edgeface.cli.runtime_cmd:profile_cmd",
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
def cli() -> None:
    """Compress, export and run face-recognition models on devices."""


def main(argv: list[str] | None = None) -> int:
    """Entry point: user errors become one line on stderr and a non-zero exit, never a traceback."""
    try:
        cli.main(args=argv, prog_name="edgeface", standalone_mode=False)
    except EdgefaceError as e:
        click.echo(f"error: {e}", err=True)
        return e.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
