"""fbjax.host_memory: a freed block's pages are reused, not faulted in again."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Through the C library's own malloc: numpy asks for transparent huge pages on large arrays,
# which would hide the 4 KiB faults this counts.
_PROBE = """
import ctypes, resource, sys
from fbjax.host_memory import keep_freed_memory
tuned = keep_freed_memory() if sys.argv[1] == "tuned" else False
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 256 << 20
def touched_block():
    p = libc.malloc(size)
    ctypes.memset(p, 1, size)
    return p
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
libc.free(touched_block())
before = faults()
p = touched_block()
print(int(tuned), faults() - before)
"""


def _second_allocation_faults(mode: str) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], check=True,
                         capture_output=True, text=True).stdout.split()
    return bool(int(out[0])), int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_block_is_reused_without_page_faults():
    tuned, faults = _second_allocation_faults("tuned")
    if not tuned:
        pytest.skip("the C library is not glibc")
    _, system_faults = _second_allocation_faults("system")
    pages = (256 << 20) // 4096
    # glibc serves the block by a fresh mmap each time: every 4 KiB page faults again.
    assert system_faults > pages // 2, system_faults
    assert faults < pages // 100, faults


@pytest.mark.parametrize("flags, applied", [((), True), (("--system-malloc",), False)])
def test_train_command_keeps_freed_memory_unless_asked(monkeypatch, capsys, flags, applied):
    from fbjax import cli, host_memory

    calls = []
    monkeypatch.setattr(host_memory, "keep_freed_memory", lambda: calls.append(1) or True)
    rc = cli.main(["train", "--experiment", "experiments/feedback_families.py:smoke",
                   "--workdir", "unused", "--print-config", *flags])
    assert rc == 0 and "seed" in capsys.readouterr().out
    assert calls == ([1] if applied else [])
