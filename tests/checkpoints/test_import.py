"""`vidserve checkpoints import / list / verify`: published checkpoint files (random values, the
published names and shapes) become store entries that verify and serve."""

import httpx
import pytest
import safetensors.torch
import torch
from torchvision.models.detection import maskrcnn_resnet50_fpn
from typer.testing import CliRunner

from models.checkpoints import WEIGHTS_FILE, CheckpointStore
from models.vis.mmtracking_weights import YOUTUBE_VIS_2019_CLASSES
from service.cli import app
from tests.service.conftest import Server
from tests.vis.mmtracking_fixtures import mmtracking_like_state
from tests.vos.vos_fixtures import KEY_LIST as STCN_KEY_LIST
from tests.vos.vos_fixtures import parse_key_list as parse_stcn_key_list

# torchvision's COCO labels: 12 is an unused id ("N/A"), 13 is "stop sign", 80 COCO names kept.
COCO_STOP_SIGN, COCO_UNUSED = 13, 12


class NotATensor:
    """Any pickled object other than tensors and plain containers."""


def run(*args: str):
    result = CliRunner().invoke(app, [str(arg) for arg in args], env={"COLUMNS": "400"})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def entries(store) -> list[tuple[str, str, str]]:
    found = CheckpointStore(store)
    return [
        (family, name, version)
        for family in found.families()
        for name in found.names(family)
        for version in found.versions(family, name)
    ]


def stored_weights(store, family: str, name: str) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(CheckpointStore(store).latest(family, name) / WEIGHTS_FILE)


@pytest.fixture(scope="module")
def masktrack_store(tmp_path_factory):
    """MMTracking's released layout, {'meta': plain data, 'state_dict': ...}, imported with the
    command into a new store (the result of the import, and the store)."""
    folder = tmp_path_factory.mktemp("masktrack")
    source = folder / "masktrack_rcnn_r50_fpn_12e_youtubevis2019.pth"
    meta = {"mmtrack_version": "0.14.0", "epoch": 12, "config": "model = dict(...)"}
    torch.save({"meta": meta, "state_dict": mmtracking_like_state()}, source)
    store = folder / "store"
    result = run("checkpoints", "import", source, "--store", store)
    source.unlink()  # 232 MB: the store holds the converted copy
    return result, store


@pytest.fixture(scope="module")
def stcn_state():
    """As the official STCN file holds it (tests/vos: every entry its own number), saved from
    DataParallel ('module.' prefix) and without the batch-norm counters."""
    return {
        f"module.{name}": torch.full(shape, number % 251 + 1, dtype=torch.float32)
        for number, (name, shape) in enumerate(parse_stcn_key_list(STCN_KEY_LIST).items())
        if not name.endswith("num_batches_tracked")
    }


def test_the_mmtracking_file_imports_as_masktrack(masktrack_store):
    result, store = masktrack_store
    assert result.exit_code == 0, result.output
    ((family, name, version),) = entries(store)
    assert (family, name) == ("vis", "masktrack")
    summary = result.stdout
    assert "imported mmtracking-masktrack-rcnn: 40 classes (person, giant_panda, lizard" in summary
    assert "58,081,093 parameters" in summary  # 58,076,736 + the background's zero rows
    assert str(store / "vis" / "masktrack" / version) in summary
    assert f"--store {store} --default-model masktrack" in summary

    verified = run("checkpoints", "verify", "--store", store)
    assert verified.exit_code == 0, verified.output
    assert f"ok     vis/masktrack/{version}  sha256 " in verified.stdout
    listed = run("checkpoints", "list", "--store", store)
    assert listed.exit_code == 0
    assert f"* vis/masktrack/{version}  40 classes" in listed.stdout
    assert "from MMTracking MaskTrack R-CNN" in listed.stdout


def test_the_imported_masktrack_serves(masktrack_store, video_file, tmp_path):
    _result, store = masktrack_store
    with open(tmp_path / "server.log", "w") as log:
        server = Server(store=store, log=log)
        try:
            models = httpx.get(f"{server.url}/v1/models").json()["models"]
            with open(video_file, "rb") as video:
                answer = httpx.post(
                    f"{server.url}/v1/segment",
                    files={"video": video},
                    data={"max_frames": "2"},
                    timeout=600,
                )
        finally:
            server.stop()
    served = {model["name"]: model for model in models}
    assert set(served) == {"masktrack", "masktrack-instance"}
    assert served["masktrack"]["classes"] == list(YOUTUBE_VIS_2019_CLASSES)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model"] == "masktrack"  # the default model: no `model` field was sent
    assert [frame["frame_index"] for frame in body["frames"]] == [0, 1]
    categories = {o["category"] for f in body["frames"] for o in f["objects"]}
    assert categories <= set(YOUTUBE_VIS_2019_CLASSES)


def test_a_torchvision_coco_file_imports_with_the_80_coco_classes(tmp_path):
    torch.manual_seed(0)
    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    state = model.state_dict()
    del model
    # As torchvision's COCO file: the old names of two heads, no batch-norm counters.
    legacy = {}
    for name, tensor in state.items():
        if name.endswith("num_batches_tracked"):
            continue
        name = name.replace("rpn.head.conv.0.0.", "rpn.head.conv.")
        for index in range(4):
            name = name.replace(f"mask_head.{index}.0.", f"mask_head.mask_fcn{index + 1}.")
        legacy[name] = tensor
    source = tmp_path / "maskrcnn_resnet50_fpn_coco.pth"
    torch.save(legacy, source)
    store = tmp_path / "store"

    result = run("checkpoints", "import", source, "--store", store, "--version", "coco-1")
    assert result.exit_code == 0, result.output
    assert entries(store) == [("vis", "maskrcnn-coco", "coco-1")]
    assert "imported torchvision-maskrcnn-coco: 80 classes (person, bicycle, car" in result.stdout
    weights = stored_weights(store, "vis", "maskrcnn-coco")
    classifier = weights["roi_heads.box_predictor.cls_score.weight"]
    expected = state["roi_heads.box_predictor.cls_score.weight"]
    assert classifier.shape == (81, 1024)
    assert torch.equal(classifier[0], expected[0])  # background stays first
    assert torch.equal(classifier[COCO_STOP_SIGN - 1], expected[COCO_STOP_SIGN])  # after "N/A"
    assert not any(torch.equal(row, expected[COCO_UNUSED]) for row in classifier)
    manifest = CheckpointStore(store).latest("vis", "maskrcnn-coco") / "manifest.json"
    assert '"stop sign"' in manifest.read_text() and '"N/A"' not in manifest.read_text()
    assert run("checkpoints", "verify", "--store", store, "maskrcnn-coco/coco-1").exit_code == 0


def test_an_stcn_file_imports_as_stcn(tmp_path, stcn_state):
    source = tmp_path / "stcn.pth"
    torch.save(stcn_state, source)
    store = tmp_path / "store"
    result = run("checkpoints", "import", source, "--store", store, "--version", "1")
    assert result.exit_code == 0, result.output
    assert entries(store) == [("vos", "stcn", "1")]
    assert "imported stcn: 1 class (object)" in result.stdout
    weights = stored_weights(store, "vos", "stcn")
    assert torch.equal(weights["decoder.pred.bias"], stcn_state["module.decoder.pred.bias"])
    assert run("checkpoints", "verify", "--store", store, "stcn").exit_code == 0


def test_a_file_needing_pickle_is_refused_unless_allowed(tmp_path, stcn_state):
    source = tmp_path / "stcn_with_objects.pth"
    torch.save({"state_dict": stcn_state, "meta": {"hook": NotATensor()}}, source)
    store = tmp_path / "store"

    refused = run("checkpoints", "import", source, "--store", store)
    assert refused.exit_code == 2
    message = " ".join(refused.stderr.split())
    assert "NotATensor" in message and "--allow-pickle" in message
    assert "runs whatever code the file names" in message
    assert entries(store) == []

    accepted = run("checkpoints", "import", source, "--store", store, "--allow-pickle")
    assert accepted.exit_code == 0, accepted.output
    assert [entry[:2] for entry in entries(store)] == [("vos", "stcn")]


def test_an_unknown_layout_is_refused_naming_the_nearest_format(tmp_path):
    # MMTracking's names under another prefix: only the track head's 4 entries are recognised.
    renamed = {
        name.replace("detector.", "model.detector_"): torch.zeros(1)
        for name in mmtracking_like_state_names()
    }
    source = tmp_path / "other.pth"
    torch.save(renamed, source)
    result = run("checkpoints", "import", source, "--store", tmp_path / "store")
    assert result.exit_code == 2
    message = " ".join(result.stderr.split())
    assert "unknown key layout (364 entries)" in message
    assert "Nearest: MMTracking MaskTrack R-CNN R50-FPN, YouTube-VIS 2019, sharing 1%" in message
    assert "missing 360: detector.backbone.bn1.bias" in message
    assert "unexpected 360: model.detector_backbone.bn1.bias" in message


def mmtracking_like_state_names() -> list[str]:
    from tests.vis.mmtracking_fixtures import parse_key_list

    return list(parse_key_list())


UNREADABLE_PTH = "not a readable PyTorch file (corrupt or truncated?)"
BAD_SAFETENSORS = b"\x10\x00\x00\x00\x00\x00\x00\x00{not json"


@pytest.mark.parametrize(
    ("file_name", "content", "problem"),
    [
        ("truncated.pth", "half", UNREADABLE_PTH),
        ("empty.pth", b"", UNREADABLE_PTH),
        ("garbage.safetensors", BAD_SAFETENSORS, "not a readable safetensors file"),
    ],
)
def test_a_corrupt_file_is_refused(tmp_path, file_name, content, problem):
    source = tmp_path / file_name
    if content == "half":
        torch.save({"conv.weight": torch.zeros(64, 64)}, tmp_path / "whole.pth")
        whole = (tmp_path / "whole.pth").read_bytes()
        content = whole[: len(whole) // 2]
    source.write_bytes(content)
    result = run("checkpoints", "import", source, "--store", tmp_path / "store")
    assert result.exit_code == 2
    assert problem in " ".join(result.stderr.split())
    assert not (tmp_path / "store").exists() or entries(tmp_path / "store") == []
