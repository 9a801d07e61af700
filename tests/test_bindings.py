"""The two forms of the Python bindings: the compiled module (`pyffi._native`,
cffi's API mode), which the suite runs on, and cffi's ABI mode, which serves
where it is missing or was compiled from another header. Both give the same
results through the same `ffi` and `lib`."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np

import pyffi
import pyffi._ffi
from conftest import REPO, model_dir

# What each form computes, printed as JSON by a fresh interpreter.
PROBE = """
import json, numpy as np, pyffi, pyffi._ffi
m = pyffi.Transformer.from_pretrained({model!r})
s = m.new_session(n_ctx=32)
step = np.empty((1, 1, m.vocab_size), np.float32)
s.forward(np.array([1, 10, 20], np.int32))
s.forward(np.array([30], np.int32), start_pos=3, last_only=True, out=step)
seen = []
gen = m.generate([1, 5], max_gen_len=6, temperature=0, stop_tokens=[], callback=lambda t: seen.append(t) or True)
try:
    m.forward([1, 10**6])
    err = None
except pyffi.PyffiError as e:
    err = [type(e).__name__, str(e)]
print(json.dumps({{"bindings": pyffi._ffi.BINDINGS, "logits": step.ravel().tolist(), "gen": gen, "seen": seen,
                  "error": err}}))
"""


def probe(model, pythonpath=str(REPO), **env):
    run_env = {**os.environ, "PYTHONPATH": pythonpath, "PYFFI_LIBRARY": str(pyffi._ffi.LIBRARY_PATH),
               "PYFFI_BINDINGS": "", **env}
    out = subprocess.run([sys.executable, "-c", PROBE.format(model=str(model))], env=run_env, cwd=pythonpath,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


def test_the_suite_runs_on_the_compiled_bindings():
    assert pyffi._ffi.BINDINGS == "native", "pyffi._native is not built for this checkout: run `make native`"


def test_abi_mode_gives_the_same_results_as_the_compiled_bindings():
    model = model_dir("stories260K")
    native = probe(model, PYFFI_BINDINGS="native")
    abi = probe(model, PYFFI_BINDINGS="abi")
    assert (native["bindings"], abi["bindings"]) == ("native", "abi")
    assert native["logits"] == abi["logits"] and np.isfinite(native["logits"]).all()
    assert native["gen"] == abi["gen"] == native["seen"] == abi["seen"] and len(native["gen"]) == 6
    assert native["error"] == abi["error"] and native["error"][0] == "OutOfRangeError"


def test_bindings_compiled_from_another_header_are_not_used(tmp_path):
    """A compiled module older or newer than the header beside it (its struct
    layouts may differ) is left aside for ABI mode, or refused where
    PYFFI_BINDINGS=native asks for it."""
    pkg = tmp_path / "pyffi"
    shutil.copytree(REPO / "pyffi", pkg, ignore=shutil.ignore_patterns("_native*", "__pycache__"))
    header = (REPO / "include" / "pyffi.h").read_text()
    (pkg / "pyffi.h").write_text(header)
    build = [sys.executable, str(pkg / "_cffi_build.py")]
    other = tmp_path / "other" / "pyffi.h"
    other.parent.mkdir()
    other.write_text(header + "\n/* a later version */\n")
    subprocess.run(build + [str(other), str(pkg)], check=True, capture_output=True, timeout=300)
    model = model_dir("stories260K")
    assert probe(model, str(tmp_path))["bindings"] == "abi"
    refused = subprocess.run([sys.executable, "-c", "import pyffi"], cwd=tmp_path, capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(tmp_path), "PYFFI_BINDINGS": "native",
                                  "PYFFI_LIBRARY": str(pyffi._ffi.LIBRARY_PATH)})
    assert refused.returncode != 0 and "not built for" in refused.stderr
    subprocess.run(build + [str(pkg / "pyffi.h"), str(pkg)], check=True, capture_output=True, timeout=300)
    assert probe(model, str(tmp_path))["bindings"] == "native"


def test_an_unknown_bindings_choice_is_refused():
    out = subprocess.run([sys.executable, "-c", "import pyffi"], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO), "PYFFI_BINDINGS": "fast"})
    assert out.returncode != 0 and "PYFFI_BINDINGS must be" in out.stderr
