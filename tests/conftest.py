"""Shared test setup: where the parity fixtures live, and small helpers."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(os.environ.get("PYFFI_FIXTURES", REPO.parent / "shared" / "fixtures")).resolve()

if not FIXTURES.is_dir():
    raise pytest.UsageError(
        f"parity fixtures not found at {FIXTURES}: put shared/ beside the checkout "
        "or set PYFFI_FIXTURES")

MODELS = sorted(p.name for p in (FIXTURES / "models").iterdir() if (p / "config.json").exists())


def model_dir(name):
    return FIXTURES / "models" / name


def golden(name):
    import numpy as np
    return np.load(FIXTURES / "golden" / f"{name}.npz")


def rel_err(ours, ref):
    """max|ours - ref| / max|ref|, the fixtures README's tolerance measure."""
    import numpy as np
    return float(np.abs(ours - ref).max() / np.abs(ref).max())
