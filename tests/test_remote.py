"""``--remote``: bench and validate on a device over SSH, against a real OpenSSH server on 127.0.0.1.

The server is Debian's openssh-server (``.ci/run`` installs it), started per
session on a free port with a throwaway host key and user key; the client
reads an ssh_config file passed with ``--ssh-config`` (ssh -F), with strict
host-key checking on.  The "device" runs this interpreter's edgeres.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import CALIBRATION, assert_one_line_error, invoke
from tests.loopback_ssh import SSHD, Server, start_devices

DATA = CALIBRATION / "digits-test.npz"


@pytest.fixture(scope="session")
def ssh(tmp_path_factory):
    """Two loopback 'devices' (dev, dev2), plus a refused key (stranger) and a changed host key (moved)."""
    if not Path(SSHD).exists():
        pytest.skip("sshd is not installed (apt install openssh-server; .ci/run does)")
    root = tmp_path_factory.mktemp("ssh")
    config, servers = start_devices(root, 2)
    yield {"config": str(config), "root": root, "servers": servers}
    for s in servers:
        s.stop()


def _leftovers(ssh) -> list[str]:
    """The devices' session folders that exist now (their TMPDIR is private to this fixture)."""
    return sorted(p.name for p in (ssh["root"] / "device-tmp").glob("edgeres.????????"))


def remote_args(ssh, *hosts: str) -> list[str]:
    out = []
    for h in hosts:
        out += ["--remote", h]
    return out + ["--remote-python", sys.executable, "--ssh-config", ssh["config"]]


def test_bench_on_a_device_brings_back_its_json(ssh, default_run: Path):
    before = _leftovers(ssh)
    result = invoke("bench", default_run / "model_int8.tflite", default_run / "model_int8.onnx", "--runs", "5",
                    "--warmup", "1", *remote_args(ssh, "dev"), "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    (dev,) = out["devices"]
    assert dev["ok"] and dev["host"] == "dev"
    report = dev["report"]
    assert [Path(r["model"]).name for r in report["results"]] == ["model_int8.tflite", "model_int8.onnx"]
    assert report["machine"]["arch"] and report["machine"]["cpu"]  # the device's own metadata
    assert all(r["latency_ms"]["runs"] == 5 for r in report["results"])
    assert _leftovers(ssh) == before  # the device's folder is gone


def test_validate_on_a_device_uses_the_run_folders_preprocessing(ssh, default_run: Path):
    result = invoke("validate", default_run / "model_int8.tflite", "--data", DATA, "--val-size", "40",
                    "--reference", default_run / "model_fp32.tflite", *remote_args(ssh, "dev"), "--compare-local",
                    "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    remote, local = out["devices"][0]["result"], out["local"]
    assert remote["preprocess"]["from"] == "report.json"  # shipped beside the model
    assert remote["count"] == local["count"] == 40
    assert remote["top1"] == local["top1"] and remote["agreement"] == local["agreement"]
    assert "machine" in remote


def test_a_fleet_runs_in_parallel_and_one_bad_board_does_not_sink_the_rest(ssh, default_run: Path):
    result = invoke("bench", default_run / "model_int8.tflite", "--runs", "3", "--warmup", "0",
                    *remote_args(ssh, "dev,dev2", "stranger"))
    assert result.exit_code != 0
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith(("dev ", "dev2 ", "stranger "))]
    assert len(lines) == 3, result.stdout
    assert "FAILED" in next(ln for ln in lines if ln.startswith("stranger"))
    assert all("FAILED" not in ln for ln in lines if not ln.startswith("stranger"))
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("edgeres: error:")]
    assert len(errors) == 1 and "stranger" in errors[0] and "refused the key" in errors[0]


def test_a_changed_host_key_is_refused_with_the_fix(ssh, default_run: Path):
    result = invoke("bench", default_run / "model_int8.tflite", "--runs", "3", *remote_args(ssh, "moved"))
    assert_one_line_error(result, 1, "host key does not match", "ssh-keygen -R")


def test_a_device_without_python_or_without_edgeres_says_what_to_run(ssh, default_run: Path, tmp_path: Path):
    model = default_run / "model_int8.tflite"
    no_python = invoke("bench", model, "--runs", "3", "--remote", "dev", "--remote-python", "/nonexistent/python3",
                       "--ssh-config", ssh["config"])
    assert_one_line_error(no_python, 7, "no Python at '/nonexistent/python3'")
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    no_edgeres = invoke("bench", model, "--runs", "3", "--remote", "dev", "--remote-python", bare / "bin" / "python",
                        "--ssh-config", ssh["config"])
    assert_one_line_error(no_edgeres, 7, "edgeres is not installed", "pip install 'edgeres[runtime]'")


def test_the_devices_own_errors_come_back_as_one_line(ssh, tmp_path: Path, default_run: Path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    result = invoke("validate", default_run / "model_int8.tflite", "--data", bad, *remote_args(ssh, "dev"))
    assert_one_line_error(result, 4, "dev:")


@pytest.mark.parametrize("host", ["-oProxyCommand=touch CANARY", "dev;touch CANARY", "$(touch CANARY)",
                                  "`touch CANARY`", "dev touch", "a|b", ""])
def test_hostile_host_names_run_nothing(ssh, default_run: Path, tmp_path: Path, monkeypatch, host):
    monkeypatch.chdir(tmp_path)
    result = invoke("bench", default_run / "model_int8.tflite", "--runs", "3", "--remote", host or ",",
                    "--ssh-config", ssh["config"])
    assert not (tmp_path / "CANARY").exists()
    if host:
        assert_one_line_error(result, 2, "refusing remote host")


def test_hostile_remote_python_and_file_names_run_nothing(ssh, default_run: Path, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    odd = tmp_path / "m;touch CANARY;$(touch CANARY2).tflite"
    odd.write_bytes((default_run / "model_int8.tflite").read_bytes())
    result = invoke("bench", odd, "--runs", "3", *remote_args(ssh, "dev"), "--json")
    assert result.exit_code == 0, result.stderr
    bad_py = invoke("bench", odd, "--runs", "3", "--remote", "dev", "--remote-python", "python3;touch CANARY",
                    "--ssh-config", ssh["config"])
    assert_one_line_error(bad_py, 2, "--remote-python")
    assert not list(tmp_path.glob("CANARY*")) and not list(Path("/tmp").glob("CANARY*"))


def test_a_dropped_connection_fails_cleanly_and_leaves_nothing_on_the_device(ssh, default_run: Path):
    """Kill the session's sshd child while the device is timing a long run."""
    before = _leftovers(ssh)
    proc = subprocess.Popen([sys.executable, "-m", "edgeres", "bench", str(default_run / "model_fp32.onnx"),
                             "--min-time", "30", "--runs", "5", *remote_args(ssh, "dev")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 20
    victim = None
    while time.time() < deadline and victim is None:
        time.sleep(0.5)
        out = subprocess.run(["pgrep", "-f", "-P", str(ssh["servers"][0].proc.pid)], capture_output=True, text=True)
        children = [int(p) for p in out.stdout.split()]
        if children and len(_leftovers(ssh)) > len(before):
            victim = children[0]
    assert victim is not None, "the remote run never started"
    os.kill(victim, signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    errors = [ln for ln in err.splitlines() if ln.startswith("edgeres: error:")]
    assert len(errors) == 1 and "dev" in errors[0], err
    for _ in range(40):  # the device's edgeres notices on its next write; the trap then removes the folder
        if _leftovers(ssh) == before:
            break
        time.sleep(1)
    assert _leftovers(ssh) == before


def test_a_targets_ssh_host_is_the_default_device(ssh, default_run: Path, tmp_path: Path):
    target = tmp_path / "pi.toml"
    target.write_text(f'ssh_host = "dev"\nssh_python = "{sys.executable}"\n')
    result = invoke("bench", default_run / "model_int8.tflite", "--runs", "3", "--target", target,
                    "--ssh-config", ssh["config"], "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["devices"][0]["host"] == "dev"
    bad = tmp_path / "bad.toml"
    bad.write_text('ssh_host = "-oProxyCommand=x"\n')
    assert_one_line_error(invoke("bench", default_run / "model_int8.tflite", "--target", bad), 2, "ssh_host")


def test_a_full_disk_on_the_device_is_one_line_and_leaves_nothing(ssh, default_run: Path, tmp_path: Path):
    """The device's temporary folder on a 64 KiB tmpfs: the model does not fit."""
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    root = ssh["root"]
    server = Server(root, root / "user", root / "host", root / "authorized_keys", (f"SetEnv TMPDIR={small}",))
    try:
        pub = (root / "host.pub").read_text().split()
        known = tmp_path / "known_hosts"
        known.write_text(f"[127.0.0.1]:{server.port} {pub[0]} {pub[1]}\n")
        config = tmp_path / "ssh_config"
        config.write_text(f"Host full\n  HostName 127.0.0.1\n  Port {server.port}\n  User root\n"
                          f"  IdentityFile {root / 'user'}\n  IdentitiesOnly yes\n  UserKnownHostsFile {known}\n"
                          "  StrictHostKeyChecking yes\n  LogLevel ERROR\n")
        result = invoke("bench", default_run / "model_fp32.tflite", "--runs", "3", "--remote", "full",
                        "--remote-python", sys.executable, "--ssh-config", config)
        assert_one_line_error(result, 1, "full", "No space left")
        assert list(small.iterdir()) == []
    finally:
        server.stop()
        subprocess.run(["umount", str(small)], capture_output=True)


def test_check_asks_the_device_which_runtime_it_has(ssh, default_run: Path):
    result = invoke("check", default_run / "model_int8.tflite", "--remote", "dev", "--remote-python", sys.executable,
                    "--ssh-config", ssh["config"], "--json")
    assert result.exit_code == 0, result.stderr
    from importlib.metadata import version

    rt = json.loads(result.stdout)["runtime"]
    assert (rt["name"], rt["version"]) == ("ai-edge-litert", version("ai-edge-litert"))  # what the device has
    assert_one_line_error(invoke("check", default_run / "model_int8.tflite", "--remote", "-oProxyCommand=x"), 2,
                          "refusing remote host")
