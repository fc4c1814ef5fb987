"""Shared fixtures: tests run on asyncio through anyio's pytest plugin.

Models: a sandbox started by a test serves *stub* models (a canned OpenAI-compatible
answer from the sandbox's model front) unless the test is marked ``@pytest.mark.model``.
A llama.cpp server costs seconds of CPU to start and answer, and most tests are about
something else (a phase, a fault, a cleanup). Fixtures that build a sandbox take the
``stub_models`` fixture and pass it on as ``Faults(stub_models=...)``; a test that builds
its own sandbox does the same. ``pytest --real-models`` serves the real model everywhere.
See tests/README.md.
"""

from __future__ import annotations

import atexit
import compileall
import gc
import importlib.util
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

# The shared harnesses assert what every run must show, so their failures should say what
# was seen. They are registered here, before any suite's conftest imports one of them:
# registering a module that is already imported has no effect (and pytest warns).
pytest.register_assert_rewrite("e2e_harness", "faults_harness", "hostile_harness", "proxy")


# A worker that has run its share of the suite holds a large heap, and the interpreter's
# garbage collections at exit took 2.6-3.5 s of it per worker (two workers after 391
# tests, load 11-21), all eight at once at the very end of a run while the controller
# waits for them to go: 0.1-0.2 s with this. Registered here, it runs once pytest is done,
# its own last collections (which report unraisable exceptions) included; it moves every
# object to a generation the collector leaves alone, and reference counting still frees
# them.
atexit.register(gc.freeze)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--real-models",
        action="store_true",
        help="serve the real llama.cpp model in every sandbox, not only in tests marked 'model'",
    )
    parser.addoption(
        "--fresh-interpreters",
        action="store_true",
        help="start every `python -m orchestrator run` child as a fresh interpreter, not "
        "forked from the pre-imported zygote (also: FRESH_INTERPRETERS=1); tests/README.md",
    )


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def stub_models(request: pytest.FixtureRequest) -> bool:
    """True (serve canned completions) unless the test is marked ``model`` or --real-models."""
    if request.config.getoption("real_models"):
        return False
    return request.node.get_closest_marker("model") is None


def pytest_configure(config: pytest.Config) -> None:
    # SIGTERM (a CI job's timeout, ``kill``) ends the session the way Ctrl-C does, so that
    # its teardown runs and stops every test cluster it started, instead of dying on the
    # spot and leaving API servers and etcd running.
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupted)
    if config.getoption("fresh_interpreters"):
        import _zygote

        _zygote.enabled = False
    config.addinivalue_line(
        "markers",
        "long: takes seconds of CPU without a sandbox or cluster fixture (mypy): dealt to the "
        "front of a worker's share like the tests that take one (LONG, tests/README.md)",
    )
    if not hasattr(config, "workerinput"):  # the controller (or ``-n 0``), once per session
        _compile_package()
        _rewrite_tests(config)


def _compile_package() -> None:
    """Write the package's bytecode once, so that the suite's children stop compiling it.

    The suite starts a few hundred ``python -m orchestrator`` children, and with
    PYTHONDONTWRITEBYTECODE set (CI sets it, so do many developers' shells) none of them
    writes its bytecode: each one compiled the whole package from source again, about a
    sixth of its start-up CPU. ``compileall`` writes the ``__pycache__`` files whatever
    that variable says, only where a source is newer than its bytecode, and Python checks
    a source's time stamp before it uses them, so an edited file is never run stale.
    ``__pycache__/`` is in .gitignore. The package compiled is the one the children
    import: the first ``orchestrator`` on the path (a worktree's, through PYTHONPATH).
    """
    spec = importlib.util.find_spec("orchestrator")
    for location in (spec.submodule_search_locations or []) if spec else []:
        compileall.compile_dir(location, quiet=1)


def _rewrite_tests(config: pytest.Config) -> None:
    """Write the assertion-rewritten bytecode once, before the workers collect.

    pytest rewrites the asserts of every test module, conftest and registered harness as it
    imports them, and caches the result beside the source, unless PYTHONDONTWRITEBYTECODE
    is set: then each worker rewrote all of them again, about half of a
    worker's collection (3.8 CPU-s with the rewrite, 2.0 with the cache), at the start of
    the run when every worker collects at once. The controller writes that cache here with
    pytest's own rewriter; a worker checks a cached file against its source's hash before
    using it. This leans on pytest's private rewrite functions: should they change, nothing
    is written and the workers rewrite as before. Helpers that pytest does not rewrite get
    plain bytecode.

    pytest also rewrites every module of the distributions that bring a pytest plugin
    (hypothesis, anyio, pytest-xdist, pytest-timeout: ``_must_rewrite``), so the same
    variable had each worker rewrite the 100-odd hypothesis and anyio modules it imports
    (0.75 CPU-s of each worker's collection, more as its tests import the rest): their
    cache is written here too, in their own ``__pycache__`` as pytest would write it.
    """
    compileall.compile_dir(Path(__file__).parent, quiet=1)
    try:
        from _pytest.assertion import rewrite

        state = config.stash[rewrite.assertstate_key]
        sources = sorted(Path(__file__).parent.rglob("*.py"))
        hook = state.hook
        for name in sorted(getattr(hook, "_must_rewrite", ())):
            sources += _module_sources(name)
    except Exception:  # an optimisation only: the workers then rewrite by themselves
        return
    for path in sources:
        try:
            cache_dir = rewrite.get_cache_dir(path)
            pyc = cache_dir / (path.name[:-3] + rewrite.PYC_TAIL)
            if rewrite._read_pyc(path, pyc) is None and rewrite.try_makedirs(cache_dir):
                source_hash, code = rewrite._rewrite_test(path, config)
                rewrite._write_pyc(state, code, source_hash, pyc)
        except Exception:  # that file is left to the workers, as before
            continue


def _module_sources(name: str) -> list[Path]:
    """The source files of the module or package ``name``, without importing it."""
    if "." in name:  # a submodule: finding it would import its package; left to the workers
        return []
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return []
    if spec is None:
        return []
    if spec.submodule_search_locations:
        return sorted(
            p for where in spec.submodule_search_locations for p in Path(where).rglob("*.py")
        )
    return [Path(spec.origin)] if spec.origin and spec.origin.endswith(".py") else []


def pytest_collection_finish(session: pytest.Session) -> None:
    """What collection leaves (modules, tests, fixtures) stays to the end: the collector
    stops going through it.

    Each full collection of a worker went through all of it again: in two workers that ran
    about 200 tests each, garbage collection took 1.2 and 1.4 CPU-s, 0.9 and 1.1 of it in
    ten full collections; frozen after collection, 0.7 and 0.8 (0.4 and 0.5).
    """
    gc.freeze()


#: Fixtures that start a sandbox or a test cluster (and most often run the orchestrator as a
#: child): the tests that take one are the long ones, 5 to 30 s, where most take under one.
LONG = frozenset(
    {
        "sandbox",
        "providers_sandbox",
        "kubeconfig",
        "kube_backend",
        "make_env",
        "make_sandbox",
        "hostile",
    }
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under xdist, each worker starts with its share of the long tests.

    Work stealing hands each worker a contiguous eighth of the collection and lets an idle
    worker take the second half of the longest queue. In collection order, the long tests
    sit together (e2e/, faults/, hostile/ ...), so a worker could meet several at the end
    of its share while the others had run out of work. Here the long tests are dealt out
    round-robin to the front of each worker's share and the short ones follow in their
    own order, so what is left to steal at the end is short. Replayed on one run's
    durations, the last worker ended 391 s after the first test in collection order and
    375 s in this one (an even split would be 372 s). Tests that share a module-scoped
    fixture keep their place, so that it is still set up once.
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))  # set in each worker
    if workers < 2:
        return
    long = [item for item in items if _long(item) and not _shares(item)]
    if not long:
        return
    # The CPU-bound ones first of all: each starts one worker's share, instead of ending a
    # share of long tests that comes late in collection.
    long.sort(key=lambda item: not _computes(item))
    chosen = set(long)
    short = [item for item in items if item not in chosen]
    # Each worker's share is as long as work stealing's first split makes it (worker k
    # gets what is left divided by the workers left, rounded down): then every share
    # starts with its long tests, where shares of a fixed size began with the previous
    # share's last few short tests.
    reordered: list[pytest.Item] = []
    left, taken = len(items), 0
    for k in range(workers):
        size = left // (workers - k)
        left -= size
        share = long[k::workers]
        more = max(size - len(share), 0) if k < workers - 1 else len(short) - taken
        reordered += share + short[taken : taken + more]
        taken += more
    items[:] = reordered


def _long(item: pytest.Item) -> bool:
    """Whether the test takes a fixture in LONG, or computes for seconds (``_computes``)."""
    return bool(LONG & set(getattr(item, "fixturenames", ()))) or _computes(item)


def _computes(item: pytest.Item) -> bool:
    """Whether the test keeps a core busy for seconds: marked ``long``, or property-based.

    A hypothesis test runs its hundred examples on the CPU: about 0.5-2 CPU-s each alone,
    and 20-50 s of wall time each in a loaded run's last minute, where they held the last
    workers while the others had finished (eight workers, load 15-25).
    """
    if item.get_closest_marker("long") is not None:
        return True
    return bool(getattr(getattr(item, "obj", None), "is_hypothesis_test", False))


def _shares(item: pytest.Item) -> bool:
    """Whether the test takes a fixture wider than a function and narrower than the session."""
    info = getattr(item, "_fixtureinfo", None)
    defs = getattr(info, "name2fixturedefs", {})
    return any(d and d[-1].scope in ("class", "module", "package") for d in defs.values())


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    item.stash[_NEXT] = nextitem


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    """While a test runs (its own cluster taken), start the clusters of the tests after it:
    the next one's, and, when the next one is short, a second for a later test of this
    worker that takes one.

    A long next test (``_long``: it takes a sandbox or a cluster, 5 to 60 s) gives the
    cluster after it all of its own run to start, from its own call: started here, that
    cluster would wait out the whole of that test idle (about 17 s on average in a full
    run, at 0.003 CPU-s a second for its API server and as much for etcd). After a short
    one (a conformance check, a fraction of a second) it would not be up in time.
    """
    from _testcluster import needs_cluster, pool

    following = item.stash.get(_NEXT, None)
    if needs_cluster(following):
        later = _queued(item)
        if following is not None and _long(following):
            pool.prepare(1)
        elif later is None:
            pool.prepare()
        else:
            pool.prepare(1 + sum(1 for other in later if needs_cluster(other)))


def _queued(item: pytest.Item) -> list[pytest.Item] | None:
    """The tests this process will run after ``item``'s next one, as far as it knows.

    Under xdist, the worker's queue: what the controller has sent it and not yet taken
    back (work stealing can still take some away; the next test is already out of the
    queue, so it stays). In one process, the rest of the session. None when the queue
    cannot be read (pytest-xdist keeps it private): then spares start as if it held more.
    """
    items = item.session.items
    if not hasattr(item.config, "workerinput"):
        try:
            return items[items.index(item) + 2 :]
        except ValueError:
            return None
    for plugin in item.config.pluginmanager.get_plugins():
        queue = getattr(plugin, "torun", None)
        if type(plugin).__name__ == "WorkerInteractor" and hasattr(queue, "lock"):
            try:
                with queue.lock() as indices:
                    return [items[i] for i in indices if isinstance(i, int)]
            except (TypeError, IndexError):
                return None
    return None


_NEXT = pytest.StashKey["pytest.Item | None"]()


@pytest.fixture(scope="session", autouse=True)
def _test_clusters(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Test clusters' RUN_DIRs under this session's tmp dir; at its end, none left running."""
    from _testcluster import pool

    pool.base = tmp_path_factory.mktemp("clusters")
    yield
    pool.close()


@pytest.fixture(scope="session", autouse=True)
def _zygote_stopped() -> Iterator[None]:
    """At the session's end, this worker's zygote (if a test started one) stops."""
    yield
    import _zygote

    _zygote.stop()
