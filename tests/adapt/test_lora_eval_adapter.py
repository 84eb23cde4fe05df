"""``mmfm eval ... --adapter DIR`` / ``run_eval(adapter=...)``: a base model evaluated with a LoRA adapter applied."""
from __future__ import annotations

import json

import pytest
import torch

from mmfm.adapt import apply_lora, save_lora
from mmfm.checkpoints import save_pretrained
from mmfm.cli import main
from mmfm.data import get_dataset
from mmfm.eval import zero_shot
from mmfm.evaluate import run_eval
from mmfm.api import create_model

SMALL = {"size": 40, "image_size": 32}


@pytest.fixture
def base_and_adapter(tmp_path):
    torch.manual_seed(0)
    base = create_model("ViT-tiny-test").eval()
    save_pretrained(base, tmp_path / "base")
    lora = apply_lora(create_model(pretrained=str(tmp_path / "base")), "attn-mlp-r16")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():   # a strong random adapter: the predictions must change
        for n, p in lora.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g))
    save_lora(lora, tmp_path / "adapter")
    return tmp_path / "base", tmp_path / "adapter", lora.eval()


def test_run_eval_applies_the_adapter(base_and_adapter, tmp_path):
    base_dir, adapter_dir, lora = base_and_adapter
    kw = dict(dataset_kwargs=SMALL, task="color", progress=False, device="cpu")
    plain = run_eval("zeroshot", None, str(base_dir), "shapes", **kw)
    adapted = run_eval("zeroshot", None, str(base_dir), "shapes", adapter=str(adapter_dir), **kw)
    direct = zero_shot(lora, get_dataset("shapes", split="test", **SMALL), task="color", progress=False, device="cpu")
    assert adapted.predictions.tolist() == direct.predictions.tolist()
    assert adapted.predictions.tolist() != plain.predictions.tolist()
    assert adapted.config["adapter"] == str(adapter_dir) and "adapter" not in plain.config
    assert "adapter" in adapted.model and adapted.model != plain.model   # reports never mix the two up


def test_cli_eval_adapter(base_and_adapter, tmp_path, capsys):
    base_dir, adapter_dir, _ = base_and_adapter
    rc = main(["eval", "zeroshot", "--pretrained", str(base_dir), "--adapter", str(adapter_dir), "--dataset", "shapes",
               "--task", "color", "--device", "cpu", "--out", str(tmp_path / "out")])
    assert rc == 0
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert data["results"][0]["config"]["adapter"] == str(adapter_dir)


def test_cli_eval_adapter_missing_is_one_line(tmp_path, capsys):
    rc = main(["eval", "zeroshot", "--model", "ViT-tiny-test", "--adapter", str(tmp_path / "nope"), "--dataset",
               "shapes", "--task", "color", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "adapter_config.json" in err and len(err.strip().splitlines()) == 1
