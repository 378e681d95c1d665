"""The ray backend of zoo training: the same zoo as the local backend, resumes, errors reach the
caller, a clear message without Ray, and no Ray processes left behind."""

import sys

import pytest

from sane.errors import ConfigError, FormatError
from sane.zoo.generate import train_population
from sane.zoo.storage import Zoo
from zoo_helpers import checkpoints, crash_training, tiny_config


@pytest.fixture(scope="module")
def local_zoo(tmp_path_factory):
    """The tiny population trained by the local backend: the reference."""
    tmp = tmp_path_factory.mktemp("local")
    train_population(tiny_config(tmp), tmp / "zoo", progress=False)
    return tmp / "zoo"


@pytest.fixture(scope="module")
def ray_instance():
    """A local Ray instance of 2 CPUs, shared by the tests that use it, shut down after them."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def metrics(zoo_dir):
    zoo = Zoo.open(zoo_dir)
    return {m.id: zoo.metrics(m.id) for m in zoo.models}


@pytest.mark.slow
def test_ray_backend_writes_the_zoo_of_the_local_backend_and_stops_its_ray(tmp_path, local_zoo):
    ray = pytest.importorskip("ray")
    assert not ray.is_initialized()
    # Two workers: the local Ray instance has two CPUs, so the two groups train side by side.
    config = tiny_config(tmp_path, workers=2)
    train_population(config, tmp_path / "zoo", progress=False, backend="ray")
    assert not ray.is_initialized()  # the instance this call started is shut down
    ray_checkpoints = checkpoints(tmp_path / "zoo")
    assert len(ray_checkpoints) == 6 * 4
    assert ray_checkpoints == checkpoints(local_zoo)
    assert metrics(tmp_path / "zoo") == metrics(local_zoo)


@pytest.mark.slow
def test_a_zoo_interrupted_locally_resumes_on_ray(tmp_path, monkeypatch, local_zoo,
                                                  ray_instance):
    config = tiny_config(tmp_path)
    # Killed inside epoch 1 of the first group: the second group has not started.
    crash_training(config, tmp_path / "zoo", monkeypatch, after=7)
    assert checkpoints(tmp_path / "zoo") != checkpoints(local_zoo)
    train_population(config, tmp_path / "zoo", progress=False, backend="ray")
    assert ray_instance.is_initialized()  # an instance it did not start is left running
    assert checkpoints(tmp_path / "zoo") == checkpoints(local_zoo)
    assert metrics(tmp_path / "zoo") == metrics(local_zoo)
    assert not list((tmp_path / "zoo").rglob("resume_*.safetensors"))


@pytest.mark.slow
def test_an_error_in_a_ray_task_reaches_the_caller_as_the_same_error(tmp_path, monkeypatch,
                                                                     ray_instance):
    config = tiny_config(tmp_path)
    crash_training(config, tmp_path / "zoo", monkeypatch, after=7)
    for file in (tmp_path / "zoo").rglob("resume_*.safetensors"):
        file.write_bytes(b"corrupt")
    with pytest.raises(FormatError, match="unreadable resume state") as caught:
        train_population(config, tmp_path / "zoo", progress=False, backend="ray")
    assert type(caught.value) is FormatError  # not Ray's wrapper, whose text is a traceback


def test_without_ray_the_error_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(ConfigError, match=r"the ray backend needs Ray: pip install 'sane\[ray\]'"):
        train_population(tiny_config(tmp_path), tmp_path / "zoo", progress=False,
                         backend="ray")
    assert not (tmp_path / "zoo").exists()  # refused before anything was written


def test_an_unknown_backend_or_an_address_without_ray_is_refused(tmp_path):
    config = tiny_config(tmp_path)
    with pytest.raises(ConfigError) as caught:
        train_population(config, tmp_path / "zoo", progress=False, backend="dask")
    assert str(caught.value) == "unknown backend 'dask': expected one of local, ray"
    with pytest.raises(ConfigError) as caught:
        train_population(config, tmp_path / "zoo", progress=False, address="auto")
    assert str(caught.value) == ("an address ('auto') is for the ray backend; "
                                 "add --backend ray or drop --address")
    assert not (tmp_path / "zoo").exists()
