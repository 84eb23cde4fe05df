"""Classification metrics on constructed cases, result serialisation, the side-by-side report, plots."""
import json
import math

import numpy as np
import pytest
import torch

from mmfm.eval import (ClassificationMetrics, FewShotResult, LinearProbeResult, PerfStats, RetrievalResult,
                       ZeroShotResult, comparison_table, load_results, write_report)
from mmfm.eval.plots import plot_c_sweep, plot_confusion_matrix, plot_few_shot


def scores_for(preds, num_classes):
    """One-hot-ish scores whose argmax is ``preds``."""
    s = torch.zeros(len(preds), num_classes)
    s[torch.arange(len(preds)), torch.tensor(preds)] = 1.0
    return s


def test_known_confusion_matrix():
    labels = [0, 0, 0, 1, 1, 2, 2, 2, 2]
    preds = [0, 0, 1, 1, 1, 2, 0, 2, 1]
    m = ClassificationMetrics.from_scores(scores_for(preds, 3), labels, ["a", "b", "c"])
    expected = np.array([[2, 1, 0],
                         [0, 2, 0],
                         [1, 1, 2]])
    np.testing.assert_array_equal(m.confusion, expected)
    assert m.top1 == pytest.approx(6 / 9)
    np.testing.assert_allclose(m.per_class, [2 / 3, 1.0, 0.5])
    assert m.mean_per_class == pytest.approx((2 / 3 + 1 + 0.5) / 3)
    assert m.top5 is None                      # 3 classes: top-5 would be trivially 100%
    np.testing.assert_array_equal(m.predictions, preds)


def test_absent_class_is_nan_and_excluded_from_mean():
    m = ClassificationMetrics.from_predictions(np.array([0, 1, 1]), np.array([0, 1, 0]), ["a", "b", "c"])
    assert math.isnan(m.per_class[2])
    assert m.mean_per_class == pytest.approx((0.5 + 1.0) / 2)
    d = m.to_dict()
    assert d["per_class"][2] is None           # JSON has no NaN
    json.dumps(d)


def test_top5_counts_any_of_the_five_best():
    # 7 classes; true class ranked 1st, 5th and 6th for three samples.
    scores = torch.tensor([[7, 6, 5, 4, 3, 2, 1],
                           [3, 7, 6, 5, 4, 2, 1],     # true 0 is 5th -> top-5 hit, top-1 miss
                           [2, 7, 6, 5, 4, 3, 1]],    # true 0 is 6th -> miss
                          dtype=torch.float)
    m = ClassificationMetrics.from_scores(scores, [0, 0, 0], list("abcdefg"))
    assert m.top1 == pytest.approx(1 / 3)
    assert m.top5 == pytest.approx(2 / 3)


def test_out_of_range_labels_are_an_error():
    with pytest.raises(ValueError, match="labels"):
        ClassificationMetrics.from_predictions(np.array([0]), np.array([5]), ["a", "b"])


def _results():
    perf = PerfStats(num_items=100, total_s=2.0, model_s=1.0, num_batches=2,
                     batch_latency_ms={"mean": 500.0, "max": 600.0}, peak_rss_mb=100.0, device="cpu")
    out = []
    for model, acc in (("model-A", [0, 1, 1, 0]), ("model-B", [0, 1, 1, 1])):
        m = ClassificationMetrics.from_predictions(np.array(acc), np.array([0, 1, 1, 1]), ["x", "y"])
        out.append(ZeroShotResult(model=model, dataset="cifar10", perf=perf, metrics=m, templates=["a {}."]))
        out.append(LinearProbeResult(model=model, dataset="dtd", metrics=m, best_c=0.1,
                                     sweep=[{"C": 0.1, "val_accuracy": 0.5}, {"C": 1.0, "val_accuracy": 0.4}]))
    out.append(FewShotResult(model="model-A", dataset="digits", per_shot={
        1: {"mean": 0.5, "std": 0.1, "accuracies": [0.4, 0.6], "seeds": [0, 1], "episodes": []}}))
    out.append(RetrievalResult(model="model-B", dataset="flickr30k",
                               metrics={"i2t_R@1": 0.5, "t2i_R@1": 0.25, "i2t_median_rank": 2.0, "mean_recall": 0.375},
                               image_ranks=np.array([1.0, 3.0]), text_ranks=np.array([1, 2, 3, 4]),
                               num_images=2, num_texts=4))
    return out


def test_report_lays_models_side_by_side(tmp_path):
    results = _results()
    json_path, md_path = write_report(results, tmp_path)
    data = json.loads(json_path.read_text())
    table = data["table"]
    assert list(table["rows"]) == ["model-A", "model-B"]
    assert "cifar10 zero-shot top1" in table["columns"]
    assert "dtd linear probe top1" in table["columns"]
    assert table["rows"]["model-A"]["cifar10 zero-shot top1"] == pytest.approx(0.75)
    assert table["rows"]["model-B"]["cifar10 zero-shot top1"] == pytest.approx(1.0)
    assert table["rows"]["model-A"]["digits few-shot 1-shot"] == pytest.approx(0.5)
    assert "digits few-shot 1-shot" not in table["rows"]["model-B"]   # not evaluated: empty cell
    md = md_path.read_text()
    header = next(line for line in md.splitlines() if line.startswith("|") and line.split("|")[1].strip() == "model")
    assert "cifar10 zero-shot top1" in header and "flickr30k retrieval i2t_R@1" in header
    row_a = next(line for line in md.splitlines() if line.startswith("|") and line.split("|")[1].strip() == "model-A")
    assert "75.00" in row_a and "50.00" in row_a           # zero-shot, few-shot
    assert "Throughput and memory" in md and "50.0" in md    # 100 images / 2 s
    # Results reloaded from JSON merge into a new report.
    merged = load_results(json_path)
    assert len(merged) == len(results)
    assert comparison_table(merged)["rows"] == table["rows"]
    write_report(merged + [results[0]], tmp_path / "merged")
    assert "peak RSS (MiB)" in md and "MiB" in results[0].to_markdown() and " MB" not in md


def test_every_table_of_a_report_comes_from_the_one_writer(tmp_path):
    """Comparison, throughput, per-result and per-class tables are all report.markdown_table's: padded columns,
    so within each table every line has the same width (hand-written rows had not)."""
    _, md_path = write_report(_results(), tmp_path)
    tables, block = [], []
    for line in md_path.read_text().splitlines() + [""]:
        if line.startswith("|"):
            block.append(line)
        elif block:
            tables.append(block)
            block = []
    assert len(tables) >= 5
    for table in tables:
        assert len({len(line) for line in table}) == 1, table


def test_report_is_replaced_atomically(tmp_path, monkeypatch):
    """A crash while results.json/md are replaced leaves the previous report whole, and no temporaries."""
    import os

    import mmfm.util.atomic as atomic
    write_report(_results()[:1], tmp_path)
    before = {f: (tmp_path / f).read_text() for f in ("results.json", "results.md")}

    def crash(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(atomic.os, "replace", crash)
    with pytest.raises(OSError):
        write_report(_results(), tmp_path)
    with pytest.raises(OSError):
        _results()[0].save(tmp_path, stem="results")
    assert {f: (tmp_path / f).read_text() for f in before} == before
    assert sorted(os.listdir(tmp_path)) == ["results.json", "results.md"]


def test_result_to_dict_is_json_and_complete():
    zs, lp = _results()[:2]
    d = json.loads(json.dumps(zs.to_dict()))
    assert d["kind"] == "zeroshot" and d["headline"]["top1"] == 0.75
    assert d["metrics"]["confusion_matrix"] == [[1, 0], [1, 2]]
    assert d["perf"]["items_per_s"] == pytest.approx(50.0)
    d = json.loads(json.dumps(lp.to_dict()))
    assert d["sweep"][0] == {"C": 0.1, "val_accuracy": 0.5} and d["best_c"] == 0.1
    assert "C sweep" in lp.to_markdown()


def test_perf_stats_combine():
    a = PerfStats(num_items=10, total_s=1.0, model_s=0.5, num_batches=1, batch_latency_ms={"mean": 500, "max": 500},
                  peak_rss_mb=10.0)
    b = PerfStats(num_items=30, total_s=1.0, model_s=0.5, num_batches=3, batch_latency_ms={"mean": 100, "max": 200},
                  peak_rss_mb=20.0)
    c = PerfStats.combine([a, None, b])
    assert c.num_items == 40 and c.items_per_s == pytest.approx(20.0)
    assert c.batch_latency_ms["mean"] == pytest.approx(200.0) and c.peak_rss_mb == 20.0


def test_plots_write_pngs(tmp_path):
    png = b"\x89PNG"
    p1 = plot_confusion_matrix(np.array([[3, 1], [0, 4]]), ["cat", "dog"], tmp_path / "cm.png")
    p2 = plot_c_sweep([{"C": 1e-2, "val_accuracy": 0.5}, {"C": 1.0, "val_accuracy": 0.8}], tmp_path / "c.png", 1.0)
    p3 = plot_few_shot({1: {"mean": 0.3, "std": 0.1}, 4: {"mean": 0.6, "std": 0.05}}, tmp_path / "fs.png")
    p4 = plot_confusion_matrix(np.eye(60, dtype=int), [str(i) for i in range(60)], tmp_path / "big.png")
    for p in (p1, p2, p3, p4):
        assert p.read_bytes()[:4] == png
