"""End-of-run cleanup for ``_sandbox_boot`` (stdlib only; boot imports it before any code runs).

As root on the host, after a run: kill every descendant, and as the run's uid clear its keyrings, then
remove the SysV IPC objects it owns and its entries at the top of the shared writable directories.
``python -I -S _sandbox_boot.py --clean-up <uid> <tempdir>`` runs the same for a run whose boot was
killed before it could (``tools_env.sandbox._clean_up_after`` runs it).
"""

import contextlib
import ctypes
import os
import shutil
import signal
import stat

SYS_KEYCTL = {"x86_64": 250, "aarch64": 219}.get(os.uname().machine)
KEYCTL_GET_KEYRING_ID, KEYCTL_JOIN_SESSION_KEYRING, KEYCTL_CLEAR, KEYCTL_GET_PERSISTENT = 0, 1, 7, 22
KEY_SPEC_PROCESS_KEYRING, KEY_SPEC_USER_KEYRING, KEY_SPEC_USER_SESSION_KEYRING = -2, -4, -5
CLEAR_FAILED = 255  # exit status of clear_uid's child; 0-3 is the number of standing keyrings
IPC_RMID = 0
# where code of a run without a mount namespace can leave files for a later run (cleared at the end)
SHARED_WRITABLE = ("/tmp", "/var/tmp", "/dev/shm", "/dev/mqueue")

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def keyctl(op: int, *args: int) -> int:
    if SYS_KEYCTL is None:
        return -1
    return libc.syscall(SYS_KEYCTL, ctypes.c_long(op), *(ctypes.c_long(a) for a in args))


def _children() -> list[int]:
    """This process's children (zombies included), from /proc/self/task/*/children."""
    kids: list[int] = []
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError), open(f"/proc/self/task/{tid}/children") as f:
            kids += [int(p) for p in f.read().split()]
    return kids


def _kill_descendants() -> None:
    """SIGKILL and reap every descendant. As a child subreaper every orphan in the tree comes back here,
    so repeating until no child is left also catches setsid + double-fork daemons."""
    for _ in range(10_000):
        kids = _children()
        if not kids:
            return
        for kid in kids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(kid, signal.SIGKILL)
        for kid in kids:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(kid, 0)


def _uid_processes(uid: int) -> list[int]:
    """Live (not zombie) processes other than this one whose real, effective or saved uid is ``uid``."""
    found = []
    me = str(os.getpid())
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or pid == me:
            continue
        with contextlib.suppress(OSError, StopIteration, IndexError):
            with open(f"/proc/{pid}/status") as f:
                lines = {k: v for k, _, v in (line.partition(":") for line in f)}
            if lines["State"].split()[0] not in ("Z", "X") and str(uid) in lines["Uid"].split()[:3]:
                found.append(int(pid))
    return found


def clear_uid(uid: int, kill: bool) -> int | None:
    """As ``uid``: SIGKILL all its processes (kill(-1)), clear its user, user-session and persistent
    keyrings. Returns how many keyrings the uid keeps standing (the parent waits for the rest of its
    keys to be destroyed), or None when something could not be cleared (the caller retires that uid)."""
    pid = os.fork()
    if pid == 0:
        failed, standing = False, set()
        try:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            for _ in range(100 if kill else 0):
                # kill(-1) reports success whenever the host has any other process, so look in /proc
                with contextlib.suppress(ProcessLookupError):
                    os.kill(-1, signal.SIGKILL)  # every process of this uid but this one
                if not _uid_processes(uid):
                    break
            else:
                failed |= kill
            # linked from our own process keyring, so that we possess it and may clear it (the user keyring
            # is not reachable once a first clear of the user-session keyring has unlinked it). The process
            # keyring is not counted as standing: it dies with this child, and the parent waits for that
            persistent = keyctl(KEYCTL_GET_PERSISTENT, -1, KEY_SPEC_PROCESS_KEYRING)
            if persistent > 0:
                failed |= keyctl(KEYCTL_CLEAR, persistent) != 0
                standing.add(persistent)
            for ring in (KEY_SPEC_USER_KEYRING, KEY_SPEC_USER_SESSION_KEYRING):
                failed |= keyctl(KEYCTL_CLEAR, ring) != 0
                standing.add(keyctl(KEYCTL_GET_KEYRING_ID, ring, 0))
            failed |= min(standing) <= 0
        except BaseException:
            failed = True
        os._exit(CLEAR_FAILED if failed else len(standing))
    _, st = os.waitpid(pid, 0)
    code = os.WEXITSTATUS(st) if os.WIFEXITED(st) else CLEAR_FAILED
    return None if code == CLEAR_FAILED else code


def _remove_ipc(uid: int) -> None:
    """Remove the SysV shared memory, message queues and semaphores ``uid`` owns or created."""
    for kind, rm in (("shm", libc.shmctl), ("msg", libc.msgctl), ("sem", libc.semctl)):
        try:
            with open(f"/proc/sysvipc/{kind}") as f:
                header, *rows = [line.split() for line in f if line.strip()]
        except OSError:
            continue
        col = {name: i for i, name in enumerate(header)}
        ident = col.get("shmid", col.get("msqid", col.get("semid")))
        for row in rows:
            if str(uid) in (row[col["uid"]], row[col["cuid"]]):
                if kind == "sem":
                    rm(int(row[ident]), 0, IPC_RMID)
                else:
                    rm(int(row[ident]), IPC_RMID, None)


def _remove_files(uid: int, dirs) -> None:
    """Remove the entries ``uid`` owns at the top of the shared writable directories."""
    for d in dict.fromkeys(dirs):
        try:
            names = os.listdir(d)
        except OSError:
            continue
        for name in names:
            path = os.path.join(d, name)
            with contextlib.suppress(OSError):
                st = os.lstat(path)
                if st.st_uid != uid:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    shutil.rmtree(path)  # does not follow symlinks (fd-based on Linux)
                else:
                    os.unlink(path)


def janitor(cfg: dict) -> dict:
    """End of a run without namespaces: kill every descendant, remove what the run's uid left behind."""
    _kill_descendants()
    if cfg["host_uid"] is None:
        return {"cleaned": True}
    return remove_what_uid_left(cfg["host_uid"], cfg["tempdir"])


def remove_what_uid_left(uid: int, tempdir: str) -> dict:
    """Kill ``uid``'s processes, clear its keyrings, remove its IPC objects and shared files; also the
    ``--clean-up`` of a run whose boot was killed before its janitor could do this."""
    standing = clear_uid(uid, kill=True)
    _kill_descendants()  # reap what kill(-1) hit among our children
    _remove_ipc(uid)
    _remove_files(uid, (*SHARED_WRITABLE, tempdir))
    return {"cleaned": standing is not None, "keys_standing": standing}
