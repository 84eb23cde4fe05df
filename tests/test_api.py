"""mmfm.api is the one door: the public names all lead to it, and the layers below it never load it."""
from __future__ import annotations

import subprocess
import sys

import mmfm
import mmfm.api as api
import mmfm.checkpoints
import mmfm.models


def test_public_names_are_the_door():
    assert mmfm.create_model is api.create_model
    assert mmfm.from_pretrained is api.from_pretrained
    # One door: the layers below it do not hand it out (that re-export was an upward import).
    assert not hasattr(mmfm.models, "create_model") and not hasattr(mmfm.checkpoints, "from_pretrained")


def test_importing_models_loads_neither_checkpoints_nor_the_door():
    code = ("import sys, mmfm.models; "
            "print(sorted(m for m in ('mmfm.api', 'mmfm.checkpoints') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
