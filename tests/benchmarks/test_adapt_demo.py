"""benchmarks/adapt_demo.py over seeds: per-seed summaries -> mean +- std, reuse of finished seeds."""
import json

import adapt_demo as A
import pytest


def _args(tmp_path, **kw):
    import sys
    flags = [x for k, v in kw.items() for x in (f"--{k}", str(v))]
    argv, sys.argv = sys.argv, ["adapt_demo.py", "--out", str(tmp_path), *flags]
    try:
        return A.parse_args()
    finally:
        sys.argv = argv


def _summary(args, seed, base, full, lora, wise_new):
    one = A.seed_args(args, seed)
    rows = [{"method": "base", "trainable_share": 1.0, "train_s": 0.0, "target_color": base, "target_shape": 0.8,
             "target_i2t_R@1": 0.1, "target_t2i_R@1": 0.1, "source_color": 0.99},
            {"method": "full fine-tuning", "trainable_share": 1.0, "train_s": 90.0, "target_color": full,
             "target_shape": 0.9, "target_i2t_R@1": 0.2, "target_t2i_R@1": 0.2, "source_color": 0.2,
             "ft_gain_recovered": 1.0},
            {"method": "LoRA qv-r16", "trainable_share": 0.01, "train_s": 70.0, "target_color": lora,
             "target_shape": 0.9, "target_i2t_R@1": 0.2, "target_t2i_R@1": 0.2, "source_color": 0.3,
             "ft_gain_recovered": (lora - base) / (full - base)},
            {"method": "linear probe", "trainable_share": 0.001, "train_s": 1.0, "target_color": 1.0,
             "target_shape": 0.95, "target_i2t_R@1": None, "target_t2i_R@1": None, "source_color": None}]
    wise = {"full": [{"alpha": a, "target_color": base + a * (wise_new - base), "source_color": 0.99 - a * 0.5}
                     for a in (0.0, 0.5, 1.0)]}
    return {"args": {k: v for k, v in vars(one).items()}, "base_training": {"source_shape": 0.9}, "rows": rows,
            "wise_ft": wise, "total_s": 100.0}


def test_aggregate_is_mean_and_sample_std_per_method_and_alpha(tmp_path):
    args = _args(tmp_path)
    summaries = {s: _summary(args, s, base, full, lora, full) for s, base, full, lora in
                 ((0, 0.1, 0.6, 0.3), (1, 0.1, 0.7, 0.4), (2, 0.1, 0.8, 0.5))}
    agg = A.aggregate(summaries)
    rows = {r["method"]: r for r in agg["rows"]}
    assert rows["full fine-tuning"]["target_color"]["mean"] == pytest.approx(0.7)
    assert rows["full fine-tuning"]["target_color"]["std"] == pytest.approx(0.1)
    assert rows["LoRA qv-r16"]["ft_gain_recovered"]["values"] == pytest.approx([0.4, 0.5, 4 / 7])
    assert rows["linear probe"]["source_color"] is None          # not measured: no number is made up
    assert agg["wise_ft"]["full"][1]["target_color"]["mean"] == pytest.approx(0.1 + 0.5 * 0.6)
    assert set(agg["per_seed"]) == {0, 1, 2}
    # full FT (70 +- 10) vs LoRA (40 +- 10): the note is about LoRA presets only; one preset, no pairs
    assert A.ranking_notes(agg) == []
    text = A.write_aggregate(agg, tmp_path, str(tmp_path / "agg.json"))
    assert "70.0 +- 10.0" in text and (tmp_path / "adapt_demo.png").stat().st_size > 0
    assert json.loads((tmp_path / "agg.json").read_text())["rows"][1]["target_color"]["n"] == 3


def test_a_finished_seed_is_reused_only_with_the_same_settings(tmp_path):
    args = _args(tmp_path)
    one = A.seed_args(args, 1)
    assert one.seed == 1 and one.out == str(tmp_path / "seed1") and not hasattr(one, "seeds")
    assert A.stored_seed(one) is None                        # nothing there yet
    (tmp_path / "seed1").mkdir()
    (tmp_path / "seed1" / "results.json").write_text(json.dumps(_summary(args, 1, 0.1, 0.7, 0.4, 0.7)))
    assert A.stored_seed(one) is not None
    other_workers = A.seed_args(_args(tmp_path, workers=0), 1)     # workers do not change the batches
    assert A.stored_seed(other_workers) is not None
    other_lr = A.seed_args(_args(tmp_path, **{"lora-lr": 1e-3}), 1)
    with pytest.raises(A.ForeignSeedDir, match="lora_lr"):      # refused, not overwritten
        A.stored_seed(other_lr)
    assert A.stored_seed(A.seed_args(args, 2)) is None


def test_presets_are_ranked_only_where_the_gap_exceeds_the_spread():
    ms = A.mean_std
    agg = {"rows": [{"method": "LoRA a", "target_color": ms([0.50, 0.60, 0.70])},     # 60 +- 10
                    {"method": "LoRA b", "target_color": ms([0.20, 0.25, 0.30])},     # 25 +- 5: separated from a
                    {"method": "LoRA c", "target_color": ms([0.25, 0.50, 0.75])},     # 50 +- 25: from neither
                    {"method": "full fine-tuning", "target_color": ms([0.9] * 3)}]}
    notes = A.ranking_notes(agg)
    assert len(notes) == 3 and not any("full" in n for n in notes)
    assert notes[0].startswith("LoRA a vs LoRA b") and notes[0].endswith(": separated")
    assert all(n.endswith("NOT separated") for n in notes[1:])
