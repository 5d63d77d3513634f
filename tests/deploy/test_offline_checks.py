"""The deployment files pass the tools their users would run, offline (no Docker engine, no
cluster): the compose specification's schema, hadolint, kubernetes-validate --strict. Each check
is also shown to fail on a broken file, so that a passing check means something."""

import json

import pytest
import yaml

from tests.deploy.files import (
    COMPOSE,
    COMPOSE_CPU,
    CUSTOM_KINDS,
    DOCKERFILE,
    K8S,
    KUSTOMIZATIONS,
    ROOT,
    kustomization,
    load_compose,
    manifest_files,
    manifests,
    run_tool,
)

HADOLINT_CONFIG = ROOT / "deploy" / "hadolint.yaml"


def check_compose(path, tmp_path):
    """check-jsonschema against the compose specification. The spec's merge tags (`!reset`) are
    resolved to the value they carry first, as check-jsonschema's YAML reader rejects them."""
    data = load_compose(path)
    as_json = tmp_path / f"{path.stem}.json"
    as_json.write_text(json.dumps(data))
    return run_tool("check-jsonschema", "--builtin-schema", "vendor.compose-spec", as_json)


@pytest.mark.parametrize("path", [COMPOSE, COMPOSE_CPU], ids=lambda p: p.name)
def test_compose_files_follow_the_compose_specification(path, tmp_path):
    result = check_compose(path, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_main_compose_file_passes_check_jsonschema_as_it_is():
    result = run_tool("check-jsonschema", "--builtin-schema", "vendor.compose-spec", COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_compose_check_rejects_a_misspelt_key(tmp_path):
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace("depends_on:", "depend_on:", 1))
    result = check_compose(broken, tmp_path)
    assert result.returncode != 0 and "depend_on" in result.stdout


def test_the_cpu_override_drops_the_gpu_reservation():
    text = COMPOSE_CPU.read_text()
    assert "devices: !reset []" in text
    worker = load_compose(COMPOSE_CPU)["services"]["worker"]
    assert worker["deploy"]["resources"]["reservations"]["devices"] == []
    assert worker["environment"]["VIDSERVE_DEVICE"] == "cpu"
    gpu = load_compose(COMPOSE)["services"]["worker"]["deploy"]["resources"]["reservations"]
    assert gpu["devices"] == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]


def test_dockerfile_passes_hadolint():
    config = yaml.safe_load(HADOLINT_CONFIG.read_text())
    assert config["failure-threshold"] == "style", "every finding fails"
    result = run_tool("hadolint", "--no-color", "--config", HADOLINT_CONFIG, DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_accepted_hadolint_rules_are_written_down_with_a_reason():
    """An ignored rule needs a `# reason` on its line in deploy/hadolint.yaml."""
    ignored = yaml.safe_load(HADOLINT_CONFIG.read_text())["ignored"] or []
    lines = HADOLINT_CONFIG.read_text().splitlines()
    for rule in ignored:
        line = next(x for x in lines if x.strip().startswith(f"- {rule}"))
        assert "#" in line and len(line.split("#", 1)[1].strip()) > 10, line
    assert "# hadolint ignore" not in DOCKERFILE.read_text(), "accept rules in the config only"


def test_hadolint_rejects_a_careless_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\nUSER app\n")
    result = run_tool("hadolint", "--no-color", "--config", HADOLINT_CONFIG, bad)
    assert result.returncode != 0
    for rule in ("DL3007", "DL3013", "DL3042"):
        assert rule in result.stdout


def test_kubernetes_manifests_pass_kubernetes_validate_strict():
    files = manifest_files()
    result = run_tool("kubernetes-validate", "--strict", *files)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    passed = [line for line in lines if line.startswith("INFO") and " passed " in line]
    warned = [line for line in lines if line.startswith("WARN")]
    kinds = [d["kind"] for d in manifests()]
    # Every resource of a built-in kind was validated; only the custom ones had no schema.
    assert len(passed) == sum(k not in CUSTOM_KINDS for k in kinds), result.stdout
    for line in warned:
        assert any(f"kind {kind} " in line for kind in CUSTOM_KINDS), line


def test_kubernetes_validate_strict_rejects_an_unknown_field(tmp_path):
    broken = tmp_path / "worker.yaml"
    text = (K8S / "worker.yaml").read_text()
    broken.write_text(text.replace("readinessProbe:", "readinesProbe:", 1))
    result = run_tool("kubernetes-validate", "--strict", broken)
    assert result.returncode != 0 and "readinesProbe" in result.stdout


@pytest.mark.parametrize("kind", sorted(CUSTOM_KINDS))
def test_custom_resources_follow_their_schema(kind, tmp_path):
    docs = [d for d in manifests() if d["kind"] == kind]
    assert docs
    for k, doc in enumerate(docs):
        path = tmp_path / f"{kind}-{k}.json"
        path.write_text(json.dumps(doc))
        result = run_tool("check-jsonschema", "--schemafile", CUSTOM_KINDS[kind], path)
        assert result.returncode == 0, result.stdout + result.stderr


def test_the_scaledobject_schema_rejects_a_misspelt_trigger_field(tmp_path):
    doc = next(d for d in manifests() if d["kind"] == "ScaledObject")
    doc["spec"]["triggers"][0]["metadata"]["consumergroup"] = "workers"
    path = tmp_path / "scaledobject.json"
    path.write_text(json.dumps(doc))
    result = run_tool("check-jsonschema", "--schemafile", CUSTOM_KINDS["ScaledObject"], path)
    assert result.returncode != 0


def test_kustomizations_apply_every_manifest_once():
    listed = manifest_files()
    assert len(listed) == len(set(listed))
    on_disk = {p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml"}
    assert set(listed) == on_disk, "a manifest that no kustomization applies, or a missing one"
    images = {kustomization(k)["images"][0]["newName"] for k in KUSTOMIZATIONS}
    assert len(images) == 1, "the service and the training Job run the same image"
