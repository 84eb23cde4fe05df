"""The benchmark scripts are not a package: put their folder on sys.path so tests can import them."""
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
CONFIGS = BENCHMARKS.parent / "configs"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))
