"""vbert_lab.scale: speed knobs, corpus estimates, near-duplicates, and the torchrun recipes in data_scripts/recipes."""

import json
import math

import pytest
import torch
from torch.testing import assert_close

from vbert_lab import scale
from vbert_lab.model import VideoBert, VideoBertConfig


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = VideoBertConfig(vocab_size=200, n_visual_tokens=20, hidden_size=32, num_layers=2, num_heads=4,
                          intermediate_size=64, max_position_embeddings=32, dropout=0.0, attention_dropout=0.0)
    return VideoBert(cfg).eval()


@pytest.fixture(scope="module")
def batch(tiny):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, tiny.config.joint_vocab_size, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    labels = torch.full_like(ids, -100)
    labels[:, 3] = ids[:, 3]
    return {"input_ids": ids, "attention_mask": mask, "mlm_labels": labels}


def test_explicit_attention_is_the_same_function_and_is_undone(tiny, batch):
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        fused = tiny(**inputs).hidden
        with scale.explicit_attention(tiny):
            assert "forward" in vars(tiny.blocks[0].attn)
            explicit = tiny(**inputs).hidden
        again = tiny(**inputs).hidden
    assert_close(explicit, fused, rtol=1e-5, atol=1e-5)
    assert "forward" not in vars(tiny.blocks[0].attn) and torch.equal(again, fused)
    with pytest.raises(ValueError, match="SelfAttention"):
        with scale.explicit_attention(torch.nn.Linear(2, 2)):
            pass


def test_autocast_and_compiled_encoder_agree_with_fp32(tiny, batch):
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        ref = tiny(**inputs).hidden
        half = scale.autocast(tiny, torch.bfloat16)(**inputs).hidden
        compiled = scale.compile_encoder(tiny, backend="eager")  # dynamo's tracing without inductor's code generation
        same = compiled(**inputs).hidden
    assert torch.nn.functional.cosine_similarity(half.float().flatten(1), ref.flatten(1)).min() > 0.99
    assert_close(same, ref, rtol=1e-5, atol=1e-5)
    assert compiled.blocks[0]._compiled_call_impl is not None  # compiled: the copy
    assert getattr(tiny.blocks[0], "_compiled_call_impl", None) is None  # not the original


def test_train_step_timing_leaves_the_model_alone(tiny, batch):
    before = [p.detach().clone() for p in tiny.parameters()]
    t = scale.time_train_step(tiny, batch, steps=2, warmup=1)
    assert t["seconds"] > 0 and t["tokens"] == int(batch["attention_mask"].sum())
    assert math.isclose(t["tokens_per_s"], t["tokens"] / t["seconds"])
    assert all(torch.equal(a, b) for a, b in zip(before, tiny.parameters()))
    assert not tiny.training


def test_clip_model_timing():
    from vbert_lab.features import load_extractor

    s = scale.time_clip_model(load_extractor("tinycook3d", "random"), n_clips=2, repeats=1)
    assert 0 < s < 10


def test_corpus_estimates_follow_from_the_per_clip_costs():
    youcook = scale.CORPORA["YouCook2"]
    assert youcook.clips == 176 * 2400
    est = scale.corpus_estimates(youcook, extract_s_per_clip=0.5, tokens_per_clip=6, train_tokens_per_s=1000,
                                 params=10**8, workers=4)
    assert est["clips"] == 422_400
    assert math.isclose(est["extract_hours"], 422_400 * 0.5 / 3600 / 4)
    assert math.isclose(est["feature_disk_gb"], 422_400 * 1024 * 4 / 1e9)
    assert math.isclose(est["train_hours"], 422_400 * 6 / 1000 / 3600 / 4)
    assert est["train_state_gb"] == 1.6
    assert scale.CORPORA["HowTo100M"].clips > scale.CORPORA["VideoBERT"].clips > youcook.clips


def test_near_duplicates_find_a_trimmed_reupload():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(6, 16, generator=g) * 3
    X, rows = [], []
    for v in range(6):
        for c in range(10):
            X.append(centres[v] + torch.randn(16, generator=g))
            rows.append({"video": f"v{v}", "clip": c})
    for c in range(2, 10):  # "copy": video v0 again without its first two clips, slightly re-encoded
        X.append(X[c] + 0.05 * torch.randn(16, generator=g))
        rows.append({"video": "copy", "clip": c - 2})
    E, ids = scale.video_embeddings(torch.stack(X), rows)
    assert ids == sorted(ids) and E.shape == (7, 16)
    assert_close(E.norm(dim=1), torch.ones(7))
    pairs = scale.near_duplicates(E, ids, threshold=0.9)
    assert [(a, b) for a, b, _ in pairs] == [("copy", "v0")]


def test_ordered_overlap_finds_copies_not_shared_steps():
    g = torch.Generator().manual_seed(0)
    steps = torch.randn(5, 8, generator=g)  # five kinds of step, each a distinct feature
    video = steps[[0, 0, 1, 1, 1, 2, 3, 3, 4]]
    assert scale.ordered_overlap(video, video) == 1.0
    trimmed = video[2:] + 0.01 * torch.randn(7, 8, generator=g)
    assert scale.ordered_overlap(trimmed, video) == 1.0  # a trimmed, re-encoded copy
    reordered = steps[[4, 3, 3, 1, 1, 1, 0, 0, 2]]  # the same steps in another order
    assert scale.ordered_overlap(reordered, video) == 3 / 9  # only the longest shared step (three clips of step 1)
    assert scale.ordered_overlap(video, -video) == 0.0


# --------------------------------------------------------------------------- the recipes


RECIPES = ["pretrain_cpu_2proc.json", "pretrain_gpu.json"]


@pytest.mark.parametrize("name", RECIPES)
def test_pretraining_recipes_are_valid_configs(repo, name):
    from vbert_lab.pretrain import load_pretrain_config

    path = repo / "data_scripts" / "recipes" / name
    spec = load_pretrain_config(path)  # raises with the file's name on any unknown key or bad value
    raw = json.loads(path.read_text())
    assert spec["settings"].regime_set == raw["data"]["regime_set"]
    batch = spec["settings"].batch_size
    procs = 2 if "2proc" in name else 8
    assert batch % procs == 0, f"{name}: the global batch {batch} does not split over {procs} processes"


def test_feature_extraction_recipe_is_valid_bash(repo):
    import subprocess

    script = repo / "data_scripts" / "recipes" / "youcook2_to_features.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    assert "--nproc_per_node" in text and "-m vbert_lab extract" in text and "youcook2.py prepare" in text
