"""Fixtures several test modules share: a single torch thread, output folders, the smoke teacher.

On both cores (``pytest -n 2 --dist loadfile``, as the Makefile runs it) each worker keeps to
one torch thread; a module runs on one worker, so its module fixtures are built once.
"""

import os

import pytest
import torch


def pytest_configure(config):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # Two workers on two cores: a second torch thread per worker (and per driver or
        # trial it starts) only contends with the other worker; at two threads each the
        # workers gained nothing over one process (BENCHMARKS.md, "Test suite").
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


@pytest.fixture
def one_thread():
    """Tiny networks on a shared 2-core box: a second torch thread mostly waits (up to 50x
    slower). Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """A local Ray for one module's in-process plans (tests/test_orchestrator.py;
    tests/test_faults.py's drivers join it), and its output folder. One CPU: the end-to-end
    plan's trials ask for every CPU Ray has (so they run one after the other), and at two
    torch threads beside the other test worker's load they took three times as long as
    alone. Shut down after the module: a later module (tests/test_sd_path.py) starts its
    own with every CPU."""
    import ray

    from orchestrator.ray_session import start_ray

    home = tmp_path_factory.getbasetemp() / "ablate-home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ABLATE_HOME", str(home))
        mp.delenv("RAY_ADDRESS", raising=False)
        # Ray's own resource override, read when the node starts; unset again before any
        # driver a test starts could inherit it.
        mp.setenv("RAY_OVERRIDE_RESOURCES", '{"CPU": 1}')
        start_ray()
    assert ray.cluster_resources()["CPU"] == 1
    yield home
    ray.shutdown()


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A fresh ABLATE_HOME for one test module (caches built there stay there)."""
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("ablate-home")
        mp.setenv("ABLATE_HOME", str(path))
        yield path


@pytest.fixture(scope="session")
def smoke_home(tmp_path_factory):
    """An ABLATE_HOME holding the smoke teacher, trained once per session."""
    from distill.teacher import ensure_teacher

    path = tmp_path_factory.getbasetemp() / "smoke-home"
    previous = os.environ.get("ABLATE_HOME")
    os.environ["ABLATE_HOME"] = str(path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ensure_teacher("smoke", progress=False)
    finally:
        torch.set_num_threads(threads)
        if previous is None:
            del os.environ["ABLATE_HOME"]
        else:
            os.environ["ABLATE_HOME"] = previous
    return path


@pytest.fixture(scope="module")
def teacher(smoke_home):
    """The smoke teacher, loaded once per module."""
    from distill.teacher import load_teacher

    return load_teacher(next((smoke_home / "cache" / "teachers").glob("smoke-*")))
