"""The `vidserve` command line. Each command imports its heavy modules (torch, av) when it runs,
so that `vidserve --help` answers at once."""

import errno
import logging
from pathlib import Path
from typing import Annotated

import typer

from models.eval.cli import eval_command
from service.settings import get_settings

app = typer.Typer(
    help="vidserve: serve video perception models (segmentation, tracking, actions) over REST "
    "and gRPC, and make the data and checkpoints they need.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _setup() -> None:
    from service.requestid import LOG_FORMAT, install_log_filter

    logging.basicConfig(level=get_settings().log_level.upper(), format=LOG_FORMAT)
    install_log_filter()  # every line shows its request's id (X-Request-ID), "-" outside one


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


def _settings(**overrides) -> "Settings":  # noqa: F821 - imported lazily
    """Settings from the environment, with the command line's options on top."""
    from service.settings import Settings

    values = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**values)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None


@app.command()
def serve(
    port: Annotated[int | None, typer.Option(help="REST port [env VIDSERVE_PORT, 8000].")] = None,
    grpc_port: Annotated[
        int | None, typer.Option(help="gRPC port [env VIDSERVE_GRPC_PORT, 50051].")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Interface to listen on [0.0.0.0].")] = None,
    store: Annotated[
        Path | None,
        typer.Option(
            help="Checkpoint store [env VIDSERVE_CHECKPOINT_STORE, the shipped checkpoints]."
        ),
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda:N [auto].")] = None,
    redis_url: Annotated[
        str | None,
        typer.Option(
            help="Run only the gateways, with workers behind Redis [env VIDSERVE_REDIS_URL]."
        ),
    ] = None,
) -> None:
    """Run the service: REST on --port, gRPC on --grpc-port. Without --redis-url the worker runs
    in this process (the embedded default, no other server needed)."""
    import asyncio

    settings = _settings(
        port=port,
        grpc_port=grpc_port,
        host=host,
        checkpoint_store=store,
        device=device,
        redis_url=redis_url,
    )
    try:
        if settings.redis_url:
            from service.app import serve_redis_gateway

            asyncio.run(serve_redis_gateway(settings))
        else:
            from service.app import serve_embedded

            asyncio.run(serve_embedded(settings))
    except OSError as e:
        if e.errno != errno.EADDRINUSE:
            raise
        logging.getLogger("service.cli").error("%s", e.strerror or e)  # a busy port: no traceback
        raise typer.Exit(1) from None


@app.command()
def worker(
    redis_url: Annotated[
        str | None, typer.Option(help="Redis URL [env VIDSERVE_REDIS_URL].")
    ] = None,
    store: Annotated[Path | None, typer.Option(help="Checkpoint store [shipped].")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda:N [auto].")] = None,
    max_batch_size: Annotated[int | None, typer.Option(min=1)] = None,
    max_wait_ms: Annotated[float | None, typer.Option(min=0.0)] = None,
    port: Annotated[
        int | None,
        typer.Option(
            help="Serve /healthz, /readyz and /metrics on this port [env VIDSERVE_WORKER_PORT, "
            "off]."
        ),
    ] = None,
) -> None:
    """Run one worker: it loads the store's models and serves gateways through Redis."""
    import signal
    import threading

    from service.app import run_redis_worker

    settings = _settings(
        redis_url=redis_url,
        checkpoint_store=store,
        device=device,
        max_batch_size=max_batch_size,
        max_wait_ms=max_wait_ms,
        worker_port=port,
    )
    if not settings.redis_url:
        raise typer.BadParameter("a worker needs --redis-url (or VIDSERVE_REDIS_URL)")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        run_redis_worker(settings, stop)
    except KeyboardInterrupt:
        stop.set()


@app.command()
def segment(
    video: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="A video file.")],
    out: Annotated[Path | None, typer.Option(help="Results in the service's JSON schema.")] = None,
    model: Annotated[str | None, typer.Option(help="Model name [the default model].")] = None,
    store: Annotated[Path | None, typer.Option(help="Checkpoint store [shipped].")] = None,
    score_threshold: Annotated[float | None, typer.Option(min=0.0, max=1.0)] = None,
    frame_stride: Annotated[int, typer.Option(min=1)] = 1,
    max_frames: Annotated[int | None, typer.Option(min=1)] = None,
    ytvis_out: Annotated[
        Path | None, typer.Option(help="Also write YouTube-VIS results JSON (one entry per track).")
    ] = None,
    render: Annotated[
        Path | None,
        typer.Option(help="Also write a browser-playable mp4 with masks, ids and labels."),
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda:N.")] = None,
    prompt: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="VOS models: an indexed (palette) or grayscale PNG, pixel value = object id.",
        ),
    ] = None,
    prompt_rle: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help='VOS models, instead of --prompt: a JSON file {"<id>": COCO RLE, ...}.',
        ),
    ] = None,
    prompt_frame: Annotated[
        int | None, typer.Option(min=0, help="The frame the prompt marks [0].")
    ] = None,
    davis_out: Annotated[
        Path | None,
        typer.Option(help="Also write DAVIS palette PNGs, one per frame (00000.png, ...)."),
    ] = None,
) -> None:
    """Segment and track the objects of a video in this process (no server), writing the same
    results the service answers. VOS models (stcn) follow the objects a prompt marks."""
    import json

    from rich.progress import Progress

    from models.checkpoints.errors import CheckpointError
    from service.gateway.prompts import read_video_prompt
    from service.gateway.video_input import InputError
    from service.local import segment_file, ytvis_results_of
    from service.worker.runner import OptionError
    from service.worker.runners import load_runner_from_store
    from service.writers.davis import write_davis_pngs

    if not any((out, davis_out, ytvis_out, render)):
        raise typer.BadParameter(
            "nothing to write: give --out, --davis-out, --ytvis-out or --render"
        )
    settings = _settings(checkpoint_store=store, device=device)
    name = model or settings.default_model
    try:
        runner = load_runner_from_store(settings.checkpoint_store, name, settings.device)
    except (LookupError, CheckpointError) as e:
        raise typer.BadParameter(str(e), param_hint="--model") from None
    options = {} if score_threshold is None else {"score_threshold": score_threshold}
    with Progress() as progress:
        task = progress.add_task(f"segmenting {video.name}", total=max_frames)
        try:
            video_prompt = read_video_prompt(
                name,
                runner.info.takes_prompt,
                prompt.read_bytes() if prompt else None,
                prompt_rle.read_text() if prompt_rle else None,
                prompt_frame,
                (settings.max_height, settings.max_width),
            )
            result = segment_file(
                video,
                runner,
                options,
                frame_stride,
                max_frames,
                on_frame=lambda: progress.advance(task),
                prompt=video_prompt,
            )
        except InputError as e:
            typer.echo(f"error: {video}: {e.title}: {e.detail}", err=True)
            raise typer.Exit(2) from None
        except OptionError as e:
            raise typer.BadParameter(str(e)) from None
    if out:
        out.write_text(result.model_dump_json(indent=1))
    if davis_out:
        write_davis_pngs(result.frames, result.height, result.width, davis_out)
    if ytvis_out:
        ytvis_out.write_text(json.dumps(ytvis_results_of(result, runner.info.classes)))
    if render:
        from service.gateway.render import render_video

        render.write_bytes(render_video(video, result.frames, result.fps))
    written = ", ".join(str(path) for path in (out, davis_out, ytvis_out, render) if path)
    typer.echo(f"{len(result.frames)} frames, {len(result.tracks)} tracks -> {written}")


train_app = typer.Typer(
    help="Train a model family and publish the checkpoint.", no_args_is_help=True
)
app.add_typer(train_app, name="train")

# Options that both training commands take, with one meaning.
StoreOption = Annotated[Path, typer.Option(help="Checkpoint store to publish into.")]
SplitOption = Annotated[str, typer.Option(help="Split of --data to train on.")]
ValSplitOption = Annotated[str, typer.Option(help="Split of --val.")]
ValVideosOption = Annotated[
    int, typer.Option(min=0, help="Without --val: hold out this many videos of --data.")
]
ItersOption = Annotated[int, typer.Option(min=1, help="Optimisation steps.")]
LrOption = Annotated[float, typer.Option(min=0.0, help="Peak learning rate (AdamW, cosine).")]
SeedOption = Annotated[int, typer.Option(help="Seed of initialisation and sampling.")]
ResumeOption = Annotated[bool, typer.Option(help="Continue from --work-dir's state.")]
RedisOption = Annotated[str | None, typer.Option(help="Announce the checkpoint on Redis.")]
WorkDirOption = Annotated[Path, typer.Option(help="Resumable training state.")]
ValOption = Annotated[
    Path | None,
    typer.Option(
        exists=True,
        help="Held-out dataset of the same format, every frame annotated "
        "[the last --val-videos videos of --data].",
    ),
]


def _train_and_publish(publish) -> None:
    """Run `publish` (build a config, train or retune, publish; returns the checkpoint folder);
    a dataset or option problem is one line on stderr, exit 2."""
    from models.data.errors import DatasetError

    try:
        folder = publish()
    except (DatasetError, FileNotFoundError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"published {folder}")


def _run_config(config_type, options: dict):
    """A family's training config (a TrainRun) from its command's options, named alike except
    --out, the store."""
    return config_type(**{("store" if key == "out" else key): v for key, v in options.items()})


@train_app.command("vis")
def train_vis_command(
    data: Annotated[
        Path,
        typer.Option(
            exists=True,
            help=(
                "YouTube-VIS dataset: a `vidserve synth` folder, the official layout "
                "(<split>.json + <split>/JPEGImages) or an annotation JSON."
            ),
        ),
    ],
    out: StoreOption,
    name: Annotated[str, typer.Option(help="Model name in the store.")] = "masktrack",
    split: SplitOption = "train",
    val: ValOption = None,
    val_split: ValSplitOption = "val",
    val_videos: ValVideosOption = 4,
    iters: ItersOption = 3000,
    batch_size: Annotated[int, typer.Option(min=1, help="Frame pairs per step.")] = 4,
    lr: LrOption = 2e-3,
    seed: SeedOption = 0,
    work_dir: WorkDirOption = Path("runs/vis"),
    resume: ResumeOption = False,
    redis_url: RedisOption = None,
) -> None:
    """Train MaskTrack R-CNN (small CPU configuration), evaluate YouTube-VIS AP on held-out
    videos, publish to the store."""
    options = dict(locals())
    from models.train.vis import VisTrainConfig, train_vis

    _train_and_publish(lambda: train_vis(_run_config(VisTrainConfig, options)))


@train_app.command("vos")
def train_vos_command(
    data: Annotated[
        Path,
        typer.Option(
            exists=True,
            help="DAVIS-format dataset: a `vidserve synth` folder (its davis/) or a DAVIS root "
            "(ImageSets/2017/<split>.txt, JPEGImages/480p, Annotations/480p).",
        ),
    ],
    out: StoreOption,
    name: Annotated[str, typer.Option(help="Model name in the store.")] = "stcn",
    split: SplitOption = "train",
    val: ValOption = None,
    val_split: ValSplitOption = "val",
    val_videos: ValVideosOption = 4,
    iters: ItersOption = 3000,
    batch_size: Annotated[int, typer.Option(min=1, help="3-frame clips per step.")] = 4,
    lr: LrOption = 2e-3,
    crop: Annotated[
        str, typer.Option(help="Training crop WIDTHxHEIGHT (multiples of 16).")
    ] = "224x224",
    max_gap: Annotated[
        int, typer.Option(min=1, help="Most frames between two frames of a clip.")
    ] = 5,
    mem_every: Annotated[
        int,
        typer.Option(
            min=1,
            help="Inference: memorise every n-th frame (stored in the checkpoint). 5 is STCN's; "
            "on the synthetic world 1 measured best (J&F 0.818 against 0.762).",
        ),
    ] = 5,
    seed: SeedOption = 0,
    work_dir: WorkDirOption = Path("runs/vos"),
    resume: ResumeOption = False,
    redis_url: RedisOption = None,
) -> None:
    """Train STCN (small CPU configuration) on 3-frame clips, evaluate DAVIS J&F on held-out
    videos (first-frame masks given), publish to the store."""
    options = dict(locals())
    from models.train.vos import VosTrainConfig, train_vos

    def publish():
        width, height = _parse_size(crop)
        return train_vos(_run_config(VosTrainConfig, {**options, "crop": (height, width)}))

    _train_and_publish(publish)


@train_app.command("vos-retune")
def retune_vos_command(
    store: Annotated[Path, typer.Option(exists=True, help="The checkpoint store.")],
    val: Annotated[
        Path,
        typer.Option(exists=True, help="Held-out DAVIS-format dataset, every frame annotated."),
    ],
    mem_every: Annotated[int, typer.Option(min=1, help="Memorise every n-th frame.")],
    name: Annotated[str, typer.Option(help="Model name in the store.")] = "stcn",
    version: Annotated[str | None, typer.Option(help="Version to start from [newest].")] = None,
    val_split: ValSplitOption = "val",
    redis_url: RedisOption = None,
) -> None:
    """Publish a VOS checkpoint's weights again with another mem_every (an inference setting:
    training never reads it), J&F re-measured on --val; the manifest records the change."""
    from models.train.vos import retune_vos

    _train_and_publish(
        lambda: retune_vos(store, name, mem_every, val, val_split, version, redis_url)
    )


app.command("eval")(eval_command)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
