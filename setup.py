"""`pip install .` builds the Rust library in release mode (cargo) and bundles
it, its header and the demo model inside the `pyffi` package; the cffi
bindings load it from there. No manual copy step. It also compiles the
bindings (`pyffi._native`, cffi's API mode); where that fails (no Python
headers), the package works on cffi's ABI mode instead, and says so here."""

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution

ROOT = Path(__file__).resolve().parent


class BuildWithCargo(build_py):
    def run(self):
        super().run()
        target_dir = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "rust" / "target"))
        subprocess.check_call(
            ["cargo", "build", "--release", "--locked", "--manifest-path", str(ROOT / "rust" / "Cargo.toml")],
            env={**os.environ, "CARGO_TARGET_DIR": str(target_dir)})
        pkg = Path(self.build_lib) / "pyffi"
        pkg.mkdir(parents=True, exist_ok=True)
        shutil.copy2(target_dir / "release" / "libpyffi.so", pkg / "libpyffi.so")
        shutil.copy2(ROOT / "include" / "pyffi.h", pkg / "pyffi.h")
        demo = pkg / "demo"
        if demo.exists():
            shutil.rmtree(demo)
        shutil.copytree(ROOT / "fixtures" / "demo", demo)
        self.compile_bindings(pkg)

    def compile_bindings(self, pkg):
        # By path: importing the package here would load a library not built yet.
        spec = importlib.util.spec_from_file_location("_cffi_build", ROOT / "pyffi" / "_cffi_build.py")
        build = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(build)
        try:
            build.compile_native(pkg / "pyffi.h", pkg)
        except Exception as e:  # no compiler or no Python headers: ABI mode serves
            print(f"pyffi: compiled bindings not built ({type(e).__name__}: {e}); "
                  "pyffi will use cffi's ABI mode", file=sys.stderr)


class BinaryDistribution(Distribution):
    """The wheel carries a native library, so it is platform-specific."""

    def has_ext_modules(self):
        return True


setup(
    name="pyffi",
    version="0.1.0",
    description="Llama-family LLM inference on the CPU, through one C ABI for Python, C and Go",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    packages=["pyffi"],
    install_requires=["cffi>=1.15", "numpy>=1.22"],
    entry_points={"console_scripts": ["pyffi=pyffi.__main__:main"]},
    cmdclass={"build_py": BuildWithCargo},
    distclass=BinaryDistribution,
    zip_safe=False,
)
