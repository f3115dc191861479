"""Fixtures the tests share: the demo upstreams and Envoys that are stopped
after the module's tests, also when a test or the start fails.

    def env(tmp_path_factory, upstreams, start_envoy):
        config = envoyconf.bootstrap(admin, listeners, upstreams.ports["old"], upstreams.ports["new"])
        envoy = start_envoy(config, work)

Every test runs the real parts on loopback (augur_tools.envoy.harness): run one
with `.venv/bin/python -m pytest -q python/tests/test_push.py` (`-k NAME` for one
test); `make wasm cli` first, the tests load target/augur.wasm (AUGUR_WASM to
load another build).
"""

import pytest

from augur_tools.envoy.harness import Envoy, Upstreams


@pytest.fixture(scope="module")
def upstreams():
    """The two demo stacks (old, new) for one test module."""
    ups = Upstreams()
    try:
        yield ups
    finally:
        ups.close()


@pytest.fixture(scope="module")
def start_envoy():
    """start_envoy(config, workdir, **kw) → a running Envoy (harness.Envoy),
    closed after the module's tests."""
    started = []

    def start(config, workdir, **kw):
        envoy = Envoy(config, workdir=workdir, **kw)
        started.append(envoy)
        return envoy

    try:
        yield start
    finally:
        for envoy in reversed(started):
            envoy.close()


@pytest.fixture(scope="module")
def work(tmp_path_factory, request):
    """The module's working directory (configurations, access logs, Envoy's log)."""
    return tmp_path_factory.mktemp(request.module.__name__.removeprefix("test_"))


@pytest.fixture(scope="module")
def watched(work):
    """The ECDS file an `envoyconf.ecds_listener` watches, <work>/ecds/augur.json (its directory made)."""
    path = work / "ecds" / "augur.json"
    path.parent.mkdir()
    return path
