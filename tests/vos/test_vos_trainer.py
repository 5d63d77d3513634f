"""The VOS training job end to end: DAVIS-format data -> clips -> training -> J&F -> published
checkpoint -> reload; resume; the command line."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner
from vos_fixtures import tiny_config

from models.checkpoints.checkpoint import load_checkpoint
from models.data.davis import load_davis
from models.data.synthetic.export import generate_dataset
from models.data.synthetic.world import WorldConfig
from models.train.vos import Bootstrap, VosTrainConfig, bootstrapped_ce, train_vos
from models.train.vos_data import ClipSettings, VosClipDataset
from models.vos import STCN, VosConfig, masks_from_label_map, prepare_for_inference
from models.vos.video import segment_video
from service.cli import app

WORLD = WorldConfig(width=96, height=64, frames=6, fps=4, max_objects=2)
TINY = dataclasses.asdict(tiny_config())


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("vos-data") / "data"
    meta = generate_dataset(root, WORLD, 3, seed=5, split="train")
    return root, meta


def config(root, tmp_path, **overrides):
    values = dict(
        data=root,
        store=tmp_path / "store",
        iters=3,
        batch_size=2,
        val_videos=1,
        crop=(48, 64),
        work_dir=tmp_path / "work",
        model_overrides=TINY,
        show_progress=False,
    )
    return VosTrainConfig(**{**values, **overrides})


def test_clips_follow_at_most_two_first_frame_objects(dataset):
    root, _ = dataset
    videos = load_davis(root / "davis", "train").videos
    clips = VosClipDataset(videos, ClipSettings(crop=(48, 64), short_edge=None), seed=1)
    for index in range(len(clips)):
        clip = clips[index]
        assert clip.frames.shape == (3, 3, 48, 64) and clip.labels.shape == (3, 48, 64)
        followed = int(clip.selector.sum())
        assert 1 <= followed <= 2
        assert set(clip.labels.unique().tolist()) <= set(range(followed + 1))
        # The first masks are the first frame's labels.
        for k in range(followed):
            assert torch.equal(clip.first_masks[k].bool(), clip.labels[0] == k + 1)


@pytest.mark.parametrize(
    ("short_edge", "upscale", "size"),
    [(32, False, (32, 48)), (96, False, (64, 96)), (96, True, (96, 144))],
)
def test_clips_are_cut_at_the_working_size_as_inference_works(dataset, short_edge, upscale, size):
    root, _ = dataset
    video = load_davis(root / "davis", "train").videos[0]
    clips = VosClipDataset([video], ClipSettings(short_edge=short_edge, upscale=upscale), seed=1)
    images, ids = clips._load(video, [0, 1, 2])
    assert images.shape == (3, *size, 3) and ids.shape == (3, *size)
    # Labels are resized by nearest neighbour: no id appears that the annotation lacks.
    assert set(np.unique(ids)) <= set(np.unique(np.stack(video.load_masks())))


def test_bootstrap_keeps_the_hardest_pixels_after_warm_up():
    schedule = Bootstrap(start=0.1, end=0.5, top_p=0.2)
    assert schedule.share(0, 100) == 1.0 and schedule.share(50, 100) == pytest.approx(0.2)
    assert schedule.share(30, 100) == pytest.approx(0.6)
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 1, 0, 0] = 8.0  # one confidently wrong pixel
    labels = torch.zeros(1, 2, 2, dtype=torch.long)
    assert bootstrapped_ce(logits, labels, 0.25) > bootstrapped_ce(logits, labels, 1.0)


def test_train_publish_reload_resume(dataset, tmp_path):
    root, meta = dataset
    folder = train_vos(config(root, tmp_path))
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["family"] == "vos" and manifest["class_names"] == []
    assert manifest["dataset_fingerprint"] == meta["fingerprint"]
    assert {"J&F-Mean", "J-Mean", "F-Mean"} <= set(manifest["metrics"])
    assert manifest["training"]["iters"] == 3 and manifest["training"]["train_videos"] == 2
    assert VosConfig.from_dict(manifest["architecture"]) == VosConfig.small(**TINY)

    # The published weights are the trained ones: same masks as the training state gives.
    trained = STCN(VosConfig.small(**TINY))
    trained.load_state_dict(torch.load(tmp_path / "work" / "train_state.pt")["model"])
    video = load_davis(root / "davis", "train").videos[-1]
    published = load_checkpoint(folder).model
    outputs = [run_video(prepare_for_inference(m), video) for m in (trained, published)]
    np.testing.assert_array_equal(outputs[0], outputs[1])

    resumed = train_vos(config(root, tmp_path, iters=5, resume=True, store=tmp_path / "store2"))
    training = json.loads((resumed / "manifest.json").read_text())["training"]
    assert training["resumed_from_step"] == 3 and training["iters"] == 5


def run_video(model, video):
    from models.train.vis_data import read_rgb

    first = masks_from_label_map(video.load_masks()[0])
    frames = [read_rgb(path) for path in video.frame_paths]
    return np.stack(list(segment_video(model, frames, first)))


def test_cli_reports_a_missing_dataset(tmp_path):
    result = CliRunner().invoke(
        app, ["train", "vos", "--data", str(tmp_path), "--out", str(tmp_path / "store")]
    )
    assert result.exit_code == 2 and "ImageSets/2017/train.txt" in result.output


def test_retune_republishes_the_weights_with_another_mem_every(dataset, tmp_path):
    root, _ = dataset
    source = train_vos(config(root, tmp_path))
    store = tmp_path / "store"
    result = CliRunner().invoke(
        app,
        ["train", "vos-retune", "--store", str(store), "--val", str(root)]
        + ["--val-split", "train", "--mem-every", "1"],
    )
    assert result.exit_code == 0, result.output
    [retuned] = [p for p in (store / "vos" / "stcn").iterdir() if p != source]
    before = json.loads((source / "manifest.json").read_text())
    after = json.loads((retuned / "manifest.json").read_text())
    assert after["architecture"] == {**before["architecture"], "mem_every": 1}
    record = after["training"].pop("retuned")
    assert after["training"] == before["training"]
    assert record["from_version"] == before["version"]
    assert record["changed"] == {"mem_every": [before["architecture"]["mem_every"], 1]}
    assert record["metrics_before"] == before["metrics"]
    assert after["metrics"]["val_videos"] == 3  # every video of --val, re-measured
    old, new = load_checkpoint(source).model, load_checkpoint(retuned).model
    for name, tensor in old.state_dict().items():
        torch.testing.assert_close(new.state_dict()[name], tensor, rtol=0, atol=0)


def test_retune_to_an_upscaled_working_size_and_a_retune_of_nothing(dataset, tmp_path):
    root, _ = dataset
    source = train_vos(config(root, tmp_path))
    store = tmp_path / "store"
    retune = ["train", "vos-retune", "--store", str(store), "--val", str(root)]
    retune += ["--val-split", "train"]
    nothing = CliRunner().invoke(app, retune)
    assert nothing.exit_code == 2 and "nothing to change" in " ".join(nothing.output.split())
    assert [p for p in (store / "vos" / "stcn").iterdir()] == [source]

    result = CliRunner().invoke(app, [*retune, "--short-edge", "96", "--upscale"])
    assert result.exit_code == 0, result.output
    [retuned] = [p for p in (store / "vos" / "stcn").iterdir() if p != source]
    before = json.loads((source / "manifest.json").read_text())["architecture"]
    after = json.loads((retuned / "manifest.json").read_text())
    assert after["architecture"] == {**before, "short_edge": 96, "upscale": True}
    changed = after["training"]["retuned"]["changed"]
    assert changed == {"short_edge": [before["short_edge"], 96], "upscale": [False, True]}
    # The 96x64 videos are now segmented at 144x96, and still answered at their size.
    model = load_checkpoint(retuned).model
    assert model.config.upscale and model.config.short_edge == 96
    video = load_davis(root / "davis", "train").videos[0]
    assert run_video(model, video).shape[1:] == (64, 96)


def test_fine_tune_on_a_mix_leaves_videos_without_objects_out(dataset, tmp_path):
    from models.data.synthetic.world import wide_world

    root, _ = dataset
    negatives = tmp_path / "negatives"
    world = wide_world(width=96, height=64, frames=6, fps=4, max_objects=2, negatives=1.0)
    generate_dataset(negatives, world, 2, seed=6, split="train")
    source = train_vos(config(root, tmp_path))
    # lr 0: the published weights are the starting checkpoint's, so --init loaded them.
    tuned = train_vos(
        config(
            root,
            tmp_path,
            lr=0.0,
            also_data=(negatives,),
            init=source,
            store=tmp_path / "tuned",
            work_dir=tmp_path / "work2",
        )
    )
    training = json.loads((tuned / "manifest.json").read_text())["training"]
    assert training["data"] == [str(root), str(negatives)] and training["init"] == str(source)
    assert training["train_videos"] == 2  # the 3 with objects, one held out; no negative
    before, after = load_checkpoint(source).model, load_checkpoint(tuned).model
    for (name, a), (_, b) in zip(before.named_parameters(), after.named_parameters(), strict=True):
        assert torch.equal(a, b), name
