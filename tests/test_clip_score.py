"""CLIP score: the embedded CLIP sees the prompts; the real path fails fast and clearly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distill import world
from evaluation.clip_model import UNKNOWN_ID, WorldTokenizer, world_token_ids
from evaluation.clip_score import embedded_scorer, real_scorer
from evaluation.fid import EvalError


@pytest.fixture(scope="module")
def clip():
    from evaluation.clip_model import ensure_clip, load_clip

    return load_clip(ensure_clip("default"))


@pytest.fixture(scope="module")
def heldout():
    captions, images = world.reference_set(480, seed=3)
    return [c.text for c in captions], captions, images


def test_tokenizer_is_open_clips_bpe_remapped_offline():
    from open_clip.tokenizer import SimpleTokenizer

    ids = world_token_ids(12)
    bpe = SimpleTokenizer(context_length=12)
    assert ids[-2:] == [49406, 49407]  # start and end of text, the largest BPE ids
    tokenizer = WorldTokenizer(ids, 12)
    text = "a small red circle on the left"
    raw, compact = bpe([text])[0], tokenizer([text])[0]
    assert tokenizer.vocab_size == len(ids) + 2
    # Same positions as open_clip's own tokenisation; the end token keeps the
    # largest id, so open_clip's argmax pooling still finds it.
    assert torch.equal(raw != 0, compact != 0)
    assert int(compact.argmax()) == int(raw.argmax()) == 8
    assert int(compact.max()) == tokenizer.vocab_size - 1
    # Words outside the world share one id; padding stays 0.
    unknown = tokenizer(["a photo depicts a red circle"])[0]
    assert (unknown == UNKNOWN_ID).sum() == 2  # "photo", "depicts"
    assert len({int(i) for i in tokenizer([c.text for c in world.all_captions()]).flatten()}) \
        == tokenizer.vocab_size - 1  # every world token used, plus padding; no unknowns


def test_matched_captions_outscore_shuffled(clip, heldout):
    texts, _, images = heldout
    scorer = embedded_scorer(clip)
    matched = scorer.cosines(images, texts)
    shuffled_texts = [texts[i] for i in np.random.default_rng(0).permutation(len(texts))]
    shuffled = scorer.cosines(images, shuffled_texts)
    # Where the shuffle happened to give an image its own caption back, the scores tie.
    changed = np.array([a != b for a, b in zip(texts, shuffled_texts)])
    assert changed.sum() > 400
    assert np.mean(matched[changed] > shuffled[changed]) >= 0.95
    assert scorer.score(images, texts) == pytest.approx(float(matched.mean()))


def test_own_colour_outscores_a_different_colour(clip, heldout):
    _, captions, images = heldout
    colours = list(world.COLOURS)
    recoloured = [world.Caption(c.size, colours[(colours.index(c.colour) + 1) % len(colours)],
                                c.shape, c.position).text for c in captions]
    scorer = embedded_scorer(clip)
    own = scorer.cosines(images, [c.text for c in captions])
    other = scorer.cosines(images, recoloured)
    assert own.mean() > other.mean() + 0.2
    assert np.mean(own > other) >= 0.95


def test_prompt_prefix_is_applied(clip, heldout):
    texts, _, images = heldout
    plain = embedded_scorer(clip).score(images[:50], texts[:50])
    prefixed = embedded_scorer(clip, "A photo depicts ").score(images[:50], texts[:50])
    assert plain != prefixed


def test_mismatched_counts_are_an_error(clip, heldout):
    texts, _, images = heldout
    with pytest.raises(EvalError, match="3 images but 2 captions"):
        embedded_scorer(clip).score(images[:3], texts[:2])


def test_missing_vit_g_checkpoint_fails_before_open_clip(tmp_path, monkeypatch):
    import open_clip

    def no_hub(*args, **kwargs):
        raise AssertionError("open_clip must not be called for a missing checkpoint")

    monkeypatch.setattr(open_clip, "create_model", no_hub)
    missing = tmp_path / "open_clip_pytorch_model.bin"
    with pytest.raises(EvalError, match=rf"{missing}: missing.*ViT-g-14 laion2b_s12b_b42k"):
        real_scorer(missing)
