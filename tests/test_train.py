"""vbert_lab.train: schedule, data position, exact resume, NaN stop, two gloo processes == one."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from vbert_lab.model import IGNORE_INDEX, VideoBert, VideoBertConfig
from vbert_lab.train import (
    MixedBatches,
    NonFiniteLossError,
    ResumableLoader,
    TrainConfig,
    WarmupDecay,
    latest_checkpoint,
    list_checkpoints,
    param_groups,
    plot_metrics,
    read_metrics,
    train,
)

TESTS_DIR = Path(__file__).resolve().parent
LENGTH = 10  # every synthetic sequence has this many tokens
MASKED_PER_ROW = 2  # the same count in every row: the mean of per-rank MLM means is the global mean


def tiny_config(**kw) -> VideoBertConfig:
    args = dict(vocab_size=120, n_visual_tokens=20, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                max_position_embeddings=16, dropout=0.0, attention_dropout=0.0)
    args.update(kw)
    return VideoBertConfig(**args)


class SyntheticRegime(torch.utils.data.Dataset):
    """Sequences of one regime with random words (ids 104..119) and visual tokens, seeded per index.

    ``text``: [CLS] w*8 [SEP]; ``video``: [CLS] [>] v*7 [SEP]; ``text_video``:
    [CLS] w*4 [>] v*3 [SEP] with an alignment label. Counts the examples it is asked for.
    """

    def __init__(self, cfg: VideoBertConfig, regime: str, n: int = 48, seed: int = 0, poison: range = range(0)):
        self.cfg, self.regime, self.n, self.seed, self.poison = cfg, regime, n, seed, poison
        self.fetched = 0

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        self.fetched += 1
        cfg, g = self.cfg, torch.Generator().manual_seed(self.seed * 100_003 + i)
        words = lambda k: torch.randint(104, cfg.vocab_size, (k,), generator=g).tolist()  # noqa: E731
        visual = lambda k: (cfg.visual_offset + torch.randint(0, cfg.n_visual_tokens, (k,), generator=g)).tolist()  # noqa: E731
        joiner = cfg.special_token_id("[>]")
        if self.regime == "text":
            ids = [cfg.cls_token_id, *words(8), cfg.sep_token_id]
        elif self.regime == "video":
            ids = [cfg.cls_token_id, joiner, *visual(7), cfg.sep_token_id]
        else:
            ids = [cfg.cls_token_id, *words(4), joiner, *visual(3), cfg.sep_token_id]
        example = {"index": i, "input_ids": torch.tensor(ids)}
        if self.regime == "text_video":
            example["alignment_label"] = int(torch.randint(0, 2, (), generator=g))
        if i in self.poison:
            example["poison"] = True
        return example


class MaskingCollate:
    """Stacks examples and masks MASKED_PER_ROW maskable tokens per row.

    ``random_masks=True``: masks drawn from ``self.generator`` (the protocol
    ResumableLoader re-seeds per batch, like sequences.Collator);
    otherwise each row's mask is a function of its example index.
    """

    def __init__(self, cfg: VideoBertConfig, random_masks: bool = True):
        self.cfg = cfg
        if random_masks:
            self.generator = torch.Generator()

    def __call__(self, examples):
        cfg = self.cfg
        ids = torch.stack([e["input_ids"] for e in examples])  # (B, T)
        labels = torch.full_like(ids, IGNORE_INDEX)
        special = (ids == cfg.cls_token_id) | (ids == cfg.sep_token_id) | (ids == cfg.special_token_id("[>]"))
        for b, e in enumerate(examples):
            g = getattr(self, "generator", None) or torch.Generator().manual_seed(10_007 * e["index"] + 1)
            candidates = (~special[b]).nonzero().flatten()
            picked = candidates[torch.randperm(len(candidates), generator=g)[:MASKED_PER_ROW]]
            labels[b, picked] = ids[b, picked]
            ids[b, picked] = cfg.mask_token_id
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "mlm_labels": labels}
        if "alignment_label" in examples[0]:
            batch["alignment_labels"] = torch.tensor([e["alignment_label"] for e in examples])
        if any(e.get("poison") for e in examples):
            batch["poison"] = torch.tensor(True)
        return batch


class PoisonableVideoBert(VideoBert):
    """A VideoBert whose alignment loss turns NaN on a batch marked ``poison``: a NaN injected at a known step."""

    def forward(self, poison=None, **batch):
        out = super().forward(**batch)
        if poison is not None and bool(poison):
            out.losses["alignment"] = out.losses["alignment"] * float("nan")
            out.loss = sum(out.losses.values())
        return out


def regime_loaders(cfg, batch_size=4, random_masks=True, seed=0, n=48, regimes=("text", "video", "text_video")):
    return {
        name: ResumableLoader(SyntheticRegime(cfg, name, n=n, seed=k), batch_size, MaskingCollate(cfg, random_masks), seed=seed + k)
        for k, name in enumerate(regimes)
    }


def losses_by_step(out_dir: Path) -> dict[int, dict]:
    return {r["step"]: {"loss": r["loss"], **r["losses"]} for r in read_metrics(out_dir / "metrics.jsonl")}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and on a shared 2-core machine extra threads only wait for each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def deterministic():
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(before)


# --------------------------------------------------------------------------- pieces


def test_warmup_then_cosine_or_linear_decay():
    cosine = WarmupDecay(warmup_steps=4, max_steps=12, decay="cosine", min_lr_ratio=0.1)
    factors = [cosine(s) for s in range(12)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[-1] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(factors[3:], factors[4:]))  # strictly falling after the peak
    halfway = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 4 / 8))  # s = 7: 4 of the 8 decay steps done
    assert factors[7] == pytest.approx(halfway)
    linear = WarmupDecay(warmup_steps=2, max_steps=10, decay="linear")
    assert [linear(s) for s in (0, 1, 5, 9)] == pytest.approx([0.5, 1.0, 0.5, 0.0])
    assert WarmupDecay(3, 10, "constant")(9) == 1.0


def test_no_weight_decay_on_biases_and_layernorm():
    model = VideoBert(tiny_config())
    decay, no_decay = param_groups(model, weight_decay=0.01)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    decay_names = {names[id(p)] for p in decay["params"]}
    assert no_decay_names == {n for n, p in model.named_parameters() if n.endswith("bias") or ".ln" in n}
    assert {"embeddings.word.weight", "blocks.0.attn.qkv.weight", "alignment_head.weight"} <= decay_names
    assert {"mlm_head.bias", "blocks.1.ln2.weight", "embeddings.ln.weight"} <= no_decay_names
    assert all(p.ndim == 2 for p in decay["params"])
    assert len(decay_names) + len(no_decay_names) == len(list(model.parameters()))


def test_resumable_loader_shards_the_global_batch_and_resumes_without_loading():
    data = list(range(20))
    one = ResumableLoader(data, 4, seed=3, rank=0, world_size=1)
    ranks = [ResumableLoader(data, 4, seed=3, rank=r, world_size=2) for r in (0, 1)]
    for epoch in (0, 1):
        whole = [b.tolist() for b in one.iter_from(epoch)]
        assert len(whole) == 5 and sorted(sum(whole, [])) == data  # every example once per epoch
        for b, batch in enumerate(whole):
            halves = [ranks[r].batch_indices(epoch, b) for r in (0, 1)]
            assert sorted(halves[0] + halves[1]) == sorted(batch)  # two ranks together = the one-process batch
            assert not set(halves[0]) & set(halves[1])
    assert one.global_batch_indices(0, 0) != one.global_batch_indices(1, 0)  # a new order each epoch
    assert [b.tolist() for b in one.iter_from(1, 3)] == [b.tolist() for b in one.iter_from(1)][3:]
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        ResumableLoader(data, 5, rank=0, world_size=2).batch_indices(0, 0)

    # a collate generator is re-seeded per batch, so workers or not, resumed or not, masks are the same
    cfg = tiny_config()
    dataset = SyntheticRegime(cfg, "text", n=24)
    plain = ResumableLoader(dataset, 4, MaskingCollate(cfg), seed=1)
    first = list(plain.iter_from(0))
    dataset.fetched = 0
    tail = list(plain.iter_from(0, 4))
    assert dataset.fetched == 2 * 4  # the 4 batches before were not loaded
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(first[4:], tail))
    with_workers = list(ResumableLoader(dataset, 4, MaskingCollate(cfg), seed=1, num_workers=2).iter_from(0))
    assert all(torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["mlm_labels"], b["mlm_labels"])
               for a, b in zip(first, with_workers))


def test_mixed_batches_follow_the_weights_and_restore_their_position():
    loaders = {name: ResumableLoader(list(range(10)), 4, seed=k) for k, name in enumerate("abc")}
    mixed = MixedBatches(loaders, {"a": 3, "b": 1, "c": 0}, seed=7)
    draws = [mixed.choose_regime() for _ in range(4000)]
    assert "c" not in draws
    assert draws.count("a") / len(draws) == pytest.approx(0.75, abs=0.03)
    same_seed, other_seed = (MixedBatches(loaders, {"a": 3, "b": 1, "c": 0}, seed=s) for s in (7, 8))
    assert draws[:50] == [same_seed.choose_regime() for _ in range(50)]
    assert draws[:50] != [other_seed.choose_regime() for _ in range(50)]

    for _ in range(5):  # 2 batches per epoch: 5 batches = epoch 2, batch 1
        mixed.next_batch("a")
    state = mixed.state_dict()
    assert state["streams"]["a"] == {"epoch": 2, "batch_index": 1}
    expected = [(r := mixed.choose_regime(), mixed.next_batch(r).tolist()) for _ in range(10)]
    again = MixedBatches(loaders, {"a": 3, "b": 1, "c": 0}, seed=0)
    again.load_state_dict(state)
    assert [(r := again.choose_regime(), again.next_batch(r).tolist()) for _ in range(10)] == expected
    with pytest.raises(ValueError, match=r"\['d'\]"):
        MixedBatches(loaders, {"d": 1.0})


def test_train_config_json_round_trip_and_clear_errors(tmp_path):
    config = TrainConfig(max_steps=7, lr=3e-4, regime_weights={"text": 1, "video": 2}, betas=(0.9, 0.98), resume=False)
    again = TrainConfig.from_json(config.to_json(tmp_path / "train.json"))
    assert again == config
    (tmp_path / "bad.json").write_text(json.dumps({"max_steps": 5, "learning_rate": 1e-3}))
    with pytest.raises(ValueError, match=r"bad\.json.*learning_rate"):
        TrainConfig.from_json(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="decay='exponential'"):
        TrainConfig(decay="exponential")
    with pytest.raises(ValueError, match="fp16.*CUDA"):
        train(VideoBert(tiny_config()), regime_loaders(tiny_config()), TrainConfig(precision="fp16", device="cpu"), tmp_path)


def test_a_batch_key_the_model_does_not_take_is_named(tmp_path):
    cfg = tiny_config()
    loader = regime_loaders(cfg, regimes=("text",))["text"]
    extra = [dict(b, position_ids=torch.arange(LENGTH).expand(4, LENGTH)) for b in loader.iter_from(0)]
    with pytest.raises(ValueError, match="position_ids.*VideoBert.forward"):
        train(VideoBert(cfg), extra, TrainConfig(max_steps=1, progress=False), tmp_path)


# --------------------------------------------------------------------------- the loop


def test_exact_resume_follows_the_uninterrupted_loss_curve(tmp_path, deterministic):
    check_exact_resume(tmp_path, "cpu", tol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_exact_resume_on_cuda_follows_the_uninterrupted_loss_curve(tmp_path):
    # the CUDA RNG (dropout) is part of the checkpoint; without deterministic mode the embedding backward's atomic
    # adds may sum in another order, hence the looser tolerance
    check_exact_resume(tmp_path, "cuda", tol=1e-5)


def check_exact_resume(tmp_path, device, tol):
    """Crash a run after step 5, resume it from checkpoint 4: the same losses, metrics and final weights."""
    cfg = tiny_config(dropout=0.1, attention_dropout=0.1)  # dropout: the torch RNG state matters
    config = TrainConfig(max_steps=8, lr=2e-3, warmup_steps=2, grad_accum_steps=2, max_grad_norm=0.5,
                         regime_weights={"text": 1, "video": 1, "text_video": 2}, loss_weights={"alignment": 0.5},
                         checkpoint_every=2, keep_last=3, eval_every=3, progress=False, seed=11, device=device,
                         precision="fp32")

    def evaluate(model):  # draws from the global RNG: the trainer must keep that from shifting the run
        return {"probe": float(torch.rand(()))}

    torch.manual_seed(0)
    whole = train(VideoBert(cfg), regime_loaders(cfg), config, tmp_path / "whole", evaluate=evaluate)
    assert whole.step == 8
    assert [p.name for p in list_checkpoints(tmp_path / "whole")] == ["step-00000004", "step-00000006", "step-00000008"]
    reference = losses_by_step(tmp_path / "whole")
    assert sorted(reference) == list(range(1, 9))
    assert {r["regime"] for r in read_metrics(tmp_path / "whole" / "metrics.jsonl")} == {"text", "video", "text_video"}
    assert [r["step"] for r in read_metrics(tmp_path / "whole" / "metrics.jsonl", "eval")] == [3, 6]
    torch.manual_seed(0)
    train(VideoBert(cfg), regime_loaders(cfg), config, tmp_path / "no_eval")  # the hook drew random numbers...
    assert losses_by_step(tmp_path / "no_eval") == reference  # ...and the run did not notice

    # a crash after step 5: the run folder holds checkpoint 4, a half-written 6, and metrics up to step 5
    crashed = tmp_path / "crashed"
    shutil.copytree(tmp_path / "whole", crashed)
    shutil.rmtree(crashed / "checkpoints" / "step-00000008")
    (crashed / "checkpoints" / "step-00000006" / "trainer_state.json").unlink()
    _truncate(crashed / "metrics.jsonl", 5)
    assert latest_checkpoint(crashed).name == "step-00000004"

    torch.manual_seed(123)  # a different initialisation: the weights must come from the checkpoint
    loaders = regime_loaders(cfg)
    resumed = train(VideoBert(cfg), loaders, config, crashed, evaluate=evaluate)
    assert resumed.resumed_from.name == "step-00000004" and resumed.step == 8
    assert sum(loader.dataset.fetched for loader in loaders.values()) == 4 * 2 * 4  # 4 steps x 2 micro-batches x 4 examples
    again = losses_by_step(crashed)
    assert sorted(again) == list(range(1, 9))  # no step logged twice, none missing
    for step in range(5, 9):
        for name, value in reference[step].items():
            assert again[step][name] == pytest.approx(value, abs=tol, rel=0), (step, name)
    assert read_metrics(crashed / "metrics.jsonl", "eval") == read_metrics(tmp_path / "whole" / "metrics.jsonl", "eval")
    final_whole = VideoBert.from_pretrained(latest_checkpoint(tmp_path / "whole"))
    final_resumed = VideoBert.from_pretrained(latest_checkpoint(crashed))
    for (name, a), (_, b) in zip(final_whole.state_dict().items(), final_resumed.state_dict().items()):
        assert_close(b, a, rtol=0, atol=tol, msg=name)


def test_a_plain_iterable_resumes_by_replaying_and_says_so(tmp_path):
    cfg = tiny_config()
    batches = list(regime_loaders(cfg, regimes=("text_video",))["text_video"].iter_from(0))  # a plain list: not resumable
    config = TrainConfig(max_steps=6, lr=1e-3, warmup_steps=2, checkpoint_every=3, keep_last=0, progress=False)
    torch.manual_seed(0)
    train(VideoBert(cfg), batches, config, tmp_path / "whole")
    shutil.copytree(tmp_path / "whole", tmp_path / "again")
    shutil.rmtree(tmp_path / "again" / "checkpoints" / "step-00000006")
    with pytest.warns(UserWarning, match="drops 3 batch"):
        train(VideoBert(cfg), batches, config, tmp_path / "again")
    assert losses_by_step(tmp_path / "again") == losses_by_step(tmp_path / "whole")
    with pytest.raises(FileExistsError, match="resume=True"):  # a fresh start never mixes with an old run's checkpoints
        train(VideoBert(cfg), batches, TrainConfig(max_steps=6, resume=False, progress=False), tmp_path / "again")
    longer = TrainConfig(max_steps=10, lr=2e-3, warmup_steps=2, progress=False)
    with pytest.warns(UserWarning) as caught:  # resuming with another lr is allowed, and named
        train(VideoBert(cfg), batches, longer, tmp_path / "again")
    messages = [str(w.message) for w in caught]
    assert any("'lr': (0.001, 0.002)" in m for m in messages), messages
    assert any("drops 6 batch" in m for m in messages), messages
    lrs = {r["step"]: r["lr"] for r in read_metrics(tmp_path / "again" / "metrics.jsonl")}
    stretched = WarmupDecay(2, 10)  # a longer max_steps stretches the decay from the next step on; the base lr stays 1e-3
    assert [lrs[k] for k in (7, 8, 9)] == pytest.approx([1e-3 * stretched(k - 1) for k in (7, 8, 9)])


def _truncate(metrics: Path, last_step: int) -> None:
    lines = [line for line in metrics.read_text().splitlines() if json.loads(line)["step"] <= last_step]
    metrics.write_text("".join(line + "\n" for line in lines))


def test_training_lowers_the_loss_and_logs_what_it_did(tmp_path):
    cfg = tiny_config()
    config = TrainConfig(max_steps=30, lr=3e-3, warmup_steps=3, decay="linear", checkpoint_every=10, keep_last=1,
                         progress=True, regime_weights={"video": 0})
    torch.manual_seed(0)
    result = train(VideoBert(cfg), regime_loaders(cfg), config, tmp_path)
    records = read_metrics(result.metrics_path)
    assert [r["step"] for r in records] == list(range(1, 31))
    assert {r["regime"] for r in records} == {"text", "text_video"}  # weight 0: never drawn
    first, last = records[:5], records[-5:]
    mlm = lambda rs: sum(r["losses"]["masked_tokens"] for r in rs) / len(rs)  # noqa: E731
    assert mlm(last) < mlm(first) - 0.5  # ids are uniform over 16 words/20 visual tokens: ln(141) -> about ln(18)
    schedule = WarmupDecay(3, 30, "linear")
    assert [r["lr"] for r in records] == pytest.approx([3e-3 * schedule(r["step"] - 1) for r in records])
    assert all(r["tokens_per_s"] > 0 and r["grad_norm"] > 0 for r in records)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000030"]  # keep_last=1
    assert json.loads((tmp_path / "train_config.json").read_text())["max_steps"] == 30
    fig = plot_metrics(result.metrics_path)
    labels = {line.get_label() for line in fig.axes[0].get_lines()}
    assert labels == {"total (weighted)", "masked_tokens", "alignment"}
    assert len(fig.axes[1].get_lines()[0].get_xdata()) == 30
    # resuming a finished run does nothing
    assert train(VideoBert(cfg), regime_loaders(cfg), config, tmp_path).step == 30
    assert len(read_metrics(result.metrics_path)) == 30


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = tiny_config()
    dataset = SyntheticRegime(cfg, "text_video", n=40, poison=range(20, 24))  # batch 5 of epoch 0 = step 6
    loader = ResumableLoader(dataset, 4, MaskingCollate(cfg), shuffle=False)
    config = TrainConfig(max_steps=10, lr=1e-3, warmup_steps=1, checkpoint_every=2, keep_last=0, progress=False)
    torch.manual_seed(0)
    with pytest.raises(NonFiniteLossError) as caught:
        train(PoisonableVideoBert(cfg), loader, config, tmp_path)
    error = caught.value
    message = str(error)
    assert error.step == 6 and error.name == "loss 'alignment'" and math.isnan(error.value)
    for needed in ("step 6", "'alignment'", "nan", "lower learning rate", "precision='fp32'", "step-00000004", "resume=True"):
        assert needed in message, needed
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000002", "step-00000004"]  # 6 never written
    good = VideoBert.from_pretrained(latest_checkpoint(tmp_path))
    assert all(torch.isfinite(p).all() for p in good.parameters())
    records = read_metrics(tmp_path / "metrics.jsonl", kind=None)
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3, 4, 5]
    assert records[-1]["kind"] == "stop" and records[-1]["step"] == 6


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_on_cuda_follows_fp32(tmp_path, precision):
    """bf16 autocast, or fp16 with the gradient scaler: on the GPU the loss curve stays near fp32's."""
    cfg = tiny_config()
    curves = {}
    for p in ("fp32", precision):
        torch.manual_seed(0)
        config = TrainConfig(max_steps=6, lr=2e-3, warmup_steps=1, precision=p, device="cuda", progress=False, seed=3)
        train(VideoBert(cfg), regime_loaders(cfg, random_masks=False), config, tmp_path / p)
        curves[p] = [r["loss"] for r in read_metrics(tmp_path / p / "metrics.jsonl")]
    assert len(curves[precision]) == 6 and all(math.isfinite(x) for x in curves[precision])
    assert curves[precision] == pytest.approx(curves["fp32"], rel=0.05)  # nearly the same steps as fp32


def test_bf16_autocast_on_cpu_trains(tmp_path):
    cfg = tiny_config()
    torch.manual_seed(0)
    train(VideoBert(cfg), regime_loaders(cfg), TrainConfig(max_steps=3, precision="bf16", progress=False), tmp_path)
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert len(records) == 3 and all(math.isfinite(r["loss"]) for r in records)


def test_fine_tunes_from_the_packaged_minilm(tmp_path):
    from vbert_lab import hf

    cfg_small = tiny_config()  # ids of the synthetic data fit MiniLM's vocabulary (their special ids are BERT's)
    with pytest.warns(hf.MissingHeadWarning):  # MiniLM ships no MLM head: a fresh one is trained here
        model = hf.load_bert(hf.minilm_path(), n_visual_tokens=cfg_small.n_visual_tokens, dropout=0.0, attention_dropout=0.0)
    cfg = model.config
    before = model.blocks[0].attn.qkv.weight.detach().clone()
    loader = ResumableLoader(SyntheticRegime(cfg, "text_video", n=8), 2, MaskingCollate(cfg))
    result = train(model, loader, TrainConfig(max_steps=2, lr=1e-4, warmup_steps=1, progress=False), tmp_path)
    after = VideoBert.from_pretrained(result.checkpoint)
    assert not torch.equal(after.blocks[0].attn.qkv.weight, before)  # the pretrained text weights were trained
    assert after.config.hidden_size == 384 and after.config.vocab_size == 30522
    assert all(math.isfinite(r["loss"]) for r in read_metrics(result.metrics_path))


# --------------------------------------------------------------------------- torchrun


def run_small_config(out_dir: str) -> None:
    """The run both sides of the DDP test do: one process here, two under torchrun."""
    torch.manual_seed(0)
    cfg = tiny_config()
    loaders = regime_loaders(cfg, batch_size=8, random_masks=False, n=64, regimes=("text", "text_video"))
    config = TrainConfig(max_steps=6, lr=3e-3, warmup_steps=2, grad_accum_steps=2, max_grad_norm=1.0,
                         checkpoint_every=3, keep_last=0, progress=False, seed=5)
    train(VideoBert(cfg), loaders, config, out_dir)


def thread_names() -> list[str]:
    """This process's threads by name, e.g. gloo's ``pt_gloo_runloop`` (Linux; elsewhere none are listed)."""
    tasks = Path("/proc/self/task")
    return [Path(task, "comm").read_text().strip() for task in tasks.iterdir()] if tasks.is_dir() else []


def test_two_gloo_processes_under_torchrun_match_one_process(tmp_path):
    run_small_config(str(tmp_path / "one"))
    script = tmp_path / "ddp_run.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(TESTS_DIR)!r})\n"
        "from test_train import run_small_config, thread_names\n"
        "run_small_config(sys.argv[1])\n"
        "import os, pathlib\n"
        "pathlib.Path(sys.argv[1], 'threads-rank' + os.environ['RANK']).write_text(' '.join(thread_names()))\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", str(script), str(tmp_path / "two")],
        env=env, capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    one, two = losses_by_step(tmp_path / "one"), losses_by_step(tmp_path / "two")
    assert sorted(two) == list(range(1, 7))  # rank 0 alone logs: each step once
    tokens = {run: [r["tokens"] for r in read_metrics(tmp_path / run / "metrics.jsonl")] for run in ("one", "two")}
    assert tokens["one"] == tokens["two"] == [2 * 8 * LENGTH] * 6  # the global batch is split, not repeated per rank
    for step in one:
        for name, value in one[step].items():
            assert two[step][name] == pytest.approx(value, abs=1e-5), (step, name)
    assert [p.name for p in list_checkpoints(tmp_path / "two")] == ["step-00000003", "step-00000006"]
    if sys.platform == "linux":
        # train() freed its process group: no gloo thread outlives it into interpreter shutdown, where one that
        # still held tensors aborted the process (torch._dynamo, imported after the group existed, pinned it)
        for rank in (0, 1):
            left = (tmp_path / "two" / f"threads-rank{rank}").read_text().split()
            assert not [name for name in left if "gloo" in name], (rank, left)
    state = torch.load(latest_checkpoint(tmp_path / "two") / "trainer_state.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng"]) == 2  # each rank's RNG state, for an exact resume
    a = VideoBert.from_pretrained(latest_checkpoint(tmp_path / "one")).state_dict()
    b = VideoBert.from_pretrained(latest_checkpoint(tmp_path / "two")).state_dict()
    for name in a:
        assert_close(b[name], a[name], rtol=0, atol=1e-5, msg=name)


def test_claim_run_dir_keeps_a_matching_run_and_clears_any_other(tmp_path):
    from vbert_lab.train import claim_run_dir

    folder = tmp_path / "run"
    out, stamp = claim_run_dir(folder, {"lr": 1e-3, "steps": (1, 2)}, "run.json")
    assert out == folder and folder.is_dir() and stamp == {"lr": 1e-3, "steps": [1, 2]}  # as JSON reads it back
    (folder / "run.json").write_text(json.dumps(stamp))
    (folder / "checkpoint").write_text("x")
    claim_run_dir(folder, {"lr": 1e-3, "steps": (1, 2)}, "run.json")
    assert (folder / "checkpoint").exists()  # same stamp: resumed, not wiped
    claim_run_dir(folder, {"lr": 1e-3, "steps": (1, 2)}, "run.json", force=True)
    assert not any(folder.iterdir())
    (folder / "run.json").write_text(json.dumps(stamp))
    (folder / "checkpoint").write_text("x")
    claim_run_dir(folder, {"lr": 2e-3}, "run.json")
    assert not any(folder.iterdir())  # another run's folder
    (folder / "stray").write_text("x")
    claim_run_dir(folder, {"lr": 2e-3}, "run.json")
    assert not any(folder.iterdir())  # files without a stamp
