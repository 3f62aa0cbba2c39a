"""`edgeface models`: list the built-in architectures."""

from __future__ import annotations

import click

from edgeface.io import dumps_json, emit


@click.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def models_cmd(as_json: bool) -> None:
    """List built-in model names (any other model: --model package.module:factory)."""
    from edgeface.models.registry import REGISTRY

    rows = [
        {
            "name": n,
            "embedding_dim": e.spec.embedding_dim,
            "input_size": list(e.spec.input_size),
            "about": e.about,
        }
        for n, e in REGISTRY.items()
    ]
    if as_json:
        emit(dumps_json(rows))
        return
    for r in rows:
        click.echo(f"{r['name']:<14} {r['embedding_dim']:>4}-d  {r['about']}")
