"""glibc's large-block policies (mmfm.util.malloc): each one in a fresh process, so the heap's state is the
probe's own and the test process keeps glibc's default."""
import subprocess
import sys

import pytest


def _probe(script: str) -> dict[str, int]:
    """The number the probe prints for each case, "off" (glibc's default) and "on" (the policy applied)."""
    ctypes = pytest.importorskip("ctypes")
    if not sys.platform.startswith("linux") or not hasattr(ctypes.CDLL(None), "mallopt"):
        pytest.skip("glibc's malloc only")
    numbers = {}
    for case in ("off", "on"):
        out = subprocess.run([sys.executable, "-c", script, case], capture_output=True, text=True, check=True)
        applied, number = out.stdout.split()
        assert applied == str(case == "on")
        numbers[case] = int(number)
    return numbers



_HEAP_PROBE = r"""
import sys, torch
from mmfm.util.malloc import return_large_blocks_to_the_os
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
big = torch.ones(16 << 20, dtype=torch.uint8)
del big                         # glibc's default now serves blocks up to 16 MiB from its heap
applied = return_large_blocks_to_the_os() if sys.argv[1] == "on" else False
blocks = [torch.ones(4 << 20, dtype=torch.uint8) for _ in range(20)]
before = rss()
del blocks[:-1]                 # the last block pins the heap's top: freed heap blocks below it stay mapped
print(applied, (before - rss()) >> 20)
"""


def test_freed_activation_sized_blocks_leave_the_process():
    # Memory a training step frees (activations, gradient transients) must leave the resident set, not stay
    # in glibc's heap as fragments that the peak then counts (~0.1 GiB of ViT-B-32's at 8 x accumulation 4).
    freed = _probe(_HEAP_PROBE)
    assert freed["off"] < 20                    # the default keeps the 19 freed 4 MiB blocks (the trap)
    assert freed["on"] >= 19 * 4 - 4            # with the training setting they are returned


_FAULT_PROBE = r"""
import resource, sys, torch
from mmfm.util.malloc import keep_large_blocks
applied = keep_large_blocks() if sys.argv[1] == "on" else False
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
calls = []
for _ in range(10):             # inference calls: two activations of 48 and 40 MiB each, used and freed
    before = faults()
    hidden = torch.ones(48 << 20, dtype=torch.uint8)
    out = torch.ones(40 << 20, dtype=torch.uint8)
    del hidden, out
    calls.append(faults() - before)
print(applied, max(calls[-3:]))  # steady state (glibc's heap settles within a few calls)
"""


def test_inference_activations_are_reused_without_page_faults():
    # An inference pass allocates the same large activations on every call. Above glibc's mmap threshold
    # (at most 32 MiB by default) each is a fresh mapping whose 4 KiB pages fault in anew, call after call;
    # with the inference setting later calls reuse the pages of earlier ones.
    faults = _probe(_FAULT_PROBE)
    pages = (88 << 20) // 4096
    assert faults["off"] >= pages // 2           # glibc's default: both blocks fault in again
    assert faults["on"] < pages // 16            # kept in the heap: its pages are still there
