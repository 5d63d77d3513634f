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


def _parse_size(
    size: str, form: str = "WIDTHxHEIGHT", example: str = "320x240", hint: str | None = None
) -> tuple[int, int]:
    """'AxB' -> (A, B); anything else is the option's error, naming the form it expects."""
    try:
        a, b = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise typer.BadParameter(
            f"'{size}' is not {form}: expected {form} in whole pixels, e.g. {example}",
            param_hint=hint,
        ) from None
    return a, b


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
    world: Annotated[
        str,
        typer.Option(
            help="classic: the procedural world; wide: photographic backgrounds (panned) and "
            "textures, negatives, lighting changes, motion blur, JPEG artefacts.",
        ),
    ] = "classic",
    negatives: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Fraction of videos with no object of the categories.",
            show_default="0 in the classic world, 0.15 in the wide one",
        ),
    ] = None,
    photo_pool: Annotated[
        str,
        typer.Option(help="Photos of the wide world: train, or held_out (never in training)."),
    ] = "train",
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
    from models.data.synthetic.world import WIDE_WORLD, WorldConfig

    width, height = _parse_size(size)
    if world not in ("classic", "wide"):
        raise typer.BadParameter(f"{world!r} is not classic or wide", param_hint="--world")
    wide = dict(WIDE_WORLD) if world == "wide" else {}
    if negatives is not None:
        wide["negatives"] = negatives
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
            photo_pool=photo_pool,
            **wide,
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


ENV_PREFIX = "VIDSERVE_"
SHIPPED_STORE = "the shipped checkpoints/ folder"


def setting_option(field: str, help: str, *, default: str | None = None, **options):
    """An option for the setting `field` (service/settings.py): it reads the setting's
    environment variable, VIDSERVE_<FIELD>, and its help shows that variable and the setting's
    default (or `default`, said in words). The command passes None on to Settings when neither
    is given, so the setting's own default applies: what the help shows is what runs."""
    from service.settings import Settings

    declared = Settings.model_fields[field].default
    shown = default if default is not None else declared
    return typer.Option(
        help=help,
        envvar=f"{ENV_PREFIX}{field.upper()}",
        show_envvar=True,
        show_default=str(shown) if shown is not None else False,
        **options,
    )


# Options of the settings, one meaning wherever they appear.
StoreSetting = Annotated[
    Path | None,
    setting_option("checkpoint_store", "Checkpoint store folder.", default=SHIPPED_STORE),
]
DeviceSetting = Annotated[
    str | None, setting_option("device", "auto (CUDA when present), cpu or cuda:N.")
]
ModelsSetting = Annotated[
    str | None,
    setting_option(
        "models",
        "Comma-separated checkpoint names to load, e.g. masktrack,stcn (an action head needs "
        "its tracker listed too).",
        default="all in the store",
    ),
]
RedisSetting = Annotated[
    str | None,
    setting_option(
        "redis_url",
        "Redis URL, e.g. redis://localhost:6379.",
        default="none: no Redis",
    ),
]


@app.command()
def serve(
    port: Annotated[int | None, setting_option("port", "REST port.")] = None,
    grpc_port: Annotated[int | None, setting_option("grpc_port", "gRPC port.")] = None,
    host: Annotated[str | None, setting_option("host", "Interface to listen on.")] = None,
    store: StoreSetting = None,
    device: DeviceSetting = None,
    models: ModelsSetting = None,
    redis_url: Annotated[
        str | None,
        setting_option(
            "redis_url",
            "Run only the gateways, with workers behind this Redis.",
            default="none: the worker runs in this process",
        ),
    ] = None,
    default_model: Annotated[
        str | None,
        setting_option("default_model", "The model a request that names none gets."),
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
        models=models,
        redis_url=redis_url,
        default_model=default_model,
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
    redis_url: RedisSetting = None,
    store: StoreSetting = None,
    device: DeviceSetting = None,
    models: ModelsSetting = None,
    max_batch_size: Annotated[
        int | None,
        setting_option("max_batch_size", "Most frames in one forward pass.", min=1),
    ] = None,
    max_wait_ms: Annotated[
        float | None,
        setting_option(
            "max_wait_ms", "Longest wait for a batch to fill before it runs (ms).", min=0.0
        ),
    ] = None,
    port: Annotated[
        int | None,
        setting_option(
            "worker_port", "Serve /healthz, /readyz and /metrics on this port.", default="off"
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
        models=models,
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
    out: Annotated[
        Path | None, typer.Option(help="Write the results in the service's JSON schema here.")
    ] = None,
    model: Annotated[str | None, setting_option("default_model", "Model name.")] = None,
    store: StoreSetting = None,
    score_threshold: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Keep objects scoring at least this (not for VOS models).",
            show_default="the model's own: 0.5 for the VIS models",
        ),
    ] = None,
    frame_stride: Annotated[
        int, typer.Option(min=1, help="Segment every n-th frame of the video.")
    ] = 1,
    max_frames: Annotated[
        int | None,
        typer.Option(min=1, help="Stop after this many frames.", show_default="all"),
    ] = None,
    ytvis_out: Annotated[
        Path | None, typer.Option(help="Also write YouTube-VIS results JSON (one entry per track).")
    ] = None,
    render: Annotated[
        Path | None,
        typer.Option(
            help="Also write a browser-playable mp4 with masks, ids and labels (for an image "
            "input: a PNG when the path ends in .png, else a one-frame mp4)."
        ),
    ] = None,
    device: DeviceSetting = None,
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
        int | None, typer.Option(min=0, help="The frame the prompt marks.", show_default="0")
    ] = None,
    davis_out: Annotated[
        Path | None,
        typer.Option(help="Also write DAVIS palette PNGs, one per frame (00000.png, ...)."),
    ] = None,
    panoptic_out: Annotated[
        Path | None,
        typer.Option(
            help="Panoptic models: also write the zip `Accept: application/zip` answers "
            "(COCO panoptic JSON and PNGs), which `vidserve eval --task panoptic` reads."
        ),
    ] = None,
    ava_out: Annotated[
        Path | None,
        typer.Option(
            help="Action models: also write the key frames' labels as an AVA results CSV "
            "(video id = the file's name without suffix), which `vidserve eval --task action` "
            "reads."
        ),
    ] = None,
    action_stride: Annotated[
        float | None,
        typer.Option(
            min=0.01,
            max=3600.0,
            help="Action models: seconds between key frames on the video's clock.",
            show_default="1: whole seconds, as AVA",
        ),
    ] = None,
    action_categories: Annotated[
        str | None,
        typer.Option(
            help="Action models: comma-separated categories of the tracked objects that get "
            "actions.",
            show_default="all",
        ),
    ] = None,
    action_min_score: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Action models: leave out labels scoring below this.",
            show_default="0: every label",
        ),
    ] = None,
    action_bank_window: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            help="Action models with a feature bank: the past seconds of each track's features "
            "it reads (0: off).",
            show_default="the window it was trained with, also the most",
        ),
    ] = None,
    short_edge: Annotated[
        int | None,
        typer.Option(
            help="VOS models: the short side, in pixels, at which frames are segmented "
            "(64 up to the checkpoint's): smaller is faster, masks coarser.",
            show_default="the checkpoint's",
        ),
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
    from service.worker.options import given_options
    from service.worker.runner import OptionError
    from service.worker.runners import load_runner_from_store
    from service.writers.davis import write_davis_pngs

    outputs = (out, davis_out, ytvis_out, panoptic_out, ava_out, render)
    if not any(outputs):
        raise typer.BadParameter(
            "nothing to write: give --out, --davis-out, --ytvis-out, --panoptic-out, --ava-out "
            "or --render"
        )
    settings = _settings(checkpoint_store=store, device=device)
    name = model or settings.default_model
    try:
        runner = load_runner_from_store(settings.checkpoint_store, name, settings.device)
    except (LookupError, CheckpointError) as e:
        raise typer.BadParameter(str(e), param_hint="--model") from None
    options = given_options(
        score_threshold=score_threshold,
        action_stride=action_stride,
        action_categories=action_categories,
        action_min_score=action_min_score,
        action_bank_window=action_bank_window,
        short_edge=short_edge,
    )
    if ava_out and not runner.info.actions:
        raise typer.BadParameter(f"model '{name}' answers no actions", param_hint="--ava-out")
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
    if panoptic_out:
        from service.writers.coco_panoptic import coco_panoptic_zip

        panoptic_out.write_bytes(coco_panoptic_zip(result, runner.info.classes, video.stem))
    if ava_out:
        from service.writers.ava import write_ava_results

        write_ava_results(ava_out, result, runner.info.actions, video.stem)
    if render:
        from service.gateway.render import render_file

        as_png = render.suffix.lower() == ".png"
        render.write_bytes(render_file(video, result.frames, result.fps, as_png))
    written = ", ".join(str(path) for path in outputs if path)
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
AvaFpsOption = Annotated[
    float | None,
    typer.Option(
        min=0.0,
        help="Frame rate of the extracted frames.",
        show_default="meta.json's for a `vidserve synth` folder, else AVA's 30",
    ),
]
InitOption = Annotated[
    Path | None,
    typer.Option(
        exists=True,
        file_okay=False,
        help="A published checkpoint folder to start from (fine-tuning): its architecture and "
        "weights; a fresh optimiser and schedule.",
    ),
]
RedisOption = Annotated[str | None, typer.Option(help="Announce the checkpoint on Redis.")]
WorkDirOption = Annotated[Path, typer.Option(help="Resumable training state.")]
ValOption = Annotated[
    Path | None,
    typer.Option(
        exists=True,
        help="Held-out dataset of the same format, every frame annotated.",
        show_default="the last --val-videos videos of --data",
    ),
]


def _train_and_publish(publish) -> None:
    """Run `publish` (build a config, train or retune, publish; returns the checkpoint folder,
    None on the ranks other than 0 under torchrun, which publish nothing); a dataset or option
    problem is one line on stderr, exit 2."""
    from models.data.errors import DatasetError

    try:
        folder = publish()
    except (DatasetError, FileNotFoundError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    if folder is not None:
        typer.echo(f"published {folder}")


def _run_config(config_type, options: dict):
    """A family's training config (a TrainRun) from its command's options, named alike except
    --out, the store."""
    return config_type(**{("store" if key == "out" else key): v for key, v in options.items()})


def _with_extra_data(options: dict) -> dict:
    """A command whose --data may be given again: the first is the run's data, the rest its
    also_data."""
    data = options["data"]
    return {**options, "data": data[0], "also_data": tuple(data[1:])}


@train_app.command("vis")
def train_vis_command(
    data: Annotated[
        list[Path],
        typer.Option(
            exists=True,
            help=(
                "YouTube-VIS dataset: a `vidserve synth` folder, the official layout "
                "(<split>.json + <split>/JPEGImages) or an annotation JSON. Given again, "
                "datasets of the same categories trained on together (e.g. the classic and "
                "the wide synthetic worlds)."
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
    batch_size: Annotated[
        int,
        typer.Option(min=1, help="Frame pairs per step, over all torchrun processes together."),
    ] = 4,
    lr: LrOption = 2e-3,
    seed: SeedOption = 0,
    work_dir: WorkDirOption = Path("runs/vis"),
    resume: ResumeOption = False,
    empty_frames: Annotated[
        bool,
        typer.Option(
            help="Frames with no instance are key frames too: negative videos teach the "
            "detector what is not an object (the reference drops such frames)."
        ),
    ] = False,
    input_size: Annotated[
        str | None,
        typer.Option(
            help="The network's input size, LONGxSHORT edges (e.g. 480x360): frames are scaled "
            "to fit it. Also with --init (a larger input for finer masks).",
            show_default="320x240, or --init's",
        ),
    ] = None,
    init: InitOption = None,
    redis_url: RedisOption = None,
) -> None:
    """Train MaskTrack R-CNN (small CPU configuration), evaluate YouTube-VIS AP on held-out
    videos, publish to the store. Under `torchrun --nproc-per-node N` it trains with DDP (NCCL
    on GPUs, gloo on CPUs), each process on its share of every batch; rank 0 publishes."""
    options = _with_extra_data(dict(locals()))
    options["model_overrides"] = _input_size_overrides(options.pop("input_size"))
    from models.train.vis import VisTrainConfig, train_vis

    _train_and_publish(lambda: train_vis(_run_config(VisTrainConfig, options)))


def _input_size_overrides(spec: str | None) -> dict:
    """--input-size LONGxSHORT -> the detector config's image edges ({} without it)."""
    if spec is None:
        return {}
    long_edge, short_edge = _parse_size(spec, "LONGxSHORT", "480x360", "--input-size")
    if min(long_edge, short_edge) < 32:
        raise typer.BadParameter(
            f"{spec!r}: each edge at least 32 pixels", param_hint="--input-size"
        )
    if short_edge > long_edge:
        raise typer.BadParameter(f"{spec!r}: the long edge comes first", param_hint="--input-size")
    return {"image_long_edge": long_edge, "image_short_edge": short_edge}


@train_app.command("instance")
def train_instance_command(
    data: Annotated[
        Path,
        typer.Option(
            exists=True,
            help=(
                "YouTube-VIS dataset whose annotated frames are the images: a `vidserve synth` "
                "folder, the official layout or an annotation JSON."
            ),
        ),
    ],
    out: StoreOption,
    name: Annotated[str, typer.Option(help="Model name in the store.")] = "cascade-swin",
    split: SplitOption = "train",
    val: ValOption = None,
    val_split: ValSplitOption = "val",
    val_videos: ValVideosOption = 4,
    iters: ItersOption = 3000,
    batch_size: Annotated[
        int, typer.Option(min=1, help="Images per step, over all torchrun processes together.")
    ] = 8,
    lr: LrOption = 2e-3,
    seed: SeedOption = 0,
    work_dir: WorkDirOption = Path("runs/instance"),
    resume: ResumeOption = False,
    redis_url: RedisOption = None,
) -> None:
    """Train Cascade Mask R-CNN with a Swin backbone (small CPU configuration) on the annotated
    frames as images, evaluate per-frame COCO mask AP on held-out videos, publish to the store.
    Under `torchrun --nproc-per-node N` it trains with DDP; rank 0 publishes."""
    options = dict(locals())
    from models.train.instance import InstanceTrainConfig, train_instance

    _train_and_publish(lambda: train_instance(_run_config(InstanceTrainConfig, options)))


@train_app.command("panoptic")
def train_panoptic_command(
    data: Annotated[
        Path,
        typer.Option(
            exists=True,
            help=(
                "COCO panoptic dataset: a `vidserve synth` folder (panoptic/), COCO's layout "
                "(annotations/panoptic_<split>.json + <split>/) or a panoptic JSON."
            ),
        ),
    ],
    out: StoreOption,
    name: Annotated[str, typer.Option(help="Model name in the store.")] = "maskformer",
    split: Annotated[
        str, typer.Option(help="Split of --data to train on (COCO's: train2017).")
    ] = "train",
    val: ValOption = None,
    val_split: ValSplitOption = "val",
    val_videos: ValVideosOption = 4,
    iters: ItersOption = 3000,
    batch_size: Annotated[
        int, typer.Option(min=1, help="Images per step, over all torchrun processes together.")
    ] = 8,
    lr: LrOption = 2e-3,
    grad_clip: Annotated[
        float, typer.Option(min=0.0, help="Clip the gradients' global norm at this.")
    ] = 1.0,
    trunk_init: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            file_okay=False,
            help="A published checkpoint whose backbone.body is the small trunk (e.g. "
            "checkpoints/vis/masktrack/<version>): the trunk starts from its weights.",
            show_default="from scratch",
        ),
    ] = None,
    decoder_memory: Annotated[
        str | None,
        typer.Option(
            help="What the decoder's queries attend to: transformer_encoder (the stride-32 "
            "encoder memory, MMDetection's release) or pixel_embedding (the stride-4 mask "
            "features, as the official MaskFormer can).",
            show_default="the small configuration's, or --init's",
        ),
    ] = None,
    seed: SeedOption = 0,
    work_dir: WorkDirOption = Path("runs/panoptic"),
    resume: ResumeOption = False,
    init: InitOption = None,
    redis_url: RedisOption = None,
) -> None:
    """Train MaskFormer (small CPU configuration) on panoptic segments, things and stuff,
    evaluate PQ on held-out videos, publish to the store. Under `torchrun --nproc-per-node N`
    it trains with DDP; rank 0 publishes."""
    options = dict(locals())
    from models.panoptic.config import DECODER_MEMORIES
    from models.train.panoptic import PanopticTrainConfig, train_panoptic

    memory = options.pop("decoder_memory")
    if memory is not None and memory not in DECODER_MEMORIES:
        raise typer.BadParameter(
            f"unknown decoder memory {memory!r}; one of {', '.join(DECODER_MEMORIES)}",
            param_hint="--decoder-memory",
        )
    options["model_overrides"] = {} if memory is None else {"decoder_memory": memory}
    _train_and_publish(lambda: train_panoptic(_run_config(PanopticTrainConfig, options)))


@train_app.command("action")
def train_action_command(
    data: Annotated[
        Path,
        typer.Option(
            exists=True,
            help=(
                "AVA v2.2 dataset: a `vidserve synth` folder (ava/) or AVA's layout "
                "(annotations/ava_<split>_v2.2.csv, the action list, frames/<video>/img_%05d.jpg)."
            ),
        ),
    ],
    out: StoreOption,
    name: Annotated[str, typer.Option(help="Model name in the store.")] = "slowfast-acrn",
    split: SplitOption = "train",
    val: ValOption = None,
    val_split: ValSplitOption = "val",
    val_videos: ValVideosOption = 4,
    iters: ItersOption = 3000,
    batch_size: Annotated[
        int,
        typer.Option(min=1, help="Key-frame clips per step, over all torchrun processes together."),
    ] = 4,
    lr: LrOption = 1e-3,
    grad_clip: Annotated[
        float, typer.Option(min=0.0, help="Clip the gradients' global norm at this.")
    ] = 10.0,
    fps: AvaFpsOption = None,
    backbone: Annotated[
        str,
        typer.Option(
            help="slowfast (SlowFast + ACRN) or slowonly (one pathway, no ACRN: 4 frames 4 "
            "apart), both at the small configuration's size; ignored with --init."
        ),
    ] = "slowfast",
    seed: SeedOption = 0,
    work_dir: WorkDirOption = Path("runs/action"),
    resume: ResumeOption = False,
    init: InitOption = None,
    redis_url: RedisOption = None,
) -> None:
    """Train the SlowFast-ACRN action detector (small CPU configuration) on the actors' boxes
    of each key frame, evaluate frame-mAP@0.5 with ground-truth boxes on held-out videos,
    publish to the store. Under `torchrun --nproc-per-node N` it trains with DDP; rank 0
    publishes."""
    options = dict(locals())
    from models.action.config import SMALL_BACKBONES
    from models.train.action import ActionTrainConfig, train_action

    if backbone not in SMALL_BACKBONES:
        raise typer.BadParameter(
            f"unknown backbone {backbone!r}; one of {', '.join(SMALL_BACKBONES)}",
            param_hint="--backbone",
        )
    overrides = SMALL_BACKBONES[options.pop("backbone")]
    options["model_overrides"] = {} if init is not None else overrides
    _train_and_publish(lambda: train_action(_run_config(ActionTrainConfig, options)))


@train_app.command("action-lfb")
def train_action_lfb_command(
    data: Annotated[
        Path,
        typer.Option(exists=True, help="AVA v2.2 dataset, as `vidserve train action` reads it."),
    ],
    out: StoreOption,
    init: Annotated[
        Path,
        typer.Option(
            exists=True,
            file_okay=False,
            help="The trained action checkpoint whose backbone makes and reads the bank's "
            "features (frozen).",
        ),
    ],
    name: Annotated[str, typer.Option(help="Model name in the store.")] = "slowfast-acrn-lfb",
    lfb: Annotated[
        str,
        typer.Option(
            help="Feature-bank operator: max, avg, non_local, or none (the same head trained "
            "without a bank: the control)."
        ),
    ] = "max",
    lfb_window_s: Annotated[
        float, typer.Option(min=0.01, help="Past seconds of an actor's features read.")
    ] = 4.0,
    lfb_per_second: Annotated[
        float, typer.Option(min=0.01, help="Most features kept per second of an actor.")
    ] = 1.0,
    split: SplitOption = "train",
    val: ValOption = None,
    val_split: ValSplitOption = "val",
    val_videos: ValVideosOption = 4,
    iters: ItersOption = 2000,
    batch_size: Annotated[int, typer.Option(min=1, help="Key frames per step.")] = 16,
    lr: LrOption = 1e-3,
    fps: AvaFpsOption = None,
    seed: SeedOption = 0,
    work_dir: WorkDirOption = Path("runs/action-lfb"),
    resume: ResumeOption = False,
    redis_url: RedisOption = None,
) -> None:
    """Train the action head with an online long-term feature bank on a trained action
    checkpoint's frozen backbone: each actor's past features (its own, within the window) read
    by the bank operator beside its current one. Evaluates frame-mAP@0.5 with ground-truth boxes
    on held-out videos and publishes to the store."""
    options = dict(locals())
    from models.action.feature_bank import OPERATORS
    from models.train.action_lfb import ActionLfbTrainConfig, train_action_lfb

    if lfb not in OPERATORS:
        raise typer.BadParameter(f"must be one of {', '.join(OPERATORS)}", param_hint="--lfb")
    _train_and_publish(lambda: train_action_lfb(_run_config(ActionLfbTrainConfig, options)))


@train_app.command("vos")
def train_vos_command(
    data: Annotated[
        list[Path],
        typer.Option(
            exists=True,
            help="DAVIS-format dataset: a `vidserve synth` folder (its davis/) or a DAVIS root "
            "(ImageSets/2017/<split>.txt, JPEGImages/480p, Annotations/480p). Given again, "
            "datasets trained on together (videos with no object left out).",
        ),
    ],
    out: StoreOption,
    name: Annotated[str, typer.Option(help="Model name in the store.")] = "stcn",
    split: SplitOption = "train",
    val: ValOption = None,
    val_split: ValSplitOption = "val",
    val_videos: ValVideosOption = 4,
    iters: ItersOption = 3000,
    batch_size: Annotated[
        int,
        typer.Option(min=1, help="3-frame clips per step, over all torchrun processes together."),
    ] = 4,
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
    init: InitOption = None,
    redis_url: RedisOption = None,
) -> None:
    """Train STCN (small CPU configuration) on 3-frame clips, evaluate DAVIS J&F on held-out
    videos (first-frame masks given), publish to the store. Under `torchrun --nproc-per-node N`
    it trains with DDP (NCCL on GPUs, gloo on CPUs), each process on its share of every batch;
    rank 0 publishes."""
    options = _with_extra_data(dict(locals()))
    from models.train.vos import VosTrainConfig, train_vos

    def publish():
        width, height = _parse_size(crop)
        return train_vos(_run_config(VosTrainConfig, {**options, "crop": (height, width)}))

    _train_and_publish(publish)


ExistingStoreOption = Annotated[Path, typer.Option(exists=True, help="The checkpoint store.")]
FromVersionOption = Annotated[
    str | None, typer.Option(help="Version to start from.", show_default="the newest")
]


@train_app.command("vos-retune")
def retune_vos_command(
    store: ExistingStoreOption,
    val: Annotated[
        Path,
        typer.Option(exists=True, help="Held-out DAVIS-format dataset, every frame annotated."),
    ],
    mem_every: Annotated[
        int | None, typer.Option(min=1, help="Memorise every n-th frame.", show_default=False)
    ] = None,
    short_edge: Annotated[
        int | None,
        typer.Option(
            min=16,
            help="Work at this short side: larger frames are scaled down to it.",
            show_default=False,
        ),
    ] = None,
    upscale: Annotated[
        bool | None,
        typer.Option(
            "--upscale/--no-upscale",
            help="Scale smaller frames up to the short side too.",
            show_default=False,
        ),
    ] = None,
    name: Annotated[str, typer.Option(help="Model name in the store.")] = "stcn",
    version: FromVersionOption = None,
    val_split: ValSplitOption = "val",
    redis_url: RedisOption = None,
) -> None:
    """Publish a VOS checkpoint's weights again with other inference settings (mem_every, the
    working size; unchanged where not given), J&F re-measured on --val; the manifest records the
    change."""
    from models.train.vos import retune_vos

    given = {"mem_every": mem_every, "short_edge": short_edge, "upscale": upscale}
    changes = {key: value for key, value in given.items() if value is not None}
    if not changes:
        raise typer.BadParameter(
            "nothing to change: give --mem-every, --short-edge or --upscale",
            param_hint="--mem-every",
        )
    _train_and_publish(lambda: retune_vos(store, name, changes, val, val_split, version, redis_url))


@train_app.command("vis-calibrate")
def calibrate_vis_command(
    store: ExistingStoreOption,
    negatives: Annotated[
        Path,
        typer.Option(
            exists=True,
            help="Validation YouTube-VIS dataset whose videos without objects are the "
            "negatives (e.g. `vidserve synth --world wide --negatives 0.3 --split val`).",
        ),
    ],
    val: Annotated[
        Path,
        typer.Option(
            exists=True, help="Validation YouTube-VIS dataset: the recall of its objects."
        ),
    ],
    max_false_per_frame: Annotated[
        float, typer.Option(min=0.0, help="False objects a frame allowed on the negatives.")
    ] = 0.1,
    name: Annotated[str, typer.Option(help="Model name in the store.")] = "masktrack",
    version: FromVersionOption = None,
    val_split: ValSplitOption = "val",
    redis_url: RedisOption = None,
) -> None:
    """Publish a VIS checkpoint's weights again with the served default score threshold chosen
    on validation negatives: the lowest of 0.5, 0.55, ..., 0.95 with at most
    --max-false-per-frame false objects a frame; the manifest records each candidate's rate and
    the recall of --val's objects."""
    from models.train.calibrate import calibrate_vis

    _train_and_publish(
        lambda: calibrate_vis(
            store, name, negatives, val, max_false_per_frame, val_split, version, redis_url
        )
    )


app.command("eval")(eval_command)


checkpoints_app = typer.Typer(
    help="Import published weights into a checkpoint store; list and verify a store's entries.",
    no_args_is_help=True,
)
app.add_typer(checkpoints_app, name="checkpoints")


@checkpoints_app.command("import")
def import_checkpoint_command(
    file: Annotated[
        Path,
        typer.Argument(
            exists=True,
            dir_okay=False,
            help="A published checkpoint: .safetensors, or a PyTorch .pth / .pt file.",
        ),
    ],
    store: Annotated[
        Path,
        typer.Option(
            help="Checkpoint store to write into (created if missing).",
            envvar=f"{ENV_PREFIX}CHECKPOINT_STORE",
            show_envvar=True,
        ),
    ],
    name: Annotated[
        str | None,
        typer.Option(
            help="Model name in the store: the name it is served as.",
            show_default="by format: maskrcnn-coco (torchvision COCO), stcn (STCN), "
            "masktrack (MMTracking)",
        ),
    ] = None,
    version: Annotated[
        str | None,
        typer.Option(help="Version of the entry.", show_default="the UTC time, 20261202T153000Z"),
    ] = None,
    allow_pickle: Annotated[
        bool,
        typer.Option(
            "--allow-pickle",
            help="Also load a file that needs pickled Python objects besides tensors "
            "(torch.load weights_only=False). Unpickling runs whatever code the file names: "
            "only for a file from a source you trust.",
        ),
    ] = False,
) -> None:
    """Recognise a published checkpoint by its keys (torchvision's COCO Mask R-CNN, the official
    STCN file, MMTracking's MaskTrack R-CNN for YouTube-VIS 2019), convert it and write it to the
    store as a verified entry that `vidserve serve --store` serves."""
    from models.checkpoints.errors import CheckpointError
    from models.checkpoints.importing import import_checkpoint

    with _ByteProgress(f"reading {file.name}") as (on_bytes, on_phase):
        try:
            result = import_checkpoint(
                file,
                store,
                name=name,
                version=version,
                allow_pickle=allow_pickle,
                on_phase=on_phase,
                on_bytes=on_bytes,
            )
        except (CheckpointError, FileExistsError, ValueError) as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
    typer.echo(_import_summary(result, store))


def _import_summary(result, store: Path) -> str:
    manifest = result.manifest
    classes = manifest.class_names
    shown = ", ".join(classes[:3]) + (", ..." if len(classes) > 3 else "")
    counted = f"{len(classes)} {'class' if len(classes) == 1 else 'classes'}"
    return (
        f"imported {result.format.key}: {counted} ({shown}), "
        f"{result.parameters:,} parameters -> {result.path}, "
        f"weights sha256 {manifest.weights_sha256} (source file sha256 {result.source_sha256})\n"
        f"serve it: vidserve serve --store {store} --default-model {result.name}"
    )


class _ByteProgress:
    """A progress bar of bytes read (on stderr) and a line per phase, as two callbacks."""

    def __init__(self, description: str):
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

        self.description = description
        columns = ("{task.description}", BarColumn(), DownloadColumn(), TimeRemainingColumn())
        self.progress = Progress(*columns, console=Console(stderr=True), transient=True)

    def __enter__(self):
        self.progress.__enter__()
        task = self.progress.add_task(self.description, total=None)

        def on_bytes(done: int, total: int) -> None:
            self.progress.update(task, completed=done, total=total)

        def on_phase(text: str) -> None:
            self.progress.console.print(text)
            self.progress.update(task, description=text.split(";")[0])

        return on_bytes, on_phase

    def __exit__(self, *exc_info):
        return self.progress.__exit__(*exc_info)


@checkpoints_app.command("list")
def list_checkpoints_command(store: StoreSetting = None) -> None:
    """Every entry of the store: family/name/version, classes, size, when it was made and from
    what. The newest version of a name is the one served (marked *)."""
    from models.checkpoints.errors import CheckpointError
    from models.checkpoints.store import CheckpointStore

    found = CheckpointStore(_settings(checkpoint_store=store).checkpoint_store)
    entries = _store_entries(found)
    if not entries:
        typer.echo(f"no checkpoints in {found.root}")
    for family, name, version, newest in entries:
        label = f"{'*' if newest else ' '} {family}/{name}/{version}"
        try:
            typer.echo(f"{label}  {_describe_entry(found.path(family, name, version))}")
        except (CheckpointError, ValueError) as e:
            typer.echo(f"{label}  unreadable: {getattr(e, 'problem', e)}")


def _store_entries(store) -> list[tuple[str, str, str, bool]]:
    """(family, name, version, is the newest) of every complete entry, oldest first a name."""
    entries = []
    for family in store.families():
        for name in store.names(family):
            versions = store.versions(family, name)
            entries += [(family, name, v, v == versions[-1]) for v in versions]
    return entries


def _describe_entry(folder: Path) -> str:
    from models.checkpoints.checkpoint import read_manifest

    manifest = read_manifest(folder)
    source = manifest.training.get("source") or manifest.training.get("imported_from")
    origin = f"from {source}" if source else "trained here"
    return (
        f"{len(manifest.class_names)} classes, {manifest.weights_size / 1e6:.1f} MB, "
        f"created {manifest.created_at}, {origin}"
    )


@checkpoints_app.command("verify")
def verify_checkpoints_command(
    target: Annotated[
        str | None,
        typer.Argument(
            help="NAME (every version of it) or NAME/VERSION.", show_default="every entry"
        ),
    ] = None,
    store: StoreSetting = None,
    probe: Annotated[
        bool,
        typer.Option(
            help="Also build each model and run its probe forward pass (slower), as a worker "
            "does before it serves a checkpoint.",
        ),
    ] = False,
) -> None:
    """Check entries as a loader does: manifest, size and sha256 of the weights, every weight
    finite, names and shapes against the manifest's architecture. Exit 1 if any fails."""
    from models.checkpoints.checkpoint import load_checkpoint, verify_checkpoint
    from models.checkpoints.errors import CheckpointError
    from models.checkpoints.store import CheckpointStore

    found = CheckpointStore(_settings(checkpoint_store=store).checkpoint_store)
    name, _, version = (target or "").partition("/")
    chosen = [
        (family, entry_name, entry_version)
        for family, entry_name, entry_version, _newest in _store_entries(found)
        if (not name or entry_name == name) and (not version or entry_version == version)
    ]
    if not chosen:
        what = f"entry {target}" if target else "entry"
        typer.echo(f"error: no {what} in {found.root}", err=True)
        raise typer.Exit(2)
    failed = 0
    for family, entry_name, entry_version in chosen:
        try:
            folder = found.path(family, entry_name, entry_version)
            manifest = load_checkpoint(folder).manifest if probe else verify_checkpoint(folder)
        except (CheckpointError, ValueError) as e:
            failed += 1
            typer.echo(f"FAILED {family}/{entry_name}/{entry_version}: {e}")
            continue
        typer.echo(
            f"ok     {family}/{entry_name}/{entry_version}  sha256 {manifest.weights_sha256}"
        )
    if failed:
        typer.echo(f"{failed} of {len(chosen)} entries failed", err=True)
        raise typer.Exit(1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
