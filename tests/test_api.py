"""mmfm.api is the one door: the public names all lead to it, and the layers below it never load it."""
from __future__ import annotations

import subprocess
import sys

import mmfm
import mmfm.api as api


def test_public_names_are_the_door():
    from mmfm.checkpoints import from_pretrained as old_from_pretrained
    from mmfm.models import create_model as old_create_model
    assert mmfm.create_model is api.create_model is old_create_model
    assert mmfm.from_pretrained is api.from_pretrained is old_from_pretrained


def test_importing_models_loads_neither_checkpoints_nor_the_door():
    code = ("import sys, mmfm.models; "
            "print(sorted(m for m in ('mmfm.api', 'mmfm.checkpoints') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
