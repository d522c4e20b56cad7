"""Hostile-input battery for tools_env.sandbox: every attack ends within its limit, ok=False, a clear reason."""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from tools_env.sandbox import SandboxLimits, probe_isolation, run_python

FAST = SandboxLimits(wall_time_s=3.0, cpu_time_s=1, memory_mb=256, max_output_bytes=20_000)
IS_ROOT = os.geteuid() == 0


def run(code: str, limits: SandboxLimits = FAST, budget_s: float | None = None):
    start = time.monotonic()
    result = run_python(code, limits)
    elapsed = time.monotonic() - start
    assert elapsed < (budget_s or limits.wall_time_s + 2.0), f"took {elapsed:.1f}s: {result}"
    return result


def assert_refused(result, *fragments: str) -> None:
    assert not result.ok, result
    assert result.error, result
    text = result.error.lower()
    assert any(f.lower() in text for f in fragments), f"unexpected reason {result.error!r}"


@pytest.fixture(autouse=True)
def still_works_afterwards():
    yield
    r = run_python("print(1+1)", FAST)
    assert r.stdout == "2\n", r


def test_normal_code_runs_and_reports_isolation():
    r = run("import math, json\nprint(json.dumps({'v': math.factorial(5)}))")
    assert r.ok and r.stdout == '{"v": 120}\n' and r.exit_code == 0 and r.error is None
    assert r.network_isolation in ("netns", "best_effort")
    print("isolation on this host:", probe_isolation())


def test_environment_is_cleared_and_cwd_is_private():
    os.environ["STEPRL_TEST_SECRET_ENV"] = "hunter2"
    try:
        r = run("import os\nprint(sorted(os.environ))\nprint(os.getcwd() == os.environ['HOME'])")
    finally:
        del os.environ["STEPRL_TEST_SECRET_ENV"]
    assert r.ok and "STEPRL_TEST_SECRET_ENV" not in r.stdout and "hunter2" not in r.stdout
    assert r.stdout.splitlines()[1] == "True"


def test_infinite_loop_hits_cpu_limit():
    r = run("while True:\n    pass")
    assert_refused(r, "cpu time limit")
    assert r.killed_reason == "cpu_limit"


def test_sleeping_forever_hits_wall_clock():
    r = run("import time\ntime.sleep(60)", SandboxLimits(wall_time_s=1.0))
    assert_refused(r, "wall-clock")
    assert r.timed_out and r.killed_reason == "timeout"


def test_escaping_the_process_group_does_not_escape_the_timeout():
    r = run("import os, time\nos.setsid()\ntime.sleep(60)", SandboxLimits(wall_time_s=1.0))
    assert r.timed_out


def test_fork_bomb():
    r = run("import os\nwhile True:\n    os.fork()")
    assert_refused(r, "fork")


def test_fork_bomb_through_libc():
    # bypasses the Python-level block: RLIMIT_NPROC=0 for an unprivileged uid is what stops it
    code = "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nfor _ in range(100):\n"
    code += "    if libc.fork() < 0:\n        raise OSError(ctypes.get_errno(), 'fork failed')\n"
    r = run(code)
    assert_refused(r, "fork failed", "resource temporarily unavailable")


def test_threads_are_processes_too():
    assert_refused(run("import threading\nthreading.Thread(target=print).start()"), "thread")


def test_memory_bomb():
    r = run("blocks = []\nwhile True:\n    blocks.append(bytearray(10**7))")
    assert_refused(r, "memory limit")


def test_huge_output_is_capped():
    r = run("while True:\n    print('x' * 1000)")
    assert_refused(r, "output exceeded")
    assert r.killed_reason == "output_limit" and len(r.stdout) <= FAST.max_output_bytes


def test_recursion_bomb():
    assert_refused(run("def f():\n    return f()\nf()"), "recursion")


def test_os_system_is_refused_and_runs_nothing():
    marker = Path(tempfile.gettempdir()) / f"steprl_pwned_{uuid.uuid4().hex}"
    r = run(f"import os\nos.system('touch {marker}')")
    assert_refused(r, "os.system is disabled")
    assert not marker.exists()


def test_writing_outside_the_sandbox():
    marker = Path(tempfile.gettempdir()) / f"steprl_pwned_{uuid.uuid4().hex}"
    code = f"open({str(marker)!r}, 'w').write('pwned')\nopen('/etc/steprl_pwned', 'w').write('pwned')"
    r = run(code)
    assert_refused(r, "read-only file system", "permission denied")
    assert not marker.exists() and not Path("/etc/steprl_pwned").exists()


def test_file_size_limit():
    assert_refused(run("open('big', 'wb').write(b'x' * (32 * 2**20))"), "file size limit")


@pytest.mark.skipif(not IS_ROOT, reason="a file the sandbox must not read needs a different owner")
def test_reading_a_host_secret():
    secret = f"SECRET-{uuid.uuid4().hex}"
    secrets = []
    with tempfile.TemporaryDirectory() as d:
        for where in (Path(d), Path.home()):
            path = where / f".steprl_secret_{uuid.uuid4().hex}"
            path.write_text(secret)
            os.chmod(path, 0o600)
            secrets.append(path)
        try:
            code = "\n".join(f"print(open({str(p)!r}).read())" for p in secrets)
            r = run(code)
        finally:
            for p in secrets:
                p.unlink(missing_ok=True)
    assert_refused(r, "permission denied", "no such file")
    assert secret not in r.stdout + r.stderr


def test_opening_a_socket_to_the_host():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    arrived: list[object] = []
    done = threading.Event()

    def accept() -> None:
        while not done.is_set():  # listens until shortly after the run ended (0.2 s accept timeout)
            try:
                arrived.append(listener.accept())
            except OSError:
                continue

    t = threading.Thread(target=accept)
    t.start()
    try:
        code = (
            f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\ns.sendall(b'hi')"
        )
        r = run(code)
        time.sleep(0.3)
    finally:
        done.set()
        t.join()
        listener.close()
    assert_refused(r, "network is unreachable", "no network", "refused")
    assert not arrived


def test_killing_the_parent_and_the_caller():
    me = os.getpid()
    r = run(
        f"import os\ntry:\n    os.kill({me}, 9)\nexcept OSError as e:\n    print(e)\nos.kill(os.getppid(), 9)"
    )
    assert_refused(r, "not permitted", "no such process")
    assert os.getpid() == me  # we are still here


def test_setuid_binaries_give_nothing_back():
    r = run("import os\nos.execv('/usr/bin/passwd', ['passwd'])")
    assert_refused(r, "disabled")


@pytest.mark.skipif(not IS_ROOT, reason="the uid drop needs root")
def test_runs_unprivileged():
    r = run("import os\nprint(os.getuid(), os.getgid(), os.getgroups())")
    assert r.stdout.split()[:2] == ["65534", "65534"]


def test_best_effort_mode_still_limits():
    limits = SandboxLimits(wall_time_s=3.0, cpu_time_s=1, namespaces=False)
    r = run("import socket\nsocket.create_connection(('127.0.0.1', 9))", limits)
    assert r.network_isolation == "best_effort"
    assert_refused(r, "no network", "refused")
    assert_refused(run("while True:\n    pass", limits), "cpu time limit")
    assert run("print(2 * 21)", limits).stdout == "42\n"


def test_failed_namespace_setup_falls_back_and_says_why():
    r = run("print('still runs')", SandboxLimits(wall_time_s=3.0, tmpfs_mb=-1))  # an invalid tmpfs size
    assert r.ok and r.stdout == "still runs\n"
    if probe_isolation()["filesystem"] == "private":
        assert r.network_isolation == "best_effort" and "namespaces dropped" in r.isolation["notes"][0]
