"""Small files that claim huge models are refused before anything real is allocated.

Each file below is at most a few MB but claims 256 MB to 256 TB. The claims are sized so that the old
code fails fast too (a single tensor larger than any address space, or a few hundred MB), never
exhausting the machine: the in-process tests assert the error, the subprocess test the peak memory.
"""
from __future__ import annotations

import collections
import json
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import pytest
import torch

from mmfm.checkpoints import CheckpointError, load_state_dict_file
from mmfm.checkpoints.hf import export_hf
from mmfm.api import create_model

HUGE = 2 ** 23   # a ViT width: one q projection is 2**46 floats (256 TB), beyond any machine
BOMB_NUMEL = 2 ** 26   # 256 MB of float zeros, deflated to ~250 KB


def _huge_hf_dir(tmp_path: Path) -> Path:
    """A real (tiny) HF CLIPModel folder whose config.json claims a 2**23-wide vision tower."""
    folder = tmp_path / "hf-huge"
    export_hf(create_model("ViT-tiny-test"), folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["vision_config"].update(hidden_size=HUGE, intermediate_size=4 * HUGE, num_attention_heads=HUGE // 64,
                                num_hidden_layers=1, image_size=1, patch_size=1)
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def _deep_hf_dir(tmp_path: Path) -> Path:
    """A tiny HF folder whose config claims 10**9 layers (the old code would build them one by one)."""
    folder = tmp_path / "hf-deep"
    export_hf(create_model("ViT-tiny-test"), folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["vision_config"].update(num_hidden_layers=10 ** 9, hidden_size=HUGE, intermediate_size=4 * HUGE,
                                num_attention_heads=HUGE // 64, image_size=1, patch_size=1)   # old code: fails at block 0
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def _stride0_pt(tmp_path: Path) -> Path:
    """A weights-only torch.save file whose tensors are broadcast views: 4 bytes stored, 1 GB claimed."""
    path = tmp_path / "stride0.pt"
    torch.save({"visual_projection.weight": torch.zeros(1).expand(2 ** 14, 2 ** 14),
                "text_model.embeddings.token_embedding.weight": torch.zeros(1).expand(2 ** 14, 2 ** 14)}, path)
    assert path.stat().st_size < 10_000
    return path


class _Storage:
    def __init__(self, numel: int):
        self.numel = numel


class _Tensor:
    """Pickles as torch does a float tensor over storage record "0" of ``numel`` elements."""

    def __init__(self, numel: int):
        self.numel = numel

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2,
                (_Storage(self.numel), 0, (self.numel,), (1,), False, collections.OrderedDict()))


class _Pickler:
    @staticmethod
    def dumps(obj) -> bytes:
        import io
        import pickle

        class P(pickle.Pickler):
            def persistent_id(self, o):
                return ("storage", torch.FloatStorage, "0", "cpu", o.numel) if isinstance(o, _Storage) else None
        buf = io.BytesIO()
        P(buf, protocol=2).dump(obj)
        return buf.getvalue()


def _zip_with_deflated_record(path: Path, data_pkl: bytes, extra: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", data_pkl)
        for name, data in extra.items():
            zf.writestr(f"archive/{name}", data)
        info = zipfile.ZipInfo("archive/data/0")
        info.compress_type = zipfile.ZIP_DEFLATED
        with zf.open(info, "w", force_zip64=True) as rec:
            chunk = bytes(1 << 22)
            for _ in range(BOMB_NUMEL * 4 // len(chunk)):
                rec.write(chunk)
    assert path.stat().st_size < 2_000_000
    return path


def _torchscript_bomb(tmp_path: Path, monkeypatch) -> Path:
    """A TorchScript archive whose one 256 MB storage record is deflated to a few hundred KB."""
    torch_mod = types.ModuleType("__torch__")

    class Model:   # pickled as __torch__.Model, the way TorchScript modules are
        def __init__(self, state=None):
            self.state = state

        def __reduce__(self):
            return (Model, (), self.state)
    Model.__module__, Model.__qualname__ = "__torch__", "Model"
    torch_mod.Model = Model
    monkeypatch.setitem(sys.modules, "__torch__", torch_mod)
    data = _Pickler.dumps(Model({"weight": _Tensor(BOMB_NUMEL)}))
    return _zip_with_deflated_record(tmp_path / "bomb_script.pt", data,
                                     {"constants.pkl": b"\x80\x02).", "version": b"3", "byteorder": b"little"})


def _torch_save_bomb(tmp_path: Path) -> Path:
    """The same inflation in an ordinary torch.save file (torch.load inflates deflated records too)."""
    return _zip_with_deflated_record(tmp_path / "bomb.pt", _Pickler.dumps({"weight": _Tensor(BOMB_NUMEL)}),
                                     {"version": b"3", "byteorder": b"little", ".format_version": b"1"})


def test_hf_config_claiming_a_huge_model_is_refused_before_allocation(tmp_path):
    folder = _huge_hf_dir(tmp_path)
    with pytest.raises(CheckpointError, match="does not match"):   # the old code: RuntimeError from malloc
        create_model(pretrained=str(folder))


def test_config_claiming_more_layers_than_tensors_is_refused_before_building(tmp_path):
    """Checked from the config alone: even a meta-device build of 10**9 blocks would take hours and GBs."""
    from mmfm.checkpoints.validate import check_claimed_depth
    from mmfm.models import get_model_config
    cfg = get_model_config("ViT-tiny-test")
    sd = create_model(cfg).state_dict()
    check_claimed_depth(cfg, sd, "ok")   # the real thing passes
    cfg.text.layers = 10 ** 9
    with pytest.raises(CheckpointError, match="1,000,000,002 layers"):
        check_claimed_depth(cfg, sd, "deep")


def test_stride0_tensors_are_refused(tmp_path):
    path = _stride0_pt(tmp_path)
    with pytest.raises(CheckpointError, match="more than the file stores"):
        load_state_dict_file(path)


def test_overlapping_views_count_once_per_byte(tmp_path):
    """Views that share bytes (beyond exact ties) cannot multiply a small file into a large model."""
    base = torch.arange(1000.0)
    path = tmp_path / "overlap.pt"
    torch.save({f"w{i}": base.as_strided((999,), (1,), 1) if i else base for i in range(50)}, path)
    with pytest.raises(CheckpointError, match="more than the file stores"):
        load_state_dict_file(path)
    tied = tmp_path / "tied.pt"   # the same tensor under two names (tied weights) is fine
    torch.save({"a": base, "b": base, "c": torch.ones(3)}, tied)
    assert set(load_state_dict_file(tied)) == {"a", "b", "c"}


@pytest.mark.parametrize("kind", ["torchscript", "torch_save"])
def test_deflated_records_that_inflate_are_refused_before_reading(kind, tmp_path, monkeypatch):
    path = _torchscript_bomb(tmp_path, monkeypatch) if kind == "torchscript" else _torch_save_bomb(tmp_path)
    with pytest.raises(CheckpointError, match="inflate"):
        load_state_dict_file(path)


_MEASURE = r"""
import json, sys, torch
from mmfm.api import create_model

def peak_mb():
    return int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]) // 1024

def reset():
    try:
        open('/proc/self/clear_refs', 'w').write('5')   # restart the peak count (Linux >= 4.0)
    except OSError:
        pass

from mmfm.checkpoints.validate import expected_shapes
from mmfm.models import get_model_config
create_model('ViT-tiny-test')   # warm up: imports, allocator pools and the meta device's one-time setup
expected_shapes(get_model_config('ViT-tiny-test'))
out = {}
for name, path in json.loads(sys.argv[1]).items():
    reset()
    base = peak_mb()
    try:
        create_model(pretrained=path)
        err = None
    except Exception as e:
        err = type(e).__name__
    out[name] = {"error": err, "peak_mb": peak_mb() - base}
print(json.dumps(out))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak memory is read from /proc (Linux)")
def test_peak_memory_stays_small(tmp_path, monkeypatch):
    """Loading each file in a fresh process: refused, and the peak resident memory grows by < 100 MB."""
    files = {"hf_huge_config": str(_huge_hf_dir(tmp_path)), "hf_deep_config": str(_deep_hf_dir(tmp_path)),
             "stride0_pt": str(_stride0_pt(tmp_path)),
             "torchscript_bomb": str(_torchscript_bomb(tmp_path, monkeypatch)),
             "torch_save_bomb": str(_torch_save_bomb(tmp_path))}
    def limit_memory():   # should a check regress, fail in the child instead of exhausting the machine
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (16 << 30, 16 << 30))
    proc = subprocess.run([sys.executable, "-c", _MEASURE, json.dumps(files)], capture_output=True, text=True,
                          timeout=300, env={"OMP_NUM_THREADS": "1", "PYTHONPATH": ":".join(sys.path), "PATH": ""},
                          preexec_fn=limit_memory)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, r in result.items():
        assert r["error"] == "CheckpointError", (name, r)
        assert r["peak_mb"] < 100, (name, r)
