"""The demo's tiny model gets the BPE vocabulary its profile asks for.

A byte-level BPE stops merging once every word of its corpus is one token, so a vocab_size
above what the corpus supports silently builds a smaller tokenizer (the demo once asked for 2048
and got 508). This builds the demo's real tokenizer corpus (the data engine's SFT and GRPO text,
through the base-model stage's own corpus function) and checks the configured size is reached.
"""

import pytest


@pytest.fixture(scope="module")
def demo_corpus():
    from deepperception.config import load_profile
    from deepperception.domain.entity import entities_to_table
    from deepperception.domain.synthetic import mine_entities
    from deepperception.engine import datasets
    from deepperception.engine.collection import collect_images
    from deepperception.engine.composition import compose
    from deepperception.engine.distillation import TemplateTeacher, distill
    from deepperception.engine.filtering import filter_cot
    from deepperception.engine.labeling import OracleLabeler, label_images
    from tasks.training import _tokenizer_corpus

    cfg = load_profile("demo")
    ents = entities_to_table(mine_entities(cfg.data.synthetic))
    labeled = label_images(collect_images(ents, cfg.collection), OracleLabeler(), cfg.labeling.options)
    train = compose(labeled, cfg.compose_train)
    kept, _ = filter_cot(distill(train, TemplateTeacher(ents), cfg.distillation.options), cfg.filtering)
    sft = datasets.build_sft_rows(kept, train)
    grpo = datasets.build_grpo_rows(train, cfg.datasets.grpo_targets_per_composite, cfg.datasets.seed)
    return cfg, _tokenizer_corpus(sft, grpo)


def test_demo_corpus_fills_the_configured_vocabulary(demo_corpus):
    from deepperception.model.tiny import _train_tokenizer, BASE_CORPUS, corpus_vocab_size

    cfg, corpus = demo_corpus
    want = cfg.base_model.vocab_size
    supported = corpus_vocab_size(corpus)
    assert want <= supported, f"demo asks for vocab_size {want} but its corpus supports only {supported}"
    assert len(_train_tokenizer(BASE_CORPUS + corpus, want)) == want


def test_exact_vocab_refuses_a_corpus_too_small(tmp_path):
    from deepperception.errors import ConfigError
    from deepperception.model.synthetic import tiny_corpus
    from deepperception.model.tiny import build_tiny_qwen2vl, corpus_vocab_size

    supported = corpus_vocab_size(tiny_corpus())
    with pytest.raises(ConfigError, match=f"supports only {supported} BPE tokens"):
        build_tiny_qwen2vl(tmp_path / "t", tiny_corpus(), vocab_size=supported + 1, exact_vocab=True)
    assert not (tmp_path / "t" / "model.safetensors").exists()
