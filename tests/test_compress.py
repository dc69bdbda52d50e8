"""vbert_lab.compress: int8 quantisation, pruning, low rank, the compressed file format, latency."""

import json
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

from vbert_lab import compress as C
from vbert_lab.model import VideoBert, VideoBertConfig

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # PyTorch's own path says it is deprecated


def tiny_config(**kw):
    args = dict(vocab_size=1000, n_visual_tokens=40, n_audio_tokens=10, hidden_size=64, num_layers=2, num_heads=4,
                intermediate_size=128, max_position_embeddings=32, dropout=0.0, attention_dropout=0.0, num_labels=5)
    args.update(kw)
    return VideoBertConfig(**args)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return VideoBert(tiny_config()).eval()


@pytest.fixture(scope="module")
def ids(tiny):
    g = torch.Generator().manual_seed(1)
    return torch.randint(1, tiny.config.joint_vocab_size, (4, 16), generator=g)


@pytest.fixture(scope="module")
def minilm():
    """The real all-MiniLM-L6-v2 (6 layers, 384 wide, 30,522 WordPiece rows), as a VideoBert."""
    from vbert_lab.hf import load_bert, minilm_path

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it has no MLM head (a documented warning)
        return load_bert(minilm_path()).eval()


@pytest.fixture(scope="module")
def sentences():
    from vbert_lab.hf import load_tokenizer

    texts = ["now let me show you how to cut the onion", "slice the tomatoes and put them in a bowl",
             "heat the oil in a large pan, then add the garlic", "a man is playing a guitar on stage"]
    enc = load_tokenizer()(texts, padding=True, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def backends():
    return ["torch"] + (["torchao"] if C._import_torchao() is not None else [])


# --------------------------------------------------------------------------- int8


@pytest.mark.parametrize("backend", backends())
def test_int8_minilm_stays_close_to_fp32_and_its_file_is_a_quarter(minilm, sentences, backend):
    q = C.quantize_int8(minilm, backend=backend)
    assert C.is_quantized(q) and not C.is_quantized(minilm)  # a copy: the original is untouched
    with torch.no_grad():
        ref, got = minilm.encode(**sentences), q.encode(**sentences)
    real = sentences["attention_mask"].bool()
    cos = F.cosine_similarity(got[real], ref[real], dim=-1)  # one per real token
    pooled = [(h * sentences["attention_mask"][..., None]).sum(1) for h in (got, ref)]
    # torchao: one activation scale per token; PyTorch's FBGEMM path: one per tensor, hence looser
    token_floor, sentence_floor, max_err = (0.985, 0.99, 0.5) if backend == "torchao" else (0.9, 0.95, 1.0)
    assert cos.min() > token_floor, cos.min()
    assert F.cosine_similarity(*pooled).min() > sentence_floor
    assert (got - ref)[real].abs().max() < max_err  # hidden states reach |h| ~ 5.5
    ratio = C.model_size_mb(q) / C.model_size_mb(minilm)
    assert 0.24 < ratio <= 0.3, ratio  # int8 everywhere it matters: a bit over 1/4 (scales, LayerNorms, biases)


def test_int8_file_really_holds_int8_and_loads_back_exactly(tiny, ids, tmp_path):
    from safetensors import safe_open

    q = C.quantize_int8(tiny)
    C.save_compressed(q, tmp_path)
    spec = json.loads((tmp_path / C.SPEC_FILE).read_text())
    with safe_open(str(tmp_path / C.WEIGHTS_FILE), "pt") as f:
        assert f.get_tensor("embeddings.word.weight.int8").dtype == torch.int8
        assert f.get_tensor("embeddings.word.weight.int8").shape == (tiny.config.joint_vocab_size, 64)
        assert f.get_tensor("blocks.0.attn.qkv.weight.int8").dtype == torch.int8
        assert f.get_tensor("blocks.0.attn.qkv.weight.scale").shape == (3 * 64,)
        assert "embeddings.word.weight" not in f.keys()
    assert spec["int8_modules"]["embeddings.word"] == "embedding" and spec["int8_modules"]["blocks.1.mlp.down"] == "linear"
    back = C.load_compressed(tmp_path)
    assert C.is_quantized(back)
    with torch.no_grad():
        assert_close(back(ids).logits, q(ids).logits, rtol=0, atol=0)
        assert_close(back(ids).hidden, q(ids).hidden, rtol=0, atol=0)
        where = torch.zeros_like(ids, dtype=torch.bool)
        where[:, 2] = True
        assert back.masked_logits(back.encode(ids), where).shape == (4, tiny.config.joint_vocab_size)  # tied head works


@pytest.mark.parametrize("saved_with", backends())
def test_the_file_does_not_depend_on_the_backend(tiny, ids, tmp_path, saved_with):
    q = C.quantize_int8(tiny, backend=saved_with)
    C.save_compressed(q, tmp_path)
    for loaded_with in backends():
        back = C.load_compressed(tmp_path, backend=loaded_with)
        again = tmp_path / f"again-{loaded_with}"
        C.save_compressed(back, again)
        assert (again / C.WEIGHTS_FILE).read_bytes() == (tmp_path / C.WEIGHTS_FILE).read_bytes()
        with torch.no_grad():
            assert F.cosine_similarity(back(ids).hidden.flatten(1), tiny(ids).hidden.flatten(1)).min() > 0.99


def test_torch_backend_warns_that_it_is_deprecated(tiny):
    C._warned_deprecated = False
    with pytest.warns(DeprecationWarning, match="torchao"):
        C.quantize_int8(tiny, backend="torch")
    with pytest.raises(ValueError, match="backend='int4'"):
        C.quantize_int8(tiny, backend="int4")


def test_int8_embedding_rows(tiny):
    emb = tiny.embeddings.word
    q = C.Int8Embedding.from_embedding(emb)
    assert q.qdata.dtype == torch.int8
    steps = q.qdata[1:].int().abs().amax(dim=1)
    assert ((steps == 127) | (steps == 128)).all() and (q.qdata[0] == 0).all()  # each row's largest |w| -> the end; [PAD] is 0
    rows = torch.tensor([[0, 5, 999]])
    err = (q(rows) - emb(rows)).abs()
    assert (err <= q.scale[rows].unsqueeze(-1) / 2 + 1e-7).all()  # rounding error: at most half a step
    assert_close(q.weight[5], q(torch.tensor([5]))[0])


# --------------------------------------------------------------------------- pruning


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_pruning_zeroes_exactly_the_asked_fraction_of_the_smallest_weights(tiny, scope):
    layers = C.linear_layers(tiny)
    assert sorted(layers) == sorted(f"blocks.{i}.{n}" for i in range(2) for n in ("attn.qkv", "attn.out", "mlp.up", "mlp.down"))
    p = C.prune_magnitude(tiny, 0.6, scope=scope)
    assert C.sparsity(tiny) == 0.0  # the original is untouched
    for name in layers:
        w = C.linear_layers(p)[name].weight
        assert not hasattr(C.linear_layers(p)[name], "weight_orig")  # permanent: no mask, no hook
        if scope == "layer":
            assert int((w == 0).sum()) == round(0.6 * w.numel())
    total = sum(m.weight.numel() for m in layers.values())
    zeros = sum(int((m.weight == 0).sum()) for m in C.linear_layers(p).values())
    assert zeros == round(0.6 * total) if scope == "global" else abs(zeros / total - 0.6) < 1e-3
    if scope == "global":  # every kept weight is at least as large as every pruned one
        before = torch.cat([m.weight.flatten().abs() for m in layers.values()])
        after = torch.cat([m.weight.flatten() for m in C.linear_layers(p).values()])
        assert before[after != 0].min() >= before[after == 0].max()
    assert tiny.embeddings.word.weight.count_nonzero() == p.embeddings.word.weight.count_nonzero()  # only the chosen layers
    with pytest.raises(ValueError, match="sparsity=1.0"):
        C.prune_magnitude(tiny, 1.0)


def test_a_pruned_file_is_smaller_only_when_stored_sparse(tiny, ids, tmp_path):
    p = C.prune_magnitude(tiny, 0.75)
    dense, sparse = C.model_size_mb(p), C.model_size_mb(p, sparse=True)
    assert dense == C.model_size_mb(tiny)  # zeros cost as much as any number in a dense file
    assert sparse < dense
    C.save_compressed(p, tmp_path, sparse=True)
    spec = json.loads((tmp_path / C.SPEC_FILE).read_text())
    assert spec["tensors"]["blocks.0.mlp.up.weight"]["storage"] == "sparse_bitmask"
    assert spec["tensors"]["embeddings.word.weight"]["storage"] == "dense"  # not pruned: dense is smaller
    back = C.load_compressed(tmp_path)
    for name, m in C.linear_layers(p).items():
        assert torch.equal(C.linear_layers(back)[name].weight, m.weight)
    with torch.no_grad():
        assert_close(back(ids).logits, p(ids).logits, rtol=0, atol=0)
    assert C.parameter_count(p)["nonzero"] < C.parameter_count(p)["total"] == C.parameter_count(tiny)["total"]


# --------------------------------------------------------------------------- low rank


def test_full_rank_reproduces_the_layer_and_lower_ranks_are_the_best_approximation():
    torch.manual_seed(2)
    layer = nn.Linear(24, 40)
    x = torch.randn(7, 24)
    full = C.LowRankLinear.from_linear(layer, rank=24)
    assert_close(full(x), layer(x), rtol=1e-5, atol=1e-5)
    W = layer.weight.detach().double()
    S = torch.linalg.svdvals(W)
    for r in (1, 5, 12):
        approx = C.LowRankLinear.from_linear(layer, rank=r)
        W_r = (approx.second.weight @ approx.first.weight).double()
        # Eckart-Young: the error is the norm of the singular values left out
        assert_close(torch.linalg.matrix_norm(W - W_r), S[r:].norm(), rtol=1e-4, atol=1e-5)
        assert sum(p.numel() for p in approx.parameters()) == r * (24 + 40) + 40
    with pytest.raises(ValueError, match="rank=25"):
        C.LowRankLinear(24, 40, 25)
    svd = torch.linalg.svd(W, full_matrices=False)  # factorised once, truncated at any rank: the same layer
    assert_close(C.LowRankLinear.from_linear(layer, 5, svd=svd)(x), C.LowRankLinear.from_linear(layer, 5)(x))


def test_rank_rules(tiny):
    half = C.choose_ranks(tiny, param_fraction=0.5)
    for name, r in half.items():
        n_out, n_in = C.linear_layers(tiny)[name].weight.shape
        assert r * (n_in + n_out) <= 0.5 * n_in * n_out < (r + 1) * (n_in + n_out)
    assert C.choose_ranks(tiny, rank=1000) == {}  # full rank saves nothing: no layer is factorised
    assert set(C.choose_ranks(tiny, rank=8).values()) == {8}
    w = C.linear_layers(tiny)["blocks.0.mlp.up"].weight.detach().double()
    s2 = torch.linalg.svdvals(w) ** 2
    r = C.choose_ranks(tiny, energy=0.5, layers=["blocks.0.mlp.up"])["blocks.0.mlp.up"]
    assert s2[:r].sum() / s2.sum() >= 0.5 > s2[: r - 1].sum() / s2.sum()
    svds = C.layer_svds(tiny)
    assert C.choose_ranks(tiny, energy=0.8, svd=svds) == C.choose_ranks(tiny, energy=0.8)
    with pytest.raises(ValueError, match="exactly one"):
        C.choose_ranks(tiny, rank=4, energy=0.9)
    with pytest.raises(ValueError, match="not an nn.Linear"):
        C.choose_ranks(tiny, rank=4, layers=["embeddings.word"])


def test_low_rank_model_keeps_the_asked_share_and_round_trips(tiny, ids, tmp_path):
    lr = C.low_rank(tiny, param_fraction=0.5)
    assert_close(C.low_rank(tiny, param_fraction=0.5, svd=C.layer_svds(tiny))(ids).logits, lr(ids).logits)
    layers = C.linear_layers(tiny)
    before = sum(m.weight.numel() for m in layers.values())
    after = sum(lr.get_submodule(n).first.weight.numel() + lr.get_submodule(n).second.weight.numel() for n in layers)
    assert 0.45 < after / before <= 0.5
    assert C.model_size_mb(lr) < C.model_size_mb(tiny)
    C.save_compressed(lr, tmp_path)
    back = C.load_compressed(tmp_path)
    assert isinstance(back.blocks[0].mlp.up, C.LowRankLinear) and back.blocks[0].mlp.up.rank == lr.blocks[0].mlp.up.rank
    with torch.no_grad():
        assert_close(back(ids).logits, lr(ids).logits, rtol=0, atol=0)
    both = C.quantize_int8(lr)  # the methods compose: int8 factors
    C.save_compressed(both, tmp_path / "both")
    with torch.no_grad():
        assert_close(C.load_compressed(tmp_path / "both")(ids).logits, both(ids).logits, rtol=0, atol=0)
    assert C.model_size_mb(tmp_path / "both") < C.model_size_mb(C.quantize_int8(tiny))


# --------------------------------------------------------------------------- any module


def test_works_on_any_module_with_linear_layers(tmp_path):
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10)).eval()
    x = torch.randn(5, 32)
    assert sorted(C.linear_layers(net)) == ["0", "2"]
    for variant in (C.quantize_int8(net), C.prune_magnitude(net, 0.5), C.low_rank(net, rank=8)):
        C.save_compressed(variant, tmp_path)
        assert not (tmp_path / C.CONFIG_FILE).exists()
        fresh = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))
        back = C.load_compressed(tmp_path, model=fresh)
        with torch.no_grad():
            assert_close(back(x), variant(x), rtol=0, atol=0)
    with pytest.raises(FileNotFoundError, match="config.json"):
        C.load_compressed(tmp_path)


def test_load_errors(tiny, tmp_path):
    with pytest.raises(FileNotFoundError, match="compression.json"):
        C.load_compressed(tmp_path)
    C.save_compressed(tiny, tmp_path)
    with pytest.raises(ValueError, match="disagree"):
        C.load_compressed(tmp_path, model=nn.Sequential(nn.Linear(2, 2)))


# --------------------------------------------------------------------------- latency


def test_latency_is_measured_in_turns_at_the_stated_threads(tiny, ids):
    threads = torch.get_num_threads()
    calls = []

    def slow(input_ids, attention_mask=None, token_type_ids=None):
        calls.append("slow")
        return torch.zeros(1).add(sum(range(20000)))

    result = C.compare_latency({"model": tiny, "slow": slow}, {"input_ids": ids, "labels": torch.zeros(4)}, repeats=5,
                               warmup=2, threads=1)
    assert torch.get_num_threads() == threads  # restored
    assert len(calls) == 2 + 5
    lat = result["model"]
    assert lat.threads == 1 and (lat.batch_size, lat.seq_len) == (4, 16) and lat.repeats == 5
    assert 0 < lat.q1_ms <= lat.median_ms <= lat.q3_ms
    assert "batch 4 x 16" in str(C.measure_latency(tiny, {"input_ids": ids}, repeats=3, warmup=1))
