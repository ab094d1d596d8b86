"""``accord demo``: the demo pipeline (:mod:`accord.examples.pipeline`) run and reported."""

from __future__ import annotations

from types import ModuleType
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from accord.cli.common import StoreOpt, cli, err, out, user_errors
from accord.cli.progress import follow


@cli.command()
def demo(
    store: StoreOpt = None,
    slots: Annotated[int | None, typer.Option(help="slots of the in-process node")] = None,
    seed: Annotated[int, typer.Option(help="random seed of the data split")] = 0,
) -> None:
    """Run the demo pipeline: load data, train models in parallel, pick the best."""
    try:
        from accord.examples import pipeline
    except ImportError as exc:
        err.print(
            f"[red]error:[/red] the demo needs scikit-learn ({exc}); "
            "install it with: pip install 'accord[demo]'"
        )
        raise typer.Exit(2) from None
    with user_errors():
        main(pipeline, store=store, slots=slots, seed=seed, console=out, progress=err)


def main(
    pipeline: ModuleType,
    *,
    store: str | None = None,
    slots: int | None = None,
    seed: int = 0,
    console: Console | None = None,
    progress: Console | None = None,
) -> dict[str, Any]:
    """Run the pipeline with a node in this process and print the results."""
    console = console or Console()
    app = pipeline.app
    if store:
        app.use_store(store)
    with app:
        run = app.start(pipeline.pipeline, seed)
        (progress or console).print(
            f"run {run.id} started: {len(pipeline.CANDIDATES)} candidate models"
        )
        options = {"slots": slots} if slots else {}
        with app.embedded_node(**options):
            result: dict[str, Any] = follow(run, label="demo pipeline")
        table = Table(title=f"run {run.id}: models ranked by validation accuracy")
        table.add_column("model")
        table.add_column("settings")
        table.add_column("validation accuracy", justify="right")
        table.add_column("train time", justify="right")
        for row in result["models"]:
            settings = ", ".join(f"{k}={v}" for k, v in row["params"].items())
            table.add_row(
                row["family"],
                settings,
                f"{row['val_accuracy']:.4f}",
                f"{row['train_seconds']:.2f}s",
            )
        console.print(table)
        best = result["best"]
        console.print(
            f"best: [bold]{best['family']}[/bold] ({best['params']}) - test accuracy "
            f"{best['test_accuracy']:.4f} on {best['test_size']} held-out digits"
        )
        console.print(f"see every task with: accord tasks {run.id}")
        return result
