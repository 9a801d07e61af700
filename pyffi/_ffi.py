"""Loads libpyffi and declares its C ABI to cffi, from the same header C and
Go compile against. The compiled bindings (`pyffi._native`, built by
`pip install .` and `make native`, see `_cffi_build`) call the library
directly; where they are missing or were compiled from another header,
cffi's ABI mode (`ffi.dlopen`, no compiler needed) serves instead, with the
same `ffi` and `lib` API. PYFFI_BINDINGS=abi asks for ABI mode, and
PYFFI_BINDINGS=native fails the import where the compiled ones cannot load."""

import ctypes
import os
from pathlib import Path

import cffi

from ._cffi_build import cdef_text, header_hash
from .errors import BY_STATUS, InternalError

_HERE = Path(__file__).resolve().parent
_REPO = _HERE.parent


def _first_existing(paths):
    for p in paths:
        if p and Path(p).is_file():
            return Path(p)
    return None


_header = _first_existing([_HERE / "pyffi.h", _REPO / "include" / "pyffi.h"])
if _header is None:
    raise ImportError("pyffi.h not found next to the package or in include/")

_library = _first_existing([
    os.environ.get("PYFFI_LIBRARY"),
    _HERE / "libpyffi.so",
    _REPO / "rust" / "target" / "release" / "libpyffi.so",
])
if _library is None:
    raise ImportError(
        "libpyffi.so not found: install with `pip install .`, build with "
        "`cargo build --release` in rust/, or set PYFFI_LIBRARY")


def _native_bindings(header_text):
    """The compiled module's (ffi, lib) bound to `_library`, or None where it
    is missing or was compiled from another header."""
    try:
        # Its calls bind to the library loaded here, into the global namespace.
        ctypes.CDLL(str(_library), mode=os.RTLD_NOW | os.RTLD_GLOBAL)
        from . import _native
    except ImportError:
        return None
    if _native.lib.PYFFI_NATIVE_HEADER_HASH != header_hash(header_text):
        return None
    return _native.ffi, _native.lib


_header_text = _header.read_text()
_wanted = os.environ.get("PYFFI_BINDINGS", "")
if _wanted not in ("", "abi", "native"):
    raise ImportError(f"PYFFI_BINDINGS must be 'abi' or 'native', got {_wanted!r}")
_native_pair = None if _wanted == "abi" else _native_bindings(_header_text)
if _native_pair is not None:
    ffi, lib = _native_pair
    BINDINGS = "native"
elif _wanted == "native":
    raise ImportError(f"PYFFI_BINDINGS=native, but pyffi._native is not built for {_header} (make native)")
else:
    ffi = cffi.FFI()
    ffi.cdef(cdef_text(_header_text))
    lib = ffi.dlopen(str(_library))
    BINDINGS = "abi"
LIBRARY_PATH = _library

ABI_VERSION = 1
if lib.pyffi_abi_version() != ABI_VERSION:
    raise ImportError(
        f"{_library} implements ABI {lib.pyffi_abi_version()}, this package expects {ABI_VERSION}")


def raise_error(status, err_ptr):
    """Turn a failed call's status and pyffi_error into a Python exception."""
    if err_ptr != ffi.NULL:
        message = ffi.string(lib.pyffi_error_message(err_ptr)).decode("utf-8", "replace")
        lib.pyffi_error_free(err_ptr)
    else:
        message = ffi.string(lib.pyffi_status_name(status)).decode()
    cls = BY_STATUS.get(status, InternalError)
    exc = cls(message)
    exc.status = status
    raise exc


def call(fn, *args):
    """Call a fallible C function (its last parameter is pyffi_error **)."""
    err = ffi.new("pyffi_error **")
    status = fn(*args, err)
    if status != lib.PYFFI_OK:
        raise_error(status, err[0])


def read_string(fn, *args):
    """Call a string-returning function under the buffer rule: ask for the size,
    then fill a buffer of exactly that size."""
    n = ffi.new("size_t *")
    err = ffi.new("pyffi_error **")
    status = fn(*args, ffi.NULL, 0, n, err)
    if status not in (lib.PYFFI_OK, lib.PYFFI_BUFFER_TOO_SMALL):
        raise_error(status, err[0])
    if err[0] != ffi.NULL:
        lib.pyffi_error_free(err[0])
    buf = ffi.new("char[]", n[0])
    call(fn, *args, buf, n[0], n)
    return ffi.string(buf).decode("utf-8")


def path_arg(path):
    """A filesystem path as the bytes the C side expects."""
    return os.fsencode(os.fspath(path))


class Handle:
    """Base of the Python objects that own one C handle (`self._ptr`, made
    with ffi.gc so a forgotten close() still frees it): close() frees it now
    and is safe to call twice; `with` closes; use after close raises."""

    _kind = "object"

    def _handle(self):
        if getattr(self, "_ptr", None) is None:
            from .errors import InvalidArgumentError
            raise InvalidArgumentError(f"this {self._kind} is closed")
        return self._ptr

    def close(self):
        if getattr(self, "_ptr", None) is not None:
            ffi.release(self._ptr)
            self._ptr = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
