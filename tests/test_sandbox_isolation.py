"""Cross-run battery for tools_env.sandbox: no state passes from one run to a later or a concurrent one.

Each test runs the real subprocess sandbox. A "writer" run leaves something behind through one channel
(kernel keyrings, SysV IPC, POSIX shared memory, files, abstract unix sockets, signals, a daemon) and a
"reader" run, later or at the same time, tries to get at it. The writer colludes where that is the
stronger attack (it grants everyone every permission); a victim is plain code where the threat is one run
attacking another. Which channels the best-effort mode (no namespaces) closes is in docs/security.md.
"""

from __future__ import annotations

import ctypes
import os
import re
import tempfile
import threading
import time
import uuid
import warnings
from dataclasses import replace

import pytest

from tools_env import sandbox
from tools_env._keyring_gc import await_key_gc, key_count
from tools_env.sandbox import SandboxIsolationWarning, SandboxLimits, probe_isolation, run_python

IS_ROOT = os.geteuid() == 0
DEFAULT = SandboxLimits(wall_time_s=4.0, cpu_time_s=2)
BEST_EFFORT = SandboxLimits(wall_time_s=4.0, cpu_time_s=2, namespaces=False)

# ctypes helpers the sandboxed code uses (kernel keyrings and SysV IPC have no stdlib API)
LIB = r"""
import ctypes, os, socket, time
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.shmat.restype = ctypes.c_void_p
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
ADD_KEY, KEYCTL = {"x86_64": (248, 250), "aarch64": (217, 219)}[os.uname().machine]
L = ctypes.c_long
def add_key(desc, payload, ring):
    return libc.syscall(L(ADD_KEY), b"user", desc, payload, L(len(payload)), L(ring))
def keyctl(op, *args):
    return libc.syscall(L(KEYCTL), L(op), *args)
def read_key(serial):
    buf = ctypes.create_string_buffer(512)
    n = keyctl(11, L(serial), buf, L(512))  # KEYCTL_READ
    return buf.raw[:n] if n > 0 else None
def sysv_write(key, mark, mode):
    sid = libc.shmget(key, 4096, 0o1000 | mode)  # IPC_CREAT
    if sid < 0:
        return "shmget: " + os.strerror(ctypes.get_errno())
    ctypes.memmove(libc.shmat(sid, None, 0), mark, len(mark))
    mid = libc.msgget(key, 0o1000 | mode)
    msg = ctypes.create_string_buffer(8 + len(mark))
    ctypes.memmove(ctypes.addressof(msg) + 8, mark, len(mark))
    ctypes.c_long.from_buffer(msg).value = 1
    libc.msgsnd(mid, msg, len(mark), 0o4000)  # IPC_NOWAIT
    semid = libc.semget(key, 1, 0o1000 | mode)
    libc.semctl(semid, 0, 16, 4242)  # SETVAL
    return "ok"
def sysv_read(key):
    got = []
    sid = libc.shmget(key, 0, 0)
    if sid >= 0:
        addr = libc.shmat(sid, None, 0o10000)  # SHM_RDONLY
        if addr not in (None, ctypes.c_void_p(-1).value):
            got.append(ctypes.string_at(addr, 64))
    mid = libc.msgget(key, 0)
    if mid >= 0:
        buf = ctypes.create_string_buffer(8 + 64)
        n = libc.msgrcv(mid, buf, 64, 0, 0o4000)
        if n > 0:
            got.append(buf.raw[8 : 8 + n])
    semid = libc.semget(key, 1, 0)
    if semid >= 0:
        got.append(b"sem=%d" % libc.semctl(semid, 0, 12))  # GETVAL
    return got
"""


def require(mode: str) -> SandboxLimits:
    if mode == "default":
        iso = probe_isolation()
        if iso.get("filesystem") != "private" or not iso.get("pid_namespace"):
            pytest.skip(f"this host does not grant the sandbox its namespaces: {iso.get('notes')}")
        return DEFAULT
    if not IS_ROOT:
        pytest.skip("best-effort separation of runs needs root (one uid per run)")
    return BEST_EFFORT


def ok(code: str, limits: SandboxLimits):
    r = run_python(LIB + code, limits)
    assert r.exit_code == 0 and not r.timed_out, r
    return r


def concurrently(victim: str, attacker: str, limits: SandboxLimits, hold_s: float = 1.5):
    """Run ``victim`` and, while it is provably still alive holding its state, ``attacker``.

    The victim prints ``READY <t>`` after its setup and ``END <t>`` after holding for ``hold_s``; the
    attacker prints ``PROBE <t>`` after probing. Retried when the load on the machine broke that order.
    """
    for _ in range(4):
        results: dict[str, object] = {}
        v = (
            LIB
            + victim
            + f"\nprint('READY', time.time(), flush=True)\ntime.sleep({hold_s})\nprint('END', time.time())"
        )
        t = threading.Thread(target=lambda out=results, c=v: out.update(victim=run_python(c, limits)))
        t.start()
        time.sleep(hold_s / 3)
        a = run_python(LIB + attacker + "\nprint('PROBE', time.time())", limits)
        t.join()
        vr = results["victim"]
        times = {
            m[0]: float(m[1]) for m in re.findall(r"^(READY|END|PROBE) (\S+)$", vr.stdout + a.stdout, re.M)
        }
        if "PROBE" not in times:
            return vr, a  # the attacker did not get to its end: the caller's assertions say why
        if "READY" in times and times["READY"] < times["PROBE"] < times.get("END", float("inf")):
            return vr, a
    pytest.fail("could not overlap the two runs (machine too loaded?)")


def read_key_here(serial: int) -> bytes | None:
    """KEYCTL_READ from this test process: root, but to a key of another uid only "other"."""
    here = ctypes.CDLL(None, use_errno=True)
    here.syscall.restype = ctypes.c_long
    buf = ctypes.create_string_buffer(512)
    keyctl = {"x86_64": 250, "aarch64": 219}[os.uname().machine]
    n = here.syscall(ctypes.c_long(keyctl), ctypes.c_long(11), ctypes.c_long(serial), buf, ctypes.c_long(512))
    if n <= 0:
        print(f"KEYCTL_READ {serial}: {os.strerror(ctypes.get_errno())}")
    return buf.raw[:n] if n > 0 else None


def add_key_as(uid: int, payload: bytes) -> int:
    """As ``uid`` (a forked child of this test), add a key anyone may read to its user keyring."""
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        serial = -1
        try:
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            libc = ctypes.CDLL(None, use_errno=True)
            libc.syscall.restype = ctypes.c_long
            add_key, keyctl = {"x86_64": (248, 250), "aarch64": (217, 219)}[os.uname().machine]
            L = ctypes.c_long
            # made in the process keyring, which this process possesses (the right to KEYCTL_SETPERM), then
            # linked into the user keyring, where it outlives the process
            serial = libc.syscall(L(add_key), b"user", b"k-left", payload, L(len(payload)), L(-2))
            assert libc.syscall(L(keyctl), L(5), L(serial), L(0x3F3F3F3F)) == 0  # KEYCTL_SETPERM
            assert libc.syscall(L(keyctl), L(8), L(serial), L(-4)) == 0  # KEYCTL_LINK
        finally:
            os.write(done_w, str(serial).encode())
            os._exit(0)
    os.close(done_w)
    serial = int(os.read(done_r, 64) or b"-1")
    os.close(done_r)
    os.waitpid(pid, 0)
    return serial


def mark() -> bytes:
    return f"left-by-run-1-{uuid.uuid4().hex[:12]}".encode()


# ---------------------------------------------------------------- kernel keyrings


@pytest.mark.parametrize("mode", ["default", "best_effort"])
def test_keyrings_do_not_carry_over_to_a_later_run(mode):
    """The reported reproduction: run 1 add_key("user", "k", payload, -4); run 2 reads it back."""
    limits = require(mode)
    secret, tag = mark(), uuid.uuid4().hex[:8]
    writer = ""
    for ring in (-3, -4, -5):  # session, user, user-session keyrings
        writer += f"k = add_key(b'k-{tag}{ring}', {secret!r}, {ring})\nprint('KEY', {ring}, k)\n"
        writer += "if k > 0:\n    keyctl(5, L(k), L(0x3F3F3F3F))\n"  # KEYCTL_SETPERM: all to everyone
    w = ok(writer, limits)
    serials = [int(s) for s in re.findall(r"^KEY -4 (\d+)$", w.stdout, re.M)]
    assert serials, f"run 1 could not even add a key to its user keyring: {w.stdout}"
    made = [int(s) for s in re.findall(r"^KEY -\d (\d+)$", w.stdout, re.M)]
    reader = f"for k in {made!r}:\n    print('BYID', read_key(k))\n"
    for ring in (-3, -4, -5):
        reader += f"k = keyctl(10, L({ring}), b'user', b'k-{tag}{ring}', L(0))\n"  # KEYCTL_SEARCH
        reader += "print('SEARCH', k, read_key(k) if k > 0 else None)\n"
    reader += "print(open('/proc/keys').read())\n"
    r = ok(reader, limits)
    assert secret.decode() not in r.stdout, r.stdout
    assert f"k-{tag}" not in r.stdout, f"run 2 sees run 1's keys:\n{r.stdout}"


@pytest.mark.parametrize("mode", ["default", "best_effort"])
def test_a_runs_keys_are_destroyed_before_run_python_returns(mode):
    """The kernel destroys a dead run's session keyring some milliseconds after its last process exits;
    a key opened to everyone is readable by serial until then, so run_python waits for that."""
    limits = require(mode)
    secret = mark()
    writer = ""
    for ring in (-3, -4, -5):
        writer += f"k = add_key(b'k-gc{ring}', {secret!r}, {ring})\nprint('KEY', k)\n"
        writer += "if k > 0:\n    keyctl(5, L(k), L(0x3F3F3F3F))\n"
    serials = [int(s) for s in re.findall(r"^KEY (\d+)$", ok(writer, limits).stdout, re.M)]
    assert serials, "the run could not add a key at all"
    for serial in serials:  # read at once, from this test process
        assert read_key_here(serial) is None, f"key {serial} of a finished run is still readable"


def test_key_count_reads_proc_key_users(tmp_path):
    table = tmp_path / "key-users"
    table.write_text("    0:    10 9/9 3/1000000 3040/25000000\n2000000580:     3 5/4 2/200 36/20000\n")
    assert key_count(2000000580, str(table)) == 5  # nkeys: live keys and keys awaiting the collector
    assert key_count(0, str(table)) == 9 and key_count(12345, str(table)) == 0
    assert key_count(1, str(tmp_path / "absent")) == 0  # a kernel without keys
    start = time.monotonic()
    assert not await_key_gc(2000000580, 4, timeout_s=0.1, path=str(table))
    assert 0.1 <= time.monotonic() - start < 2.0
    assert await_key_gc(2000000580, 5, timeout_s=0.0, path=str(table))
    table.write_text("2000000580: garbled\n")  # a format this code does not know: fail closed
    assert not await_key_gc(2000000580, 5, timeout_s=0.0, path=str(table))


def test_a_uid_whose_keys_outlive_the_run_is_retired(monkeypatch):
    limits = require("best_effort")
    monkeypatch.setattr(sandbox, "await_key_gc", lambda uid, standing: False)
    r = ok("print('hi')", limits)
    lease = os.path.join(sandbox._lease_dir(), str(r.isolation["host_uid"]))
    assert os.path.exists(lease + ".retired"), "a uid that may still own keys was handed back"


def test_the_fallback_cleanup_clears_a_uid_whose_boot_was_killed():
    """When boot dies before its janitor, the parent's fallback must still clear that uid's keyrings."""
    limits = require("best_effort")
    secret = mark()
    with sandbox._lease_uid(limits) as (uid, _):
        serial = add_key_as(uid, secret)
        assert read_key_here(serial) == secret  # what a killed run leaves: a key anyone may read
        status = sandbox._clean_up_after(uid)
        assert status["cleaned"] and status["keys_standing"] >= 2, status
        assert await_key_gc(uid, status["keys_standing"])
        assert read_key_here(serial) is None


def test_keyrings_do_not_pass_between_concurrent_runs():
    limits = require("default")
    secret, tag = mark(), uuid.uuid4().hex[:8]
    victim = f"k = add_key(b'k-{tag}', {secret!r}, -4)\nassert k > 0\nkeyctl(5, L(k), L(0x3F3F3F3F))\n"
    attacker = (
        f"k = keyctl(10, L(-4), b'user', b'k-{tag}', L(0))\nprint('GOT', read_key(k) if k > 0 else None)\n"
    )
    attacker += "print(open('/proc/keys').read())\n"
    _, a = concurrently(victim, attacker, limits)
    assert "PROBE" in a.stdout, a
    assert secret.decode() not in a.stdout and f"k-{tag}" not in a.stdout, a.stdout


# ---------------------------------------------------------------- SysV and POSIX IPC


@pytest.mark.parametrize("mode", ["default", "best_effort"])
def test_sysv_ipc_does_not_carry_over_to_a_later_run(mode):
    limits = require(mode)
    secret, key = mark(), int(uuid.uuid4().int % 2**30) + 1
    w = ok(f"print(sysv_write({key}, {secret!r}, 0o666))", limits)
    assert w.stdout.strip() == "ok", w
    r = ok(f"print(sysv_read({key}))\nprint(open('/proc/sysvipc/shm').read())", limits)
    assert secret.decode() not in r.stdout and "sem=4242" not in r.stdout, r.stdout


@pytest.mark.parametrize("mode", ["default", "best_effort"])
def test_sysv_ipc_of_a_running_run_is_out_of_reach(mode):
    limits = require(mode)
    secret, key = mark(), int(uuid.uuid4().int % 2**30) + 1
    # default mode: the victim colludes (mode 0666); best effort: plain code (0600) must not be readable
    perms = "0o666" if mode == "default" else "0o600"
    v, a = concurrently(
        f"assert sysv_write({key}, {secret!r}, {perms}) == 'ok'", f"print(sysv_read({key}))", limits
    )
    assert v.ok and "PROBE" in a.stdout, (v, a)
    assert secret.decode() not in a.stdout and "sem=4242" not in a.stdout, a.stdout


@pytest.mark.parametrize("mode", ["default", "best_effort"])
def test_posix_shared_memory_does_not_carry_over(mode):
    limits = require(mode)
    secret, name = mark(), f"/steprl-{uuid.uuid4().hex[:10]}"
    path = f"/dev/shm{name}"  # what shm_open(3) and sem_open(3) use on Linux
    writer = f"try:\n    fd = os.open({path!r}, os.O_CREAT | os.O_RDWR, 0o666)\n"
    writer += f"    os.fchmod(fd, 0o666)\n    os.write(fd, {secret!r})\nexcept OSError as e:\n    print(e)\n"
    ok(writer, limits)
    reader = f"try:\n    fd = os.open({path!r}, os.O_RDONLY)\n"
    reader += "    print(os.read(fd, 100))\nexcept OSError as e:\n    print(e)\n"
    r = ok(reader, limits)
    assert secret.decode() not in r.stdout, r.stdout
    assert not os.path.exists(path)


# ---------------------------------------------------------------- files


@pytest.mark.parametrize("mode", ["default", "best_effort"])
def test_files_in_shared_writable_places_do_not_carry_over(mode):
    limits = require(mode)
    secret, name = mark(), f"steprl-leak-{uuid.uuid4().hex[:10]}"
    places = [tempfile.gettempdir(), "/tmp", "/var/tmp", "/dev/shm"]
    writer = f"for d in {places!r}:\n    try:\n        p = os.path.join(d, {name!r})\n"
    writer += f"        open(p, 'wb').write({secret!r})\n        os.chmod(p, 0o666)\n"
    writer += "    except OSError as e:\n        print(d, e)\n"
    ok(writer, limits)
    reader = f"for d in {places!r}:\n    try:\n        print(open(os.path.join(d, {name!r})).read())\n"
    reader += "    except OSError as e:\n        print(d, e)\n"
    r = ok(reader, limits)
    assert secret.decode() not in r.stdout, r.stdout
    assert not any(os.path.exists(os.path.join(d, name)) for d in places)


# walks every directory two levels below the temp roots, the sandbox's own work dirs first, and prints a
# summary rather than a line per file: a CI host's /tmp holds thousands of entries, and a line each ran
# into the 64 kB output cap (the run was killed before it could print PROBE)
SCAN_TWO_LEVELS = """
tops = sorted({TOPS})
seen = {{"dirs": 0, "files": 0, "denied": 0, "sandbox_dirs": 0}}
hits = []
def scan(top, d):
    try:
        names = os.listdir(os.path.join(top, d))
    except OSError:
        seen["denied"] += 1
        return
    seen["dirs"] += 1
    for n in names:
        try:
            data = open(os.path.join(top, d, n), "rb").read(200)
        except OSError:
            seen["denied"] += 1
            continue
        seen["files"] += 1
        if data.startswith(b"left-by"):
            hits.append((d, n, data))
for top in tops:
    entries = os.listdir(top)
    ours = [d for d in entries if d.startswith("steprl-sandbox-")]
    seen["sandbox_dirs"] += len(ours)
    for d in ours + [d for d in entries if d not in ours]:
        scan(top, d)
print("SEEN", seen)
print("HITS", hits)
"""


@pytest.mark.parametrize("mode", ["default", "best_effort"])
def test_a_run_cannot_read_the_files_of_a_concurrent_run(mode):
    limits = replace(require(mode), wall_time_s=20.0, cpu_time_s=10)
    secret = mark()
    victim = f"open('notes.txt', 'wb').write({secret!r})"  # plain code, default permissions, in its cwd
    attacker = SCAN_TWO_LEVELS.format(TOPS=repr({tempfile.gettempdir(), "/tmp"}))
    v, a = concurrently(victim, attacker, limits, hold_s=6.0)
    assert v.ok and a.ok and "PROBE" in a.stdout, (v, a)
    assert "HITS []" in a.stdout and secret.decode() not in a.stdout, a.stdout
    if mode == "best_effort":  # the victim's work dir was there to find, and it stayed closed
        assert "'sandbox_dirs': 0" not in a.stdout, a.stdout


# ---------------------------------------------------------------- signals and sockets

KILL_BY_NAME = """
found = []
for pid in filter(str.isdigit, os.listdir('/proc')):
    try:
        if open(f'/proc/{pid}/comm').read().strip() == NAME:
            found.append(pid)
            os.kill(int(pid), 9)
    except OSError as e:
        print(pid, e)
print('FOUND', found)
try:
    os.kill(-1, 9)  # everything this run may signal
except OSError as e:
    print('kill(-1):', e)
"""


@pytest.mark.parametrize("mode", ["default", "best_effort"])
def test_a_run_cannot_kill_a_concurrent_run(mode):
    limits = require(mode)
    name = "v" + uuid.uuid4().hex[:12]
    victim = f"libc.prctl(15, {name.encode()!r}, 0, 0, 0)"  # PR_SET_NAME: findable in /proc/*/comm
    v, a = concurrently(victim, f"NAME = {name!r}\n" + KILL_BY_NAME, limits)
    assert "PROBE" in a.stdout, a
    assert v.ok and "END" in v.stdout, f"the victim was killed: {v}\nattacker: {a.stdout}"


def test_abstract_unix_sockets_do_not_reach_a_concurrent_run():
    limits = require("default")
    addr = "\0steprl-" + uuid.uuid4().hex[:10]
    victim = f"s = socket.socket(socket.AF_UNIX)\ns.bind({addr!r})\ns.listen()\n"
    attacker = f"c = socket.socket(socket.AF_UNIX)\ntry:\n    c.connect({addr!r})\n    print('CONNECTED')\n"
    attacker += "except OSError as e:\n    print(e)\n"
    v, a = concurrently(victim, attacker, limits)
    assert v.ok and "PROBE" in a.stdout, (v, a)
    assert "CONNECTED" not in a.stdout, a.stdout


# ---------------------------------------------------------------- locks and notifications on shared files


def test_file_locks_on_shared_host_files_carry_no_bit_to_a_concurrent_run():
    """Both runs can open the same read-only host file; a lock one holds must not be visible to the other."""
    limits = require("default")
    lock = "def lock(path, how):\n    f = open(path)\n    try:\n        import fcntl\n"
    lock += "        fcntl.flock(f, how)\n        return f, 'locked'\n    except OSError as e:\n"
    lock += "        return f, e.errno\n"
    victim = lock + "held = lock(os.__file__, 2)\nprint('VICTIM', held[1])\n"  # LOCK_EX
    attacker = lock + "print('ATTACKER', lock(os.__file__, 2 | 4)[1])\n"  # LOCK_EX | LOCK_NB
    attacker += "import fcntl, struct\nf = open(os.__file__)\n"
    attacker += (
        "try:\n    got = fcntl.fcntl(f, fcntl.F_GETLK, struct.pack('hhqqi', fcntl.F_WRLCK, 0, 0, 0, 0))\n"
    )
    attacker += "    print('GETLK', struct.unpack('hhqqi', got)[0] != fcntl.F_UNLCK)\n"
    attacker += "except OSError as e:\n    print('GETLK', e.errno)\n"
    v, a = concurrently(victim, attacker, limits)
    assert v.ok and "PROBE" in a.stdout, (v, a)
    assert "ATTACKER 11" not in a.stdout, f"the attacker saw the victim's lock (EWOULDBLOCK): {a.stdout}"
    assert "GETLK True" not in a.stdout, a.stdout


def test_no_change_notifications_on_shared_host_files():
    """inotify on a shared read-only file would tell one run when another opens it."""
    limits = require("default")
    r = ok("fd = libc.inotify_init1(0)\nprint('INOTIFY', fd, ctypes.get_errno())", limits)
    assert "INOTIFY -1 1" in r.stdout, r.stdout
    r = ok("import fcntl\nfd = os.open('/etc', os.O_RDONLY)\ntry:\n    fcntl.fcntl(fd, 1026, 0x80000001)\n"
           "    print('DNOTIFY armed')\nexcept OSError as e:\n    print('DNOTIFY', e.errno)", limits)  # fmt: skip
    assert "DNOTIFY 37" in r.stdout, r.stdout


def test_syscalls_with_a_large_kernel_surface_are_refused():
    require("default")
    nrs = {"x86_64": {"io_uring_setup": 425, "bpf": 321, "perf_event_open": 298, "userfaultfd": 323},
           "aarch64": {"io_uring_setup": 425, "bpf": 280, "perf_event_open": 241, "userfaultfd": 282}}  # fmt: skip
    table = nrs.get(os.uname().machine)
    if table is None:
        pytest.skip("syscall numbers known for x86_64 and aarch64 only")
    code = f"for name, nr in {table!r}.items():\n"
    code += "    print(name, libc.syscall(L(nr), L(0), L(0), L(0), L(0), L(0)), ctypes.get_errno())\n"
    code += "print('getpid', libc.syscall(L(39 if os.uname().machine == 'x86_64' else 172)) > 0)\n"
    r = ok(code, DEFAULT)
    for name in table:
        assert f"{name} -1 1\n" in r.stdout, r.stdout  # EPERM from the filter, not EINVAL/EFAULT
    assert "getpid True" in r.stdout


def test_code_still_works_with_the_syscall_filter():
    r = ok("import fcntl, sqlite3\nprint(sqlite3.connect(':memory:').execute('select 6*7').fetchone()[0])\n"
           "print(fcntl.fcntl(1, fcntl.F_GETFL) >= 0)", require("default"))  # fmt: skip
    assert r.stdout == "42\nTrue\n", r


# ---------------------------------------------------------------- descendants


DAEMON = (
    "if libc.fork() == 0:\n    os.setsid()\n    if libc.fork() == 0:\n"
    "        print('DAEMON', os.getpid(), flush=True)\n        os.close(1)\n        os.close(2)\n"
    "        time.sleep(30)\n    os._exit(0)\n"
)


@pytest.mark.parametrize("end", ["exit", "timeout"])
@pytest.mark.parametrize("mode", ["default", "best_effort"])
def test_a_setsid_double_fork_daemon_dies_with_the_call(mode, end):
    limits = replace(require(mode), max_processes=4, wall_time_s=1.5)
    r = run_python(LIB + DAEMON + ("time.sleep(0.3)\n" if end == "exit" else "time.sleep(30)\n"), limits)
    assert r.ok if end == "exit" else r.timed_out, r
    pids = re.findall(r"^DAEMON (\d+)$", r.stdout, re.M)
    assert pids, r
    if mode == "default":
        return  # a pid inside the run's own pid namespace, which died with its init
    pid = int(pids[0])
    time.sleep(0.2)
    try:
        with open(f"/proc/{pid}/cmdline") as f:
            alive = "_sandbox_boot" in f.read()
    except OSError:
        alive = False
    if alive:
        os.kill(pid, 9)
    assert not alive, f"the daemon {pid} outlived the call"
    assert r.isolation["host_uid"] is not None
    lease = os.path.join(sandbox._lease_dir(), str(r.isolation["host_uid"]))
    assert not os.path.exists(lease + ".retired"), "the cleanup did not finish: the uid was retired"


def test_the_code_holds_no_capability_and_cannot_nest_user_namespaces():
    """A user namespace of its own must not become a way into more of the kernel."""
    require("default")
    code = "print(open('/proc/self/status').read())\n"
    code += "print('UNSHARE', libc.unshare(0x10000000), ctypes.get_errno())\n"  # CLONE_NEWUSER
    r = ok(code, DEFAULT)
    caps = dict(re.findall(r"^(Cap\w+):\s+(\w+)$", r.stdout, re.M))
    assert set(caps) >= {"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"}, r.stdout
    assert all(int(v, 16) == 0 for v in caps.values()), caps
    assert "UNSHARE -1" in r.stdout, r.stdout
    assert r.isolation.get("user_namespace") is True, r.isolation


# ---------------------------------------------------------------- the best-effort warning


def test_best_effort_mode_warns_once(monkeypatch):
    monkeypatch.setattr(sandbox, "_WARNED", set())
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert run_python("print(1)", BEST_EFFORT).stdout == "1\n"
        assert run_python("print(2)", BEST_EFFORT).stdout == "2\n"
    ours = [w for w in seen if issubclass(w.category, SandboxIsolationWarning)]
    assert len(ours) == 1, [str(w.message) for w in seen]
    assert "docs/security.md" in str(ours[0].message)
