"""Child side of ``tools_env.sandbox``: run as ``python -I -S -u _sandbox_boot.py '<config json>'``.

Stdlib only, and it starts single-threaded in a fresh interpreter, so the namespaces, mounts, rlimits and
the uid drop happen here rather than in a ``preexec_fn`` (which the Python docs call unsafe when the parent
has threads, as the tool server's threadpool does). The code to run arrives on stdin.

Process tree when the host allows namespaces (root or CAP_SYS_ADMIN)::

    boot   host pid namespace, keeps privileges, waits and reports
     └ init   pid 1 of a new pid namespace; mounts a private /proc and reaps
        └ worker   rlimits, uid 65534, no_new_privs; runs the code in-process

When init exits the kernel kills whatever is left in its pid namespace, so nothing the code starts can
outlive the run. Without namespaces ``boot`` forks the worker directly. Status lines (JSON) go to the
file descriptor ``status_fd`` which the worker closes before running untrusted code.
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

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
SYS_MOUNT_SETATTR = {"x86_64": 442, "aarch64": 442}.get(os.uname().machine)
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
    if os.getuid() == 0 and cfg["uid"] is not None:
        os.chown(workdir, cfg["uid"], cfg["gid"])
    return workdir


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


def _drop_privileges(cfg: dict) -> None:
    if os.getuid() == 0 and cfg["uid"] is not None:
        os.setgroups([])
        os.setresgid(cfg["gid"], cfg["gid"], cfg["gid"])
        os.setresuid(cfg["uid"], cfg["uid"], cfg["uid"])
    # no setuid binary (su, mount, passwd ...) can give privileges back; exec is also blocked by NPROC
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")


def _worker(cfg: dict, code: str, workdir: str, parent_pid: int, netns: bool) -> None:
    try:
        devnull = os.open("/dev/null", os.O_RDONLY)
        os.dup2(devnull, 0)
        os.closerange(3, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
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
        _drop_privileges(cfg)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # set after the uid change, which clears it
        if os.getppid() != parent_pid:  # the parent died before PDEATHSIG was armed
            os._exit(125)
        _disable_python_apis(block_sockets=not netns)
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


def _init(cfg: dict, code: str, workdir: str, status_fd: int, alive_fd: int, netns: bool) -> None:
    """pid 1 of the sandbox's pid namespace: private /proc, run the worker, report, exit (kills the rest)."""
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if select.select([alive_fd], [], [], 0)[0]:  # EOF: boot died before PDEATHSIG was armed
        os._exit(1)
    try:
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except OSError:  # hide the host's processes at least
        _mount("tmpfs", "/proc", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k,mode=555")
    pid = os.fork()
    if pid == 0:
        _worker(cfg, code, workdir, parent_pid=1, netns=netns)
    while True:
        try:
            done, st = os.wait()
        except ChildProcessError:
            os._exit(0)
        if done == pid:
            os.write(status_fd, (json.dumps({"worker": _encode_status(st)}) + "\n").encode())
            os._exit(0)


def _kill_on_sigterm(child: int) -> None:
    """The parent stops a run with SIGTERM to boot, which SIGKILLs its child and reaps it (no zombie)."""
    signal.signal(signal.SIGTERM, lambda *_: os.kill(child, signal.SIGKILL))


def main() -> None:
    cfg = json.loads(sys.argv[1])
    code = sys.stdin.buffer.read().decode("utf-8", "replace")
    status_fd = cfg["status_fd"]
    os.umask(0o022)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
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
            os.write(status_fd, (json.dumps({"error": f"sandbox setup failed: {e}"}) + "\n").encode())
            os._exit(0)
        report.update(filesystem="private", pid_namespace=True)
    elif cfg["namespaces"]:
        report["notes"].append("unshare() not permitted: no mount/pid namespace")
    else:
        report["notes"].append("namespaces disabled by SandboxLimits.namespaces")
    if os.getuid() == 0 and cfg["uid"] is not None:
        report["uid"] = cfg["uid"]
        if not ns:
            os.chown(workdir, cfg["uid"], cfg["gid"])
    else:
        report["uid"] = os.getuid()
    os.write(status_fd, (json.dumps({"report": report}) + "\n").encode())

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
            os.write(status_fd, (json.dumps({"init": _encode_status(st)}) + "\n").encode())
        os._exit(0)
    boot_pid = os.getpid()
    pid = os.fork()
    if pid == 0:
        _worker(cfg, code, workdir, parent_pid=boot_pid, netns=netns)
    _kill_on_sigterm(pid)
    _, st = os.waitpid(pid, 0)
    os.write(status_fd, (json.dumps({"worker": _encode_status(st)}) + "\n").encode())
    os._exit(0)


if __name__ == "__main__":
    main()
