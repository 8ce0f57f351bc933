"""`nft` without a process: the same command given to libnftables, the
library the nft command is a front end of, in this process.

Starting nft costs ~3 ms a call (exec, dynamic linking, its netlink
socket); its library does the same work in ~0.2 ms. A flat network's ADD
runs nft twice one after the other, its DEL up to four times.

`run` takes nft's own arguments and answers as the command would: what it
prints, what it prints on error, and its exit code. The command line is
joined with spaces and run from a buffer, as nft's main() does; `-f -` runs
the given text; `-j` asks for JSON. Anything else (another option) is left
to the command, as is everything when the library cannot be loaded
(`available`), or when `nft` on PATH is not the system's (a test's fake
tool must be what runs).

The library runs in the calling thread's network namespace, where it opens
its netlink socket, as a forked nft would. One call at a time in a process
(libnftables does not promise that separate contexts share no state); the
lock is made anew in a forked child, which may inherit it held.
"""

import ctypes
import functools
import os
import shutil
import threading

SYSTEM_NFT = ("/usr/sbin/nft", "/sbin/nft")
OUTPUT_JSON = 1 << 4  # NFT_CTX_OUTPUT_JSON (libnftables.h)

_lock = threading.Lock()


def _new_lock() -> None:
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_new_lock)


@functools.lru_cache(maxsize=1)
def _library():
    """libnftables with its prototypes, or None when it cannot be loaded."""
    try:
        lib = ctypes.CDLL("libnftables.so.1")
    except OSError:
        return None
    context = ctypes.c_void_p
    lib.nft_ctx_new.restype, lib.nft_ctx_new.argtypes = context, [ctypes.c_uint32]
    for name in ("nft_ctx_free", "nft_ctx_buffer_output", "nft_ctx_buffer_error"):
        getattr(lib, name).argtypes = [context]
    lib.nft_ctx_output_set_flags.argtypes = [context, ctypes.c_uint]
    lib.nft_run_cmd_from_buffer.restype, lib.nft_run_cmd_from_buffer.argtypes = ctypes.c_int, [context, ctypes.c_char_p]
    for name in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
        getattr(lib, name).restype, getattr(lib, name).argtypes = ctypes.c_char_p, [context]
    return lib


@functools.lru_cache(maxsize=8)
def _system_nft_on(path: str | None) -> bool:
    found = shutil.which("nft", path=path)
    return found is not None and os.path.realpath(found) in {os.path.realpath(p) for p in SYSTEM_NFT}


def available() -> bool:
    """Whether `run` can serve an nft command in this process."""
    return _system_nft_on(os.environ.get("PATH")) and _library() is not None


def command(args: list, stdin: str | None) -> tuple | None:
    """(flags, command text) for nft's arguments `args`, or None when they
    are not a form `run` takes."""
    flags = 0
    if args[:1] == ["-j"]:
        flags, args = OUTPUT_JSON, args[1:]
    if args == ["-f", "-"]:
        return (flags, stdin) if stdin is not None else None
    if not args or args[0].startswith("-") or stdin is not None:
        return None
    return flags, " ".join(args) + "\n"


def serves(args: list, stdin: str | None = None) -> bool:
    """Whether `run` answers `nft ARGS` in this process."""
    return available() and command(args, stdin) is not None


def run(args: list, stdin: str | None = None) -> tuple | None:
    """(exit code, stdout, stderr) as `nft ARGS` would give them, or None
    when the command has to be run instead (see the module's docstring)."""
    if not serves(args, stdin):
        return None
    flags, text = command(args, stdin)
    lib = _library()
    with _lock:
        ctx = lib.nft_ctx_new(0)
        if not ctx:
            return None
        try:
            lib.nft_ctx_buffer_output(ctx)
            lib.nft_ctx_buffer_error(ctx)
            lib.nft_ctx_output_set_flags(ctx, flags)
            failed = lib.nft_run_cmd_from_buffer(ctx, text.encode())
            out = (lib.nft_ctx_get_output_buffer(ctx) or b"").decode(errors="replace")
            err = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace")
        finally:
            lib.nft_ctx_free(ctx)
    return (1 if failed else 0), out, err
