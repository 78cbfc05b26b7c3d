"""The run folder under stress: concurrent runs, files dropped in mid-run, signals, a full disk, bad -o values.

Most tests drive ``staged_dir``/``check_output_dir`` directly on tiny files, or ``-o`` values the CLI
refuses before loading the model.  Four (marked slow) run the real ``edgeres convert --int8`` of the
embedded default, about 8 s a run: two runs at once into one folder, SIGTERM and SIGKILL at a random
point (1-6 s in; staging starts about 4 s in), and a full disk.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from edgeres.core import fs
from edgeres.core.errors import OutputExistsError, UsageError
from edgeres.core.fs import OutputWriteError, check_output_dir, staged_dir, write_bytes_atomic
from edgeres.core.stop import SIGTERM_EXIT
from tests.conftest import CALIBRATION, ROOT, assert_one_line_error, invoke

ARTIFACTS = ("model_fp32.tflite", "model_int8.tflite", "model_fp32.onnx", "model_int8.onnx")
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}


def leftovers(folder: Path) -> list[str]:
    """Hidden staging, aside and lock entries in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and
                  any(tag in p.name for tag in (".partial-", ".old-", ".lock")))


def previous_run(out: Path) -> dict[str, bytes]:
    """A stand-in for an earlier complete run at ``out``: what must survive a failed or killed run."""
    out.mkdir(parents=True)
    (out / "report.json").write_text(json.dumps({"previous": True}))
    (out / "model_int8.tflite").write_bytes(b"previous model")
    return snapshot(out)


def snapshot(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def assert_complete_run(out: Path) -> None:
    report = json.loads((out / "report.json").read_text())
    assert report["passed"] is True
    for name in ARTIFACTS:
        assert (out / name).stat().st_size > 0, name


def run_python(code: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def convert_process(out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edgeres", "convert", "--int8", "-o", str(out), *extra],
                            cwd=out.parent, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("edgeres: error:")]


# ------------------------------------------------------------------ the staged folder and its lock

def test_stage_lock_and_publish(tmp_path: Path):
    out = tmp_path / "out"
    with staged_dir(out, False) as stage:
        assert stage.parent == tmp_path and stage.name.startswith(".out.partial-")
        assert (tmp_path / ".out.lock").exists()  # beside the output, never inside the run folder
        write_bytes_atomic(stage / "a.bin", b"a")
    assert sorted(os.listdir(out)) == ["a.bin"]
    assert leftovers(tmp_path) == []  # the lock file is removed at the end too


def test_second_run_into_the_same_folder_fails_at_once(tmp_path: Path):
    out = tmp_path / "out"
    with staged_dir(out, False) as stage:
        (stage / "first").write_text("1")
        t0 = time.monotonic()
        for attempt in (lambda: staged_dir(out, True).__enter__(), lambda: check_output_dir(out, True)):
            with pytest.raises(OutputExistsError, match=r"another edgeres run is writing .*\.out\.lock held"):
                attempt()
        assert time.monotonic() - t0 < 5
    assert sorted(os.listdir(out)) == ["first"]
    assert leftovers(tmp_path) == []


def test_a_folder_where_the_lock_cannot_be_created_is_a_write_error_not_a_busy_lock():
    # filelock waits for a lock file it cannot create as if another run held it; /proc refuses new files
    # even to root, which ignores permission bits
    if not os.path.isdir("/proc/self"):
        pytest.skip("needs Linux /proc: a folder where even root cannot create a file")
    for attempt in (lambda: check_output_dir(Path("/proc/edgeres-out"), False),
                    lambda: staged_dir(Path("/proc/edgeres-out"), False).__enter__()):
        with pytest.raises(OutputWriteError, match=r"cannot write /proc/\.edgeres-out\.lock: ") as err:
            attempt()
        assert "another edgeres run" not in str(err.value)


def test_file_dropped_into_empty_output_during_a_run_is_kept(tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(OutputExistsError, match="appeared"):
        with staged_dir(out, False) as stage:
            (stage / "report.json").write_text("{}")
            (out / "mine.txt").write_text("the user's")
    assert (out / "mine.txt").read_text() == "the user's" and sorted(os.listdir(out)) == ["mine.txt"]
    assert leftovers(tmp_path) == []


def test_output_created_by_someone_else_during_a_run_is_kept(tmp_path: Path):
    out = tmp_path / "out"
    with pytest.raises(OutputExistsError):
        with staged_dir(out, False) as stage:
            (stage / "report.json").write_text("{}")
            out.mkdir()
            (out / "theirs.txt").write_text("x")
    assert sorted(os.listdir(out)) == ["theirs.txt"]
    assert leftovers(tmp_path) == []


def test_force_replaces_a_previous_run_and_leaves_nothing_aside(tmp_path: Path):
    out = tmp_path / "out"
    previous_run(out)
    with staged_dir(out, True) as stage:
        (stage / "report.json").write_text("new")
    assert sorted(os.listdir(out)) == ["report.json"] and (out / "report.json").read_text() == "new"
    assert leftovers(tmp_path) == []


def test_a_failing_run_keeps_the_previous_run(tmp_path: Path):
    out = tmp_path / "out"
    before = previous_run(out)
    with pytest.raises(RuntimeError):
        with staged_dir(out, True) as stage:
            (stage / "report.json").write_text("half")
            raise RuntimeError("converter failed")
    assert snapshot(out) == before
    assert leftovers(tmp_path) == []


def test_stale_stage_and_lock_of_a_killed_run_do_not_block_the_next(tmp_path: Path):
    out = tmp_path / "out"
    (tmp_path / ".out.partial-k1ll3d_x").mkdir()
    (tmp_path / ".out.partial-k1ll3d_x" / "model_fp32.tflite").write_bytes(b"half")
    (tmp_path / ".out.lock").write_text("")  # a SIGKILLed run's: the kernel dropped its flock
    (tmp_path / ".other.partial-abcdefgh").mkdir()  # another output's stage is not ours to remove
    with staged_dir(out, False) as stage:
        (stage / "report.json").write_text("{}")
    assert sorted(os.listdir(out)) == ["report.json"]
    assert leftovers(tmp_path) == [".other.partial-abcdefgh"]


# ------------------------------------------------------------------ output paths refused up front

@pytest.mark.parametrize("name", [".", "..", "", "sub/..", "./"])
def test_output_without_a_name_of_its_own_is_refused(tmp_path: Path, monkeypatch, name: str):
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path)
    for force in (False, True):
        with pytest.raises(UsageError, match="name of its own"):
            check_output_dir(Path(name), force)
    assert sorted(os.listdir(tmp_path)) == ["sub"]


def test_current_home_and_root_folders_are_refused(tmp_path: Path, monkeypatch):
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    (tmp_path / "root-link").symlink_to("/")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    for out, what in ((work, "current folder"), (home, "home folder"), (tmp_path, "current folder"),
                      (work / "..", "name of its own"), (Path("/"), "name of its own"),
                      (tmp_path / "root-link", "filesystem root")):
        with pytest.raises(UsageError, match=what):
            check_output_dir(out, True)
    check_output_dir(work / "run", True)  # a new folder inside them is fine


def test_output_holding_or_inside_the_inputs_is_refused(tmp_path: Path):
    data = tmp_path / "data"
    (data / "0").mkdir(parents=True)
    model = tmp_path / "run" / "model.keras"
    model.parent.mkdir()
    model.write_bytes(b"k")
    cases = [(tmp_path / "run", [model], "holds this run's input"),
             (data, [None, "resnet20", data], "holds this run's input"),
             (data / "0" / "run", [data], "inside this run's input folder"),
             (tmp_path, [data], "holds this run's input")]
    for out, inputs, message in cases:
        with pytest.raises(UsageError, match=message):
            check_output_dir(out, True, inputs=inputs)
    check_output_dir(tmp_path / "elsewhere", False, inputs=[model, data, "resnet20", None])
    assert model.read_bytes() == b"k"


@pytest.mark.parametrize("force", [False, True])
def test_symlink_output_is_refused_and_its_target_untouched(tmp_path: Path, force: bool):
    target = tmp_path / "target"
    before = previous_run(target)
    link, dangling = tmp_path / "out", tmp_path / "dangling"
    link.symlink_to(target, target_is_directory=True)
    dangling.symlink_to(tmp_path / "nowhere")
    for out in (link, dangling):
        with pytest.raises(UsageError, match="symbolic link"):
            check_output_dir(out, force)
        with pytest.raises(UsageError, match="symbolic link"):
            with staged_dir(out, force):
                pytest.fail("never staged")
    assert link.is_symlink() and os.readlink(link) == str(target) and snapshot(target) == before
    assert leftovers(tmp_path) == []


def test_symlink_appearing_during_a_run_is_not_replaced(tmp_path: Path):
    target = tmp_path / "target"
    before = previous_run(target)
    out = tmp_path / "out"
    with pytest.raises(OutputExistsError, match="link"):
        with staged_dir(out, True) as stage:
            (stage / "report.json").write_text("{}")
            out.symlink_to(target, target_is_directory=True)
    assert out.is_symlink() and snapshot(target) == before
    assert leftovers(tmp_path) == []


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="running as root: file permissions are not enforced, chmod 0o500 cannot make a folder "
                           "unwritable (the same checks are run with _can_write stubbed below)")
def test_unwritable_parent_and_unwritable_previous_run(tmp_path: Path):
    locked = tmp_path / "locked"
    locked.mkdir()
    prev = tmp_path / "prev"
    previous_run(prev)
    locked.chmod(0o500)
    prev.chmod(0o500)
    try:
        for out, force in ((locked / "out", False), (locked / "a" / "b" / "out", True), (prev, True)):
            with pytest.raises(OutputWriteError, match="not writable"):
                check_output_dir(out, force)
            with pytest.raises(OutputWriteError):
                with staged_dir(out, force):
                    pytest.fail("never staged")
        assert os.listdir(locked) == [] and sorted(os.listdir(prev)) == ["model_int8.tflite", "report.json"]
    finally:
        locked.chmod(0o700)
        prev.chmod(0o700)
    assert leftovers(tmp_path) == []


def test_unwritable_parent_is_refused_before_staging(tmp_path: Path, monkeypatch):
    """The same rule as above where permissions are not enforced: the check, not the kernel, refuses."""
    monkeypatch.setattr(fs, "_can_write", lambda folder: Path(folder).resolve() != tmp_path.resolve())
    with pytest.raises(OutputWriteError, match=re.escape(f"{tmp_path.name} is not writable")):
        with staged_dir(tmp_path / "out", True):
            pytest.fail("never staged")
    assert os.listdir(tmp_path) == []


def test_cli_refuses_bad_output_folders_before_loading_the_model(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(invoke("convert", "--int8", "-o", "."), 2, "'.'")
    assert_one_line_error(invoke("convert", "--int8", "-o", ".", "--force"), 2, "name of its own")
    run = tmp_path / "run"
    run.mkdir()
    calib = shutil.copy(CALIBRATION / "digits-train.npz", run / "calib.npz")
    result = invoke("convert", "--int8", "--calib", calib, "-o", run, "--force")
    assert_one_line_error(result, 2, "holds this run's input", "calib.npz")
    assert (run / "calib.npz").is_file()
    (tmp_path / "link").symlink_to(run, target_is_directory=True)
    assert_one_line_error(invoke("convert", "--int8", "-o", tmp_path / "link", "--force"), 2, "symbolic link")
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------ a full disk

class _FullDisk:
    """A file object whose writes fail as on a full disk."""

    def __init__(self, f):
        self._f = f

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self._f, name)


def fill_disk(monkeypatch, under: str = "") -> None:
    """From now on, binary writes through os.fdopen (write_bytes_atomic's) to paths containing ``under`` fail."""
    real = os.fdopen

    def fdopen(fd, mode="r", *args, **kwargs):
        f = real(fd, mode, *args, **kwargs)
        if "w" in mode and under in os.readlink(f"/proc/self/fd/{fd}"):
            return _FullDisk(f)
        return f

    if not os.path.exists("/proc/self/fd"):
        pytest.skip("needs /proc/self/fd to tell the run folder's writes from others")
    monkeypatch.setattr(os, "fdopen", fdopen)


def test_full_disk_in_write_bytes_atomic(tmp_path: Path, monkeypatch):
    target = tmp_path / "result.json"
    target.write_text("previous")
    fill_disk(monkeypatch)
    with pytest.raises(OutputWriteError, match="No space left on device"):
        write_bytes_atomic(target, b"new")
    assert target.read_text() == "previous" and os.listdir(tmp_path) == ["result.json"]


def test_full_disk_during_a_run_keeps_the_previous_run(tmp_path: Path, monkeypatch):
    out = tmp_path / "out"
    before = previous_run(out)
    fill_disk(monkeypatch, ".out.partial-")
    with pytest.raises(OutputWriteError, match="No space left on device"):
        with staged_dir(out, True) as stage:
            write_bytes_atomic(stage / "model_fp32.tflite", b"x" * 1000)
    monkeypatch.undo()
    with pytest.raises(OutputWriteError, match="No space left on device"):  # from any writer in the run
        with staged_dir(out, True):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "somewhere")
    assert snapshot(out) == before
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------ signals and modes, in small subprocesses

def test_sigterm_during_a_staged_run_removes_the_stage_and_exits_143(tmp_path: Path):
    proc = run_python("""
        import os, signal, time
        from pathlib import Path
        from edgeres.core.fs import staged_dir
        with staged_dir(Path("out"), False) as stage:
            (stage / "model.tflite").write_bytes(b"half")
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)
        """, tmp_path)
    assert proc.returncode == SIGTERM_EXIT, proc.stderr
    assert os.listdir(tmp_path) == []  # no stage, no output, no lock file


def test_sigterm_while_publishing_is_held_until_the_rename_is_done(tmp_path: Path):
    proc = run_python("""
        import os, signal
        from pathlib import Path
        from edgeres.core import fs
        real = os.replace
        def replace(src, dst):  # SIGTERM arrives between the two renames of a --force run
            real(src, dst)
            os.replace = real
            os.kill(os.getpid(), signal.SIGTERM)
        Path("out").mkdir(); Path("out/old").write_text("previous")
        with fs.staged_dir(Path("out"), True) as stage:
            (stage / "report.json").write_text("new")
            fs.os.replace = replace
        """, tmp_path)
    assert proc.returncode == SIGTERM_EXIT, proc.stderr
    assert os.listdir(tmp_path) == ["out"] and os.listdir(tmp_path / "out") == ["report.json"]


@pytest.mark.parametrize("umask, dir_mode, file_mode", [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600),
                                                         (0o002, 0o775, 0o664)])
def test_run_folder_modes_follow_the_umask(tmp_path: Path, umask: int, dir_mode: int, file_mode: int):
    proc = run_python(f"""
        import os, stat
        os.umask({umask})
        from pathlib import Path
        from edgeres.core.fs import staged_dir, write_text_atomic
        with staged_dir(Path("out"), False) as stage:
            write_text_atomic(stage / "report.json", "{{}}")
        print(oct(stat.S_IMODE(os.stat("out").st_mode)), oct(stat.S_IMODE(os.stat("out/report.json").st_mode)))
        """, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [oct(dir_mode), oct(file_mode)]


# ------------------------------------------------------------------ end to end: the real convert

@pytest.mark.slow
def test_two_converts_into_one_folder_exactly_one_wins(tmp_path: Path):
    out = tmp_path / "run"
    procs = [convert_process(out), convert_process(out)]
    results = [(p.returncode, *p.communicate(timeout=300)) for p in procs]
    results = [(p.returncode, out_, err) for p, (_, out_, err) in zip(procs, results)]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 8], results
    _, _, loser_err = next(r for r in results if r[0] == 8)
    assert len(error_lines(loser_err)) == 1 and "Traceback" not in loser_err, loser_err
    assert "another edgeres run is writing" in loser_err or "already exists" in loser_err, loser_err
    assert_complete_run(out)
    assert sorted(os.listdir(out)) == sorted([*ARTIFACTS, "report.json", "report.md"])
    assert leftovers(tmp_path) == []


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_convert_killed_at_a_random_point(tmp_path: Path, sig: signal.Signals):
    out = tmp_path / "run"
    before = previous_run(out)
    delay = random.uniform(1, 6)
    proc = convert_process(out, "--force")
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(sig)
    code = proc.wait(timeout=120)
    _, stderr = proc.communicate()
    where = f"{sig.name} after {delay:.1f} s: exit {code}\n{stderr}"
    if snapshot(out) != before:  # the run was renamed into place before the signal (or finished first)
        assert_complete_run(out)
    else:
        assert code != 0, where  # a run that says it succeeded has replaced the previous one
    assert not list(tmp_path.glob(".run.old-*")), where
    if sig == signal.SIGTERM:
        # never a segfault (-11), nor a SIGTERM a converter swallowed (the run went on: exit 0 or 6);
        # -15 only while Python starts, before edgeres handles the signal
        assert code in (0, SIGTERM_EXIT, -signal.SIGTERM), where
        assert code != 0 or "terminated" not in stderr, where
        assert not list(tmp_path.glob(".run.partial-*")), where
        if code == SIGTERM_EXIT:
            assert "Traceback" not in stderr and not (tmp_path / ".run.lock").exists(), where
            assert error_lines(stderr) == [] and "edgeres: warning: terminated (SIGTERM)" in stderr, where
    else:
        assert code in (0, -signal.SIGKILL), where
    # a stage or lock file a SIGKILL left behind never blocks the next run, which clears the stage
    with staged_dir(out, True) as stage:
        (stage / "report.json").write_text("{}")
    assert leftovers(tmp_path) == []


@pytest.mark.slow
def test_convert_on_a_full_disk_keeps_the_previous_run(tmp_path: Path, monkeypatch):
    out = tmp_path / "run"
    before = previous_run(out)
    fill_disk(monkeypatch, ".run.partial-")
    result = invoke("convert", "--int8", "-o", out, "--force")
    assert_one_line_error(result, 8, "No space left on device")
    assert snapshot(out) == before
    assert leftovers(tmp_path) == []


def test_a_sigterm_a_converter_would_swallow_still_terminates_at_once(tmp_path: Path):
    """TensorFlow's converter calls back into Python (the representative dataset): an exception raised there
    was turned into the converter's own error (the run went on, or exited 6), or left its state broken (a
    segfault).  The handler raises nothing: it removes the stage and the lock, and exits 143 at once."""
    proc = run_python("""
        import os, signal, time
        from pathlib import Path
        from edgeres.core.fs import staged_dir
        with staged_dir(Path("run"), False) as stage:
            (stage / "model_int8.tflite").write_bytes(b"half")
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
            except BaseException:
                pass  # what a converter does with an exception raised inside it
            print("went on")
        """, tmp_path)
    assert proc.returncode == SIGTERM_EXIT, proc.stderr
    assert "went on" not in proc.stdout
    assert "Traceback" not in proc.stderr and "the unfinished run folder was removed" in proc.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_a_stop_removes_temporary_folders_and_stops_child_processes(tmp_path: Path, sig, code):
    proc = run_python(f"""
        import os, signal, subprocess, sys, time
        from edgeres.core.stop import stops_cleanly, temp_dir
        with stops_cleanly((signal.SIGINT, signal.SIGTERM)), temp_dir("edgeres-test-") as tmp:
            child = subprocess.Popen(["sleep", "60"])
            print(tmp, child.pid, flush=True)
            os.kill(os.getpid(), {int(sig)})
            time.sleep(5)
        print("went on")
        """, tmp_path)
    assert proc.returncode == code, proc.stderr
    tmp, pid = proc.stdout.split()
    assert not Path(tmp).exists()
    deadline = time.monotonic() + 5
    while _alive(int(pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(int(pid)), "the child process outlived the stopped run"


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"  # a zombie has ended; init reaps it
