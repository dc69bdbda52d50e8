"""vbert_lab.pretrain: the model from MiniLM, the regimes' loaders, cached runs and ``vbert-lab pretrain``."""

from __future__ import annotations

import json

import pytest
import torch

from vbert_lab import cli, pipeline, pretrain, profiles
from vbert_lab.model import VideoBert
from vbert_lab.profiles import Profile
from vbert_lab.sequences import segments_of
from vbert_lab.session import Session
from vbert_lab.train import TrainConfig, read_metrics

TINY = Profile(name="tiny", tinycook_videos=6, frame_size=64, extractor_epochs=1, extractor_videos=2,
               kmeans_k=3, kmeans_depth=2, audio_kmeans_k=2, audio_kmeans_depth=2,
               pretrain_layers=1, pretrain_steps=3, pretrain_batch=4, pretrain_max_len=32)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Session:
    """A six-video TinyCook at 64 px with tiny codebooks and a one-layer MiniLM."""
    return Session(profile=TINY, device="cpu", seed=0, data_dir=tmp_path_factory.mktemp("pretrain") / "tc")


def test_model_is_minilm_cut_short_with_centroid_visual_embeddings(run):
    settings = pretrain.default_settings(run, word_anchor=0.0)  # the paper's rows (the anchor: the next test)
    model = pretrain.build_model(run, settings)
    cfg = model.config
    assert cfg.num_layers == 1 == len(model.blocks) and cfg.hidden_size == 384 and cfg.vocab_size == 30522
    assert cfg.n_visual_tokens == 9 and cfg.n_audio_tokens == 4
    rows = model.embeddings.word.weight[cfg.visual_offset : cfg.audio_offset].detach().double()
    words = model.embeddings.word.weight[: cfg.vocab_size].detach().double()
    # on the words' scale, and as far apart as the centroids (an orthonormal lift keeps distances)
    assert rows.norm(dim=1).mean() == pytest.approx(float(words.norm(dim=1).mean()), rel=1e-4)
    centroids = pipeline.ensure_codebook(run, "visual").leaf_centroids.double()
    ratio = torch.cdist(rows, rows)[0, 1:] / torch.cdist(centroids, centroids)[0, 1:]
    torch.testing.assert_close(ratio, torch.full_like(ratio, float(ratio[0])))
    with pytest.raises(ValueError, match="keep 1..1"):
        pretrain.truncate_layers(model, 2)


def test_word_anchor_moves_visual_rows_towards_the_cooking_words_they_co_occur_with(run):
    import math

    settings = pretrain.default_settings(run, word_anchor=0.0)  # the paper's rows: the centroids alone
    plain = pretrain.build_model(run, settings)
    cfg = plain.config
    salient = sorted(set(pretrain.salient_token_ids(settings)))
    counts = pretrain.word_counts(run, cfg, salient)
    column = {w: j for j, w in enumerate(salient)}
    # counted by hand from the training segments: each (token, word) pair once per segment
    by_hand = {}
    for video in pipeline.load_tokens(run, "training"):
        for seg in segments_of(video):
            for v in set(seg.visual):
                for w in set(seg.text) & set(salient):
                    by_hand[v, w] = by_hand.get((v, w), 0) + 1
    assert by_hand and {(v, w): int(counts[v, column[w]]) for v, w in by_hand} == by_hand
    assert counts.sum() == sum(by_hand.values())  # nothing outside the cooking words

    anchored = pretrain.build_model(run, pretrain.default_settings(run, word_anchor=0.5))
    table, before = anchored.embeddings.word.weight.detach().double(), plain.embeddings.word.weight.detach().double()
    words = before[: cfg.vocab_size]
    norm = words.norm(dim=1).mean()
    # PPMI with the words' marginal raised to 0.75, written out for one token in plain Python
    total = sum(by_hand.values())
    word_total = {w: sum(c for (_, w2), c in by_hand.items() if w2 == w) for _, w in by_hand}
    smooth = sum(c ** 0.75 for c in word_total.values())
    for v in sorted({v for v, _ in by_hand}):
        row_total = sum(c for (v2, _), c in by_hand.items() if v2 == v)
        ppmi = {w: max(0.0, math.log((c / total) / ((row_total / total) * (word_total[w] ** 0.75 / smooth))))
                for (v2, w), c in by_hand.items() if v2 == v}
        mass = sum(ppmi.values())
        if not mass:
            continue
        target = sum(x / mass * words[w] for w, x in ppmi.items())
        target = target * norm / target.norm()
        expected = 0.5 * before[cfg.visual_offset + v] + 0.5 * target
        torch.testing.assert_close(table[cfg.visual_offset + v], expected * norm / expected.norm(), rtol=1e-5, atol=1e-6)
    # a token no cooking word was said over keeps its centroid row; the words and audio rows are untouched
    silent = [v for v in range(cfg.n_visual_tokens) if counts[v].sum() == 0]
    for v in silent:
        torch.testing.assert_close(table[cfg.visual_offset + v], before[cfg.visual_offset + v])
    torch.testing.assert_close(table[: cfg.visual_offset], before[: cfg.visual_offset])
    torch.testing.assert_close(table[cfg.audio_offset :], before[cfg.audio_offset :])
    with pytest.raises(ValueError, match=r"counts should be \(n_visual_tokens, len\(word_ids\)\)"):
        plain.anchor_visual_embeddings(counts[:2], salient)
    with pytest.raises(ValueError, match="word_ids must be word ids"):
        plain.anchor_visual_embeddings(counts, [cfg.visual_offset] * len(salient))
    with pytest.raises(ValueError, match="weight=1.5"):
        plain.anchor_visual_embeddings(counts, salient, 1.5)
    with pytest.raises(ValueError, match="word_ids repeat a word"):
        pretrain.word_counts(run, cfg, salient + salient[:1])


def test_fractions_pick_nested_training_videos(run):
    subsets = pipeline.video_subsets(run)
    all_train = pretrain.training_videos(run, 1.0)
    half = pretrain.training_videos(run, 0.5)
    assert all_train == sorted(v for v, s in subsets.items() if s == "training")
    assert set(half) <= set(all_train) and len(half) == -(-len(all_train) // 2)
    assert len(pretrain.training_videos(run, 0.01)) == 1


def test_loaders_give_each_regime_its_batches(run):
    settings = pretrain.default_settings(run, regime_set="text_video")
    model = pretrain.build_model(run, settings)
    loaders = pretrain.pretrain_loaders(run, model.config, settings)
    assert set(loaders) == {"text", "video", "text_video"}
    batch = next(iter(loaders["text_video"]))
    assert {"input_ids", "attention_mask", "mlm_labels", "alignment_labels"} <= set(batch)
    assert batch["input_ids"].shape[1] <= 32
    text = next(iter(loaders["text"]))
    assert (text["input_ids"] < model.config.vocab_size).all()  # no visual token in the text regime


def test_text_video_pairs_are_drawn_afresh_for_each_batch_and_again_on_resume(run):
    settings = pretrain.default_settings(run, regime_set="text_video")
    cfg = pretrain.build_model(run, settings).config
    loader = pretrain.pretrain_loaders(run, cfg, settings)["text_video"]
    example = loader.dataset[0]
    own = example["segment"]
    pool_videos = {seg.video_id: seg for seg in loader.collate_fn.pool}
    assert len(pool_videos) >= 2
    jn = cfg.special_token_id("[>]")
    for batch_index in range(5):  # a resumed run re-seeds the collator to the same draw
        assert torch.equal(loader._collate(0, batch_index, [example])["input_ids"],
                           loader._collate(0, batch_index, [example])["input_ids"])
    # without masking (its random replacements would blur the check): one sentence drawn 40 times
    unmasked = pretrain._PairCollator(cfg, loader.collate_fn.pool, settings.max_len, settings.max_stride,
                                      text_rate=0.0, video_rate=0.0, audio_rate=0.0, seed=0)
    labels = []
    for _ in range(40):
        batch = unmasked([example])
        ids, label = batch["input_ids"][0].tolist(), int(batch["alignment_labels"][0])
        visual = [i - cfg.visual_offset for i in ids[ids.index(jn) + 1:]
                  if cfg.visual_offset <= i < cfg.visual_offset + cfg.n_visual_tokens]
        if label == 1:  # its own clips' tokens, thinned by the stride noise (masking may hide some)
            assert set(visual) <= set(own.visual)
        labels.append(label)
    # the same sentence is shown with its own video and with others': its words alone cannot give the label
    assert 10 <= sum(labels) <= 30
    static = pretrain.pretrain_loaders(run, cfg, pretrain.default_settings(run, fresh_pairs=False, salient_rate=0.0,
                                                                                 alignment_loss="binary"))["text_video"]
    fixed = {int(static._collate(0, b, [static.dataset[0]])["alignment_labels"][0]) for b in range(10)}
    assert fixed == {static.dataset[0]["alignment_label"]}  # drawn once, as notebook 06 shows them


def test_negatives_carry_as_many_video_tokens_as_the_sentences_own_segment(run):
    settings = pretrain.default_settings(run, regime_set="text_video", salient_rate=0.0)
    cfg = pretrain.build_model(run, settings).config
    loader = pretrain.pretrain_loaders(run, cfg, settings)["text_video"]
    pool = loader.collate_fn.pool
    assert len({len(seg.visual) for seg in pool}) > 1  # segments differ in length: the check below means something
    unmasked = pretrain._PairCollator(cfg, pool, None, max_stride=1, text_rate=0.0, video_rate=0.0, audio_rate=0.0, seed=0)
    jn = cfg.special_token_id("[>]")
    seen = {0: 0, 1: 0}
    for example in loader.dataset[:20]:
        own = example["segment"]
        for _ in range(4):
            batch = unmasked([example])
            ids, label = batch["input_ids"][0].tolist(), int(batch["alignment_labels"][0])
            # the video part; a batch with nothing masked gets one [MASK] (None here), so that its loss is defined
            visual = [None if i == cfg.mask_token_id else i - cfg.visual_offset for i in ids[ids.index(jn) + 1:-1]]
            assert len(visual) == len(own.visual), (label, own, visual)
            same = all(v is None or v == o for v, o in zip(visual, own.visual))
            assert same or label == 0
            seen[label] += 1
    assert seen[0] > 5 and seen[1] > 5


def test_the_new_rows_and_heads_start_from_the_runs_seed_not_the_global_generator(run):
    settings = pretrain.default_settings(run)
    torch.manual_seed(1)
    a = pretrain.build_model(run, settings).state_dict()
    torch.manual_seed(2)
    after = torch.rand(3)
    torch.manual_seed(2)
    b = pretrain.build_model(run, settings).state_dict()
    assert torch.equal(torch.rand(3), after)  # the caller's generator is left where it was
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert any("alignment" in name for name in a)


def test_ensure_pretrained_trains_once_then_reuses_and_retrains_on_new_settings(run):
    config = TrainConfig(max_steps=2, warmup_steps=1, checkpoint_every=1, keep_last=1, progress=False, lr=1e-4)
    first = pretrain.ensure_pretrained(run, "text_video", config=config)
    assert first.trained and first.checkpoint.name == "step-00000002"
    records = read_metrics(first.metrics_path)
    assert [r["step"] for r in records] == [1, 2] and all(r["loss"] > 0 for r in records)
    again = pretrain.ensure_pretrained(run, "text_video", config=config)
    assert not again.trained
    for (name, a), b in zip(first.model.state_dict().items(), again.model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    longer = pretrain.ensure_pretrained(run, "text_video", config=TrainConfig(**{**config.to_dict(), "max_steps": 3}))
    assert longer.trained and longer.checkpoint.name == "step-00000003"
    text_only = pretrain.ensure_pretrained(run, "text", fraction=0.5, config=config)
    assert text_only.out_dir.name == "text-050pct" and text_only.trained
    assert isinstance(VideoBert.from_pretrained(text_only.checkpoint), VideoBert)


def _write(tmp_path, payload) -> str:
    path = tmp_path / "pretrain.json"
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    return str(path)


@pytest.mark.parametrize("payload, names", [
    ({"data": {"regime": "text"}}, ["data.regime"]),
    ({"train": {"max_stepz": 3}}, ["train.max_stepz"]),
    ({"trian": {}}, ["trian"]),
    ({"train": {"lr": -1}}, ["lr=-1"]),
    ({"data": {"regime_set": "audio_only"}}, ["regime_set='audio_only'"]),
    ('{"data": {', ["not valid JSON"]),
])
def test_cli_bad_config_names_the_file_and_the_key(tmp_path, capsys, payload, names):
    path = _write(tmp_path, payload)
    assert cli.main(["pretrain", "--config", path]) == 2
    err = capsys.readouterr().err
    assert path in err
    for name in names:
        assert name in err


def test_cli_pretrains_from_a_config_file(run, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(profiles.PROFILES, "tiny", TINY)
    out = tmp_path / "cli-run"
    path = _write(tmp_path, {"data": {"profile": "tiny", "seed": 0, "data_dir": str(run.data_dir), "regime_set": "video"},
                             "train": {"max_steps": 2, "warmup_steps": 1, "progress": False}, "out": str(out)})
    assert cli.main(["pretrain", "--config", path]) == 0
    assert "checkpoint:" in capsys.readouterr().out
    assert json.loads((out / "train_config.json").read_text())["max_steps"] == 2
    assert [r["regime"] for r in read_metrics(out / "metrics.jsonl")] == ["video", "video"]


def test_salient_words_are_masked_together_and_misaligned_pairs_only_teach_alignment(run):
    # binary pairs (the default): one row per example, in order (contrastive groups come first: the test below)
    settings = pretrain.default_settings(run, salient_rate=0.5, mask_negatives=False)
    cfg = pretrain.build_model(run, settings).config
    loader = pretrain.pretrain_loaders(run, cfg, settings)["text_video"]
    salient = torch.tensor(pretrain.salient_token_ids(settings))
    assert len(salient) == 39  # TinyCook's 15 verbs and 24 ingredients, one WordPiece each
    assert loader.collate_fn.salient_rate == 0.5 and torch.equal(loader.collate_fn.salient_ids, salient.sort().values)
    jn = cfg.special_token_id("[>]")
    kinds = {"salient": 0, "negative": 0, "positive": 0}
    masked = [0, 0]  # [MASK]s shown in negatives and in plain positives
    for b in range(6):
        examples = list(loader.dataset)
        batch = loader._collate(0, b, examples)
        for r, e in enumerate(examples):
            ids, labels = batch["input_ids"][r].tolist(), batch["mlm_labels"][r]
            k = ids.index(jn)
            text = torch.tensor(e["segment"].text[: k - 1])  # what the row's words were before masking
            shown, lab = torch.tensor(ids[1:k]), labels[1:k]
            is_salient = torch.isin(text, salient)
            y = int(batch["alignment_labels"][r])
            if y == -100:  # a sentence with salient words, its own video; all of them hidden and predicted; no label
                kinds["salient"] += 1  # (max_len may cut the sentence before its salient words: then none show)
                assert torch.isin(torch.tensor(e["segment"].text), salient).any()
                assert (shown[is_salient] == cfg.mask_token_id).all() and torch.equal(lab[is_salient], text[is_salient])
            elif y == 0:  # another video: alignment only; masked like the rest (masks must not tell), nothing predicted
                kinds["negative"] += 1
                assert (labels == -100).all()
                masked[0] += int((shown == cfg.mask_token_id).sum())
            else:
                kinds["positive"] += 1
                masked[1] += int((shown == cfg.mask_token_id).sum())
    assert all(n > 0 for n in kinds.values()), kinds
    assert masked[0] > 0 and masked[1] > 0
    with pytest.raises(ValueError, match="WordPiece tokens"):
        pretrain.salient_token_ids(pretrain.default_settings(run, salient_words=["julienne"]))
    with pytest.raises(ValueError, match="needs fresh_pairs"):
        pretrain.default_settings(run, salient_rate=0.5, fresh_pairs=False)
    with pytest.raises(ValueError, match="needs fresh_pairs"):  # the contrastive groups need them too
        pretrain.default_settings(run, salient_rate=0.0, fresh_pairs=False, alignment_loss="contrastive")
    with pytest.raises(ValueError, match="choose 'binary' or 'contrastive'"):
        pretrain.default_settings(run, alignment_loss="infonce")
    with pytest.raises(ValueError, match="alignment_group=1"):
        pretrain.default_settings(run, alignment_group=1)


def test_alignment_loss_ignores_rows_labelled_minus_100(run):
    model = pretrain.build_model(run, pretrain.default_settings(run)).eval()
    batch = next(iter(pretrain.pretrain_loaders(run, model.config, pretrain.default_settings(run))["text_video"]))
    batch.pop("mlm_labels")
    assert "alignment_groups" not in batch  # the default: the binary loss alone (the groups' loss: test_model)
    y = batch.pop("alignment_labels")
    full = model(**batch, alignment_labels=y)
    part = y.clone()
    part[0] = -100
    expected = torch.nn.functional.cross_entropy(full.alignment_logits[1:], y[1:])
    torch.testing.assert_close(model(**batch, alignment_labels=part).losses["alignment"], expected)
    none = model(**batch, alignment_labels=torch.full_like(y, -100)).losses["alignment"]
    assert float(none.detach()) == 0.0 and none.requires_grad  # no NaN, and the graph is kept (DDP needs every head used)


def test_contrastive_batches_show_each_sentence_of_a_group_with_every_groups_video(run):
    settings = pretrain.default_settings(run, regime_set="text_video", alignment_loss="contrastive", alignment_group=3)
    cfg = pretrain.build_model(run, settings).config
    loader = pretrain.pretrain_loaders(run, cfg, settings)["text_video"]
    pool = loader.collate_fn.pool
    by_video = {}
    for e in loader.dataset:
        by_video.setdefault(e["segment"].video_id, e)
    assert len(by_video) >= 3
    three = list(by_video.values())[:3]
    examples = [three[0], three[0], three[1], three[2]]  # the second sentence of a video already in the group stays out
    unmasked = pretrain._PairCollator(cfg, pool, None, max_stride=1, text_rate=0.0, video_rate=0.0, audio_rate=0.0,
                                      seed=0, group=3)
    batch = unmasked(examples)
    assert batch["alignment_groups"].tolist() == [0] * 9 + [-1]
    assert batch["alignment_labels"][:9].tolist() == torch.eye(3, dtype=torch.long).flatten().tolist()
    jn = cfg.special_token_id("[>]")
    for i, own in enumerate(e["segment"] for e in (three[0], three[1], three[2])):
        for j, other in enumerate(e["segment"] for e in (three[0], three[1], three[2])):
            ids = batch["input_ids"][i * 3 + j][batch["attention_mask"][i * 3 + j].bool()].tolist()
            # (a batch with nothing masked gets one [MASK], so that its loss is defined: None below)
            words = [None if t == cfg.mask_token_id else t for t in ids[1 : 1 + len(own.text)]]
            assert all(w is None or w == t for w, t in zip(words, own.text))  # sentence i ...
            visual = [None if t == cfg.mask_token_id else t - cfg.visual_offset for t in ids[ids.index(jn) + 1 : -1]]
            assert len(visual) == len(own.visual)  # ... with as many video tokens as its own ...
            if i == j:
                assert all(v is None or v == o for v, o in zip(visual, own.visual))
            else:  # ... taken from video j (cut or repeated: every token is one of j's)
                assert set(visual) - {None} <= set(other.visual)
    # masked tokens are predicted on the diagonal only; the loss runs
    masked = pretrain._PairCollator(cfg, pool, None, max_stride=1, text_rate=0.5, video_rate=0.15, audio_rate=0.15,
                                    seed=0, group=3, mask_negatives=False)(examples)
    predicted = (masked["mlm_labels"][:9] != -100).any(dim=1).view(3, 3)
    assert not (predicted & ~torch.eye(3, dtype=torch.bool)).any()
    model = pretrain.build_model(run, settings)
    out = model(**masked)
    assert {"masked_tokens", "alignment", "alignment_contrastive"} <= set(out.losses)
    assert torch.isfinite(out.loss)
    # mask_groups=False: the groups' rows shown whole and nothing predicted there; the other rows masked as before
    whole = pretrain._PairCollator(cfg, pool, None, max_stride=1, text_rate=0.5, video_rate=0.15, audio_rate=0.15,
                                   seed=0, group=3, mask_negatives=False, mask_groups=False)(examples)
    differ = whole["input_ids"][:9] != batch["input_ids"][:9]  # as drawn unmasked (same seed, same draws), but for
    assert differ.sum() <= 1 and (batch["input_ids"][:9][differ] == cfg.mask_token_id).all()  # the one forced [MASK]
    assert (whole["mlm_labels"][:9] == -100).all() and (whole["mlm_labels"][9] != -100).any()
    # group_salient: only sentences that name a cooking word enter the group (the others stay in the batch's rest)
    salient_ids = pretrain.salient_token_ids(settings)
    plain = [e for e in loader.dataset if not set(e["segment"].text) & set(salient_ids)]
    cooking = [e for e in loader.dataset if set(e["segment"].text) & set(salient_ids)]
    assert plain and cooking
    mixed = [plain[0], *[e for e in cooking if e["segment"].video_id != plain[0]["segment"].video_id]][:4]
    only = pretrain._PairCollator(cfg, pool, None, max_stride=1, text_rate=0.0, video_rate=0.0, audio_rate=0.0, seed=0,
                                  group=3, group_salient=True, salient_ids=salient_ids)(mixed)
    first = pretrain._PairCollator(cfg, pool, None, max_stride=1, text_rate=0.0, video_rate=0.0, audio_rate=0.0, seed=0,
                                   group=3, salient_ids=salient_ids)(mixed)
    sentence = lambda b, r: b["input_ids"][r, 1 : 1 + 4].tolist()  # noqa: E731  (the first words of row r)
    assert sentence(first, 0) == list(plain[0]["segment"].text[:4])  # without: the first sentence, plain or not
    n = round(int((only["alignment_groups"] == 0).sum()) ** 0.5)
    assert n >= 2 and all(sentence(only, i * n) != list(plain[0]["segment"].text[:4]) for i in range(n))  # with: never it
    # "contrastive" settings draw groups of alignment_group, at most half the batch (TINY's 4 examples: 2 x 2);
    # the default, "binary", draws none
    grouped = next(iter(loader))
    assert grouped["alignment_groups"].tolist()[:4] == [0] * 4 and grouped["alignment_labels"][:4].tolist() == [1, 0, 0, 1]
    binary = pretrain.pretrain_loaders(run, cfg, pretrain.default_settings(run))["text_video"]
    assert "alignment_groups" not in next(iter(binary))
