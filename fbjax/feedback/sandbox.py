"""Running untrusted Python (a policy's code) in a subprocess with limits and no network.

:func:`run_python` writes the program into a fresh temporary directory, starts a new Python
interpreter there (isolated mode: no user site, no ``PYTHON*`` environment, an empty
environment) and returns what happened as an :class:`Execution`. Inside the child, before the
program runs, a small bootstrap:

* sets resource limits (``resource.setrlimit``): ``RLIMIT_CPU`` (CPU seconds; the kernel sends
  SIGXCPU then SIGKILL), ``RLIMIT_AS`` (address space: allocations past it fail, Python raises
  ``MemoryError``), ``RLIMIT_FSIZE`` (largest file it may write), ``RLIMIT_NPROC`` (processes);
  the parent also kills the child at a wall-clock limit (``time_limit_s``, e.g. ``sleep``);
* installs a :func:`sys.addaudithook` hook that refuses, with ``PermissionError``: opening a file
  for writing, and creating, removing, renaming or changing files, outside the temporary
  directory; creating or connecting sockets; starting processes (``subprocess``, ``os.system``,
  ``os.exec*``, ``os.fork``, ``os.posix_spawn``); and loading native code through ``ctypes``
  (the usual way around an audit hook).

Network isolation is layered. When ``unshare -rn`` works on this machine (Linux user and network
namespaces; probed once) the child runs in a new network namespace with only a down loopback
interface, so no connection can succeed even from native code; the audit hook refuses sockets
in every case. :attr:`Execution.network_isolation` records which applied (``"namespace"`` or
``"audit-hook"``).

What this is not: a security boundary against a determined attacker. Audit hooks guard the
Python-level APIs; a C extension already importable in the interpreter could bypass them. It is
meant for the model-written HumanEval-style functions LeTI (Wang et al. 2023, arXiv 2305.10314)
learns from, as HumanEval's own harness (Chen et al. 2021, arXiv 2107.03374) is: limits against
accidents (infinite loops, runaway memory, stray writes), not against adversaries. Run it in a
container or VM when the code may be hostile.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile

PROGRAM_FILE = "program.py"
BOOTSTRAP_FILE = "_sandbox_bootstrap.py"

# The bootstrap runs in the child before the program. It is plain text written next to the
# program; its arguments (limits, paths) arrive as argv so nothing is formatted into code.
_BOOTSTRAP = r'''
import os, resource, sys

def _main():
    cpu, mem, fsize, nproc, root, program = sys.argv[1:7]
    for name, value in (("RLIMIT_CPU", cpu), ("RLIMIT_AS", mem), ("RLIMIT_FSIZE", fsize),
                        ("RLIMIT_NPROC", nproc)):
        value = int(value)
        if value > 0:
            resource.setrlimit(getattr(resource, name), (value, value))
    root = os.path.realpath(root)

    def inside(path):
        if isinstance(path, int):  # a file descriptor: opened earlier, already checked
            return True
        try:
            full = os.path.realpath(os.fsdecode(path))  # relative to the current directory
        except TypeError:
            return False
        return full == root or full.startswith(root + os.sep)

    path_events = {"os.remove", "os.rename", "os.mkdir", "os.rmdir", "os.symlink", "os.link",
                   "os.chmod", "os.chown", "os.truncate", "os.utime", "shutil.rmtree",
                   "shutil.move", "shutil.copyfile", "os.chdir"}
    forbidden = {"socket.__new__", "socket.bind", "socket.connect", "socket.connect_ex",
                 "socket.sendto", "socket.getaddrinfo", "subprocess.Popen", "os.system",
                 "os.exec", "os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.kill",
                 "os.killpg", "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata",
                 "ctypes.call_function", "os.putenv", "os.unsetenv", "pty.spawn"}

    def hook(event, args):
        if event in forbidden:
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "open":
            path, mode, flags = args
            writes = (mode is not None and any(c in str(mode) for c in "wax+")) or (
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT |
                                                    os.O_TRUNC | os.O_APPEND))
            if writes and not inside(path):
                raise PermissionError(f"sandbox: writing {path!r} outside the working "
                                      "directory is not allowed")
        elif event in path_events:
            paths = [a for a in args if isinstance(a, (str, bytes, os.PathLike))]
            if event in ("os.rename", "shutil.move", "shutil.copyfile", "os.symlink",
                         "os.link"):
                paths = paths[:2]
            else:
                paths = paths[:1]
            for p in paths:
                if not inside(p):
                    raise PermissionError(f"sandbox: {event} on {p!r} outside the working "
                                          "directory is not allowed")

    sys.addaudithook(hook)
    sys.argv = [program]
    with open(program, "rb") as f:
        source = f.read()
    code = compile(source, program, "exec")
    exec(code, {"__name__": "__main__", "__file__": program, "__builtins__": __builtins__})

_main()
'''


@dataclasses.dataclass(frozen=True, kw_only=True)
class SandboxLimits:
    """Resource limits of one program run; 0 turns a limit off (not the wall clock).

    The defaults follow HumanEval's harness (3 s per problem) with room for a slow machine.
    """

    time_limit_s: float = 10.0  # wall clock, enforced by the parent (kills the process group)
    cpu_limit_s: int = 5  # RLIMIT_CPU
    memory_limit_bytes: int = 1 << 30  # RLIMIT_AS, the interpreter itself needs ~30 MB
    file_size_limit_bytes: int = 1 << 20  # RLIMIT_FSIZE
    # RLIMIT_NPROC counts every process and thread of the user, so 1 forbids any new one; the
    # kernel does not apply it to root, for whom the audit hook alone stops new processes.
    process_limit: int = 1
    output_limit_chars: int = 4000  # the stdout/stderr kept in the result

    def __post_init__(self):
        if not self.time_limit_s > 0:
            raise ValueError(f"sandbox.time_limit_s={self.time_limit_s} must be > 0")
        for name in ("cpu_limit_s", "memory_limit_bytes", "file_size_limit_bytes",
                     "process_limit", "output_limit_chars"):
            if getattr(self, name) < 0:
                raise ValueError(f"sandbox.{name}={getattr(self, name)} must be >= 0")


# Outcomes. ``passed`` is True only for PASSED.
PASSED = "passed"
FAILED = "failed"  # the program raised (an assertion, a NameError, ...) or exited non-zero
TIMEOUT = "timeout"  # wall clock or CPU limit
MEMORY = "memory"  # RLIMIT_AS: a MemoryError, or killed while allocating
OUTCOMES = (PASSED, FAILED, TIMEOUT, MEMORY)


@dataclasses.dataclass(frozen=True)
class Execution:
    """What one run did. ``error`` is the text a person (or LeTI) would read: the last lines of
    the traceback, or what limit stopped it; empty when it passed."""

    outcome: str
    error: str
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    network_isolation: str

    @property
    def passed(self) -> bool:
        return self.outcome == PASSED


@functools.lru_cache(maxsize=1)
def network_namespace_available() -> bool:
    """Whether ``unshare -rn`` can start a process here (user + network namespaces)."""
    exe = shutil.which("unshare")
    if exe is None or not sys.platform.startswith("linux"):
        return False
    try:
        done = subprocess.run([exe, "-rn", sys.executable, "-c", "pass"], capture_output=True,
                              timeout=30, env={}, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def _tail(text: str, limit: int) -> str:
    return text if len(text) <= limit else "..." + text[-limit:]


def _error_text(stderr: str) -> str:
    """The traceback's final exception, plus the frame line of the program that raised it.

    HumanEval tests are bare ``assert`` statements, so the error is often just
    ``AssertionError``; the failing line says which assertion."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    last = lines[-1].strip()
    where = ""
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].lstrip().startswith('File "') and PROGRAM_FILE in lines[i]:
            code = lines[i + 1].strip() if i + 1 < len(lines) else ""
            if not code.startswith(("File ", "Traceback")):
                where = code
            break
    return f"{last} (at: {where})" if where and where not in last else last


def run_python(source: str, *, limits: SandboxLimits = SandboxLimits()) -> Execution:
    """Runs ``source`` as ``__main__`` in a fresh temporary directory under ``limits``.

    The directory is removed afterwards. Exit status 0 is PASSED; a ``MemoryError`` or a kill
    while near the memory limit is MEMORY; the wall clock, SIGXCPU or SIGKILL after the CPU
    limit is TIMEOUT; anything else is FAILED with the traceback's last line as the error.
    """
    import time

    namespace = network_namespace_available()
    with tempfile.TemporaryDirectory(prefix="fbjax-sandbox-") as root:
        program = os.path.join(root, PROGRAM_FILE)
        bootstrap = os.path.join(root, BOOTSTRAP_FILE)
        with open(program, "w") as f:
            f.write(source)
        with open(bootstrap, "w") as f:
            f.write(_BOOTSTRAP)
        # -I: isolated (no user site, no PYTHON* variables, script dir not trusted);
        # -B: no .pyc files written anywhere.
        argv = [sys.executable, "-I", "-B", bootstrap, str(limits.cpu_limit_s),
                str(limits.memory_limit_bytes), str(limits.file_size_limit_bytes),
                str(limits.process_limit), root, program]
        if namespace:
            argv = [shutil.which("unshare"), "-rn", *argv]
        env = {"PATH": "/usr/bin:/bin", "HOME": root, "TMPDIR": root, "LANG": "C.UTF-8"}
        start = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=root, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
        timed_out = False
        try:
            out, err = proc.communicate(timeout=limits.time_limit_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: the program and nothing else
            out, err = proc.communicate()
        seconds = time.perf_counter() - start
    stdout = _tail(out.decode("utf-8", "replace"), limits.output_limit_chars)
    stderr = _tail(err.decode("utf-8", "replace"), limits.output_limit_chars)
    code = proc.returncode
    killed_by = -code if code is not None and code < 0 else None
    error = _error_text(stderr)
    if timed_out:
        outcome, error = TIMEOUT, f"Timeout: no result within {limits.time_limit_s:g} s"
    elif killed_by in (signal.SIGXCPU, signal.SIGKILL) and limits.cpu_limit_s and (
            "MemoryError" not in stderr):
        outcome, error = TIMEOUT, f"Timeout: CPU time limit of {limits.cpu_limit_s} s exceeded"
    elif error.startswith("MemoryError"):
        outcome = MEMORY
    elif code == 0:
        outcome, error = PASSED, ""
    else:
        outcome = FAILED
        if not error:
            error = (f"killed by signal {signal.Signals(killed_by).name}" if killed_by
                     else f"exit status {code}")
    return Execution(outcome=outcome, error=error, returncode=code, stdout=stdout,
                     stderr=stderr, seconds=seconds,
                     network_isolation="namespace" if namespace else "audit-hook")
