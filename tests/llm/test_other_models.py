"""LocalLM on architectures other than the default model (tiny random-weight models saved to real folders
with the embedded model's tokenizer, CPU): every option either computes the model's own function or is
refused with a clear error — never a silent wrong result."""
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from ctxflow.errors import ModelNotFoundError, UserError
from ctxflow.llm.local import LocalLM
from ctxflow.llm.models import trained_context


@pytest.fixture(scope="module")
def tok(llm):
    return llm.tokenizer


def save_tiny(tmp_path_factory, tok, model_type, **kw):
    common = dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                  pad_token_id=tok.pad_token_id, initializer_range=0.35)
    if model_type not in ("gpt2", "bloom"):
        common.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      max_position_embeddings=512)
    common.update(kw)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **common))
    out = tmp_path_factory.mktemp(model_type)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def own_logits(llm, text):
    ids = torch.tensor([llm.encode(text, chat=False)])
    with torch.no_grad():
        return ids, llm.model(input_ids=ids).logits[0].float()


TEXT = " ".join(f"word{i} is here." for i in range(60))  # ~370 tokens


@pytest.mark.parametrize("model_type,kw", [("phi3", {"num_key_value_heads": 2}),  # fused qkv_proj
                                           ("gpt2", {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 512})])
def test_sparse_attention_really_runs_on_fused_projection_models(tmp_path_factory, tok, model_type, kw):
    path = save_tiny(tmp_path_factory, tok, model_type, **kw)
    dense = LocalLM(path, cache=False)
    ids, ref = own_logits(dense, TEXT)
    full = LocalLM(path, cache=False, attention={"type": "streaming", "density": 1.0})
    sparse = LocalLM(path, cache=False, attention={"type": "streaming", "density": 0.3, "sinks": 4})
    with torch.no_grad():
        got_full = full.model(input_ids=ids).logits[0].float()
        got_sparse = sparse.model(input_ids=ids).logits[0].float()
    assert (got_full - ref).abs().max() < 1e-4  # a full window is the model's own attention
    assert (got_sparse - ref).abs().max() > 1e-2  # and a 30% window is not: the plan reached every layer


def test_a_model_outside_the_attention_interface_is_refused(tmp_path_factory, tok):
    path = save_tiny(tmp_path_factory, tok, "bloom", hidden_size=64, n_layer=2, n_head=4)
    with pytest.raises(UserError, match="does not run through transformers' attention interface.*attention type 'dense'"):
        LocalLM(path, cache=False, attention={"type": "streaming", "density": 0.5}).warm_up()
    llm = LocalLM(path, cache=False)  # ALiBi: positions cannot be moved, so PCW/NBCE refuse
    with pytest.raises(UserError, match="takes no position ids"):
        llm.forward([[5, 6, 7]], position_ids=[[0, 1, 2]])
    assert llm.generate(["Hello"], max_new_tokens=3)[0].n_tokens > 0  # black box still runs
    falcon = LocalLM(save_tiny(tmp_path_factory, tok, "falcon", alibi=True, new_decoder_architecture=False,
                               num_kv_heads=4), cache=False)  # accepts position ids, but ALiBi ignores them
    with pytest.raises(UserError, match="takes no position ids"):
        falcon.forward([[5, 6, 7]], position_ids=[[0, 1, 2]])


def test_logit_scaling_heads_are_reproduced_by_grey_box_calls(tmp_path_factory, tok):
    path = save_tiny(tmp_path_factory, tok, "granite", num_key_value_heads=2, logits_scaling=4.0)
    llm = LocalLM(path, cache=False)
    prompt, cont = "The sky is", " blue today"
    lp = llm.logprobs([prompt], [cont], chat=False)[0]
    p_ids = llm.encode(prompt, chat=False)
    c_ids = tok(cont, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = llm.model(input_ids=torch.tensor([p_ids + c_ids])).logits[0].float()
    want = torch.log_softmax(logits, -1)[len(p_ids) - 1:-1].gather(1, torch.tensor(c_ids)[:, None])[:, 0]
    assert max(abs(a - float(b)) for a, b in zip(lp, want)) < 1e-4


def test_sliding_window_models_refuse_grey_box_forwards_past_their_window(tmp_path_factory, tok):
    path = save_tiny(tmp_path_factory, tok, "mistral", num_key_value_heads=2, sliding_window=32)
    llm = LocalLM(path, cache=False)
    logits, _ = llm.forward([list(range(5, 35))])  # 30 tokens: inside the window, runs
    assert logits.shape[1] == 30
    with pytest.raises(UserError, match="limits its sliding_attention layers to the last 32 tokens.*spans 40 tokens"):
        llm.forward([list(range(5, 45))])


def test_rope_scaling_never_replaces_a_models_own_scaling(tmp_path_factory, tok):
    path = save_tiny(tmp_path_factory, tok, "llama", num_key_value_heads=2, rope_parameters={
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64})
    with pytest.raises(UserError, match="already scales its RoPE \\('llama3', factor 8.0\\)"):
        LocalLM(path, cache=False, rope_scaling={"type": "dynamic", "factor": 2}).warm_up()


def test_context_length_is_read_from_each_architectures_own_field():
    from transformers import GPT2Config, MptConfig

    assert trained_context(MptConfig(max_seq_len=128)) == 128
    assert trained_context(GPT2Config(n_positions=200)) == 200
    assert trained_context(AutoConfig.for_model("llama", max_position_embeddings=300)) == 300


def test_a_folder_that_is_not_a_causal_lm_is_refused(tmp_path, tok):
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(tmp_path / "bert")
    tok.save_pretrained(tmp_path / "bert")
    with pytest.raises(ModelNotFoundError, match="lacks .* weight\\(s\\) of a causal language model"):
        LocalLM(str(tmp_path / "bert"), cache=False).warm_up()
    AutoModelForCausalLM.from_config(AutoConfig.for_model(  # a causal LM folder without its tokenizer
        "llama", vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    ).save_pretrained(tmp_path / "notok")
    with pytest.raises(ModelNotFoundError, match="could not load .* as a causal language model with its tokenizer"):
        LocalLM(str(tmp_path / "notok"), cache=False).warm_up()


def test_cli_model_option_replaces_the_pipelines_local_model(tmp_path_factory, tok, capsys):
    """`ctxflow ask DOC Q --model FOLDER` runs the bundled pipeline on that model (the trace names it),
    and a pipeline without a local model says so."""
    import json
    from pathlib import Path

    import ctxflow
    from ctxflow.cli import main

    path = save_tiny(tmp_path_factory, tok, "llama", max_position_embeddings=2048)
    doc = Path(__file__).resolve().parents[1] / "data" / "sample.md"
    assert main(["ask", str(doc), "What is hooch?", "--model", path, "--json", "-q"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["trace"]["models"]["llm"] == LocalLM(path).model_id != LocalLM().model_id
    assert out["trace"]["components"]["pick"]["llm_calls"] > 0
    source = doc.read_text(encoding="utf-8")
    assert all(source[c["start"]:c["end"]] == c["text"] for c in out["citations"])
    assert ctxflow.load("book_qa", local_model=path).models["llm"].model_name == path
    no_local = tmp_path_factory.mktemp("p") / "p.yaml"
    no_local.write_text("version: 1\nmodels:\n  llm: {type: http, base_url: 'http://127.0.0.1:9'}\ncomponents:\n"
                        "  c: {type: chunk.tokens}\ninputs:\n  document: c.text\noutputs:\n  chunks: c.chunks\n")
    assert main(["run", str(no_local), "-i", "document=hi", "--model", path]) == 2
    assert "declares no local model" in capsys.readouterr().err


def test_a_path_object_names_a_model_folder_like_its_string(tmp_path_factory, tok):
    """``LocalLM(Path(...))`` used to say "the model name is empty" and ``ctxflow.load(..., local_model=Path(...))``
    blamed the recipe's line for a type error."""
    from pathlib import Path

    import ctxflow
    from ctxflow.llm.embed import STEmbedder

    path = save_tiny(tmp_path_factory, tok, "llama", num_key_value_heads=2)
    assert LocalLM(Path(path)).model_id == LocalLM(path).model_id
    assert LocalLM(Path(path)).spec()["model"] == path
    pipe = ctxflow.load("book_qa", local_model=Path(path))
    assert pipe.models["llm"].model_name == path and f"model: {path}" in pipe.dumps()
    assert STEmbedder(Path("/nowhere")).model_name == "/nowhere"
    with pytest.raises(ModelNotFoundError, match="a model is named by a string, got int"):
        LocalLM(3).warm_up()


def test_a_chat_template_that_refuses_the_messages_is_a_user_error(tmp_path_factory, tok):
    import json
    from pathlib import Path

    path = save_tiny(tmp_path_factory, tok, "llama", num_key_value_heads=2)
    cfg = Path(path) / "tokenizer_config.json"
    (Path(path) / "chat_template.jinja").unlink(missing_ok=True)
    c = json.loads(cfg.read_text())
    c["chat_template"] = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not "
                          "supported') }}{% endif %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                          "{% if add_generation_prompt %}<model>{% endif %}")
    cfg.write_text(json.dumps(c))
    llm = LocalLM(path, cache=False)
    with pytest.raises(UserError, match="chat template of .* refuses these messages: System role not supported"):
        llm.generate([[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]], max_new_tokens=2)
    assert llm.render("Hi") == "<user>Hi\n<model>"
