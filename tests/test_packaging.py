"""`pip install .` builds the Rust library and bundles it (with the header,
the demo model and the compiled bindings) inside the package: an installed
pyffi runs from anywhere."""

import os
import subprocess
import sys

from conftest import REPO


def test_pip_install_bundles_the_library(tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-build-isolation", "--no-deps",
                    "--disable-pip-version-check", "--target", str(target), str(REPO)],
                   check=True, capture_output=True, timeout=1200)
    env = {k: v for k, v in os.environ.items() if k != "PYFFI_LIBRARY"}
    env["PYTHONPATH"] = str(target)
    code = ("import pyffi, pyffi._ffi as f; print(f.LIBRARY_PATH, f.BINDINGS); "
            "from pyffi.__main__ import default_model; print(default_model()); "
            "m = pyffi.Transformer.from_pretrained(default_model()); "
            "print(m.generate([0, 555, 459], max_gen_len=4, temperature=0))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out[0] == f"{target / 'pyffi' / 'libpyffi.so'} native"  # and its compiled bindings
    assert out[1] == str(target / "pyffi" / "demo")
    assert out[2] == "[1199, 304, 298, 330]"
