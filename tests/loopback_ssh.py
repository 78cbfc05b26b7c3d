"""Loopback SSH 'devices' for the remote tests and benchmarks: real OpenSSH sshd on 127.0.0.1.

Each server runs on a free port with a throwaway host key; one user key is
authorized.  :func:`start_devices` writes an ssh_config (for ``ssh -F``)
naming them ``dev``, ``dev2``, ... with strict host-key checking on, plus
``stranger`` (a key the server refuses) and ``moved`` (a known_hosts entry
that does not match).  Standard library only.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


class Server:
    def __init__(self, root: Path, user_key: Path, host_key: Path, authorized: Path, extra: tuple[str, ...] = ()):
        self.root, self.port = root, _free_port()
        self.config = root / f"sshd_config_{self.port}"
        self.config.write_text("\n".join([
            f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {host_key}",
            f"AuthorizedKeysFile {authorized}", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "UsePAM no", "StrictModes no", "PermitRootLogin prohibit-password", f"PidFile {root}/sshd{self.port}.pid",
            "LogLevel ERROR", "MaxStartups 50", *extra]) + "\n")
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.config)], stderr=subprocess.DEVNULL)
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("sshd did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def start_devices(root: Path, n: int = 2) -> tuple[Path, list[Server]]:
    """``n`` loopback servers and the ssh_config that names them; call ``stop()`` on each when done."""
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege-separation folder
    root.mkdir(parents=True, exist_ok=True)
    for name in ("host", "user", "stranger", "other_host"):
        _keygen(root / name)
    (root / "authorized_keys").write_text((root / "user.pub").read_text())
    tmp = root / "device-tmp"  # the devices' own TMPDIR, so a test sees only its own sessions' folders
    tmp.mkdir(exist_ok=True)
    servers = [Server(root, root / "user", root / "host", root / "authorized_keys", (f"SetEnv TMPDIR={tmp}",))
               for _ in range(n)]
    pub = (root / "host.pub").read_text().split()
    (root / "known_hosts").write_text("".join(f"[127.0.0.1]:{s.port} {pub[0]} {pub[1]}\n" for s in servers))
    wrong = (root / "other_host.pub").read_text().split()
    (root / "known_hosts_wrong").write_text(f"[127.0.0.1]:{servers[0].port} {wrong[0]} {wrong[1]}\n")
    entries = [(f"dev{i + 1 if i else ''}", s, "user", "known_hosts") for i, s in enumerate(servers)]
    entries += [("stranger", servers[0], "stranger", "known_hosts"), ("moved", servers[0], "user", "known_hosts_wrong")]
    lines = []
    for alias, server, key, known in entries:
        lines += [f"Host {alias}", "  HostName 127.0.0.1", f"  Port {server.port}", "  User root",
                  f"  IdentityFile {root / key}", "  IdentitiesOnly yes", f"  UserKnownHostsFile {root / known}",
                  "  StrictHostKeyChecking yes", "  LogLevel ERROR"]
    config = root / "ssh_config"
    config.write_text("\n".join(lines) + "\n")
    return config, servers
