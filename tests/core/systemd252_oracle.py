"""Ask systemd 252 itself what it makes of environment files: the oracle for the differential tests.

Run as a child process (``python systemd252_oracle.py LIBRARY SCRATCH_DIR < records``) so that a crash in the
internal, unversioned ABI of libsystemd-shared cannot take pytest down with it. It makes the same two calls as PID1
(``exec_context_load_environment()``): ``load_env_file(NULL, path, &list)`` on a real file, then
``strv_env_clean_with_callback(list, callback, NULL)``, whose callback sees each dropped assignment.

stdin: records, each an 8-byte little-endian length and that many bytes of file content.
stdout: a JSON list with one ``[rc, environment, ignored]`` per record, strings decoded with surrogateescape.
"""

from __future__ import annotations

import ctypes
import json
import struct
import sys
from pathlib import Path

_StrvPointer = ctypes.POINTER(ctypes.c_char_p)
_Callback = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_void_p)
_LOG_EMERG = 0


def _library(path: str) -> ctypes.CDLL:
    lib = ctypes.CDLL(path)
    lib.log_set_max_level.argtypes = [ctypes.c_int]
    lib.log_set_max_level(_LOG_EMERG)  # silence "invalid UTF-8 ..." log lines on stderr
    lib.load_env_file.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(_StrvPointer)]
    lib.load_env_file.restype = ctypes.c_int
    lib.strv_env_clean_with_callback.argtypes = [_StrvPointer, _Callback, ctypes.c_void_p]
    lib.strv_env_clean_with_callback.restype = _StrvPointer
    lib.strv_free.argtypes = [_StrvPointer]
    lib.strv_free.restype = _StrvPointer
    return lib


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _strv(strv: _StrvPointer) -> list[str]:
    items: list[str] = []
    while strv and strv[len(items)] is not None:
        items.append(_text(strv[len(items)]))
    return items


def _load(lib: ctypes.CDLL, path: Path) -> tuple[int, list[str], list[str]]:
    strv = _StrvPointer()
    rc = lib.load_env_file(None, bytes(path), ctypes.byref(strv))
    if rc < 0:
        return rc, [], []
    ignored: list[str] = []
    callback = _Callback(lambda assignment, _userdata: ignored.append(_text(assignment)))
    cleaned = lib.strv_env_clean_with_callback(strv, callback, None)
    environment = _strv(cleaned)
    lib.strv_free(cleaned)
    return rc, environment, ignored


def _records(stream: bytes) -> list[bytes]:
    records, offset = [], 0
    while offset < len(stream):
        (size,) = struct.unpack_from("<Q", stream, offset)
        offset += 8
        records.append(stream[offset : offset + size])
        offset += size
    return records


def main() -> None:
    lib = _library(sys.argv[1])
    scratch = Path(sys.argv[2]) / "oracle.env"
    results = []
    for content in _records(sys.stdin.buffer.read()):
        scratch.write_bytes(content)
        results.append(_load(lib, scratch))
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
