"""``ray``: map steps on Ray actors that each hold the model; stateless steps as Ray tasks.

    executor: {type: ray, address: local, actors: 2}                  # a Ray on this machine
    executor: {type: ray, address: auto, actors: 8, gpus_per_actor: 1} # the cluster this node is in
    executor: {type: ray, address: "ray://head:10001", actors: 16}     # Ray Client

* ``address``: ``local`` starts (or joins the already started) Ray in this process;
  ``auto`` or ``ray://host:port`` connects to a running cluster.
* Each actor (``cpus_per_actor`` CPUs, ``gpus_per_actor`` GPUs) keeps every model it was sent,
  loaded once: a model travels as its recipe (``LocalLM`` pickles without weights) and is
  warmed up on first use. A map step is cut into ``actors * shards_per_actor`` contiguous shards;
  each shard is one batched ``generate``/``embed`` call on an idle actor; results come back in
  order.
* The cluster must hold all the actors at once: asking for more CPUs/GPUs than it has is an error
  (not a wait), and actors that do not start within ``start_timeout_s`` (other work holds the
  resources) give an error saying so.
* An error in one shard, or Ctrl-C, cancels the shards still out and replaces the actors that were
  running them, so the next step does not wait behind abandoned work. An error raised on an actor
  reaches the caller as itself (a :class:`UserError` keeps its type and message).
* ``map(fn, items)``: one Ray task per item (``cpus_per_task`` CPUs, fewer when the actors hold
  all the cluster's CPUs, so a small local cluster never waits forever).
* The LLM-call cache works on the actors too (each node's own cache folder), so an interrupted
  run resumes there as well; the driver's ``CTXFLOW_NO_CACHE`` and ``CTXFLOW_CACHE_DIR`` (the
  same path on every node) are passed to the actors and tasks.
* Events: actors cannot reach the driver's event bus, so the executor emits one ``llm_call``
  (summed over shards, ``executor="ray"``) and ``progress`` per finished shard on the driver.

Ray is optional: ``pip install 'ctxflow[ray]'``.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import threading
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import UserError
from ..events import emit, progress
from .base import Executor

ADDRESS_HELP = "use 'local' (a Ray started here), 'auto' (the cluster of this node) or 'ray://HOST:PORT'"
_FORWARD_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TOKENIZERS_PARALLELISM", "CTXFLOW_MODEL_DIR",
                "CTXFLOW_NO_CACHE", "CTXFLOW_CACHE_DIR")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _key(model: Any) -> str:
    """Identity of a model recipe: actors reuse the loaded model for the same key."""
    spec = model.spec() if hasattr(model, "spec") else {}
    return f"{type(model).__module__}.{type(model).__qualname__}:{json.dumps(spec, sort_keys=True, default=str)}"


def _shards(n: int, k: int) -> list[tuple[int, int]]:
    """``k`` contiguous, near-equal (start, end) ranges covering ``range(n)`` (none empty)."""
    k = max(1, min(k, n))
    q, r = divmod(n, k)
    out, start = [], 0
    for i in range(k):
        end = start + q + (1 if i < r else 0)
        out.append((start, end))
        start = end
    return out


def _get(ray: Any, refs: Any) -> Any:
    """``ray.get``, raising an error from a worker as itself (a UserError keeps its type and
    message), not as a RayTaskError carrying the remote traceback in colour."""
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause
        if not isinstance(cause, BaseException):
            raise
        if not isinstance(cause, UserError) and hasattr(cause, "add_note"):
            cause.add_note("raised on a Ray worker:\n" + _ANSI.sub("", str(exc)).rstrip())
        raise cause from None


def _call(fn: Callable[[Any], Any], x: Any) -> Any:
    """A stateless step as a Ray task (any picklable callable)."""
    return fn(x)


class _ModelHolder:
    """Body of the Ray actor: holds models by recipe key, loads each once."""

    def __init__(self, threads: int):
        import torch

        self.threads = max(1, int(threads))
        torch.set_num_threads(self.threads)
        self.models: dict[str, Any] = {}

    def _get(self, key: str, model: Any) -> Any:
        m = self.models.get(key)
        if m is None:
            if hasattr(m := model, "threads") and getattr(m, "threads", None) is None:
                m.threads = self.threads  # LocalLM would otherwise take every core of the node
            m.warm_up()
            self.models[key] = m
        return m

    def generate(self, key: str, model: Any, prompts: list[Any], kw: dict[str, Any]) -> tuple[int, list[Any]]:
        return os.getpid(), self._get(key, model).generate(prompts, **kw)

    def embed(self, key: str, model: Any, texts: list[str], kind: str) -> tuple[int, np.ndarray]:
        return os.getpid(), np.asarray(self._get(key, model).embed(texts, kind=kind), dtype=np.float32)

    def pid(self) -> int:
        return os.getpid()


class RayExecutor(Executor):
    """Map steps on ``actors`` Ray actors, each holding its own copy of the models it is sent."""

    type_name = "ray"

    def __init__(self, address: str = "local", actors: int = 2, cpus_per_actor: float = 1.0, gpus_per_actor: float = 0.0,
                 shards_per_actor: int = 1, cpus_per_task: float = 1.0, num_cpus: int | None = None,
                 object_store_mb: int | None = 256, start_timeout_s: float = 300.0):
        if importlib.util.find_spec("ray") is None:
            raise UserError("the 'ray' executor needs Ray, which is not installed: pip install 'ctxflow[ray]'.")
        if not isinstance(address, str) or not (address in ("local", "auto") or address.startswith("ray://")
                                                or ":" in address):
            raise ValueError(f"address {address!r} is not valid: {ADDRESS_HELP}")
        if actors < 1:
            raise ValueError(f"actors must be >= 1, got {actors}")
        if cpus_per_actor <= 0 or gpus_per_actor < 0 or shards_per_actor < 1 or cpus_per_task < 0:
            raise ValueError("cpus_per_actor must be > 0, gpus_per_actor >= 0, shards_per_actor >= 1 and cpus_per_task >= 0")
        if start_timeout_s <= 0:
            raise ValueError(f"start_timeout_s must be > 0, got {start_timeout_s}")
        self.address, self.actors, self.cpus_per_actor, self.gpus_per_actor = address, actors, cpus_per_actor, gpus_per_actor
        self.shards_per_actor, self.cpus_per_task = shards_per_actor, cpus_per_task
        self.num_cpus, self.object_store_mb, self.start_timeout_s = num_cpus, object_store_mb, start_timeout_s
        self._pool: list[Any] = []
        self._call: Any = None
        self._lock = threading.Lock()
        #: pids of the actors that served the last map step (for traces and tests)
        self.last_workers: set[int] = set()

    # -- Ray lifecycle ----------------------------------------------------------------------
    def _ray(self):
        import ray

        if not ray.is_initialized():
            kw: dict[str, Any] = {"ignore_reinit_error": True, "include_dashboard": False, "log_to_driver": False}
            if self.address == "local":
                # Ray starts workers at nice 15; here the actors do all the model work while the
                # driver waits, so they run at normal priority (an explicit setting wins)
                os.environ.setdefault("RAY_worker_niceness", "0")
                if self.object_store_mb:
                    kw["object_store_memory"] = int(self.object_store_mb) << 20
                ray.init(num_cpus=self.num_cpus, **kw)
            else:
                try:
                    ray.init(address=self.address, runtime_env={"env_vars": self._env()}, **kw)
                except (ConnectionError, RuntimeError) as exc:
                    raise UserError(f"cannot reach the Ray cluster at {self.address!r}: {exc}. {ADDRESS_HELP}.") from None
        return ray

    def _env(self) -> dict[str, str]:
        """The driver's settings the workers need (the model folder only on this machine's Ray)."""
        return {k: os.environ[k] for k in _FORWARD_ENV if k in os.environ and (k != "CTXFLOW_MODEL_DIR" or self.address == "local")}

    def _options(self, **kw: Any) -> dict[str, Any]:
        env = self._env()
        return {**kw, "runtime_env": {"env_vars": env}} if env else kw

    def _check_room(self, ray: Any) -> None:
        """A UserError when the cluster cannot hold ``actors`` actors at once (they would wait forever)."""
        room = 0
        for node in ray.nodes():
            if node.get("Alive", True):
                res = node.get("Resources", {})
                fit = int(res.get("CPU", 0) / self.cpus_per_actor + 1e-6)
                if self.gpus_per_actor:
                    fit = min(fit, int(res.get("GPU", 0) / self.gpus_per_actor + 1e-6))
                room += fit
        if room >= self.actors:
            return
        total = ray.cluster_resources()
        per, need, have = f"{self.cpus_per_actor:g} CPU", f"{self.actors * self.cpus_per_actor:g} CPUs", f"{total.get('CPU', 0):g} CPUs"
        if self.gpus_per_actor:
            per += f" + {self.gpus_per_actor:g} GPU"
            need += f" and {self.actors * self.gpus_per_actor:g} GPUs"
            have += f" and {total.get('GPU', 0):g} GPUs"
        fix = [f"set actors: {room}"] if room else []
        fix.append(f"lower cpus_per_actor (actors x cpus_per_actor <= {total.get('CPU', 0):g})")
        if self.gpus_per_actor:
            fix.append(f"lower gpus_per_actor (actors x gpus_per_actor <= {total.get('GPU', 0):g})")
        if self.address == "local":
            fix.append("start the local Ray with more CPUs (num_cpus)")
        where = "the local Ray" if self.address == "local" else f"the Ray cluster at {self.address!r}"
        raise UserError(f"the ray executor asks for {self.actors} actors x {per} = {need}, but {where} has {have} "
                        f"(room for {room} such actors): {', '.join(fix[:-1])}{', or ' if len(fix) > 1 else ''}{fix[-1]}.")

    def _actors(self) -> list[Any]:
        """The actors, started (or topped up after some were killed) and ready."""
        with self._lock:
            if len(self._pool) < self.actors:
                ray = self._ray()
                self._check_room(ray)
                cls = ray.remote(_ModelHolder).options(**self._options(num_cpus=self.cpus_per_actor, num_gpus=self.gpus_per_actor))
                threads = max(1, int(round(self.cpus_per_actor)))
                new = [cls.remote(threads) for _ in range(self.actors - len(self._pool))]
                try:
                    refs = [a.pid.remote() for a in new]
                    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=self.start_timeout_s)
                    if len(ready) < len(refs):
                        raise UserError(f"{len(refs) - len(ready)} of {len(refs)} Ray actors did not start within "
                                        f"{self.start_timeout_s:g} s: other work holds the cluster's CPUs/GPUs (see "
                                        "`ray status`); free them, use fewer actors, or raise start_timeout_s.")
                    _get(ray, ready)
                except BaseException:
                    with contextlib.suppress(Exception):
                        for a in new:
                            ray.kill(a)
                    raise
                self._pool += new
            return self._pool

    def worker_pids(self) -> list[int]:
        """Process ids of the actors (starts them)."""
        ray = self._ray()
        return _get(ray, [a.pid.remote() for a in self._actors()])

    def close(self) -> None:
        if self._pool:
            import ray

            for a in self._pool:
                ray.kill(a)
            self._pool = []

    # -- map steps --------------------------------------------------------------------------
    def _run_shards(self, method: str, model: Any, items: list[Any], args: tuple, desc: str) -> list[Any]:
        """Cut ``items`` into shards, run ``actor.method(key, model, shard, *args)`` on idle actors,
        return the per-shard results in order (reporting progress per finished shard)."""
        ray = self._ray()
        actors = self._actors()
        shards = _shards(len(items), len(actors) * self.shards_per_actor)
        key = _key(model)
        ref = ray.put(model)
        idle, busy = list(actors), {}  # busy: the shard's object ref -> (shard index, actor)
        results: list[Any] = [None] * len(shards)
        pids, nxt, done = set(), 0, 0
        try:
            while nxt < len(shards) or busy:
                while idle and nxt < len(shards):
                    a, b = shards[nxt]
                    act = idle.pop(0)
                    busy[getattr(act, method).remote(key, ref, items[a:b], *args)] = (nxt, act)
                    nxt += 1
                [r], _ = ray.wait(list(busy), num_returns=1)
                i, act = busy.pop(r)
                idle.append(act)
                pid, results[i] = _get(ray, r)
                pids.add(pid)
                done += shards[i][1] - shards[i][0]
                progress(done, len(items), desc)
        except BaseException:
            self._abandon(ray, busy)
            raise
        self.last_workers = pids
        return results

    def _abandon(self, ray: Any, busy: dict[Any, tuple[int, Any]]) -> None:
        """After an error or Ctrl-C: cancel the shards still out and kill the actors running them
        (a running actor call cannot be interrupted); ``_actors`` replaces them on the next step."""
        if not busy:
            return
        stuck = [act for _, act in busy.values()]
        with contextlib.suppress(Exception):
            for r in busy:
                ray.cancel(r)
            for act in stuck:
                ray.kill(act)
            # read what the abandoned shards left (mostly "actor died"), or Ray logs it as unhandled
            for r in ray.wait(list(busy), num_returns=len(busy), timeout=2.0)[0]:
                with contextlib.suppress(Exception):
                    ray.get(r)
        with self._lock:
            self._pool = [a for a in self._pool if all(a is not s for s in stuck)]

    def map_generate(self, llm: Any, prompts: Sequence[Any], **kw: Any) -> list[Any]:
        prompts = list(prompts)
        if not prompts:
            return []
        gens = [g for part in self._run_shards("generate", llm, prompts, (kw,), "generate (ray)") for g in part]
        emit("llm_call", model=getattr(llm, "model_id", "llm"), op="generate", n_prompts=len(gens), executor="ray",
             prompt_tokens=sum(g.n_prompt_tokens for g in gens if not g.cached),
             completion_tokens=sum(g.n_tokens for g in gens if not g.cached), cached=sum(bool(g.cached) for g in gens),
             workers=sorted(self.last_workers))
        return gens

    def map_embed(self, embedder: Any, texts: Sequence[str], kind: str = "passage", batch_size: int = 64) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, int(embedder.dim)), dtype=np.float32)
        parts = self._run_shards("embed", embedder, texts, (kind,), "embedding (ray)")
        return np.vstack(parts).astype(np.float32, copy=False)

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        ray = self._ray()
        if self._call is None:
            self._call = ray.remote(_call)
        # CPUs the actors do not hold; when they hold them all (a small local cluster), tasks
        # share the actors' CPUs instead of waiting forever for a free one
        spare = ray.cluster_resources().get("CPU", 0) - len(self._pool) * self.cpus_per_actor
        cpus = min(self.cpus_per_task, spare) if spare > 0 else 0
        ref = ray.put(fn)
        refs = [self._call.options(**self._options(num_cpus=cpus)).remote(ref, x) for x in items]
        try:
            return _get(ray, refs)
        except BaseException:
            with contextlib.suppress(Exception):
                for r in refs:
                    ray.cancel(r)
            raise

    def spec(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": "ray", "address": self.address, "actors": self.actors}
        defaults = {"cpus_per_actor": 1.0, "gpus_per_actor": 0.0, "shards_per_actor": 1, "cpus_per_task": 1.0, "num_cpus": None,
                    "object_store_mb": 256, "start_timeout_s": 300.0}
        for k, dv in defaults.items():
            if getattr(self, k) != dv:
                d[k] = getattr(self, k)
        return d

    def __getstate__(self):  # an executor travels as its recipe
        return {k: v for k, v in self.__dict__.items() if k not in ("_pool", "_call", "_lock")}

    def __setstate__(self, d):
        self.__dict__.update(d)
        self._pool, self._call, self._lock = [], None, threading.Lock()

    def __repr__(self) -> str:
        return f"RayExecutor({', '.join(f'{k}={v!r}' for k, v in self.spec().items() if k != 'type')})"
