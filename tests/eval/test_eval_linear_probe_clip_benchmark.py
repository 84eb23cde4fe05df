"""clip_benchmark's linear probe (AdamW on normalised embeddings, weight-decay sweep) equals its own code.

clip_benchmark's ``metrics/linear_probe.evaluate`` is run on CPU with only its harness patched: ``.cuda()``
is a no-op, inference runs on ``cpu``, ``accuracy`` reads its 1-element array with ``.item()`` (numpy 2)
and its feature cache is pre-filled with our features (so it skips featurising); its maths
(permutation, init, AdamW, cosine schedule, sweep, accuracy) runs as shipped.
"""
import numpy as np
import pytest
import torch

from mmfm.eval.linear_probe import WD_GRID, fit_linear_probe_adamw

cb_lp = pytest.importorskip("clip_benchmark.metrics.linear_probe")


def _features(seed=2, n_classes=4, dim=16, n_train=96, n_val=32, n_test=40, noise=5.0):
    """Gaussian clusters, overlapping enough that the weight decay matters (here the sweep's peak is
    inside the grid, 2.6, so the refinement's choices are all exercised)."""
    g = np.random.default_rng(seed)
    centres = g.normal(size=(n_classes, dim))
    def draw(n):
        y = g.integers(0, n_classes, n)
        return (centres[y] + noise * g.normal(size=(n, dim))).astype(np.float32), y
    return draw(n_train), draw(n_val), draw(n_test)


def _accuracy(output, target, topk=(1,)):
    """clip_benchmark's accuracy() line for line, but ``.item()`` where it calls ``float()`` on a
    1-element array, which this numpy refuses."""
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return [correct[:k].reshape(-1).float().sum(0, keepdim=True).cpu().numpy().item() / len(target) for k in topk]


def _clip_benchmark(tmp_path, monkeypatch, train, val, test, seed, epochs, batch_size=16, lr=0.1):
    monkeypatch.setattr(torch.nn.Module, "cuda", lambda self, *a, **k: self)
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)
    infer = cb_lp.infer     # it insists on device="cuda"; its inference then runs on the CPU
    monkeypatch.setattr(cb_lp, "infer", lambda model, loader, amp, device: infer(model, loader, amp, "cpu"))
    monkeypatch.setattr(cb_lp, "accuracy", _accuracy)
    feature_dir = tmp_path / "features" / "m"
    feature_dir.mkdir(parents=True)
    norm = lambda x: torch.nn.functional.normalize(torch.from_numpy(x), dim=-1)   # its Featurizer's output
    for split, (x, y) in {"train": train, "val": val, "test": test}.items():
        if x is not None:
            torch.save(norm(x), feature_dir / f"features_{split}.pt")
            torch.save(torch.from_numpy(y), feature_dir / f"targets_{split}.pt")
    torch.manual_seed(seed)       # its permutation of the training rows comes from the process's RNG
    out = cb_lp.evaluate(None, None, None, fewshot_k=-1, batch_size=batch_size, num_workers=0, lr=lr,
                         epochs=epochs, model_id="m", seed=seed, feature_root=str(tmp_path / "features"),
                         device="cuda", val_dataloader=object() if val[0] is not None else None,
                         amp=False)
    return out


@pytest.mark.parametrize("with_val", [True, False])
def test_equals_clip_benchmarks_own_code(tmp_path, monkeypatch, with_val):
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = _features()
    val = (x_va, y_va) if with_val else (None, None)
    ref = _clip_benchmark(tmp_path, monkeypatch, (x_tr, y_tr), val, (x_te, y_te), seed=3, epochs=3)
    metrics, best_wd, sweep, n_tr, n_val = fit_linear_probe_adamw(
        x_tr, y_tr, x_te, y_te, x_val=val[0], y_val=val[1], lr=0.1, epochs=3, batch_size=16, seed=3)
    assert best_wd == ref["weight_decay"]
    assert metrics.top1 == pytest.approx(ref["lp_acc1"], abs=1e-12)
    assert metrics.mean_per_class == pytest.approx(ref["lp_mean_per_class_recall"], abs=1e-12)
    assert (n_tr, n_val) == (len(y_tr), len(y_va) if with_val else 0)
    if with_val:
        assert len(sweep) > 7 and {s["weight_decay"] for s in sweep} <= set(WD_GRID)
        assert WD_GRID[0] < best_wd < WD_GRID[-1]
    else:
        assert sweep == [] and best_wd == 0


def test_leaves_the_process_rng_alone():
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = _features()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    fit_linear_probe_adamw(x_tr, y_tr, x_te, y_te, x_val=x_va, y_val=y_va, epochs=1, seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_linear_probe_method_clip_benchmark_probes_embeddings(pixel_model, digits_splits, tmp_path):
    from mmfm.eval import extract_image_features, linear_probe
    train, val, test = digits_splits
    result = linear_probe(pixel_model, train, test, val_dataset=val, method="clip_benchmark", epochs=2,
                          progress=False, out_dir=tmp_path)
    feats = [extract_image_features(pixel_model, d, kind="embedding", progress=False) for d in (train, val, test)]
    metrics, best_wd, sweep, _, _ = fit_linear_probe_adamw(
        feats[0].features, feats[0].labels, feats[2].features, feats[2].labels, x_val=feats[1].features,
        y_val=feats[1].labels, epochs=2)
    assert result.top1 == metrics.top1 and result.config["weight_decay"] == best_wd and result.sweep == sweep
    assert result.config["method"] == "clip_benchmark" and result.config["features"] == "embedding"
    assert result.config["feature_dim"] == 16 and "c_sweep" not in result.plots
    assert "Weight-decay sweep" in result.to_markdown()
    paper = linear_probe(pixel_model, train, test, val_dataset=val, progress=False)
    assert paper.config["method"] == "clip_paper" and paper.config["features"] == "pre_projection"
    with pytest.raises(ValueError, match="clip_paper"):
        linear_probe(pixel_model, train, test, method="sklearn", progress=False)
