"""Child side of ``tools_env.sandbox``: run as ``python -I -S -u _sandbox_boot.py '<config json>'``.

Stdlib only, and it starts single-threaded in a fresh interpreter, so the namespaces, mounts, rlimits and
the uid drop happen here rather than in a ``preexec_fn`` (which the Python docs call unsafe when the parent
has threads, as the tool server's threadpool does). The code to run arrives on stdin.

Process tree when the host allows namespaces (root or CAP_SYS_ADMIN)::

    boot   host pid namespace, keeps privileges, waits and reports
     └ init   pid 1 of a new pid namespace; mounts a private /proc, writes the worker's uid map, reaps
        └ worker   rlimits, its own user namespace (uid 65534 inside = this run's host uid), no
                   capabilities, no_new_privs, a fresh session keyring; runs the code in-process

When init exits the kernel kills whatever is left in its pid namespace, so nothing the code starts can
outlive the run; the user namespace gives the run its own user keyrings, which die with it. Without
namespaces ``boot`` is a child subreaper and forks the worker directly (as this run's host uid); at the
end it kills every descendant and removes what that uid left in the kernel (keyrings, SysV IPC) and at
the top of the shared writable directories (``_sandbox_janitor``). Status lines (JSON) go to the file
descriptor ``status_fd`` which the worker closes before running untrusted code.
"""

import _posixsubprocess
import _socket
import builtins
import contextlib
import ctypes
import json
import os
import posix
import resource
import select
import signal
import socket
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # -I left out this script's directory
from _sandbox_janitor import KEYCTL_JOIN_SESSION_KEYRING, clear_uid, janitor, keyctl, remove_what_uid_left  # noqa: E402

del sys.path[0]  # the code run later must not import this directory's modules by accident

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWPID, CLONE_NEWNET, CLONE_NEWUSER = 0x20000000, 0x40000000, 0x10000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS, PR_SET_CHILD_SUBREAPER = 1, 38, 36
PR_CAPBSET_DROP, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 24, 47, 4
SYS_MOUNT_SETATTR = {"x86_64": 442, "aarch64": 442}.get(os.uname().machine)
SYS_CAPSET = {"x86_64": 126, "aarch64": 91}.get(os.uname().machine)
AT_FDCWD, AT_RECURSIVE, MOUNT_ATTR_RDONLY = -100, 0x8000, 1

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


class _MountAttr(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in ("attr_set", "attr_clr", "propagation", "userns_fd")]


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _enc(text):
    return text.encode() if text is not None else None


def _mount(src, target, fstype, flags, data=None) -> None:
    _check(libc.mount(_enc(src), _enc(target), _enc(fstype), flags, _enc(data)), f"mount {target}")


def _unshare(flags: int) -> bool:
    return libc.unshare(flags) == 0


def _status(fd: int, **fields) -> None:
    os.write(fd, (json.dumps(fields) + "\n").encode())


def _read_only_root(notes: list) -> None:
    """Make every mount read-only in this mount namespace (mount_setattr, Linux >= 5.12)."""
    if SYS_MOUNT_SETATTR is not None:
        attr = _MountAttr(MOUNT_ATTR_RDONLY, 0, 0, 0)
        if (
            libc.syscall(
                SYS_MOUNT_SETATTR, AT_FDCWD, b"/", AT_RECURSIVE, ctypes.byref(attr), ctypes.sizeof(attr)
            )
            == 0
        ):
            return
    notes.append("mount_setattr unavailable: only / itself was made read-only, not its submounts")
    _mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY)


def _private_filesystem(cfg: dict, notes: list) -> str:
    """Read-only host filesystem, secrets masked, a private size-limited tmpfs on /tmp as the workdir."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    hidden = [p for p in cfg["hidden_paths"] if os.path.isdir(p)]
    # the interpreter's own files may live under a hidden path (pyenv in /root): keep a handle to re-bind
    keep = {p: os.open(p, os.O_PATH) for p in cfg["keep_paths"] if os.path.isdir(p)}
    _read_only_root(notes)
    for path in hidden:
        _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=64k,mode=755")
    for path, fd in keep.items():
        if any(path == h or path.startswith(h.rstrip("/") + "/") for h in hidden):
            os.makedirs(path, mode=0o755, exist_ok=True)
            _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
            _mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
        os.close(fd)
    for path in hidden:
        _mount(None, path, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={cfg['tmpfs_mb']}m,mode=1777")
    workdir = "/tmp/sandbox"
    os.mkdir(workdir, 0o700)
    if cfg["host_uid"] is not None:
        os.chown(workdir, cfg["host_uid"], cfg["host_uid"])
    return workdir


# seccomp: a short deny-list for kernel interfaces through which concurrent runs could still signal each
# other across every namespace (locks and change notifications on the read-only host files they share) and
# rarely-needed ones with a long history of kernel bugs. Everything else is allowed.
SECCOMP_MODE_FILTER, PR_SET_SECCOMP = 2, 22
RET_ALLOW, RET_KILL_PROCESS, RET_ERRNO = 0x7FFF0000, 0x80000000, 0x00050000
LD_ABS_W, JEQ_K, JGE_K, RET_K = 0x20, 0x15, 0x35, 0x06
FCNTL_LOCKS = (5, 6, 7, 36, 37, 38, 1026)  # F_GETLK, F_SETLK(W), F_OFD_GETLK, F_OFD_SETLK(W), F_NOTIFY
SECCOMP_ARCH = {
    # machine: (AUDIT_ARCH, fcntl, denied syscalls: flock, inotify_init(1), fanotify_init, io_uring_setup,
    #           io_uring_enter, io_uring_register, bpf, perf_event_open, userfaultfd)
    "x86_64": (0xC000003E, 72, (73, 253, 294, 300, 425, 426, 427, 321, 298, 323)),
    "aarch64": (0xC00000B7, 25, (32, 26, 262, 425, 426, 427, 280, 241, 282)),
}.get(os.uname().machine)


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def _seccomp_program(arch: int, fcntl_nr: int, denied: tuple[int, ...]) -> list[tuple[int, int, int, int]]:
    """The BPF program, as (code, jt, jf, k); jumps are relative to the next instruction.

    seccomp_data: nr at offset 0, arch at 4, args[i] at 16 + 8 i (the low 32 bits first: little-endian).
    """
    n = len(denied)
    # layout: 0 ld arch | 1 jeq arch | 2 ld nr | 3 jge x32 | 4..4+n-1 jeq denied | 4+n jeq fcntl | 5+n allow
    #         6+n ld args[1] | 7+n.. jeq lock cmd | allow | errno(ENOLCK) | errno(EPERM) | kill
    locks = len(FCNTL_LOCKS)
    allow2 = 7 + n + locks
    enolck, eperm, kill = allow2 + 1, allow2 + 2, allow2 + 3
    prog = [(LD_ABS_W, 0, 0, 4), (JEQ_K, 0, kill - 2, arch), (LD_ABS_W, 0, 0, 0)]
    prog.append((JGE_K, kill - 4, 0, 0x40000000))  # x32 ABI numbers (x86_64); none on aarch64
    for i, nr in enumerate(denied):
        prog.append((JEQ_K, eperm - (4 + i) - 1, 0, nr))
    prog.append((JEQ_K, 1, 0, fcntl_nr))  # fcntl: on to the argument check; anything else: allowed
    prog.append((RET_K, 0, 0, RET_ALLOW))
    prog.append((LD_ABS_W, 0, 0, 16 + 8))
    for i, cmd in enumerate(FCNTL_LOCKS):
        prog.append((JEQ_K, enolck - (7 + n + i) - 1, 0, cmd))
    prog += [(RET_K, 0, 0, RET_ALLOW), (RET_K, 0, 0, RET_ERRNO | 37), (RET_K, 0, 0, RET_ERRNO | 1)]
    prog.append((RET_K, 0, 0, RET_KILL_PROCESS))
    return prog


def _install_syscall_filter() -> None:
    if SECCOMP_ARCH is None:
        raise OSError(f"no syscall filter for {os.uname().machine}: set SandboxLimits(syscall_filter=False)")
    prog = _seccomp_program(*SECCOMP_ARCH)
    insns = (_SockFilter * len(prog))(*(_SockFilter(*ins) for ins in prog))
    fprog = _SockFprog(len(prog), insns)
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(
            err, f"seccomp filter refused ({os.strerror(err)}): set SandboxLimits(syscall_filter=False)"
        )


def _deny(name: str):
    def blocked(*args, **kwargs):
        raise PermissionError(f"{name} is disabled in the sandbox")

    return blocked


def _disable_python_apis(block_sockets: bool) -> None:
    """Friendly errors for process creation (and sockets without a netns); NOT a security boundary.

    The code can still reach libc through ctypes; the boundary is RLIMIT_NPROC=0 for an unprivileged uid,
    the pid namespace and the network namespace.
    """
    names = ["fork", "forkpty", "system", "popen", "posix_spawn", "posix_spawnp", "execv", "execve"]
    names += ["execl", "execle", "execlp", "execlpe", "execvp", "execvpe", "spawnv", "spawnve", "spawnl"]
    names += ["spawnle", "spawnlp", "spawnlpe", "spawnvp", "spawnvpe"]
    for name in names:
        for mod in (os, posix):
            if hasattr(mod, name):
                setattr(mod, name, _deny(f"os.{name}"))
    _posixsubprocess.fork_exec = _deny("subprocess")
    if block_sockets:
        for mod in (socket, _socket):
            for name in ("socket", "socketpair", "fromfd", "create_connection", "create_server"):
                if hasattr(mod, name):
                    setattr(mod, name, _deny(f"socket.{name} (no network)"))


def _set_limits(cfg: dict) -> None:
    mb = 1024 * 1024
    cpu = int(cfg["cpu_time_s"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (cfg["memory_mb"] * mb, cfg["memory_mb"] * mb))
    resource.setrlimit(resource.RLIMIT_FSIZE, (cfg["max_file_mb"] * mb, cfg["max_file_mb"] * mb))
    resource.setrlimit(resource.RLIMIT_NOFILE, (cfg["max_open_files"], cfg["max_open_files"]))
    resource.setrlimit(resource.RLIMIT_NPROC, (cfg["max_processes"], cfg["max_processes"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    for name in ("RLIMIT_MSGQUEUE", "RLIMIT_MEMLOCK"):
        if hasattr(resource, name):
            resource.setrlimit(getattr(resource, name), (0, 0))


def _drop_capabilities() -> None:
    """Empty every capability set (a process entering a user namespace holds all of them there)."""
    for cap in range(64):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            break  # EINVAL past the last capability this kernel knows
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this thread
    data = (ctypes.c_uint32 * 6)()
    _check(libc.syscall(SYS_CAPSET, header, data), "capset")


def _drop_privileges(cfg: dict, sync: tuple[int, int] | None) -> None:
    """Become this run's unprivileged uid; inside a fresh user namespace when ``sync`` is given.

    With ``sync`` (a pipe pair to init) the worker unshares a user namespace, init (still root on the
    host) maps ``uid`` inside to the run's ``host_uid`` outside, and the worker switches to it and drops
    every capability. The namespace gives the run user keyrings of its own; the distinct host uid keeps
    concurrent runs apart in everything the kernel keys by uid (signals, files, quotas).
    """
    if cfg["host_uid"] is not None:
        os.setgroups([])
        uid, gid = cfg["host_uid"], cfg["host_uid"]
        if sync is not None:
            ready_w, go_r = sync
            entered = _unshare(CLONE_NEWUSER)
            os.write(ready_w, b"1" if entered else b"0")
            if entered:
                if os.read(go_r, 1) != b"1":
                    raise OSError("init could not write the user namespace's uid map")
                uid, gid = cfg["uid"], cfg["gid"]
            os.close(ready_w)
            os.close(go_r)
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        if sync is not None and entered:
            # no nested user namespaces (the way in to most of the kernel that unprivileged code cannot
            # reach otherwise); the run's own namespace holds CAP_SYS_RESOURCE for this one last write
            with open("/proc/sys/user/max_user_namespaces", "w") as f:
                f.write("0")
            _drop_capabilities()
    # no setuid binary (su, mount, passwd ...) can give privileges back; exec is also blocked by NPROC
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
    # a session keyring of its own: the inherited one is the caller's, shared by every run
    if keyctl(KEYCTL_JOIN_SESSION_KEYRING, 0) < 0:
        raise OSError(ctypes.get_errno(), f"keyctl(JOIN_SESSION_KEYRING): {os.strerror(ctypes.get_errno())}")


def _close_fds_except(keep: tuple[int, ...]) -> None:
    low = 3
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def _worker(cfg: dict, code: str, workdir: str, parent_pid: int, netns: bool, sync=None) -> None:
    try:
        devnull = os.open("/dev/null", os.O_RDONLY)
        os.dup2(devnull, 0)
        _close_fds_except(sync or ())
        os.chdir(workdir)
        os.umask(0o077)
        os.environ.clear()
        os.environ.update(HOME=workdir, TMPDIR=workdir, PATH="/usr/local/bin:/usr/bin:/bin", LANG="C.UTF-8")
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
            os.environ[var] = "1"  # numeric libraries must not start threads (RLIMIT_NPROC)
        sys.path.extend(cfg["extra_sys_path"])
        for name in cfg["preload_modules"]:
            with contextlib.suppress(ImportError):
                __import__(name)
        _set_limits(cfg)
        _drop_privileges(cfg, sync)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # set after the uid change, which clears it
        if os.getppid() != parent_pid:  # the parent died before PDEATHSIG was armed
            os._exit(125)
        _disable_python_apis(block_sockets=not netns)
        if cfg["syscall_filter"]:
            _install_syscall_filter()  # last: it needs no_new_privs, and the setup needs none of these calls
    except BaseException as e:  # setup failure: report on stderr, distinct exit code
        os.write(2, f"sandbox setup failed: {type(e).__name__}: {e}\n".encode())
        os._exit(126)

    builtins.exit = builtins.quit = sys.exit  # -S drops the site helpers that scripts still call
    sys.argv = ["<sandbox>"]
    scope = {"__name__": "__main__", "__builtins__": builtins}
    status = 0
    try:
        exec(compile(code, "<sandbox>", "exec"), scope)
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            status = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            status = 1
    except BaseException as e:
        tb = e.__traceback__.tb_next if e.__traceback__ is not None else None  # hide this frame
        traceback.print_exception(type(e), e, tb)
        status = 1
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(status)


def _encode_status(st: int) -> dict:
    if os.WIFSIGNALED(st):
        return {"signal": os.WTERMSIG(st)}
    return {"exit": os.WEXITSTATUS(st)}


def _map_user_namespace(pid: int, cfg: dict) -> None:
    """As root on the host: map the worker's ``uid``/``gid`` inside its user namespace to ``host_uid``."""
    host = cfg["host_uid"]
    for name, text in (("setgroups", "deny"), ("uid_map", f"{cfg['uid']} {host} 1"),
                       ("gid_map", f"{cfg['gid']} {host} 1")):  # fmt: skip
        with open(f"/proc/{pid}/{name}", "w") as f:
            f.write(text)


def _init(cfg: dict, code: str, workdir: str, status_fd: int, alive_fd: int, netns: bool) -> None:
    """pid 1 of the sandbox's pid namespace: private /proc, run the worker, report, exit (kills the rest)."""
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if select.select([alive_fd], [], [], 0)[0]:  # EOF: boot died before PDEATHSIG was armed
        os._exit(1)
    try:
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except OSError:  # hide the host's processes at least
        _mount("tmpfs", "/proc", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k,mode=555")
    userns = cfg["host_uid"] is not None
    if userns:
        ready_r, ready_w = os.pipe()
        go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        if userns:
            os.close(ready_r)
            os.close(go_w)
        _worker(cfg, code, workdir, parent_pid=1, netns=netns, sync=(ready_w, go_r) if userns else None)
    if userns:
        os.close(ready_w)
        os.close(go_r)
        answer = os.read(ready_r, 1)  # b"1" entered, b"0" refused, b"" the worker died in its setup
        entered = answer == b"1"
        if entered:
            try:
                _map_user_namespace(pid, cfg)
                os.write(go_w, b"1")
            except OSError as e:
                entered = False
                _status(status_fd, userns_error=f"{type(e).__name__}: {e}")
        os.close(ready_r)
        os.close(go_w)
        if answer:
            _status(status_fd, user_namespace=entered)
    while True:
        try:
            done, st = os.wait()
        except ChildProcessError:
            os._exit(0)
        if done == pid:
            _status(status_fd, worker=_encode_status(st))
            if userns and not entered:  # the run's keyrings live in the host's register: clear them
                standing = clear_uid(cfg["host_uid"], kill=False)
                _status(status_fd, cleaned=standing is not None, keys_standing=standing)
            os._exit(0)


def _kill_on_sigterm(child: int) -> None:
    """The parent stops a run with SIGTERM to boot, which SIGKILLs its child and reaps it (no zombie)."""
    signal.signal(signal.SIGTERM, lambda *_: os.kill(child, signal.SIGKILL))


def main() -> None:
    if sys.argv[1] == "--clean-up":
        print(json.dumps(remove_what_uid_left(int(sys.argv[2]), sys.argv[3])))
        return
    cfg = json.loads(sys.argv[1])
    code = sys.stdin.buffer.read().decode("utf-8", "replace")
    status_fd = cfg["status_fd"]
    os.umask(0o022)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if os.getuid() != 0:
        cfg["host_uid"] = None  # no uid to change to: the code runs as the caller
    report = {"network_isolation": "best_effort", "filesystem": "host", "pid_namespace": False, "notes": []}
    workdir = cfg["workdir"]
    ns = cfg["namespaces"] and _unshare(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS)
    netns = cfg["namespaces"] and _unshare(CLONE_NEWNET)
    if netns:
        report["network_isolation"] = "netns"
    if ns:
        try:
            workdir = _private_filesystem(cfg, report["notes"])
        except OSError as e:
            _status(status_fd, error=f"sandbox setup failed: {e}")
            os._exit(0)
        report.update(filesystem="private", pid_namespace=True)
    elif cfg["namespaces"]:
        report["notes"].append("unshare() not permitted: no mount/pid namespace")
    else:
        report["notes"].append("namespaces disabled by SandboxLimits.namespaces")
    report["host_uid"] = cfg["host_uid"]
    if cfg["host_uid"] is not None:
        report["uid"] = cfg["uid"] if ns else cfg["host_uid"]
        if not ns:
            os.chown(workdir, cfg["host_uid"], cfg["host_uid"])
    else:
        report["uid"] = os.getuid()
    _status(status_fd, report=report)

    if ns:
        alive_r, alive_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(alive_w)
            _init(cfg, code, workdir, status_fd, alive_r, netns)
        os.close(alive_r)
        _kill_on_sigterm(pid)
        _, st = os.waitpid(pid, 0)
        if os.WIFSIGNALED(st) or os.WEXITSTATUS(st) != 0:
            _status(status_fd, init=_encode_status(st))
        os._exit(0)
    # no pid namespace: every orphan of the run is reparented here, and killed by the janitor
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    boot_pid = os.getpid()
    pid = os.fork()
    if pid == 0:
        _worker(cfg, code, workdir, parent_pid=boot_pid, netns=netns)
    _kill_on_sigterm(pid)
    _, st = os.waitpid(pid, 0)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the worker's pid is free now; finish the cleanup
    _status(status_fd, worker=_encode_status(st))
    _status(status_fd, **janitor(cfg))
    os._exit(0)


if __name__ == "__main__":
    main()
