"""The program-execution sandbox: each limit is hit by a program written to hit it, and a
correct and an incorrect HumanEval solution get pass / fail with the error text."""

from __future__ import annotations

import socket
import threading

import pytest

from fbjax import feedback
from fbjax.feedback import programs, sandbox

LIMITS = sandbox.SandboxLimits(time_limit_s=20.0, cpu_limit_s=2,
                               memory_limit_bytes=512 << 20)


def test_clean_program_passes_and_may_write_its_own_directory():
    run = sandbox.run_python("open('out.txt', 'w').write('hi')\nprint(open('out.txt').read())",
                             limits=LIMITS)
    assert run.passed and run.stdout.strip() == "hi" and run.error == ""


def test_infinite_loop_is_killed_by_the_cpu_limit():
    run = sandbox.run_python("while True:\n    pass\n", limits=LIMITS)
    assert run.outcome == sandbox.TIMEOUT and not run.passed
    assert "CPU time limit of 2 s" in run.error
    assert run.seconds < 15  # the CPU limit, not the 20 s wall clock, ended it


def test_sleeping_program_is_killed_by_the_wall_clock():
    limits = sandbox.SandboxLimits(time_limit_s=1.0, cpu_limit_s=0)
    run = sandbox.run_python("import time\ntime.sleep(60)\n", limits=limits)
    assert run.outcome == sandbox.TIMEOUT and run.error == "Timeout: no result within 1 s"
    assert run.seconds < 10


def test_memory_bomb_is_stopped_by_the_memory_limit():
    bomb = "chunks = []\nwhile True:\n    chunks.append(bytearray(50 * 2**20))\n"
    run = sandbox.run_python(bomb, limits=LIMITS)
    assert run.outcome == sandbox.MEMORY and run.error.startswith("MemoryError")
    # The same allocations, 200 MB in all, stay under the limit and succeed.
    fine = sandbox.run_python("x = [bytearray(50 * 2**20) for _ in range(4)]",
                              limits=LIMITS)
    assert fine.passed


def test_write_outside_the_temporary_directory_is_refused(tmp_path):
    target = tmp_path / "escaped.txt"
    for source in (f"open({str(target)!r}, 'w').write('x')",
                   f"import os\nos.close(os.open({str(target)!r}, os.O_WRONLY | os.O_CREAT))",
                   "open('../escaped.txt', 'a').write('x')",
                   f"import pathlib\npathlib.Path({str(target)!r}).write_text('x')"):
        run = sandbox.run_python(source, limits=LIMITS)
        assert run.outcome == sandbox.FAILED, source
        assert "PermissionError" in run.error and "outside the working directory" in run.error
        assert not target.exists()
    victim = tmp_path / "keep.txt"
    victim.write_text("keep")
    run = sandbox.run_python(f"import os\nos.remove({str(victim)!r})", limits=LIMITS)
    assert "PermissionError" in run.error and victim.read_text() == "keep"


def test_file_size_limit():
    limits = sandbox.SandboxLimits(file_size_limit_bytes=1000, cpu_limit_s=2)
    run = sandbox.run_python("open('big', 'w').write('x' * 100000)", limits=limits)
    assert not run.passed  # SIGXFSZ kills it, or the write fails with EFBIG


@pytest.fixture
def local_server():
    """A TCP server on this machine's loopback that the test process can reach."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    accepted = []
    thread = threading.Thread(target=lambda: accepted.append(server.accept()), daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    server.close()


@pytest.mark.parametrize("namespace", [True, False])
def test_network_attempt_fails(local_server, namespace, monkeypatch):
    if namespace and not sandbox.network_namespace_available():
        pytest.skip("no user+network namespaces (unshare -rn) on this machine")
    if not namespace:  # as on a machine without namespaces: the audit hook alone
        monkeypatch.setattr(sandbox, "network_namespace_available", lambda: False)
    port, accepted = local_server
    source = ("import socket\n"
              f"socket.create_connection(('127.0.0.1', {port}), timeout=3).sendall(b'x')\n")
    run = sandbox.run_python(source, limits=LIMITS)
    assert run.outcome == sandbox.FAILED and not accepted
    assert "PermissionError: sandbox: socket" in run.error
    assert run.network_isolation == ("namespace" if namespace else "audit-hook")
    # The same connection from outside the sandbox succeeds, so the failure is the sandbox's.
    socket.create_connection(("127.0.0.1", port), timeout=3).close()


@pytest.mark.skipif(not sandbox.network_namespace_available(),
                    reason="no user+network namespaces (unshare -rn) on this machine")
def test_network_namespace_blocks_even_without_the_audit_hook(local_server):
    """The namespace layer alone: a raw connect from a child that has no audit hook."""
    import shutil
    import subprocess
    import sys

    port, accepted = local_server
    probe = (f"import socket\ns = socket.socket()\ns.settimeout(3)\n"
             f"print(s.connect_ex(('127.0.0.1', {port})))")
    out = subprocess.run([shutil.which("unshare"), "-rn", sys.executable, "-c", probe],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0 and int(out.stdout) != 0 and not accepted


def test_processes_cannot_be_started():
    run = sandbox.run_python("import os\nos.system('true')", limits=LIMITS)
    assert "PermissionError" in run.error and "os.system" in run.error


@pytest.fixture(scope="module")
def problems():
    try:
        return {p.task_id: p for p in programs.load_humaneval()}
    except FileNotFoundError as e:
        pytest.skip(str(e))


def test_humaneval_problems_load(problems):
    assert len(problems) == 164
    assert problems["HumanEval/0"].entry_point == "has_close_elements"


def test_correct_and_incorrect_humaneval_solutions(problems):
    problem = problems["HumanEval/0"]
    wrong = "    return False\n"  # never finds the close pair
    crash = "    return numbers[len(numbers)]\n"
    batch = programs.humaneval_responses(
        [problem], [[problem.canonical_solution, wrong, crash]])
    fb = feedback.ProgramExecution(limits=LIMITS)(batch)
    good, bad, broken = fb.records
    assert (good.score, good.feedback, good.meta["outcome"]) == (1.0, "", "passed")
    assert bad.score == 0.0 and bad.kind == "judgment"
    assert bad.feedback == ("AssertionError (at: assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, "
                            "2.2], 0.3) == True)")
    assert broken.score == 0.0 and broken.feedback.startswith("IndexError: list index out of "
                                                              "range")
    assert fb.stats["feedback/pass_rate"] == pytest.approx(1 / 3)
    assert list(fb.scores[0]) == [1.0, 0.0, 0.0]


def test_every_canonical_solution_passes(problems):
    """All 164 reference solutions pass in the sandbox: its limits do not fail correct code."""
    chosen = list(problems.values())
    batch = programs.humaneval_responses(chosen, [p.canonical_solution for p in chosen])
    fb = feedback.ProgramExecution(limits=LIMITS)(batch)
    failed = [(r.meta["task_id"], r.feedback) for r in fb.records if r.score != 1.0]
    assert not failed


def test_missing_tests_are_an_error():
    batch = feedback.Responses.of(["def f():\n"], ["    return 1\n"], [{"test": "x"}])
    with pytest.raises(ValueError, match=r"metadata\[0\] has no 'entry_point'"):
        feedback.ProgramExecution()(batch)
