"""Few-shot adaptation methods (CoOp, CLIP-Adapter, Tip-Adapter, Tip-Adapter-F) beside zero-shot and probes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mmfm
from mmfm.adapt import few_shot
from mmfm.adapt.fewshot import FEW_SHOT_METHODS
from mmfm.adapt.fewshot.coop import PromptLearner
from mmfm.adapt.fewshot.tip_adapter import search_alpha_beta, tip_logits
from mmfm.data import ImageTextView, get_dataset
from mmfm.data.transforms import image_transform
from mmfm.models import CLIPConfig, TextConfig, VisionConfig, build_model
from mmfm.train import TrainConfig, Trainer

HELD = ["purple", "orange"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A small CLIP trained on shapes without purple and orange: its zero-shot classifier gets those wrong."""
    # Module fixtures run before the folder's one-thread autouse fixture: with two threads per xdist
    # worker on two shared cores, OpenMP's spinning made this 30x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = CLIPConfig(embed_dim=64, vision=VisionConfig(image_size=32, patch_size=8, width=64, layers=2, head_width=16),
                     text=TextConfig(context_length=24, width=64, heads=4, layers=2))
    model = build_model(cfg)
    src = get_dataset("shapes", split="train", size=10_000, image_size=32, exclude={"color": HELD}, seed=0)
    view = ImageTextView(src, image_transform(32), model.get_tokenizer(), caption_mode="random", seed=0)
    Trainer(model, view, TrainConfig(max_steps=80, batch_size=48, lr=3e-3, warmup_steps=8, device="cpu",
                                     progress=False, tensorboard=False, resume=False, log_every=60),
            tmp_path_factory.mktemp("base")).fit()
    model.zero_grad(set_to_none=True)
    torch.set_num_threads(threads)
    return model.eval()


@pytest.fixture(scope="module")
def data():
    train = get_dataset("shapes", split="train", size=400, image_size=32, seed=1)
    test = get_dataset("shapes", split="test", size=160, image_size=32, include={"color": HELD}, seed=2)
    return train, test


def test_tip_adapter_logits_are_the_papers_formula():
    g = torch.Generator().manual_seed(0)
    test = F.normalize(torch.randn(5, 8, generator=g), dim=-1)
    keys = F.normalize(torch.randn(6, 8, generator=g), dim=-1)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    values = F.one_hot(labels, 3).float()
    w = F.normalize(torch.randn(8, 3, generator=g), dim=0)
    alpha, beta, scale = 1.7, 5.5, 100.0
    expected = np.zeros((5, 3))
    for i in range(5):
        for c in range(3):
            cache = sum(np.exp(-beta * (1 - float(test[i] @ keys[j]))) for j in range(6) if labels[j] == c)
            expected[i, c] = alpha * cache + scale * float(test[i] @ w[:, c])
    got = tip_logits(test, keys, values, w, alpha, beta, scale)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-4)
    # The search returns a grid point at least as good as the paper's initial (1, 1).
    a, b, acc = search_alpha_beta(test, torch.tensor([0, 1, 2, 0, 1]), keys, values, w, scale=scale)
    init = (tip_logits(test, keys, values, w, 1.0, 1.0, scale).argmax(1) == torch.tensor([0, 1, 2, 0, 1])).float().mean()
    assert acc >= float(init) - 1e-9 and 0.1 <= a <= 3.0 and 0.1 <= b <= 7.0


def test_coop_prompt_with_template_vectors_equals_encoding_the_template(base):
    """With the context vectors set to the token embeddings of "a photo of a", the learned-prompt path gives
    exactly the text tower's features of "a photo of a <class>." (so the embedding path is CLIP's own)."""
    names = ["red", "blue", "green"]
    learner = PromptLearner(base, names, n_ctx=4)
    ids = base.get_tokenizer()(["a photo of a"])[0]
    with torch.no_grad():
        learner.ctx.copy_(base.text.token_embedding(ids[1:5])[None])
        got = learner()
        ref = base.encode_text(base.get_tokenizer()([f"a photo of a {n}." for n in names]))
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["coop", "clip_adapter", "tip_adapter_f"])
def test_trained_methods_leave_clip_bit_identical_and_train_only_their_parameters(base, data, method):
    train, test = data
    before = {k: v.clone() for k, v in base.state_dict().items()}
    flags = {n: p.requires_grad for n, p in base.named_parameters()}
    opts = {"epochs": 3, "n_ctx": 4} if method == "coop" else {"epochs": 3}
    r = few_shot(base, train, test, shots=(2,), seeds=(0,), method=method, task="color", progress=False,
                 method_options=opts)
    assert r.per_shot[2]["episodes"][0]["trainable"] > 0
    after = base.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in base.parameters())
    assert {n: p.requires_grad for n, p in base.named_parameters()} == flags
    assert not base.training


def test_coop_restores_every_modules_own_mode(base, data):
    """A model that trains while one tower is kept in eval comes back exactly so (not all switched on)."""
    train, test = data
    base.train()
    base.visual.eval()
    try:
        few_shot(base, train, test, shots=(1,), seeds=(0,), method="coop", task="color", progress=False,
                 method_options={"epochs": 1, "n_ctx": 4})
        assert base.training and base.text.training and not base.visual.training
        assert not any(m.training for m in base.visual.modules())
    finally:
        base.eval()


def test_every_method_beats_zero_shot_on_classes_it_gets_wrong_and_repeats(base, data):
    train, test = data
    kw = dict(shots=(16,), seeds=(0,), task="color", progress=False)
    zs = few_shot(base, train, test, method="zero_shot", **kw).per_shot[16]["mean"]
    assert zs < 0.3, "the base model was trained without these colours"
    for method in ("tip_adapter", "tip_adapter_f", "clip_adapter", "coop", "linear_probe"):
        opts = {"n_ctx": 4, "epochs": 60} if method == "coop" else None
        acc = few_shot(base, train, test, method=method, method_options=opts, **kw).per_shot[16]["mean"]
        assert acc > zs + 0.2, (method, acc, zs)
    a = few_shot(base, train, test, method="clip_adapter", **kw).per_shot[16]["accuracies"]
    b = few_shot(base, train, test, method="clip_adapter", **kw).per_shot[16]["accuracies"]
    assert a == b


def test_registered_names():
    """Every built-in method is in the one registry from the start: no import has to run for its side effect."""
    assert {"zero_shot", "linear_probe", "nearest_centroid", "lora", "coop", "clip_adapter", "tip_adapter",
            "tip_adapter_f"} <= set(FEW_SHOT_METHODS)
    assert mmfm.adapt.FEW_SHOT_METHODS is FEW_SHOT_METHODS
    assert FEW_SHOT_METHODS["lora"] is mmfm.adapt.lora_few_shot
