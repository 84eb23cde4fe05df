"""mmfm.util.weights: the one weights-version mechanism every weights-derived cache uses.

It must change on every optimizer step (plain, foreach, fused), on ``load_state_dict`` of mmfm models,
on LoRA inject/load/merge/unmerge/unload and WiSE-FT; a stamp must also see writes nothing announces
(``.data``); the architecture key must tell apart models that equal weights do not.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mmfm.adapt import apply_lora, load_lora, merge_lora, save_lora, unload_lora, unmerge_lora, wise_ft
from mmfm.api import create_model
from mmfm.models import get_model_config
from mmfm.util.weights import Stamp, architecture_key, meta_copy, version


def tiny(seed: int = 0, name: str = "ViT-tiny-test"):
    torch.manual_seed(seed)
    return create_model(name)


def _step(opt_cls, **kw) -> None:
    p = nn.Parameter(torch.ones(4))
    opt = opt_cls([p], lr=0.1, **kw)
    p.sum().backward()
    opt.step()


@pytest.mark.parametrize("opt_cls, kw", [(torch.optim.SGD, {}), (torch.optim.Adam, {"foreach": True}),
                                         (torch.optim.AdamW, {"fused": True}), (torch.optim.AdamW, {"foreach": False})],
                         ids=["sgd", "adam-foreach", "adamw-fused", "adamw-single-tensor"])
def test_every_optimizer_step_advances_the_version(opt_cls, kw):
    before = version()
    _step(opt_cls, **kw)
    assert version() > before


@pytest.mark.parametrize("name", ["ViT-tiny-test", "hybrid-tiny-test"])
def test_load_state_dict_advances_the_version_also_on_copies(name):
    model = tiny(0, name)
    for target in (model, copy.deepcopy(model)):
        before = version()
        target.load_state_dict(tiny(1, name).state_dict())
        assert version() > before


def test_lora_mutators_and_wise_ft_advance_the_version(tmp_path):
    base = tiny()
    steps = [lambda m: apply_lora(m, "qv-r16", r=2), merge_lora, unmerge_lora,
             lambda m: unload_lora(m, merge=False)]
    model = copy.deepcopy(base)
    for mutate in steps:
        before = version()
        mutate(model)
        assert version() > before
    save_lora(apply_lora(copy.deepcopy(base), "qv-r16", r=2), tmp_path)
    before = version()
    load_lora(copy.deepcopy(base), tmp_path)
    assert version() > before
    before = version()
    wise_ft(base, tiny(1), 0.5)
    assert version() > before


def test_a_stamp_sees_writes_that_bypass_the_tensor_version():
    w = torch.randn(256, 64)
    stamp = Stamp([w])
    assert stamp.matches([w])
    w.data.add_(1.0)   # a write through .data: no _version change, same address
    assert w._version == stamp.sources[0].version and not stamp.matches([w])
    stamp = Stamp([w])
    assert not stamp.matches([w.clone()]), "another tensor with equal values is another source"
    assert not stamp.matches([w.double()]) and not stamp.matches([w, w])


def test_architecture_key_tells_apart_what_equal_weights_do_not():
    gelu = create_model("ViT-tiny-test")
    cfg = get_model_config("ViT-tiny-test")
    cfg.quick_gelu = True
    quick = create_model(cfg)
    quick.load_state_dict(gelu.state_dict())
    assert architecture_key(gelu) != architecture_key(quick)
    assert architecture_key(gelu) == architecture_key(copy.deepcopy(gelu))
    a, b = apply_lora(copy.deepcopy(gelu), r=2, alpha=2), apply_lora(copy.deepcopy(gelu), r=2, alpha=4)
    assert architecture_key(a) != architecture_key(b), "the LoRA scale is not in the weights"
    merged = merge_lora(copy.deepcopy(a))
    assert architecture_key(merged) != architecture_key(a), "merged or not is not in the weights either"


def test_meta_copy_leaves_the_model_untouched():
    model = tiny()
    model.visual.requires_grad_(False)
    before = {k: (v.clone(), v.device, v.requires_grad) for k, v in model.state_dict(keep_vars=True).items()}
    copy_ = meta_copy(model)
    copy_.visual.to(torch.float16)
    apply_lora(copy_, r=2)
    assert all(p.device.type == "meta" for p in copy_.parameters())
    after = model.state_dict(keep_vars=True)
    assert after.keys() == before.keys()
    for k, (v, device, grad) in before.items():
        assert torch.equal(after[k], v) and after[k].device == device and after[k].requires_grad == grad, k


_FINGERPRINT_SCRIPT = """
import torch
from peft import LoraConfig, inject_adapter_in_model
from mmfm.eval import model_fingerprint
from mmfm.api import create_model
torch.manual_seed(0)
model = create_model("ViT-tiny-test")
# A list of targets, as PEFT-format adapters carry it: PEFT turns it into a set (order varies by hash seed).
inject_adapter_in_model(LoraConfig(r=2, target_modules=["q_proj", "v_proj", "k_proj", "out_proj"]), model)
print(model_fingerprint(model))
"""


def test_fingerprints_agree_across_processes():
    """A disk cache is only shared across runs if a fresh process computes the same fingerprint."""
    import os
    import subprocess
    import sys
    out = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
        proc = subprocess.run([sys.executable, "-c", _FINGERPRINT_SCRIPT], env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        out.append(proc.stdout.split()[-1])
    assert out[0] == out[1]


def test_fingerprint_under_inference_mode_and_of_an_int8_model():
    """Inference tensors carry no version counter: an int8 model's unpacked weights made under
    torch.inference_mode (as `mmfm serve` runs) used to crash the fingerprint with a RuntimeError."""
    import mmfm
    from mmfm.util.weights import model_fingerprint
    torch.manual_seed(0)
    model = mmfm.create_model("ViT-tiny-test", precision="int8")
    outside = model_fingerprint(model)
    with torch.inference_mode():
        assert model_fingerprint(model) == outside
        fresh = torch.nn.Linear(3, 2)              # parameters created inside inference_mode are inference tensors
        assert model_fingerprint(fresh) == model_fingerprint(fresh)
