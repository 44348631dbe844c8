"""``python SCRIPT ARGS`` for the tests, in a process of its own that starts with handprop,
torch and Lightning already imported.

Every ``python train.py`` pays about 7 s of imports (torch, Lightning and what Lightning
imports) before its first line of work, and the tests start about a hundred of them. Here
one server per test worker imports them once (``python tests/prestarted.py SOCKET``) and
forks a child for each command: the script's own code from its first line, in a process
with its own pid, working directory, environment, arguments, standard output and error,
signals and exit status -- what ``subprocess.Popen`` gives, without the imports.

What a forked child cannot show is the start itself: what a script imports, and what the
imported libraries read from the environment as they load (OMP_NUM_THREADS, the rank
variables Lightning reads once). A command whose environment sets one of ``AT_IMPORT``
starts a fresh Python, as does every test that asks for one (``fresh=True``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# read by Python, torch, Lightning or their libraries as they start or load (by name, or by
# prefix with a trailing _): a child forked after the imports would not see a change of them
AT_IMPORT = ("PYTHON", "LANG", "LC_", "TMPDIR", "OMP_", "MKL_", "KMP_", "OPENBLAS_", "TORCH", "PYTORCH_", "CUDA_")
AT_IMPORT += ("NCCL_", "MPL", "RANK", "LOCAL_RANK", "WORLD_SIZE", "SLURM_", "JSM_NAMESPACE_")


HANDLED = ("PYTHONPATH", "PYTHONFAULTHANDLER")  # (the child sets these up as Python would)


def _at_import(env: dict) -> dict:
    return {k: v for k, v in env.items() if k.startswith(AT_IMPORT) and k not in HANDLED}


_STATUS = struct.Struct("i")


def _recv(conn: socket.socket, timeout: float | None) -> int | None:
    """The next number the server sends on ``conn`` (None: none within ``timeout``)."""
    if not select.select([conn], [], [], timeout)[0]:
        return None
    data = b""
    while len(data) < _STATUS.size:
        chunk = conn.recv(_STATUS.size - len(data))
        if not chunk:
            raise RuntimeError("the prestarted server went away")
        data += chunk
    return _STATUS.unpack(data)[0]


class _Output:
    """A child's standard output or error, as the text written so far (``read()``). The
    child writes at the end whatever this side reads (O_APPEND), and reads move no offset."""

    def __init__(self) -> None:
        self.file = tempfile.TemporaryFile()
        fcntl.fcntl(self.file.fileno(), fcntl.F_SETFL, fcntl.fcntl(self.file.fileno(), fcntl.F_GETFL) | os.O_APPEND)

    def read(self) -> str:
        data = b""
        while chunk := os.pread(self.file.fileno(), 1 << 20, len(data)):
            data += chunk
        return data.decode(errors="replace")


class Prestarted:
    """What ``subprocess.Popen`` gives (pid, poll, wait, communicate, send_signal, kill,
    returncode, stdout and stderr read as text) for a child of the server."""

    def __init__(self, server: str, argv: list[str], cwd: Path, env: dict) -> None:
        self.args = argv
        self.stdout, self.stderr = _Output(), _Output()
        self._conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._conn.connect(server)
        request = json.dumps({"argv": argv, "cwd": str(cwd), "env": env}).encode()
        socket.send_fds(self._conn, [request], [self.stdout.file.fileno(), self.stderr.file.fileno()])
        self._conn.shutdown(socket.SHUT_WR)
        self.pid = _recv(self._conn, 60)
        if self.pid is None:
            raise RuntimeError("the prestarted server started no process within 60 s")
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self._ended(0)

    def wait(self, timeout: float | None = None) -> int:
        if self._ended(timeout) is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def _ended(self, timeout: float | None) -> int | None:
        if self.returncode is None:
            self.returncode = _recv(self._conn, timeout)
            if self.returncode is not None:
                self._conn.close()
        return self.returncode

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        self.wait(timeout)
        return self.stdout.read(), self.stderr.read()

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # (a pid the server has reaped may be another process's by now)
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


class Server:
    """One server process with the environment ``env``, started on first use; ``popen``
    forks a child of it."""

    def __init__(self, env: dict) -> None:
        self.env = env
        self._process: subprocess.Popen | None = None
        self._dir: Path | None = None

    def can_run(self, args, env: dict) -> bool:
        """Whether a forked child runs ``python ARGS`` with ``env`` as a fresh Python would:
        a script or ``-m MODULE`` (no other flag), and what the libraries read as they load the same."""
        runs = bool(args) and (args[0] == "-m" or not args[0].startswith("-"))
        return runs and _at_import(env) == _at_import(self.env)

    def popen(
        self, argv: list[str], cwd: Path, env: dict, fresh: bool = False, stdout=subprocess.PIPE
    ) -> Prestarted | subprocess.Popen:
        """``python ARGV``: forked from the server, or in a Python of its own when ``fresh``
        or when a fork would not run it as that would (``can_run``); output as text."""
        if fresh or not self.can_run(argv, env):
            return subprocess.Popen(
                [sys.executable, *argv], cwd=cwd, stdout=stdout, stderr=subprocess.PIPE, text=True, env=env
            )
        return self._start(argv, cwd, env)

    def _start(self, argv: list[str], cwd: Path, env: dict) -> Prestarted:
        if self._process is None:
            self._dir = Path(tempfile.mkdtemp(prefix="prestarted-"))
            self._process = subprocess.Popen(
                [sys.executable, __file__, str(self._dir / "socket")],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                env=self.env,
            )
            deadline = time.monotonic() + 300
            while not (self._dir / "socket").exists():
                if self._process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the prestarted server did not start")
                time.sleep(0.05)
        return Prestarted(str(self._dir / "socket"), argv, cwd, env)

    def close(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            shutil.rmtree(self._dir)


# --------------------------------------------------------------------------- the server


def _child(request: dict, fds: list[int]) -> None:
    """In the forked child: become ``python ARGV`` and run it (it ends the process)."""
    import faulthandler  # noqa: PLC0415
    import runpy  # noqa: PLC0415

    os.dup2(fds[0], 1)
    os.dup2(fds[1], 2)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    for fd in (*fds, null):
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    tempfile.tempdir = None  # (read from $TMPDIR again)
    if os.environ.get("PYTHONFAULTHANDLER"):
        faulthandler.enable()
    argv = request["argv"]
    if argv[0] == "-m":  # python -m MODULE ARGS: the working directory first on the path
        sys.path[:1] = [os.getcwd(), *extra]
        sys.argv = argv[1:]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:  # python SCRIPT ARGS: the script's folder first
        script = os.path.abspath(argv[0])
        sys.path[:1] = [os.path.dirname(script), *extra]
        sys.argv = list(argv)
        runpy.run_path(script, run_name="__main__")
    sys.exit(0)  # (a program that ends without sys.exit: status 0, as python gives it)


def serve(path: str) -> None:
    """Import what the entry points import, then fork a child for each request on the
    socket at ``path`` and send its pid, and later its exit status, back."""
    import hydra  # noqa: F401, PLC0415

    import handprop.explain  # noqa: F401, PLC0415
    import handprop.predict  # noqa: F401, PLC0415
    import handprop.train  # noqa: F401, PLC0415

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path + ".tmp")
    listener.listen(16)
    os.rename(path + ".tmp", path)  # (the client waits for the socket to appear: ready)
    children: dict[int, socket.socket] = {}
    worker = os.getppid()
    while os.getppid() == worker:  # (a server whose pytest worker has gone ends too)
        if select.select([listener], [], [], 0.05)[0]:
            conn, _ = listener.accept()
            message, fds, _, _ = socket.recv_fds(conn, 1 << 20, 2)
            while chunk := conn.recv(1 << 20):  # (to the end the client marked)
                message += chunk
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                listener.close()
                conn.close()
                for other in children.values():
                    other.close()
                _child(json.loads(message), fds)
            for fd in fds:
                os.close(fd)
            with contextlib.suppress(OSError):  # (a client gone by now: nothing to tell it)
                conn.sendall(_STATUS.pack(pid))
            children[pid] = conn
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            conn = children.pop(pid, None)
            if conn is None:
                continue
            with contextlib.suppress(OSError):
                conn.sendall(_STATUS.pack(os.waitstatus_to_exitcode(status)))
            conn.close()


if __name__ == "__main__":
    serve(sys.argv[1])
