"""Smoke test of compare.py's deployment lines on a tiny model: the JSON has every line, and the accuracy
columns say what they claim (no timing assertions: speed depends on the machine)."""
import importlib.util
import json
import statistics

import PIL.Image
import pytest

import compare

ENGINES = {"mmfm fp32", "mmfm bf16", "mmfm int8", "ort fp32", "ort int8"}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare")
    compare.main(["--deploy", "--deploy-arch", "ViT-S-64", "--repeats", "1", "--deploy-batches", "1", "3",
                  "--peak-n", "64", "--e2e-images", "6", "--e2e-batch", "4", "--e2e-repeats", "1",
                  "--e2e-workers", "0", "--jpeg-cache", str(tmp / "jpegs"), "--json", str(tmp / "out.json"),
                  "--malloc", "default"])   # the inference policy is process-wide; tests/util/test_malloc.py has it
    return json.loads((tmp / "out.json").read_text()), tmp


def test_deploy_json_has_every_engine_at_every_batch_with_its_columns(report):
    out, _ = report
    d = out["deploy"]
    assert out["rows"] == [] and d["arch"] == "ViT-S-64" and d["flops_per_image"] > 0
    assert d["malloc"] == "glibc default"
    has_ort = importlib.util.find_spec("onnxruntime") is not None
    timed = {r["engine"] for r in d["rows"]}
    assert timed | set(d["unavailable"]) == ENGINES and not timed & set(d["unavailable"])
    assert {"mmfm fp32", "mmfm bf16", "mmfm int8"} <= timed and (("ort fp32" in timed) == has_ort)
    assert sorted({r["batch"] for r in d["rows"]}) == [1, 3]
    for r in d["rows"]:
        assert r["images_per_s"] > 0 and r["ms_per_batch"] > 0 and r["gflops"] > 0 and r["pct_of_peak"] > 0
        assert r["images_per_s"] == pytest.approx(1e3 * r["batch"] / r["ms_per_batch"])
        assert r["repeats"] == 1 and {"vs_mmfm_fp32_std", "vs_ort_fp32_std"} <= set(r)
        if r["engine"] == "mmfm fp32":
            assert r["vs_mmfm_fp32"] == 1.0
        if r["engine"] == "ort fp32":
            assert r["vs_ort_fp32"] == 1.0
    assert set(d["matmul_peak"]["gflops"]) >= {"fp32", "bf16"}
    assert d["matmul_peak"]["best"] == max(d["matmul_peak"]["gflops"].values())
    assert [t["target"].split()[0] for t in d["targets"]] == ["mmfm", "mmfm", "bf16", "int8"]


def test_agreement_is_exact_for_fp32_and_close_but_measured_for_low_precision(report):
    d = report[0]["deploy"]
    cos = {(r["engine"], r["batch"]): r["min_cosine_vs_fp32"] for r in d["rows"]}
    for (engine, _), c in cos.items():
        assert c <= 1 + 1e-5
        if engine == "mmfm fp32":
            assert c == pytest.approx(1, abs=1e-6)
        elif engine == "ort fp32":      # the same graph in another runtime: float rounding only
            assert c > 0.9999
        else:                           # bf16 / int8 lose a little, never the embedding's direction
            assert 0.95 < c < 1 - 1e-7


def test_end_to_end_line_embeds_every_generated_jpeg(report):
    out, tmp = report
    e = out["deploy"]["end_to_end"]
    assert e["images"] == 6 and e["batch"] == 4 and e["workers"] == 0
    assert e["embed_images_per_s"] > 0 and e["model_only_images_per_s"] > 0
    assert e["ratio"] == pytest.approx(e["embed_images_per_s"] / e["model_only_images_per_s"])
    jpegs = sorted((tmp / "jpegs").rglob("*.jpg"))
    assert len(jpegs) == 6
    for p in jpegs:
        with PIL.Image.open(p) as img:
            assert img.format == "JPEG" and all(256 <= s <= 500 for s in img.size)


def test_jpeg_folder_is_made_once_and_reused(tmp_path):
    first = compare.jpeg_folder(tmp_path, 3, seed=1)
    stamps = [p.stat().st_mtime_ns for p in first]
    again = compare.jpeg_folder(tmp_path, 3, seed=1)
    assert again == first and [p.stat().st_mtime_ns for p in again] == stamps
    first[1].unlink()      # an incomplete folder is made again, not trusted
    assert all(p.exists() for p in compare.jpeg_folder(tmp_path, 3, seed=1))


def _row(batch, engine, against, mean, std):
    return {"batch": batch, "engine": engine, against: mean, against + "_std": std}


@pytest.mark.parametrize("mean,std,verdict", [(2.10, 0.05, "met"), (1.90, 0.05, "NOT met"),
                                              (1.98, 0.05, "within the spread"), (2.02, 0.05, "within the spread")])
def test_a_target_verdict_is_drawn_only_where_the_gap_exceeds_the_spread(mean, std, verdict):
    rows = [_row(64, "mmfm bf16", "vs_mmfm_fp32", mean, std)]
    bf16 = compare.deploy_targets(rows, native_bf16=True)[2]
    assert bf16["target"].startswith("bf16") and bf16["achieved"] == mean and bf16["std"] == std
    assert bf16["verdict"] == verdict and bf16["met"] == {"met": True, "NOT met": False}.get(verdict)
    assert compare.deploy_targets(rows, native_bf16=False)[2]["verdict"] == "n/a"   # not a target without bf16


def test_paired_ratio_is_the_mean_and_spread_of_each_rounds_ratio():
    mean, std = compare.paired_ratio([2.0, 4.0, 3.0], [1.0, 2.0, 2.0])
    assert mean == pytest.approx((2 + 2 + 1.5) / 3) and std == pytest.approx(0.288675, rel=1e-5)


def test_a_round_runs_enough_calls_to_fill_its_minimum_time():
    calls = {"fast": 0, "slow": 0}

    def fast():
        calls["fast"] += 1

    def slow():
        calls["slow"] += 1
        import time
        time.sleep(0.02)
    times = compare.time_interleaved({"fast": fast, "slow": slow}, repeats=2, device="cpu", every=True,
                                     min_round_s=0.1)
    assert len(times["fast"]) == len(times["slow"]) == 2
    # ~0.1 s / 0.02 s = 5 calls a round, 2 rounds (+ the Timer's own few warm-up calls), not 1 a round
    assert 2 * 5 <= calls["slow"] <= 30 and calls["fast"] > 100
    assert 0.015 < statistics.median(times["slow"]) < 0.2          # seconds per call, not per round
