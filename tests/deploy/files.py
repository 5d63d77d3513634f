"""Reading the deployment files the way their tools do (shared by the tests of tests/deploy)."""

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_CPU = ROOT / "docker-compose.cpu.yml"
K8S = ROOT / "deploy" / "k8s"
KUSTOMIZATIONS = [K8S / "kustomization.yaml", K8S / "train" / "kustomization.yaml"]
# Kinds of custom resources that kubernetes-validate has no schema for; each is checked otherwise.
CUSTOM_KINDS = {"ScaledObject": ROOT / "tests" / "deploy" / "keda-scaledobject.schema.json"}


class ComposeLoader(yaml.SafeLoader):
    """YAML with the compose specification's merge tags (`!reset`, `!override`): the value as
    written, so that the schema sees what the tag applies to."""


def _tagged(loader, node):
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)


for _tag in ("!reset", "!override"):
    ComposeLoader.add_constructor(_tag, _tagged)


def load_compose(path: Path = COMPOSE) -> dict:
    return yaml.load(path.read_text(), Loader=ComposeLoader)


def kustomization(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def manifest_files() -> list[Path]:
    """Every manifest the kustomizations apply, in their order."""
    files = []
    for path in KUSTOMIZATIONS:
        files += [path.parent / name for name in kustomization(path)["resources"]]
    return files


def manifests() -> list[dict]:
    docs = []
    for path in manifest_files():
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def by_kind(kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in manifests() if d["kind"] == kind}


def pod_specs() -> dict[str, dict]:
    """Pod templates of the workloads, by workload name."""
    specs = {}
    for doc in manifests():
        if doc["kind"] in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
            specs[doc["metadata"]["name"]] = doc["spec"]["template"]["spec"]
    return specs


def tool(name: str) -> str:
    """A command-line tool of the dev group, from this environment's bin folder."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not installed: `uv sync` installs the dev group")
    return found


def run_tool(*args, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [tool(args[0]), *map(str, args[1:])], cwd=cwd, capture_output=True, text=True, timeout=120
    )
