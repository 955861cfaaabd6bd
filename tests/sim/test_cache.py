"""The Verilator model cache: least recently used folders pruned past the size limit."""

import multiprocessing
import os
import time

import pytest

from cosparse.sim import cache


def make_model(root, name: str, size: int, used: float):
    folder = root / name
    folder.mkdir()
    (folder / "model.bin").write_bytes(b"\0" * size)
    cache.mark_used(folder)
    os.utime(folder / ".used", (used, used))
    return folder


def test_prune_removes_least_recently_used_until_within_limit(tmp_path):
    now = time.time()
    old = make_model(tmp_path, "old", 4000, now - 300)
    mid = make_model(tmp_path, "mid", 4000, now - 200)
    new = make_model(tmp_path, "new", 4000, now - 100)
    removed = cache.prune(tmp_path, limit=9000)
    assert removed == [old]
    assert not old.exists() and mid.exists() and new.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mid", "new"]  # nothing left behind


def test_prune_within_limit_removes_nothing(tmp_path):
    a = make_model(tmp_path, "a", 1000, time.time() - 10)
    assert cache.prune(tmp_path, limit=1000) == []
    assert a.exists()


def test_prune_keeps_the_folder_about_to_be_used(tmp_path):
    now = time.time()
    keep = make_model(tmp_path, "keep", 4000, now - 300)
    other = make_model(tmp_path, "other", 4000, now - 100)
    assert cache.prune(tmp_path, limit=0, keep=keep) == [other]
    assert keep.exists()


def hold(folder, name, shared, ready, release):
    with cache.locked(folder, name, shared=shared):
        ready.set()
        release.wait(30)


@pytest.mark.parametrize("lock,shared", [(".lock", False), (".inuse", True)])
def test_prune_skips_a_model_another_process_builds_or_runs(tmp_path, lock, shared):
    busy = make_model(tmp_path, "busy", 4000, time.time() - 300)
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=hold, args=(busy, lock, shared, ready, release))
    proc.start()
    try:
        assert ready.wait(30)
        assert cache.prune(tmp_path, limit=0) == []
        assert busy.exists()
    finally:
        release.set()
        proc.join(30)
    assert cache.prune(tmp_path, limit=0) == [busy]
    assert not busy.exists()


def test_a_lock_on_a_pruned_folder_is_taken_again_on_the_new_folder(tmp_path):
    folder = tmp_path / "m"
    with cache.locked(folder):
        (folder / "x").write_text("1")
    assert cache.prune(tmp_path, limit=0) == [folder]
    with cache.locked(folder):  # the folder is made again, with a lock of its own
        assert (folder / ".lock").exists()


def test_limit_from_the_environment(monkeypatch):
    monkeypatch.setenv("COSPARSE_VERILATOR_CACHE_GB", "0.5")
    assert cache.cache_limit_bytes() == 500_000_000
    monkeypatch.delenv("COSPARSE_VERILATOR_CACHE_GB")
    assert cache.cache_limit_bytes() == int(cache.DEFAULT_LIMIT_GB * 1e9)
    monkeypatch.setenv("COSPARSE_VERILATOR_CACHE_GB", "lots")
    with pytest.raises(ValueError, match="COSPARSE_VERILATOR_CACHE_GB='lots'"):
        cache.cache_limit_bytes()
