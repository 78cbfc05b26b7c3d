"""Run the runtime-only edgeres on a device over SSH: ``bench`` and ``validate`` with ``--remote HOST``.

LIGHT layer: standard library only.  The system OpenSSH client does the
work, so the user's ``~/.ssh/config`` (aliases, keys, agents, ``ProxyJump``)
just works, and strict host-key checking stays whatever the user set (edgeres
never turns it off).  Each run is one SSH session: the files travel as one
tar archive on the session's stdin into a fresh ``mktemp -d`` folder on the
device, the device's edgeres runs there and prints JSON, and the folder is
removed by a shell trap on every exit path (success, failure, a dropped
connection or Ctrl-C, which reaches the remote shell as SIGHUP); a second,
best-effort session removes it if the first could not confirm.

Commands are argument lists; the one string the remote shell sees is built
with :func:`shlex.quote` from them.  Host names are checked against the
grammar of what ``ssh`` accepts (a leading ``-`` would be an option
injection), and remote paths are quoted, so ``;``, ``$()`` and backticks
never run.
"""

from __future__ import annotations

import io
import json
import re
import shlex
import subprocess
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from edgeres.core.errors import EdgeresError, RuntimeUnavailableError, UsageError, first_line

# user@host, an ssh_config alias, a DNS name, IPv4, or [IPv6]: nothing a shell or ssh would read as syntax
_HOST = re.compile(r"^(?:[A-Za-z0-9._][A-Za-z0-9._+-]*@)?(?:[A-Za-z0-9_][A-Za-z0-9._-]*|\[[0-9A-Fa-f:.%]+\])$")
_PYTHON = re.compile(r"^[A-Za-z0-9_./+-]+$")
CONNECT_TIMEOUT_S = 15
RUN_TIMEOUT_S = 3600
NO_PYTHON, NO_EDGERES = 96, 97  # exit codes of the remote preamble (outside edgeres' own set)


class RemoteError(EdgeresError):
    """An SSH connection, a device without Python or edgeres, or a remote failure (exit code of the device's
    edgeres when it gave one, else 1)."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class Remote:
    host: str
    python: str = "python3"
    ssh_config: str | None = None  # ssh -F FILE; None: the user's own ~/.ssh/config

    def __post_init__(self) -> None:
        check_host(self.host)
        if not _PYTHON.match(self.python) or self.python.startswith("-"):
            raise UsageError(f"--remote-python {self.python!r} is not a plain path to an interpreter")


def check_host(host: str) -> str:
    if not host or host.startswith("-"):
        raise UsageError(f"refusing remote host {host!r}: a host may not be empty or start with '-' "
                         "(ssh would read it as an option)")
    if not _HOST.match(host):
        raise UsageError(f"refusing remote host {host!r}: use user@host, a host name, an IP address or an alias "
                         "from ~/.ssh/config (letters, digits, '.', '_', '-')")
    return host


def parse_hosts(values: tuple[str, ...] | list[str]) -> list[str]:
    """--remote given several times and/or as comma lists, in order, without repeats."""
    hosts: list[str] = []
    for v in values:
        for h in str(v).split(","):
            h = h.strip()
            if h and check_host(h) not in hosts:
                hosts.append(h)
    return hosts


def ssh_argv(remote: Remote, command: str) -> list[str]:
    """The local ssh invocation: options, then ``--`` so nothing after it is an option, then host and command."""
    argv = ["ssh"]
    if remote.ssh_config:
        argv += ["-F", remote.ssh_config]
    argv += ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}", "-o", "ServerAliveInterval=5",
             "-o", "ServerAliveCountMax=3", "--", remote.host, command]
    return argv


def remote_script(python: str, edgeres_argv: list[str]) -> str:
    """The one shell command the device runs: a private folder, the archive unpacked into it, edgeres, cleanup."""
    py = shlex.quote(python)
    run = " ".join(shlex.quote(a) for a in [python, "-m", "edgeres", *edgeres_argv])
    return (
        'd=$(mktemp -d "${TMPDIR:-/tmp}/edgeres.XXXXXXXX") || exit 1; '
        'echo "edgeres-remote-dir: $d" >&2; '
        "trap 'cd /; rm -rf \"$d\"' EXIT; trap 'exit 129' HUP; trap 'exit 130' INT; trap 'exit 143' TERM; "
        'cd "$d" || exit 1; '
        f"command -v {py} >/dev/null 2>&1 || {{ cat >/dev/null; echo \"no interpreter {python} on this host\" >&2; "
        f"exit {NO_PYTHON}; }}; "
        "tar -xf - || exit 1; "
        # stderr passes through a file, so a missing edgeres is told apart without a second interpreter start
        f"{run} 2> .edgeres-stderr; rc=$?; cat .edgeres-stderr >&2; "
        f"[ $rc = 1 ] && grep -q 'No module named edgeres' .edgeres-stderr && exit {NO_EDGERES}; exit $rc"
    )


def archive(files: dict[str, Path]) -> bytes:
    """One tar archive of the files (and folders) to ship, under the names the remote command uses."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, path in files.items():
            tar.add(str(path), arcname=name, recursive=True)
    return buf.getvalue()


@dataclass
class RemoteResult:
    host: str
    ok: bool
    result: dict | None = None
    error: str = ""
    exit_code: int = 0
    seconds: float = 0.0
    stderr: str = field(default="", repr=False)


def run_remote(remote: Remote, edgeres_argv: list[str], files: dict[str, Path],
               timeout: float = RUN_TIMEOUT_S) -> RemoteResult:
    """Run ``edgeres EDGERES_ARGV --json`` on the device with ``files`` beside it; the parsed JSON, or why not."""
    t0 = time.perf_counter()
    argv = ssh_argv(remote, remote_script(remote.python, [*edgeres_argv, "--json"]))
    try:
        proc = subprocess.run(argv, input=archive(files), capture_output=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise RuntimeUnavailableError("--remote needs the OpenSSH client ('ssh'); install it (apt install "
                                      "openssh-client)") from None
    except subprocess.TimeoutExpired:
        return RemoteResult(remote.host, False, error=f"{remote.host}: no result within {timeout:.0f} s",
                            exit_code=1, seconds=time.perf_counter() - t0)
    err = proc.stderr.decode("utf-8", "replace")
    res = RemoteResult(remote.host, proc.returncode == 0, exit_code=proc.returncode, stderr=err,
                       seconds=time.perf_counter() - t0)
    if proc.returncode == 0:
        try:
            res.result = json.loads(proc.stdout.decode("utf-8", "replace"))
        except ValueError:
            res.ok, res.exit_code = False, 1
            res.error = f"{remote.host}: the device's edgeres printed no JSON (is it an older version?)"
        return res
    res.error = explain(remote, proc.returncode, err)
    _cleanup(remote, err)
    if proc.returncode == 255 or proc.returncode in (NO_PYTHON, NO_EDGERES) or proc.returncode < 0:
        res.exit_code = 7 if proc.returncode in (NO_PYTHON, NO_EDGERES) else 1
    return res


def _cleanup(remote: Remote, stderr: str) -> None:
    """Best effort, after a failed session: remove the device's folder if the session could not say it did."""
    m = re.search(r"^edgeres-remote-dir: (/[A-Za-z0-9._/-]+/edgeres\.[A-Za-z0-9]{8})$", stderr, re.M)
    if m is None:
        return
    try:
        subprocess.run(ssh_argv(remote, "rm -rf " + shlex.quote(m.group(1))), capture_output=True, timeout=30,
                       check=False, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        pass


def explain(remote: Remote, code: int, stderr: str) -> str:
    """One line: what went wrong on (or on the way to) the device, and what to run to fix it."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip() and not ln.startswith("edgeres-remote-dir:")]
    edgeres_err = next((ln for ln in lines if ln.startswith("edgeres: error:")), None)
    if code == NO_PYTHON:
        return (f"{remote.host}: no Python at '{remote.python}'; on the device run: sudo apt install python3 "
                "python3-venv (or pass --remote-python PATH)")
    if code == NO_EDGERES:
        return (f"{remote.host}: edgeres is not installed for {remote.python}; on the device run: "
                f"{remote.python} -m pip install 'edgeres[runtime]'")
    if edgeres_err:
        return f"{remote.host}: {edgeres_err.removeprefix('edgeres: error: ')}"
    text = " ".join(lines)
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in text or "Host key verification failed" in text:
        fix = next((ln for ln in lines if "ssh-keygen" in ln or "Offending" in ln), "")
        return (f"{remote.host}: the host key does not match known_hosts, so ssh refused to connect (edgeres never "
                f"skips this check); if the device was reinstalled, remove the old key: "
                f"ssh-keygen -R {remote.host.split('@')[-1]}" + (f" ({fix})" if fix else ""))
    if "Permission denied" in text:
        return f"{remote.host}: the server refused the key (Permission denied); check ssh {remote.host} works"
    if code == 255:
        return f"{remote.host}: ssh failed: {first_line(Exception(lines[-1] if lines else 'connection failed'))}"
    if code < 0 or "closed by remote host" in text or "Broken pipe" in text:
        return f"{remote.host}: the connection dropped during the run"
    if any(k in text for k in ("No space left", "Wrote only", "Disk quota exceeded", "File too large")):
        return (f"{remote.host}: the device's temporary folder is full (No space left on device); free space in "
                "its TMPDIR (or /tmp)")
    return f"{remote.host}: the remote run failed (exit {code}): {lines[-1] if lines else 'no message'}"


RUNTIMES = ("ai-edge-litert", "tflite-runtime", "tensorflow", "onnxruntime")
_VERSIONS = ("import json\nfrom importlib import metadata as m\nout = {}\nfor d in %r:\n    try:\n"
             "        out[d] = m.version(d)\n    except m.PackageNotFoundError:\n        pass\nprint(json.dumps(out))")


def device_runtimes(remote: Remote, timeout: float = 60) -> dict[str, str]:
    """The inference runtimes installed for the device's interpreter, by distribution name."""
    cmd = " ".join(shlex.quote(a) for a in [remote.python, "-c", _VERSIONS % (RUNTIMES,)])
    try:
        proc = subprocess.run(ssh_argv(remote, cmd), capture_output=True, timeout=timeout, check=False,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RemoteError(f"{remote.host}: cannot ask the device for its runtimes: {first_line(exc)}") from None
    if proc.returncode != 0:
        code = NO_PYTHON if proc.returncode == 127 else proc.returncode
        raise RemoteError(explain(remote, code, proc.stderr.decode("utf-8", "replace")))
    try:
        return dict(json.loads(proc.stdout.decode("utf-8", "replace")))
    except ValueError:
        raise RemoteError(f"{remote.host}: the device's interpreter printed no runtime list") from None


def runtime_for(model: str, runtimes: dict[str, str]) -> str | None:
    """The spec of the runtime that would load ``model`` on a device with these runtimes (edgeres' own order)."""
    order = ("onnxruntime",) if str(model).lower().endswith(".onnx") else ("ai-edge-litert", "tflite-runtime",
                                                                           "tensorflow")
    name = next((n for n in order if n in runtimes), None)
    return f"{name}=={runtimes[name]}" if name else None


def run_fleet(remotes: list[Remote], edgeres_argv: list[str], files: dict[str, Path],
              timeout: float = RUN_TIMEOUT_S) -> list[RemoteResult]:
    """The same run on every device at once; one unreachable board does not stop the others."""
    if len(remotes) == 1:
        return [run_remote(remotes[0], edgeres_argv, files, timeout)]
    with ThreadPoolExecutor(max_workers=min(len(remotes), 16)) as pool:
        return list(pool.map(lambda r: run_remote(r, edgeres_argv, files, timeout), remotes))
