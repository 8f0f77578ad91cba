"""The `imageblocks` command: demo, train, predict, evaluate, serve (Typer)."""

from __future__ import annotations

import contextlib
import io
import time
from pathlib import Path

import typer

app = typer.Typer(
    help="imageblocks: multi-label classification and key points, the fastai book's way.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """imageblocks: train, check, export and serve image models from the command line."""


@app.command()
def demo(
    out: Path = typer.Option(
        Path("demo-output"), help="Folder for pictures, summaries and models."
    ),
    bs: int = typer.Option(64, help="Batch size."),
) -> None:
    """Generate both demo datasets, build their DataLoaders, print summaries, save pictures."""
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd

    from imageblocks.demo_recipes import demo_dataloaders, multilabel_block, points_block

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    dls_multi, dls_points, pascal, biwi = demo_dataloaders(bs=bs)
    typer.echo(f"demo datasets ready in {time.perf_counter() - t0:.1f}s:\n  {pascal}\n  {biwi}")
    df = pd.read_csv(pascal / "train.csv")
    for name, dblock, source in (
        ("multilabel", multilabel_block(pascal), df),
        ("points", points_block(biwi), biwi),
    ):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            dblock.summary(source)
        (out / f"summary_{name}.txt").write_text(buf.getvalue())
    xb, yb = dls_multi.one_batch()
    typer.echo(
        f"multi-label: {len(dls_multi.train.dataset)} train / {len(dls_multi.valid.dataset)} valid "
        f"images, {len(dls_multi.vocab)} classes {list(dls_multi.vocab)}"
    )
    typer.echo(f"  batch: x {tuple(xb.shape)}, y {tuple(yb.shape)}")
    xb, yb = dls_points.one_batch()
    typer.echo(
        f"key points: {len(dls_points.train.dataset)} train / {len(dls_points.valid.dataset)} valid images"
    )
    typer.echo(
        f"  batch: x {tuple(xb.shape)}, y {tuple(yb.shape)}, points in [{yb.min():.2f}, {yb.max():.2f}]"
    )
    dls_multi.show_batch(nrows=1, ncols=3).savefig(out / "show_batch_multilabel.png")
    dls_points.show_batch(max_n=9, figsize=(8, 6)).savefig(out / "show_batch_points.png")
    typer.echo(f"wrote {out}/summary_*.txt and {out}/show_batch_*.png")


def main() -> None:
    """Entry point of the `imageblocks` console script."""
    app()


if __name__ == "__main__":
    main()
