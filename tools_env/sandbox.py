"""Sandboxed execution of untrusted Python (the code agents write) in a separate, limited process.

``run_python(code, limits)`` starts a fresh ``python -I -S -u`` running ``_sandbox_boot.py``, which sets
everything up inside the child (see that file for the process tree) and then runs the code. The parent
enforces the wall-clock limit (SIGKILL to the child's own process group) and the output cap, and removes
the temporary directory afterwards.

What is isolated, and how (``SandboxResult.isolation`` reports what this host allowed; docs/security.md
has the full table, channel by channel):

* Always: a separate process with a cleared environment (no host variables or secrets; HOME and cwd are
  a private directory), rlimits on CPU time, address space, file size, open files and core dumps,
  RLIMIT_NPROC for process/thread creation, a wall-clock timeout that kills the whole process group, an
  output cap, friendly Python-level errors for ``os.system``/``subprocess``/``os.fork``, a session keyring
  of its own.
* When running as root: every run leases a host uid of its own (``host_uid_base`` + a free slot, held
  by an flock for the run's length), drops to it with no supplementary groups and ``no_new_privs``, so
  root-only files are unreadable, host processes and concurrent runs cannot be signalled, RLIMIT_NPROC
  really forbids fork (root would ignore it) and counts this run alone.
* Default mode (``isolation["mode"] == "namespaces"``; needs root or CAP_SYS_ADMIN, as in this project's
  containers): network, pid, mount, IPC, UTS and user namespaces. The network namespace has only a down
  loopback (``network_isolation == "netns"``; abstract unix sockets are per namespace too); the pid
  namespace shows the code only itself and everything it starts dies with the run; in the mount namespace
  the host filesystem is read-only, ``hidden_paths`` are masked by empty tmpfs and ``/tmp`` is a private
  size-limited tmpfs holding the working directory; the user namespace maps ``uid`` inside to the
  leased host uid, holds no capability, forbids nested user namespaces and gives the run user keyrings
  that die with it. Nothing written by one run is visible to a later or a concurrent one.
* Best-effort mode (``namespaces=False`` or a host that refuses them; warned once per process with a
  ``SandboxIsolationWarning``): the boot process is a child subreaper and at the end of the call kills
  every descendant (setsid + double-fork daemons included) and removes what the run's uid left: its
  keyrings, its SysV IPC objects, its entries at the top of /tmp, /var/tmp, /dev/shm, /dev/mqueue. Not
  protected there: sockets are blocked only at the Python level (ctypes bypasses it), the code sees the
  host filesystem and /proc, and concurrent runs that cooperate can still exchange data through
  world-writable places, IPC objects and abstract sockets they open to others. Without root there is no
  uid of its own either: the code runs as the caller.
* Both modes: a seccomp deny-list (``syscall_filter``) for file locks and change notifications on the
  read-only host files concurrent runs share, and for io_uring, bpf, perf_event_open, userfaultfd.
* Never: cgroup accounting; kernel vulnerabilities and timing/cache side channels are out of scope.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import selectors
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from tools_env._keyring_gc import await_key_gc, key_count

BOOT = str(Path(__file__).with_name("_sandbox_boot.py"))
DEFAULT_PRELOAD = (
    "math", "cmath", "json", "re", "collections", "itertools", "functools", "fractions", "decimal",
    "statistics", "random", "datetime", "string", "heapq", "bisect", "operator", "textwrap", "copy",
)  # fmt: skip


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits and isolation options for one run."""

    wall_time_s: float = 10.0
    cpu_time_s: int = 5
    memory_mb: int = 256  # RLIMIT_AS of the process running the code
    max_output_bytes: int = 64_000  # per stream; the run is killed when stdout or stderr exceeds it
    max_file_mb: int = 16  # RLIMIT_FSIZE
    tmpfs_mb: int = 64  # size of the private /tmp (namespaces only)
    max_open_files: int = 64
    max_processes: int = 0  # extra processes/threads the code may start (RLIMIT_NPROC)
    uid: int | None = 65534  # uid the code sees when started as root; None keeps root (not advised)
    gid: int = 65534
    # each run (as root) leases a host uid of its own from [host_uid_base, host_uid_base + host_uid_count):
    # the code's uid/gid inside its user namespace, or its real uid where there are no namespaces
    host_uid_base: int = 2_000_000_000
    host_uid_count: int = 65536
    namespaces: bool = True  # try net/mount/pid/ipc/user namespaces; fall back (with a warning) when refused
    syscall_filter: bool = True  # seccomp deny-list: file locks, inotify, io_uring, bpf, perf, userfaultfd
    hidden_paths: tuple[str, ...] = ("/root", "/home", "/run/secrets", "/var/run/secrets")
    preload_modules: tuple[str, ...] = DEFAULT_PRELOAD  # imported before the uid drop
    site_packages: bool = False  # let the code import the host's installed packages (numpy, sympy ...)


@dataclass
class SandboxResult:
    """How a run ended. ``error`` says why in one line whenever ``ok`` is False."""

    ok: bool
    stdout: str
    stderr: str
    exit_code: int | None  # the code's exit status, or -signal when a signal killed it
    timed_out: bool
    killed_reason: str | None  # "timeout" | "output_limit" | "cpu_limit" | "signal:<NAME>" | None
    duration_s: float
    error: str | None = None
    network_isolation: str = "best_effort"  # "netns" | "best_effort"
    isolation: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _keep_paths(limits: SandboxLimits) -> tuple[list[str], list[str]]:
    """Directories the interpreter needs (re-bound when hidden) and extra sys.path entries."""
    keep = {os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix, sys.prefix, sys.exec_prefix)}
    extra: list[str] = []
    if limits.site_packages:
        extra = [p for p in site.getsitepackages() if os.path.isdir(p)]
        keep.update(os.path.realpath(p) for p in extra)
    return sorted(keep), extra


class SandboxIsolationWarning(RuntimeWarning):
    """The sandbox runs with weaker isolation than the default mode promises (see docs/security.md)."""


_WARNED: set[str] = set()
BEST_EFFORT_GAPS = (
    "runs without namespaces (best-effort mode): the code sees the host filesystem read-write where its "
    "uid may write and host processes in /proc, reaches the network through ctypes, and concurrent runs "
    "that cooperate can exchange data through world-writable directories, SysV/POSIX IPC, abstract unix "
    "sockets and keys they open to others; see docs/security.md"
)


def _warn_once(key: str, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(f"tools_env.sandbox {message}", SandboxIsolationWarning, stacklevel=4)


def _lease_dir() -> str:
    base = "/run" if os.access("/run", os.W_OK) else tempfile.gettempdir()
    path = os.path.join(base, "steprl-sandbox-uids")
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


@contextlib.contextmanager
def _lease_uid(limits: SandboxLimits) -> Iterator[tuple[int | None, str | None]]:
    """A host uid no other run on this host holds: an flock on ``<lease dir>/<uid>`` for the run's length.

    Uids whose cleanup failed were retired (``<uid>.retired``) and are never handed out again.
    Yields ``(None, None)`` when not root or ``limits.uid`` is None (no uid change at all).
    """
    if os.geteuid() != 0 or limits.uid is None:
        yield None, None
        return
    directory = _lease_dir()
    for _ in range(200):
        uid = limits.host_uid_base + random.randrange(limits.host_uid_count)
        path = os.path.join(directory, str(uid))
        if os.path.exists(path + ".retired"):
            continue
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        try:
            yield uid, path
        finally:
            os.close(fd)  # releases the lock
        return
    raise RuntimeError(
        f"no free sandbox uid in [{limits.host_uid_base}, +{limits.host_uid_count}) after 200 tries"
    )


def _clean_up_after(uid: int) -> dict[str, Any]:
    """Fallback when boot was killed before its cleanup: kill what ``uid`` runs, then let a fresh boot
    process remove what it left (keyrings, IPC, files); returns boot's ``cleaned``/``keys_standing``."""
    _kill_uid(uid)
    try:
        done = subprocess.run(
            [sys.executable, "-I", "-S", BOOT, "--clean-up", str(uid), tempfile.gettempdir()],
            capture_output=True, timeout=30, env={"PATH": "/usr/local/bin:/usr/bin:/bin"},
        )  # fmt: skip
        return {"cleaned": False, **json.loads(done.stdout.decode().strip().splitlines()[-1])}
    except (subprocess.TimeoutExpired, json.JSONDecodeError, IndexError, OSError):
        return {"cleaned": False}


def _kill_uid(uid: int) -> None:
    """SIGKILL every process of ``uid`` (boot could not: it was killed)."""
    for _ in range(100):
        found = False
        for pid in filter(str.isdigit, os.listdir("/proc")):
            with contextlib.suppress(OSError, ValueError):
                with open(f"/proc/{pid}/status") as f:
                    uids = next(line for line in f if line.startswith("Uid:")).split()[1:]
                if str(uid) in uids:
                    found = True
                    os.kill(int(pid), signal.SIGKILL)
        if not found:
            return
        time.sleep(0.01)


def _config(limits: SandboxLimits, workdir: str, status_fd: int, host_uid: int | None) -> dict[str, Any]:
    keep, extra = _keep_paths(limits)
    return {
        "status_fd": status_fd, "workdir": workdir, "namespaces": limits.namespaces,
        "cpu_time_s": limits.cpu_time_s, "memory_mb": limits.memory_mb, "max_file_mb": limits.max_file_mb,
        "tmpfs_mb": limits.tmpfs_mb, "max_open_files": limits.max_open_files,
        "max_processes": limits.max_processes, "uid": limits.uid, "gid": limits.gid,
        "hidden_paths": list(limits.hidden_paths), "keep_paths": keep, "extra_sys_path": extra,
        "preload_modules": list(limits.preload_modules), "host_uid": host_uid,
        "syscall_filter": limits.syscall_filter,
        "tempdir": tempfile.gettempdir(),
    }  # fmt: skip


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM lets the boot process SIGKILL and reap its child; then SIGKILL the whole group regardless.

    The group is killed before boot is reaped, while its pid (= the group id) cannot have been reused.
    """
    if proc.returncode is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)  # not proc.send_signal, which may reap and free the pid
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            break  # exited, not yet reaped
        time.sleep(0.005)
    _kill_group(proc)
    proc.wait()


def _pump(proc: subprocess.Popen, limits: SandboxLimits, deadline: float) -> tuple[bytes, bytes, str | None]:
    """Read stdout/stderr until EOF, the deadline or the output cap; kill on the latter two."""
    bufs = {"stdout": bytearray(), "stderr": bytearray()}
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, "stdout")
    sel.register(proc.stderr, selectors.EVENT_READ, "stderr")
    killed: str | None = None
    drain_until: float | None = None
    while sel.get_map():
        now = time.monotonic()
        if killed is None and now >= deadline:
            killed = "timeout"
            _stop(proc)
            drain_until = time.monotonic() + 1.0
        if drain_until is not None and now >= drain_until:
            break  # something still holds the pipe after the kill; stop waiting for it
        limit = drain_until if drain_until is not None else deadline
        for key, _ in sel.select(timeout=max(0.0, min(limit - now, 0.5))):
            chunk = os.read(key.fd, 65536)
            if not chunk:
                sel.unregister(key.fileobj)
                continue
            buf = bufs[key.data]
            room = limits.max_output_bytes - len(buf)
            buf += chunk[: max(room, 0)]
            if len(chunk) > room and killed is None:
                killed = "output_limit"
                _stop(proc)
                drain_until = time.monotonic() + 1.0
    sel.close()
    return bytes(bufs["stdout"]), bytes(bufs["stderr"]), killed


def _read_status(fd: int) -> dict[str, Any]:
    data = b""
    os.set_blocking(fd, False)
    try:
        while chunk := os.read(fd, 65536):
            data += chunk
    except BlockingIOError:
        pass
    status: dict[str, Any] = {}
    for line in data.decode(errors="replace").splitlines():
        try:
            status.update(json.loads(line))
        except json.JSONDecodeError:
            continue
    return status


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _explain(result: SandboxResult, limits: SandboxLimits, status: dict[str, Any]) -> str | None:
    if result.ok:
        return None
    if "error" in status:
        return status["error"]
    if result.killed_reason == "timeout":
        return f"wall-clock limit of {limits.wall_time_s:g} s exceeded; the process group was killed"
    if result.killed_reason == "output_limit":
        return f"output exceeded {limits.max_output_bytes} bytes; the process group was killed"
    if result.killed_reason == "cpu_limit":
        return f"CPU time limit of {limits.cpu_time_s} s exceeded"
    if result.killed_reason and result.killed_reason.startswith("signal:"):
        name = result.killed_reason.split(":", 1)[1]
        hint = " (stack overflow from deep recursion?)" if name == "SIGSEGV" else ""
        return f"killed by {name}{hint}"
    last = _last_line(result.stderr)
    if result.exit_code == 126 and last.startswith("sandbox setup failed"):
        return last
    if "MemoryError" in last:
        return f"memory limit of {limits.memory_mb} MB exceeded ({last})"
    if "[Errno 27]" in last:  # EFBIG from RLIMIT_FSIZE (Python ignores SIGXFSZ)
        return f"file size limit of {limits.max_file_mb} MB exceeded"
    return last or f"exited with status {result.exit_code}"


def run_python(code: str, limits: SandboxLimits | None = None) -> SandboxResult:
    """Run ``code`` in a fresh sandboxed interpreter and report how it ended. Never raises for bad code.

    If namespaces were granted but setting up the private filesystem failed (an unusual host), the run
    is repeated without namespaces and ``isolation["notes"]`` says why.
    """
    limits = limits or SandboxLimits()
    result, status = _run_once(code, limits)
    if "error" in status and limits.namespaces:
        result, _ = _run_once(code, replace(limits, namespaces=False))
        result.isolation["notes"] = [f"namespaces dropped because {status['error']}"]
    mode = result.isolation.get("mode")
    if mode == "best_effort":
        _warn_once("best_effort", BEST_EFFORT_GAPS)
    elif mode == "namespaces" and result.isolation.get("user_namespace") is False:
        _warn_once("userns", "could not give runs a user namespace: their keyrings are kept apart only by "
                   "a per-run uid and cleared afterwards; see docs/security.md")  # fmt: skip
    return result


def _run_once(code: str, limits: SandboxLimits) -> tuple[SandboxResult, dict[str, Any]]:
    with _lease_uid(limits) as (host_uid, lease):
        keys_before = 0
        if host_uid is not None:
            with contextlib.suppress(OSError, ValueError, IndexError):
                keys_before = key_count(host_uid)
        result, status = _run_as(code, limits, host_uid)
        started = "report" in status  # boot got as far as starting the code under that uid
        if started and host_uid is not None:
            if not (status.get("cleaned") or status.get("user_namespace")):
                status.update(_clean_up_after(host_uid))  # boot was stopped before it cleaned up
            cleaned = status.get("cleaned") or status.get("user_namespace")
            # the run's keys die some time after it does; a later run must not find one by its serial.
            # No keys_standing: the run had a user namespace and the host's keyrings of its uid are as before
            standing = status.get("keys_standing")
            drained = await_key_gc(host_uid, keys_before if standing is None else standing)
            if not (drained and cleaned):
                Path(lease + ".retired").touch()  # what that uid left may persist: never hand it out again
    return result, status


def _run_as(code: str, limits: SandboxLimits, host_uid: int | None) -> tuple[SandboxResult, dict[str, Any]]:
    workdir = tempfile.mkdtemp(prefix="steprl-sandbox-")  # used when no mount namespace is available
    status_r, status_w = os.pipe()
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-u", BOOT, json.dumps(_config(limits, workdir, status_w, host_uid))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}, cwd=workdir,
            start_new_session=True, pass_fds=(status_w,), close_fds=True,
        )  # fmt: skip
    except BaseException:
        os.close(status_r)
        os.close(status_w)
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    os.close(status_w)
    try:
        try:
            proc.stdin.write(code.encode("utf-8", "replace"))
            proc.stdin.close()
        except BrokenPipeError:
            pass
        out, err, killed = _pump(proc, limits, start + limits.wall_time_s)
        try:
            proc.wait(timeout=max(0.1, start + limits.wall_time_s - time.monotonic()))
        except subprocess.TimeoutExpired:
            killed = killed or "timeout"
            _stop(proc)
            proc.wait()
        duration = time.monotonic() - start
        status = _read_status(status_r)
    finally:
        _stop(proc)  # only acts if something above failed before boot exited
        os.close(status_r)
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return _result(out, err, killed, duration, status, proc.returncode, limits), status


def _result(out: bytes, err: bytes, killed: str | None, duration: float, status: dict[str, Any],
            returncode: int | None, limits: SandboxLimits) -> SandboxResult:  # fmt: skip
    worker = status.get("worker", {})
    if "signal" in worker:
        exit_code: int | None = -worker["signal"]
        if killed is None:
            sig = signal.Signals(worker["signal"])
            killed = "cpu_limit" if sig == signal.SIGXCPU else f"signal:{sig.name}"  # SIGXCPU: RLIMIT_CPU
    elif "exit" in worker:
        exit_code = worker["exit"]
    else:
        exit_code = None if killed else returncode
    report = dict(status.get("report", {}))
    if "user_namespace" in status:
        report["user_namespace"] = status["user_namespace"]
        if "userns_error" in status:
            report["notes"] = [*report.get("notes", []), f"user namespace refused: {status['userns_error']}"]
    if report:
        private = report.get("pid_namespace") and report.get("filesystem") == "private"
        report["mode"] = "namespaces" if private else "best_effort"
    result = SandboxResult(
        ok=killed is None and exit_code == 0 and "error" not in status,
        stdout=out.decode("utf-8", "replace"), stderr=err.decode("utf-8", "replace"),
        exit_code=exit_code, timed_out=killed == "timeout", killed_reason=killed, duration_s=duration,
        network_isolation=report.get("network_isolation", "best_effort"), isolation=report,
    )  # fmt: skip
    result.error = _explain(result, limits, status)
    return result


_PROBE: dict[str, Any] | None = None


def probe_isolation() -> dict[str, Any]:
    """What this host lets the sandbox do (runs an empty program once, then cached)."""
    global _PROBE
    if _PROBE is None:
        _PROBE = run_python("pass").isolation
    return dict(_PROBE)
