"""A tiny, randomly initialised Qwen2-VL built fully offline.

Why: CI and the CPU demo must exercise the *real* code paths (the Qwen2-VL processor, chat
template, M-RoPE, vision tower, TRL trainers) without a 16 GB download. The checkpoint this writes
has the same file layout and the same ``model_type`` as Qwen2-VL-7B-Instruct, so every loader,
trainer and evaluator works unchanged on both.

Recipe: the team's stack notes §2 (byte-level BPE with Qwen2's pre-tokenizer,
``Qwen2Tokenizer``, TRL's verbatim Qwen-VL chat template, ``Qwen2VLConfig`` with
``rope_parameters.mrope_section``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Iterable

from deepperception.prompts import COT_SUFFIX, GROUNDING_QUESTION, R1_SUFFIX
from deepperception.errors import ConfigError

# Qwen2's special tokens, in Qwen's order (ids 0..13 here; the real vocab puts them at 151643+).
SPECIALS: list[str] = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]

# Qwen2's pre-tokenizer split regex (tokenizer.json of Qwen2-VL-7B-Instruct).
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Always part of the tokenizer corpus so the grounding/CoT scaffolding tokenizes compactly
# whatever domain corpus the caller passes: tags, box syntax, the prompt suffix, the chat roles.
BASE_CORPUS: list[str] = [
    "<think>", "</think>", "<answer>", "</answer>", "<think> </think>", "<answer> </answer>",
    "You are a helpful assistant.", "system", "user", "assistant",
    R1_SUFFIX.strip(), GROUNDING_QUESTION.split("<|")[0].strip(), COT_SUFFIX.strip(". "),
    "The image shows", "Planning", "Visual Analysis", "Comparison", "Conclusion",
    "(12,34),(56,78)", "(0,0),(999,999)", "(100,200),(300,400)", "[1, 2, 3, 4]",
] + [f"({a},{b}),({c},{d})" for a, b, c, d in zip(range(0, 1000, 37), range(5, 1000, 41), range(9, 1000, 43), range(3, 1000, 47))]

# Qwen2-VL-7B-Instruct's generation_config.json (sampling with top_k=1 == greedy + rep. penalty).
QWEN2_VL_INSTRUCT_GENERATION = {
    "do_sample": True,
    "top_k": 1,
    "top_p": 0.001,
    "temperature": 0.1,
    "repetition_penalty": 1.05,
}


def _bpe(corpus: Iterable[str], vocab_size: int):
    """Byte-level BPE with Qwen2's normalizer and pre-tokenizer, trained on ``corpus`` (``tokenizers``)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer)
    return tok


def _train_tokenizer(corpus: Iterable[str], vocab_size: int):
    from transformers import Qwen2Tokenizer
    from trl.chat_template_utils import qwen2_5_vl_chat_template

    tok = _bpe(corpus, vocab_size)
    merges = [tuple(m) for m in json.loads(tok.to_str())["model"]["merges"]]
    t = Qwen2Tokenizer(vocab=tok.get_vocab(), merges=merges, unk_token=None, bos_token=None,
                       eos_token="<|im_end|>", pad_token="<|endoftext|>")
    t.add_special_tokens({"additional_special_tokens": SPECIALS[1:]})
    # Verbatim: TRL recognises it by string equality and swaps in its {% generation %} training
    # template, which is what makes assistant_only_loss work.
    t.chat_template = qwen2_5_vl_chat_template
    return t


def corpus_vocab_size(corpus: Iterable[str]) -> int:
    """The largest BPE vocabulary ``corpus`` (plus :data:`BASE_CORPUS`) supports: byte alphabet +
    Qwen's special tokens + every merge the corpus has. A ``vocab_size`` above it is never reached.

    >>> corpus_vocab_size([]) == corpus_vocab_size(["You are a helpful assistant."])  # already in BASE_CORPUS
    True
    """
    return _bpe(BASE_CORPUS + list(corpus), 1 << 20).get_vocab_size()


def build_tiny_qwen2vl(
    out_dir: str | Path,
    corpus: list[str],
    *,
    vocab_size: int = 1024,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    vision_depth: int = 2,
    vision_dim: int = 32,
    image_min_pixels: int = 56 * 56,
    image_max_pixels: int = 112 * 112,
    seed: int = 0,
    exact_vocab: bool = False,
) -> Path:
    """Write a tiny random-weight Qwen2-VL checkpoint to ``out_dir`` and return its path.

    The directory has the real checkpoint's layout (``config.json``, ``generation_config.json``,
    ``model.safetensors``, tokenizer files, ``chat_template.jinja``, ``preprocessor_config.json`` /
    ``processor_config.json``) and loads with :func:`deepperception.model.loading.load_model` /
    :func:`~deepperception.model.loading.load_processor`.

    Deterministic for a given ``(corpus, sizes, seed)``: BPE training is deterministic and the
    weights come from ``torch.manual_seed(seed)``.

    ``vocab_size`` is what BPE aims for; it stops early when every word of the corpus is already
    one token, so a small corpus gives a smaller vocabulary (:func:`corpus_vocab_size` says how
    large). ``exact_vocab=True`` (the pipeline's base-model stage) raises ``ConfigError`` instead of
    silently building a model whose configured vocabulary is mostly unused.

    ``generation_config.json`` copies Qwen2-VL-7B-Instruct's decoding (``do_sample=True, top_k=1,
    top_p=0.001, temperature=0.1, repetition_penalty=1.05``), i.e. greedy with a 1.05 repetition
    penalty, so the evaluation code path that maps it to greedy is exercised exactly as on the
    real model.
    """
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor

    from deepperception.model.loading import image_only_processor_class, make_image_processor, save_processor

    if hidden % heads or (hidden // heads) % 2:
        raise ConfigError(f"hidden ({hidden}) must be divisible by heads ({heads}) with an even head_dim")
    if heads % kv_heads:
        raise ConfigError(f"heads ({heads}) must be divisible by kv_heads ({kv_heads})")
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    tok = _train_tokenizer(BASE_CORPUS + list(corpus), vocab_size)
    if exact_vocab and len(tok) < vocab_size:
        raise ConfigError(f"vocab_size {vocab_size}: the tokenizer corpus ({len(corpus)} texts) supports only "
                          f"{len(tok)} BPE tokens (every word is already one token); set vocab_size <= {len(tok)} "
                          f"or give the corpus more distinct text")
    ids = {s: tok.convert_tokens_to_ids(s) for s in SPECIALS}

    # M-RoPE: sum(mrope_section) must equal head_dim / 2; Qwen2-VL's 7B uses [16, 24, 24] of 64.
    half = hidden // heads // 2
    t_sec = max(1, half // 4)
    h_sec = (half - t_sec) // 2
    mrope = [t_sec, h_sec, half - t_sec - h_sec]
    text = dict(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": mrope},
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=False,
    )
    cfg = Qwen2VLConfig(
        text_config=text,
        # embed_dim is the ViT width; hidden_size is the merger's output and must match the LM.
        vision_config=dict(depth=vision_depth, embed_dim=vision_dim, hidden_size=hidden,
                           num_heads=max(1, vision_dim // 16), mlp_ratio=2),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(cfg).eval()
    gc = model.generation_config
    gc.bos_token_id = ids["<|endoftext|>"]
    gc.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]  # as in Qwen2-VL-7B-Instruct
    gc.pad_token_id = ids["<|endoftext|>"]
    for k, v in QWEN2_VL_INSTRUCT_GENERATION.items():
        setattr(gc, k, v)
    gc._from_model_config = False  # a real, hand-written generation config (as in Qwen's repo)
    model.save_pretrained(out)

    size = {"shortest_edge": int(image_min_pixels), "longest_edge": int(image_max_pixels)}
    proc_cls = image_only_processor_class(Qwen2VLProcessor)
    proc = proc_cls(image_processor=make_image_processor(size), tokenizer=tok, chat_template=tok.chat_template)
    save_processor(proc, out)
    return out
