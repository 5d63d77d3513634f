"""VIDSERVE_MODELS / --models: a worker loads only the checkpoints it is asked for, and one asked
for but not yet in the store loads when a trainer publishes it."""

import logging
import shutil

from service.app import ModelHost, model_host
from service.queue.inprocess import InProcessTransport
from service.settings import SHIPPED_CHECKPOINTS, Settings
from service.worker.worker import Worker, WorkerConfig


def served(worker: Worker) -> set[str]:
    return {info.name for info in worker.models()}


def test_a_host_loads_only_the_models_asked_for_and_a_missing_one_once_published(tmp_path, caplog):
    store = tmp_path / "store"
    shutil.copytree(SHIPPED_CHECKPOINTS / "vos", store / "vos")
    shutil.copytree(SHIPPED_CHECKPOINTS / "instance", store / "instance")
    worker = Worker(InProcessTransport(), WorkerConfig())
    settings = Settings(checkpoint_store=store, device="cpu", models=" stcn, masktrack ")
    with caplog.at_level(logging.WARNING, logger="service.app"):
        host = model_host(worker, settings)
    assert host.missing() == ["masktrack"]
    assert "not in the store" in caplog.text and "masktrack" in caplog.text
    assert "cascade-swin, stcn" in caplog.text  # what the store does hold

    assert host.sync() == [f"stcn:{host.store.latest_version('vos', 'stcn')}"]
    assert served(worker) == {"stcn"}  # cascade-swin is in the store, not asked for

    shutil.copytree(SHIPPED_CHECKPOINTS / "vis", store / "vis")  # a trainer publishes it
    installed = {name.split(":")[0] for name in host.sync()}
    # (plus the pipelines over masktrack that this test process registered before, if any)
    assert {"masktrack", "masktrack-instance"} <= installed
    assert served(worker) == {"stcn"} | installed
    assert "cascade-swin" not in installed
    assert host.missing() == []


def test_no_list_means_every_model_in_the_store(tmp_path):
    store = tmp_path / "store"
    shutil.copytree(SHIPPED_CHECKPOINTS / "vos", store / "vos")
    worker = Worker(InProcessTransport(), WorkerConfig())
    host = ModelHost(worker, store, "cpu", only=" , ")
    assert host.only is None and host.missing() == []
    host.sync()
    assert served(worker) == {"stcn"}
