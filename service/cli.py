"""The `vidserve` command line. Each command imports its heavy modules (torch, av) when it runs,
so that `vidserve --help` answers at once."""

import logging
from pathlib import Path
from typing import Annotated

import typer

from service.settings import get_settings

app = typer.Typer(
    help="vidserve: serve video perception models (segmentation, tracking, actions) over REST "
    "and gRPC, and make the data and checkpoints they need.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _setup() -> None:
    logging.basicConfig(
        level=get_settings().log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _parse_size(size: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise typer.BadParameter(f"'{size}' is not WIDTHxHEIGHT, e.g. 320x240") from None
    return w, h


@app.command()
def synth(
    out: Annotated[Path, typer.Option(help="Folder to write (must be new or empty).")],
    videos: Annotated[int, typer.Option(min=1, help="Number of videos.")] = 4,
    frames: Annotated[int, typer.Option(min=1, help="Frames per video.")] = 24,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same data.")] = 0,
    size: Annotated[str, typer.Option(help="Frame size WIDTHxHEIGHT (even numbers).")] = "320x240",
    fps: Annotated[
        int, typer.Option(min=1, help="Frame rate; AVA key frames fall on each second.")
    ] = 8,
    objects: Annotated[
        int, typer.Option(min=1, max=40, help="Most annotated objects per video.")
    ] = 4,
    difficulty: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="0..1: speed, size, distractors, shake, noise.")
    ] = 0.5,
    shake: Annotated[bool, typer.Option(help="Camera shake.")] = False,
    noise: Annotated[bool, typer.Option(help="Sensor noise.")] = False,
    split: Annotated[
        str, typer.Option(help="Split name used in the annotation file names.")
    ] = "train",
    preview: Annotated[
        Path | None,
        typer.Option(
            help="Also draw a contact sheet (PNG) of the first "
            "videos with their masks, ids and actions."
        ),
    ] = None,
) -> None:
    """Generate a synthetic video dataset in the YouTube-VIS, DAVIS, COCO panoptic and AVA formats,
    plus the videos as H.264 mp4."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from models.data.synthetic.export import generate_dataset
    from models.data.synthetic.preview import write_contact_sheet
    from models.data.synthetic.world import WorldConfig

    width, height = _parse_size(size)
    try:
        config = WorldConfig(
            width=width,
            height=height,
            frames=frames,
            fps=fps,
            max_objects=objects,
            difficulty=difficulty,
            camera_shake=shake,
            noise=noise,
        )
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    shown = []
    columns = ("{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns) as progress:
        task = progress.add_task("generating videos", total=videos)

        def on_video(video):
            if preview is not None and len(shown) < 4:
                shown.append(video)
            progress.advance(task)

        try:
            meta = generate_dataset(out, config, videos, seed, split, on_video=on_video)
        except FileExistsError as e:
            raise typer.BadParameter(str(e), param_hint="--out") from None
    if preview is not None:
        write_contact_sheet(preview, shown)
        typer.echo(f"contact sheet: {preview}")
    typer.echo(
        f"wrote {videos} videos x {frames} frames to {out} (fingerprint {meta['fingerprint'][:12]})"
    )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
