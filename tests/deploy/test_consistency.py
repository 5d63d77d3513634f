"""What the Dockerfile, the compose files and the Kubernetes manifests name must exist in the code:
commands and their options, environment variables, ports, endpoints, paths and Redis keys. A
renamed option or setting fails here instead of in a cluster."""

import json
import re
import shlex
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest
import typer

from service.cli import app as cli_app
from service.queue.redis_streams import GROUP, PREFIX, work_stream
from service.settings import Settings
from tests.deploy.files import (
    COMPOSE,
    COMPOSE_CPU,
    DOCKERFILE,
    K8S,
    KUSTOMIZATIONS,
    ROOT,
    by_kind,
    kustomization,
    load_compose,
    manifests,
    pod_specs,
)

DEPLOY_FILES = [
    DOCKERFILE,
    COMPOSE,
    COMPOSE_CPU,
    *sorted((ROOT / "deploy").rglob("*.yaml")),
    *sorted((ROOT / "deploy").glob("*.sh")),
    ROOT / "deploy" / "healthcheck.py",
]
SETTINGS = {f"VIDSERVE_{name.upper()}": name for name in Settings.model_fields}
DEFAULTS = Settings()
APP_DIR = "/app"  # the Dockerfile's WORKDIR: where the repository's files are in the image


# --- the Dockerfile ---------------------------------------------------------------------------
def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def image_files() -> set[str]:
    """Paths (relative to the repository) that the runtime stage copies from the context."""
    copied, stage = set(), ""
    for word, rest in dockerfile_instructions():
        if word == "FROM":
            stage = rest.split()[-1]
        elif word == "COPY" and stage == "runtime" and "--from" not in rest:
            *sources, _ = rest.split()
            copied |= {s.rstrip("/") for s in sources}
    return copied


def in_image(path: str) -> bool:
    """Whether an absolute path in the image comes from a file or folder the image copies."""
    if not path.startswith(APP_DIR + "/"):
        return False
    rel = path[len(APP_DIR) + 1 :]
    return any(rel == c or rel.startswith(c + "/") for c in image_files()) and (ROOT / rel).exists()


def test_dockerfile_copies_what_exists_and_what_the_build_context_lets_through():
    allowed = [
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    for word, rest in dockerfile_instructions():
        if word != "COPY" or "--from" in rest:
            continue
        *sources, _ = rest.split()
        for source in sources:
            source = source.rstrip("/")
            assert (ROOT / source).exists(), f"COPY {source}: no such file"
            assert any(source == a or source.startswith(a + "/") for a in allowed), (
                f"COPY {source}: .dockerignore keeps it out of the build context"
            )


def test_dockerfile_commands_ports_and_settings():
    instructions = dockerfile_instructions()
    cmd = json.loads(next(rest for word, rest in instructions if word == "CMD"))
    check_command(cmd)
    health = next(rest for word, rest in instructions if word == "HEALTHCHECK")
    check_command(json.loads(health.split("CMD", 1)[1]))
    exposed = {int(p) for word, rest in instructions if word == "EXPOSE" for p in rest.split()}
    env = dict(
        item.split("=", 1)
        for word, rest in instructions
        if word == "ENV"
        for item in shlex.split(rest)
    )
    assert exposed == {int(env["VIDSERVE_PORT"]), int(env["VIDSERVE_GRPC_PORT"]), worker_port()}
    assert int(env["VIDSERVE_PORT"]) == DEFAULTS.port
    assert int(env["VIDSERVE_GRPC_PORT"]) == DEFAULTS.grpc_port
    assert [rest for word, rest in instructions if word == "WORKDIR"][-1] == APP_DIR
    # The shipped checkpoints sit where the settings' default store is (the project root).
    assert "checkpoints" in image_files() and DEFAULTS.checkpoint_store == ROOT / "checkpoints"
    user = next(rest for word, rest in reversed(instructions) if word == "USER")
    assert user.split(":")[0].isdigit() and int(user.split(":")[0]) != 0, "a numeric non-root"


def documented_runs() -> list[tuple[list[str], dict[str, str], bool]]:
    """The Dockerfile's example `docker run`s: (command, environment, healthcheck on), the
    environment being the image's ENV with the run's -e on top, the command the image's CMD
    when the run names none."""
    instructions = dockerfile_instructions()
    image_env = dict(
        item.split("=", 1)
        for word, rest in instructions
        if word == "ENV"
        for item in shlex.split(rest)
    )
    default = json.loads(next(rest for word, rest in instructions if word == "CMD"))
    runs = []
    for line in DOCKERFILE.read_text().splitlines():
        text = line.lstrip("# ")
        if not (line.startswith("#") and text.startswith("docker run ")):
            continue
        words = shlex.split(text.split(" # ")[0])
        env, healthcheck, rest = dict(image_env), True, words[2:]
        while rest[0].startswith("-"):
            flag = rest.pop(0)
            if flag in ("-e", "--env"):
                key, value = rest.pop(0).split("=", 1)
                env[key] = value
            elif flag == "--no-healthcheck":
                healthcheck = False
            elif flag in ("-p", "--publish", "-v", "--volume", "--name", "--gpus"):
                rest.pop(0)
        assert rest[0] == "vidserve", f"{line}: the image is the one built above"
        runs.append((rest[1:] or default, env, healthcheck))
    return runs


def test_every_documented_docker_run_is_healthy():
    """The HEALTHCHECK polls (deploy/healthcheck.py) VIDSERVE_WORKER_PORT when set, else
    VIDSERVE_PORT: in each documented run that must be the port the command serves /healthz on
    (a gateway: its REST port; a worker: its health port, off unless set), or the run must turn
    the healthcheck off (a job such as training serves nothing)."""
    runs = documented_runs()
    assert {tuple(command[:2]) for command, _, _ in runs} >= {
        ("vidserve", "serve"),
        ("vidserve", "worker"),
    }
    for command, env, healthcheck in runs:
        check_command(command)
        settings = Settings(**{SETTINGS[k]: v for k, v in env.items() if k in SETTINGS})
        serves = None  # the port this command answers /healthz on
        if command[:2] == ["vidserve", "serve"]:
            serves = settings.port
        elif command[:2] == ["vidserve", "worker"]:
            serves = settings.worker_port
        if not healthcheck:
            assert serves is None, f"{command}: a service with its healthcheck off"
            continue
        polled = int(env.get("VIDSERVE_WORKER_PORT") or env.get("VIDSERVE_PORT", "8000"))
        assert serves == polled, (
            f"docker run ... {' '.join(command)}: the healthcheck polls port {polled}, "
            f"the command serves /healthz on {serves}"
        )


def test_every_vidserve_variable_named_anywhere_is_a_setting():
    for path in DEPLOY_FILES:
        for name in set(re.findall(r"\bVIDSERVE_[A-Z0-9_]+\b", path.read_text())):
            assert name in SETTINGS, f"{path.relative_to(ROOT)}: {name} is not a setting"


# --- commands -----------------------------------------------------------------------------------
def cli_command(words: list[str]):
    """The click command `vidserve words...` names, and the words left after it."""
    command = typer.main.get_command(cli_app)
    rest = list(words)
    while rest and hasattr(command, "commands") and rest[0] in command.commands:
        command = command.commands[rest.pop(0)]
    assert not hasattr(command, "commands"), f"vidserve {' '.join(words)}: no such command"
    return command, rest


def check_vidserve(words: list[str]) -> None:
    command, rest = cli_command(words)
    options = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
    for word in rest:
        if word.startswith("--"):
            assert word.split("=")[0] in options, f"vidserve {' '.join(words)}: no option {word}"


def script_commands(path: Path) -> list[list[str]]:
    """The `vidserve ...` commands of a shell script (the words after `vidserve`); options the
    script prepends to "$@" with `set --` belong to its last command (the one it execs)."""
    commands, prepended = [], []
    for line in re.sub(r"\\\n", " ", path.read_text()).splitlines():
        if line.strip().startswith("#"):
            continue
        # train.sh trains the family TRAIN_FAMILY names: checked as its default, vis.
        words = [w.replace("$family", "vis") for w in shlex.split(line)]
        if words[:2] == ["set", "--"]:
            prepended += [w for w in words[2:] if w != "$@"]
        elif "vidserve" in words:
            commands.append(words[words.index("vidserve") + 1 :])
    assert commands, f"{path}: no vidserve command"
    commands[-1] += prepended
    return commands


def script_for(command: list[str]) -> Path | None:
    if len(command) >= 2 and command[0] in ("sh", "python") and command[1].startswith(APP_DIR):
        return ROOT / command[1][len(APP_DIR) + 1 :]
    return None


def check_command(command: list[str], args: list[str] = ()) -> None:
    """A container's command (entrypoint + args): a vidserve command with real options, or a
    script from the repository that the image contains."""
    full = [*command, *args]
    if full[0] == "vidserve":
        check_vidserve(full[1:])
        return
    script = script_for(full)
    assert script is not None, f"unexpected command {full}"
    assert in_image(full[1]), f"{full[1]} is not copied into the image"
    if script.name == "train.sh":
        for words in script_commands(script):
            check_vidserve(words)
        train = next(w for w in script_commands(script) if w[:2] == ["train", "vis"])
        check_vidserve([*train[:2], *full[2:]])  # arguments go on to `vidserve train vis`


# --- compose ----------------------------------------------------------------------------------
def compose_services() -> dict[str, dict]:
    return load_compose(COMPOSE)["services"]


def worker_port() -> int:
    return int(compose_services()["worker"]["environment"]["VIDSERVE_WORKER_PORT"])


def check_settings_values(env: dict[str, str]) -> None:
    values = {SETTINGS[k]: v for k, v in env.items() if k in SETTINGS}
    Settings(**values)  # each value parses as the setting it is for


def test_compose_commands_exist():
    for name, service in compose_services().items():
        if service.get("image", "").startswith("redis:"):
            continue
        check_command(
            service.get("entrypoint") or service["command"],
            service["command"] if service.get("entrypoint") else [],
        )
        test = service.get("healthcheck", {}).get("test")
        if test:
            assert test[0] == "CMD", name
            check_command(test[1:])


def test_compose_environment_ports_and_volumes():
    services = compose_services()
    volumes = load_compose(COMPOSE)["volumes"]
    train_variables = set(re.findall(r"\bTRAIN_[A-Z_]+\b", (ROOT / "deploy/train.sh").read_text()))
    for name, service in services.items():
        env = service.get("environment", {})
        check_settings_values(env)
        for variable in env:
            assert variable in SETTINGS or variable in train_variables, f"{name}: {variable}"
        url = env.get("VIDSERVE_REDIS_URL")
        if url:
            parsed = urlparse(url)
            assert parsed.hostname in services and parsed.port == 6379, f"{name}: {url}"
        for mount in service.get("volumes", []):
            volume, target = mount.split(":")[:2]
            assert volume in volumes, f"{name}: volume {volume}"
            if volume == "checkpoints" and "VIDSERVE_CHECKPOINT_STORE" in env:
                assert env["VIDSERVE_CHECKPOINT_STORE"] == target
    gateway = services["gateway"]
    published = {int(p.split(":")[1].split()[0]) for p in gateway["ports"]}
    gateway_env = gateway["environment"]
    assert published == {int(gateway_env["VIDSERVE_PORT"]), int(gateway_env["VIDSERVE_GRPC_PORT"])}
    assert int(services["worker"]["expose"][0]) == worker_port()
    seed = services["checkpoints-init"]["command"]
    assert seed[-1] == services["worker"]["environment"]["VIDSERVE_CHECKPOINT_STORE"]
    assert seed[-2] == f"{APP_DIR}/checkpoints"
    assert services["trainer"]["profiles"] == ["train"]


def test_compose_start_up_order():
    services = compose_services()
    assert services["worker"]["depends_on"] == {
        "redis": {"condition": "service_healthy"},
        "checkpoints-init": {"condition": "service_completed_successfully"},
    }
    assert services["gateway"]["depends_on"]["worker"] == {"condition": "service_healthy"}
    for name, service in services.items():
        if name not in ("checkpoints-init", "trainer", "trainer-ddp"):
            assert "test" in service["healthcheck"], f"{name} has no healthcheck"


# --- Kubernetes ---------------------------------------------------------------------------------
def containers() -> list[tuple[str, dict]]:
    out = []
    for workload, spec in pod_specs().items():
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            out.append((workload, container))
    return out


def container_env(container: dict) -> dict[str, str]:
    env = {}
    for source in container.get("envFrom", []):
        env |= by_kind("ConfigMap")[source["configMapRef"]["name"]]["data"]
    env |= {e["name"]: e["value"] for e in container.get("env", [])}
    return env


def test_kubernetes_commands_and_environment_exist():
    train_variables = set(re.findall(r"\bTRAIN_[A-Z_]+\b", (ROOT / "deploy/train.sh").read_text()))
    for workload, container in containers():
        if container["image"].startswith("redis:"):
            continue
        assert container["image"] == "vidserve", f"{workload}: the kustomization sets the image"
        check_command(container["command"], container.get("args", []))
        env = container_env(container)
        check_settings_values(env)
        for variable in env:
            assert variable in SETTINGS or variable in train_variables, f"{workload}: {variable}"


def test_kubernetes_ports_probes_and_services_match():
    specs = pod_specs()
    for workload, container in containers():
        if container["image"].startswith("redis:"):
            continue
        env = container_env(container)
        ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
        if container["command"][:2] == ["vidserve", "serve"]:
            assert ports == {
                "http": int(env.get("VIDSERVE_PORT", DEFAULTS.port)),
                "grpc": int(env.get("VIDSERVE_GRPC_PORT", DEFAULTS.grpc_port)),
            }
        if container["command"][:2] == ["vidserve", "worker"]:
            assert ports == {"health": int(env["VIDSERVE_WORKER_PORT"])}
            assert "nvidia.com/gpu" in container["resources"]["limits"]
        for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
            probe = container.get(kind)
            if probe is None:
                continue
            if "httpGet" in probe:
                port = probe["httpGet"]["port"]
                assert port in ports or port in ports.values(), f"{workload} {kind}: {port}"
                role = "gateway" if container["command"][1] == "serve" else "worker"
                assert probe["httpGet"]["path"] in ENDPOINTS[role], f"{workload} {kind}"
            if "grpc" in probe:
                assert probe["grpc"]["port"] == ports["grpc"]
    for name, service in by_kind("Service").items():
        selected = [
            s
            for w, s in specs.items()
            if all(by_labels(w).get(k) == v for k, v in service["spec"]["selector"].items())
        ]
        assert selected, f"Service {name} selects no pods"
        names = {p["name"] for s in selected for c in s["containers"] for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in names, f"Service {name}: {port['targetPort']}"


def by_labels(workload: str) -> dict:
    doc = next(
        d
        for d in manifests()
        if d["metadata"]["name"] == workload and "template" in d.get("spec", {})
    )
    return doc["spec"]["template"]["metadata"]["labels"]


def test_kubernetes_volumes_and_the_checkpoint_store():
    claims = set(by_kind("PersistentVolumeClaim"))
    for workload, spec in pod_specs().items():
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            if container["image"].startswith("redis:"):
                continue
            env = container_env(container)
            for mount in container.get("volumeMounts", []):
                volume = volumes[mount["name"]]
                if "persistentVolumeClaim" in volume:
                    assert volume["persistentVolumeClaim"]["claimName"] in claims
                    store = env.get("VIDSERVE_CHECKPOINT_STORE", container["command"][-1])
                    assert mount["mountPath"] == store, f"{workload}/{container['name']}"
        if any(c.get("command", [])[:2] == ["vidserve", "worker"] for c in spec["containers"]):
            seed = spec["initContainers"][0]["command"]
            assert seed[-2] == f"{APP_DIR}/checkpoints" and "seed-checkpoints" in seed[1]


def test_redis_addresses_name_the_redis_service():
    services = by_kind("Service")
    namespace = kustomization(KUSTOMIZATIONS[0])["namespace"]
    url = urlparse(by_kind("ConfigMap")["vidserve-config"]["data"]["VIDSERVE_REDIS_URL"])
    redis_service = services[url.hostname]
    assert url.port in {p["port"] for p in redis_service["spec"]["ports"]}
    for scaled in by_kind("ScaledObject").values():
        for trigger in scaled["spec"]["triggers"]:
            host, port = trigger["metadata"]["address"].rsplit(":", 1)
            assert host == f"{url.hostname}.{namespace}.svc.cluster.local"
            assert int(port) == url.port


def test_autoscaling_reads_the_streams_the_workers_read():
    workers = [
        name
        for name, spec in pod_specs().items()
        if spec["containers"][0].get("command", [])[:2] == ["vidserve", "worker"]
    ]
    for scaled in by_kind("ScaledObject").values():
        assert scaled["spec"]["scaleTargetRef"]["name"] in workers
        assert scaled["spec"]["minReplicaCount"] >= 1, "tracked sessions need a worker"
        modes = set()
        for trigger in scaled["spec"]["triggers"]:
            meta = trigger["metadata"]
            assert trigger["type"] == "redis-streams"
            assert meta["consumerGroup"] == GROUP
            assert meta["stream"].startswith(PREFIX + "work:")
            model = meta["stream"][len(work_stream("")) :]
            assert model == f"{DEFAULTS.default_model}-instance", "the stateless view"
            modes |= {
                "lag"
                if "lagCount" in meta
                else "pending"
                if "pendingEntriesCount" in meta
                else "length"
            }
        assert modes == {"lag", "pending"}


def test_the_images_kustomize_sets_are_the_ones_the_manifests_use():
    for path in KUSTOMIZATIONS:
        images = kustomization(path)["images"]
        assert [i["name"] for i in images] == ["vidserve"]
    assert (K8S / "train" / "train-job.yaml").exists()


# --- endpoints ----------------------------------------------------------------------------------
def gateway_routes() -> set[str]:
    from service.gateway.context import ServiceContext
    from service.gateway.rest import create_app

    # Included routers (jobs, the web page) appear as entries without a path of their own.
    routes = create_app(ServiceContext.create(Settings(), None)).routes
    return {r.path for r in routes if hasattr(r, "path")}


class _FakeWorker:
    def models(self):
        return [type("Info", (), {"name": "m", "version": "1"})()]

    def queue_depth(self):
        return 0

    def session_count(self):
        return 0


def worker_routes(paths: set[str]) -> set[str]:
    """The paths of `paths` the worker's health server answers with 200."""
    from service.metrics import Metrics
    from service.worker.health import WorkerHealthServer

    server = WorkerHealthServer(_FakeWorker(), Metrics(), "127.0.0.1", 0)
    server.start()
    ok = set()
    try:
        for path in paths:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}") as r:
                    if r.status == 200:
                        ok.add(path)
            except OSError:
                pass
    finally:
        server.stop()
    return ok


ENDPOINTS = {
    "gateway": {"/healthz", "/readyz", "/metrics"},
    "worker": {"/healthz", "/readyz", "/metrics"},
}


def test_probe_endpoints_are_served():
    assert ENDPOINTS["gateway"] <= gateway_routes()
    assert worker_routes(ENDPOINTS["worker"] | {"/nope"}) == ENDPOINTS["worker"]


@pytest.mark.parametrize("role", ["gateway", "worker"])
def test_healthcheck_paths_in_compose_are_served(role):
    test = compose_services()[role]["healthcheck"]["test"]
    path = test[-1] if test[-1].startswith("/") else "/healthz"
    assert path in ENDPOINTS[role]
