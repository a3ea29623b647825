"""The native kernel cache is verified: a planted or truncated library is rebuilt, an unsafe folder refused."""

from __future__ import annotations

import os

import pytest

from quantgraph.errors import EnvironmentFailure, InputError
from quantgraph.native import build

pytestmark = pytest.mark.skipif(not build.available(), reason="no C compiler")


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QUANTGRAPH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(build, "_loaded", {})
    yield tmp_path / "cache" / "native"
    build._loaded.clear()


def _reload():
    build._loaded.clear()
    return build.load()


def _replace(path, data: bytes) -> None:
    """A new file at ``path`` (the loaded library's own pages must not change under this process)."""
    tmp = path.with_suffix(".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def test_planted_and_truncated_libraries_are_rebuilt(fresh_cache):
    first = _reload()
    lib = first.path
    good = lib.read_bytes()
    _replace(lib, good[: len(good) // 3])  # truncated: would SIGBUS/fail in dlopen
    assert _reload().path == lib and lib.read_bytes() == good
    _replace(lib, b"\x7fELF planted")  # replaced by someone else's bytes
    assert _reload().path == lib and lib.read_bytes() == good


def test_group_writable_cache_is_refused(fresh_cache):
    _reload()
    os.chmod(fresh_cache, 0o777)
    with pytest.raises(InputError, match="writable by group or others"):
        _reload()


def test_unwritable_cache_is_one_error(tmp_path, monkeypatch):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")  # mkdir below a file fails even for root
    monkeypatch.setenv("QUANTGRAPH_CACHE", str(blocker))
    monkeypatch.setattr(build, "_loaded", {})
    with pytest.raises(EnvironmentFailure, match="QUANTGRAPH_CACHE"):  # the machine's fault: exit 1
        build.load()
