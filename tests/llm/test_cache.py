from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from ctxflow.llm.cache import LLMCache, make_key


def test_put_get_and_keys(tmp_path):
    c = LLMCache(tmp_path / "c.sqlite")
    k1 = make_key("m", "generate", "hello", {"max_new_tokens": 8, "temperature": 0.0})
    k2 = make_key("m", "generate", "hello", {"max_new_tokens": 9, "temperature": 0.0})
    k3 = make_key("other", "generate", "hello", {"max_new_tokens": 8, "temperature": 0.0})
    assert len({k1, k2, k3}) == 3
    assert make_key("m", "generate", "hello", {"temperature": 0.0, "max_new_tokens": 8}) == k1  # order-free
    c.put(k1, "m", "generate", {"text": "world"})
    assert c.get(k1) == {"text": "world"} and c.get(k2) is None
    assert c.get_many([k1, k2]) == {k1: {"text": "world"}}
    assert len(c) == 1
    c.close()
    # persisted on disk, readable by a new connection
    assert LLMCache(tmp_path / "c.sqlite").get(k1) == {"text": "world"}


def test_clear_by_model(tmp_path):
    c = LLMCache(tmp_path / "c.sqlite")
    c.put_many([(make_key("a", "g", str(i), {}), "a", "g", i) for i in range(5)] + [(make_key("b", "g", "x", {}), "b", "g", 1)])
    assert c.clear("a") == 5 and len(c) == 1


WORKER = textwrap.dedent(
    """
    import sys, time
    from ctxflow.llm.cache import LLMCache, make_key
    c = LLMCache(sys.argv[1])
    log = open(sys.argv[2], "a")
    items = [f"prompt {i}" for i in range(40)]
    keys = [make_key("m", "generate", p, {}) for p in items]
    have = c.get_many(keys)
    todo = [(k, p) for k, p in zip(keys, items) if k not in have]
    for i in range(0, len(todo), 4):  # batches of 4, each committed when done
        batch = todo[i:i + 4]
        for k, p in batch:
            log.write(p + "\\n"); log.flush()   # 'compute' the call
        time.sleep(0.05)
        c.put_many([(k, "m", "generate", p.upper()) for k, p in batch])
    print("done", len(todo))
    """
)


def test_interrupted_run_resumes_without_repeating(tmp_path):
    db, log, script = tmp_path / "c.sqlite", tmp_path / "calls.log", tmp_path / "w.py"
    script.write_text(WORKER)
    proc = subprocess.Popen([sys.executable, str(script), str(db), str(log)])
    time.sleep(0.6)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = log.read_text().split("\n")[:-1] if log.exists() else []
    done_before = len(LLMCache(db))
    assert done_before % 4 == 0  # whole batches only
    out = subprocess.run([sys.executable, str(script), str(db), str(log)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"done {40 - done_before}"
    calls = log.read_text().split("\n")[:-1]
    # every prompt computed; none recomputed except those of the batch cut by the kill
    assert set(calls) == {f"prompt {i}" for i in range(40)}
    assert len(calls) - 40 <= len(first) - done_before < 8 or len(calls) - 40 <= 4
    assert len(LLMCache(db)) == 40


def test_concurrent_processes_share_cache(tmp_path):
    db = tmp_path / "c.sqlite"
    code = (
        "import sys; from ctxflow.llm.cache import LLMCache, make_key; c = LLMCache(sys.argv[1]); "
        "[c.put(make_key('m','g',f'{sys.argv[2]}-{i}',{}), 'm', 'g', i) for i in range(50)]"
    )
    ps = [subprocess.Popen([sys.executable, "-c", code, str(db), str(n)]) for n in range(3)]
    assert all(p.wait() == 0 for p in ps)
    assert len(LLMCache(db)) == 150


def test_env_disables_cache(monkeypatch, tmp_path):
    from ctxflow.llm import cache as cache_mod

    monkeypatch.setenv("CTXFLOW_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CTXFLOW_NO_CACHE", "1")
    assert cache_mod.default_cache() is None
    monkeypatch.delenv("CTXFLOW_NO_CACHE")
    c = cache_mod.default_cache()
    assert c is not None and c.path.parent == tmp_path


def test_damaged_cache_file_is_moved_aside_and_replaced(tmp_path):
    import pytest

    path = tmp_path / "llm_calls.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.warns(RuntimeWarning, match="damaged"):
        c = LLMCache(path)
    c.put("k", "m", "generate", {"text": "ok"})
    assert c.get("k") == {"text": "ok"}
    kept = list(tmp_path.glob("llm_calls.sqlite.damaged-*"))
    assert len(kept) == 1 and kept[0].read_bytes().startswith(b"this is not a database")  # nothing lost


def test_max_context_is_part_of_the_call_key(llm):
    """A generation cut short by an emulated window is not served to a model with the full window."""
    from ctxflow.llm.local import LocalLM

    prompt = "Write a long story about a knight. " * 8
    short = LocalLM(max_context=llm.prompt_tokens(prompt) + 4)
    cut = short.generate([prompt], max_new_tokens=40)[0]
    full = LocalLM().generate([prompt], max_new_tokens=40)[0]
    assert cut.finish_reason == "length" and len(cut.text) < len(full.text)
    assert not getattr(full, "cached", False)


def test_damage_found_after_opening_is_recovered_too(tmp_path):
    import pytest

    path = tmp_path / "llm_calls.sqlite"
    c = LLMCache(path)
    c.put_many([(f"k{i:05d}", "m", "generate", {"text": "x" * 200}) for i in range(3000)])
    c._conn.close()
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 8192] = b"\xff" * 8192  # damage in the middle: the header still reads
    path.write_bytes(bytes(data))
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"llm_calls.sqlite{suffix}").unlink(missing_ok=True)
    c = LLMCache(path)
    with pytest.warns(RuntimeWarning, match="damaged"):
        got = c.get_many([f"k{i:05d}" for i in range(3000)])
    assert got == {}  # misses, not a crash
    c.put("new", "m", "generate", {"text": "ok"})
    assert c.get("new") == {"text": "ok"} and list(tmp_path.glob("llm_calls.sqlite.damaged-*"))


def test_an_unwritable_cache_folder_runs_without_the_cache(monkeypatch, tmp_path, llm):
    import warnings

    import pytest

    from ctxflow.llm import cache as cache_mod
    from ctxflow.llm.local import LocalLM

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("CTXFLOW_CACHE_DIR", str(blocker / "ctxflow"))  # cannot be created: not a folder
    monkeypatch.setattr(cache_mod, "_default", None)
    monkeypatch.setattr(cache_mod, "_unusable", set())
    with pytest.warns(RuntimeWarning, match="cannot use the LLM-call cache in .*a-file.*running without it"):
        assert cache_mod.default_cache() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once, not on every call
        g = LocalLM().generate(["Hi"], max_new_tokens=2)[0]
    assert g.n_tokens == 2 and not g.cached
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "llm_calls.sqlite").mkdir()  # a folder where the database file should be
    monkeypatch.setenv("CTXFLOW_CACHE_DIR", str(tmp_path / "ro"))
    with pytest.warns(RuntimeWarning, match="cannot use the LLM-call cache"):
        assert cache_mod.default_cache() is None


def test_a_full_disk_drops_cache_writes_not_the_answers(monkeypatch, tmp_path, llm):
    """'database or disk is full' on the write after a batch used to raise out of generate, losing its answers."""
    import sqlite3
    import warnings

    import pytest

    from ctxflow.llm.cache import LLMCache
    from ctxflow.llm.local import LocalLM

    monkeypatch.setenv("CTXFLOW_CACHE_DIR", str(tmp_path))
    m = LocalLM()
    m.generate(["Hi"], max_new_tokens=1)

    def full(self, rows):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(LLMCache, "_insert", full)
    with pytest.warns(RuntimeWarning, match="could not write to the LLM-call cache .*disk is full"):
        g = m.generate(["Name a colour."], max_new_tokens=3)[0]
    assert g.n_tokens == 3 and not g.cached
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per cache
        assert m.logprobs(["Say yes."], ["Yes"])[0]
