"""A served set-up for the `mmfm serve` tests: a tiny CLIP saved as a model folder, shapes images embedded into an
index by `mmfm embed`, and a tiny Frozen model saved with its tokenizer (built from tests/frozen's fixtures)."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch


def _frozen_fixtures():
    """tests/frozen/conftest.py as a module: its tokenizer and tiny-LM fixtures, not a copy of them."""
    path = Path(__file__).resolve().parents[1] / "frozen" / "conftest.py"
    spec = importlib.util.spec_from_file_location("_frozen_conftest_for_deploy", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_frozen = _frozen_fixtures()
hf_tokenizer, tokenizer, lm_config, lm_dir = _frozen.hf_tokenizer, _frozen.tokenizer, _frozen.lm_config, _frozen.lm_dir


@pytest.fixture(scope="session")
def served(tmp_path_factory, tokenizer, lm_config, lm_dir):
    """Everything `mmfm serve` loads, on disk: .clip (model folder), .model (the model), .images, .index, .frozen."""
    from mmfm.checkpoints import save_pretrained
    from mmfm.cli import main
    from mmfm.data import get_dataset
    from mmfm.frozen.io import save_frozen
    from mmfm.api import create_model
    from mmfm.models.frozen import FrozenConfig
    root = tmp_path_factory.mktemp("serve")
    torch.manual_seed(0)
    model = create_model("ViT-tiny-test").eval()
    with torch.no_grad():
        model.logit_scale.fill_(2.0)   # a temperature that spreads the probabilities (exp(2) = 7.4)
    save_pretrained(model, root / "clip")
    images = root / "images"
    images.mkdir()
    paths = []
    for i, sample in enumerate(get_dataset("shapes", split="test", size=6)):
        paths.append(images / f"shape{i}.png")
        sample.image.save(paths[-1])
    assert main(["embed", str(images), "--model", "ViT-tiny-test", "--pretrained", str(root / "clip"),
                 "--out", str(root / "index"), "--workers", "0", "--threads", "1"]) == 0
    torch.manual_seed(0)
    frozen = create_model(FrozenConfig(vision=_frozen.tiny_vision(), vision_embed_dim=32, prefix_length=2,
                                       lm=dict(lm_config), pretrained_lm=str(lm_dir), context_length=12))
    save_frozen(frozen, root / "frozen", tokenizer)
    return SimpleNamespace(root=root, clip=root / "clip", model=model, images=[str(p) for p in paths],
                           index=root / "index", frozen=root / "frozen")
