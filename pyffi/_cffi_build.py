"""The cffi declarations of the C ABI, and the build of `pyffi._native`, the
compiled form of the bindings (cffi's "API mode").

Both bindings read the same header C and Go compile against. The compiled
module calls each C function directly, where cffi's ABI mode (`ffi.dlopen`,
which needs no compiler) goes through libffi: about 0.35 us less per call,
which a decode loop pays once per token. It does not link libpyffi.so:
`pyffi._ffi` loads the library it chose (PYFFI_LIBRARY, the bundled one, or
the build tree's) into the global namespace first, and the module's calls
bind to it. It records a hash of the header it was compiled from, and is
only used with that header.

This file imports nothing from the package (setup.py loads it by path,
before the package can load), and runs as a script:

    python pyffi/_cffi_build.py include/pyffi.h pyffi/
"""

import hashlib
import re
import shutil
import sys
import tempfile
from pathlib import Path

MODULE = "pyffi._native"


def cdef_text(header_text):
    """The header without preprocessor lines and C++-only blocks, which cffi's
    cdef cannot read; integer constants (`#define NAME 2`) stay."""
    out, skipping = [], False
    for line in header_text.splitlines():
        s = line.strip()
        if s.startswith("#ifdef __cplusplus"):
            skipping = True
            continue
        if skipping:
            if s.startswith("#endif"):
                skipping = False
            continue
        if s.startswith("#") and not re.fullmatch(r"#define [A-Z_][A-Z0-9_]* -?\d+", s):
            continue
        out.append(line)
    return "\n".join(out)


def header_hash(header_text):
    """A 31-bit hash of the header's text, kept in the compiled module."""
    return int.from_bytes(hashlib.sha256(header_text.encode()).digest()[:4], "little") & 0x7FFFFFFF


def compile_native(header, out_dir):
    """Compile `pyffi._native` from `header` into `out_dir` (the package's
    folder); returns the module's path. Raises when there is no C compiler or
    no Python headers."""
    import cffi

    header = Path(header).resolve()
    text = header.read_text()
    builder = cffi.FFI()
    builder.cdef(cdef_text(text) + "\n#define PYFFI_NATIVE_HEADER_HASH ...\n")
    link = ["-undefined", "dynamic_lookup"] if sys.platform == "darwin" else []
    builder.set_source(
        MODULE,
        f'#include "pyffi.h"\n#define PYFFI_NATIVE_HEADER_HASH {header_hash(text)}\n',
        include_dirs=[str(header.parent)],
        extra_link_args=link,
    )
    with tempfile.TemporaryDirectory() as tmp:
        built = Path(builder.compile(tmpdir=tmp, verbose=False))
        target = Path(out_dir) / built.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(built, target)
    return target


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python pyffi/_cffi_build.py HEADER OUT_DIR")
    print(compile_native(sys.argv[1], sys.argv[2]))
