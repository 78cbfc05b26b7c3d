"""Ray for work that outgrows one machine (issue #13 part 6), on a real Ray: no mocks.

Tallies of shards merge into the sequential figures bit for bit; the Ray
executor maps as the local one does; ``edgeres validate --ray`` gives the
sequential run's JSON on a private local Ray, on a two-node cluster, and
when a worker dies mid-run; its errors are one line with their exit code.

The in-process tests share one two-node cluster per module (``cluster``:
head and one added node, 1 CPU each), each xdist worker its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeres.core.data import open_dataset
from edgeres.core.errors import ClusterError, DataError
from edgeres.core.executor import Executor, LocalExecutor
from edgeres.core.metrics import Tally, merge_tallies
from edgeres.measure.shards import MIN_SHARD_BATCHES, SHARDS_PER_WORKER, shard_bounds
from edgeres.measure.validate import run_validate
from tests.conftest import CALIBRATION, ROOT, assert_one_line_error, invoke

NPZ = CALIBRATION / "digits-test.npz"  # 500 real 8x8 digits, labelled


def _need_ray():
    return pytest.importorskip("ray", reason="Ray is not installed (pip install 'edgeres[cluster]')")


# --------------------------------------------------------------------------- tallies: no Ray needed


def _batches(seed: int, sizes: list[int], width: int, labelled: bool, with_ref: bool) -> list[tuple]:
    rng = np.random.default_rng(seed)
    out = []
    for n in sizes:
        o = (rng.normal(size=(n, width)) * 10.0 ** rng.uniform(-3, 3)).astype(np.float32)
        y = rng.integers(0, width, n) if labelled else None
        ref = (o + rng.normal(scale=0.1, size=o.shape)).astype(np.float32) if with_ref else None
        out.append((o, y, ref))
    return out


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), sizes=st.lists(st.integers(1, 9), min_size=1, max_size=12),
       width=st.sampled_from([1, 3, 10, 12]), labelled=st.booleans(), with_ref=st.booleans(), data=st.data())
def test_shard_tallies_merge_into_the_sequential_figures_bit_for_bit(seed, sizes, width, labelled, with_ref,
                                                                      data):
    batches = _batches(seed, sizes, width, labelled, with_ref)
    topk = 5 if width > 10 else 1
    whole = Tally(topk=topk)
    for b in batches:
        whole.update(*b)
    cuts = sorted(data.draw(st.sets(st.integers(1, len(batches) - 1), max_size=len(batches) - 1))
                  if len(batches) > 1 else set())
    parts = []
    for a, z in zip([0, *cuts], [*cuts, len(batches)]):
        t = Tally(topk=topk)
        for b in batches[a:z]:
            t.update(*b)
        parts.append(t)
    merged = merge_tallies(parts)
    assert merged.result() == whole.result()  # exact: top-1, top-k, agreement, SQNR, max abs diff
    assert (merged.signal, merged.noise) == (whole.signal, whole.noise)
    assert (merged.lost, merged.gained, merged.disagree) == (whole.lost, whole.gained, whole.disagree)
    np.testing.assert_array_equal(merged.predictions, whole.predictions)
    assert parts[0].merge(parts[1:]).result() == whole.result()
    # the same images batched differently: the squared sums are per image, so still the same figures
    rows = [np.concatenate([b[k] for b in batches]) if batches[0][k] is not None else None for k in range(3)]
    rebatched = Tally(topk=topk)
    for i in range(0, len(rows[0]), 4):
        rebatched.update(*(r[i:i + 4] if r is not None else None for r in rows))
    assert rebatched.result() == whole.result()


def test_merging_refuses_tallies_of_different_topk():
    assert merge_tallies([]).result() == {"count": 0}
    with pytest.raises(ValueError, match="top-k"):
        merge_tallies([Tally(topk=1), Tally(topk=5)])


@given(n=st.integers(1, 5000), batch=st.integers(1, 64), workers=st.integers(1, 64))
def test_shards_cover_the_items_on_batch_bounds(n, batch, workers):
    bounds = shard_bounds(n, batch, workers)
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(b == c for (_, b), (c, _) in zip(bounds, bounds[1:]))
    assert all(a % batch == 0 for a, _ in bounds)
    assert len(bounds) <= SHARDS_PER_WORKER * workers
    if len(bounds) > 1:
        assert all(b - a >= MIN_SHARD_BATCHES * batch for a, b in bounds[:-1])


def test_a_shard_refuses_an_npz_that_differs_where_it_runs(tmp_path: Path):
    shard = open_dataset(NPZ).shard(0, 10)
    small = tmp_path / "digits.npz"
    d = np.load(NPZ)
    np.savez(small, x=d["x"][:100], y=d["y"][:100])
    moved = type(shard)(str(small), "npz", shard.items, shard.labels, None, shard.rows)
    with pytest.raises(DataError, match="holds 100 images here but 500"):
        moved.open("validation")


def _without_executor(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "executor"}


def test_sharded_validation_on_the_local_executor_equals_the_sequential_run(default_run: Path):
    args = (str(default_run / "model_int8.tflite"), str(NPZ))
    kw = {"reference": str(default_run / "model_fp32.onnx"), "batch_size": 8, "val_size": 300, "seed": 3}
    sequential = run_validate(*args, **kw)
    sharded = run_validate(*args, **kw, executor=LocalExecutor(workers=3))
    assert sharded["executor"] == {"backend": "local", "workers": 3, "shards": 9}
    assert _without_executor(sharded) == sequential
    assert run_validate(*args, **kw, executor=LocalExecutor())["executor"]["shards"] == 1


# --------------------------------------------------------------------------- a real Ray


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    """Two Ray nodes on this machine, 1 CPU each, for the whole module; the head serves Ray Client too
    (``cluster.client_port``)."""
    _need_ray()
    from ray.cluster_utils import Cluster

    port = _free_port()
    c = Cluster(initialize_head=True, connect=False, head_node_args={
        "num_cpus": 1, "include_dashboard": False, "ray_client_server_port": port})
    c.client_port = port
    try:
        c.add_node(num_cpus=1)
        c.wait_for_nodes()
        yield c
    finally:
        c.shutdown()


@pytest.fixture(scope="module")
def executor(cluster):
    """This process connected to ``cluster``: every in-process --ray run reuses the connection."""
    from edgeres.cluster import RayExecutor

    with RayExecutor(cluster.address) as ex:
        yield ex


def _slow_square(shared: int, item: int) -> int:
    time.sleep(0.02 * (8 - item % 8))  # later items finish first
    return item * item + shared


def _node(shared, item) -> str:
    import ray

    time.sleep(0.3)
    return ray.get_runtime_context().get_node_id()


def test_ray_maps_like_the_local_executor(executor):
    assert isinstance(executor, Executor)
    assert executor.describe() | {"ray": None} == {"backend": "ray", "ray": None, "address": executor.address,
                                                   "nodes": 2, "cpus": 2, "workers": 2}
    seen = []
    got = executor.map(_slow_square, range(16), shared=7, progress=lambda i, r: seen.append((i, r)))
    assert got == LocalExecutor().map(_slow_square, range(16), shared=7) == [i * i + 7 for i in range(16)]
    assert sorted(seen) == list(enumerate(got))
    assert executor.map(_slow_square, [], shared=0) == []
    assert len(set(executor.map(_node, range(4)))) == 2  # the work spreads over both nodes


def test_a_worker_that_cannot_import_the_task_says_so(executor, tmp_path: Path, monkeypatch):
    (tmp_path / "only_on_the_driver.py").write_text("def task(shared, item):\n    return item\n")
    monkeypatch.syspath_prepend(tmp_path)  # after the connection: the workers do not get it
    import only_on_the_driver

    with pytest.raises(ClusterError, match="cannot import only_on_the_driver: every node needs the same edgeres"):
        executor.map(only_on_the_driver.task, [1])


def _validate_json(*args) -> dict:
    result = invoke("validate", *args, "--json")
    assert result.exit_code == 0, result.output + result.stderr
    return json.loads(result.stdout)


def test_validate_on_two_nodes_equals_the_sequential_run(executor, default_run: Path, digits_folder: Path):
    args = (default_run / "model_int8.tflite", "--data", digits_folder, "--reference",
            default_run / "model_fp32.onnx", "--val-size", 400, "--seed", 1)
    sequential = _validate_json(*args)
    sharded = _validate_json(*args, "--ray", executor.address)
    ex = sharded.pop("executor")
    assert sharded == sequential
    assert (ex["nodes"], ex["workers"], ex["shards"]) == (2, 2, 3)  # 13 batches of 32: 3 shards of 4+ batches
    human = invoke("validate", *args, "--ray", executor.address)
    assert human.exit_code == 0 and f"executor       Ray at {ex['address']}: 2 node(s), 2 CPUs, 3 shard(s)" in (
        human.stdout), human.stdout


class _DiesOnce:
    """Runs the task, then kills its worker the first time (a marker file says it happened): its result
    is lost with it, so Ray must run the task again."""

    def __init__(self, fn, marker: Path):
        self.fn, self.marker = fn, marker

    def __call__(self, shared, item):
        result = self.fn(shared, item)
        try:
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return result
        os._exit(1)


class _Dying:
    """An executor whose first task dies after doing its work."""

    def __init__(self, inner, marker: Path):
        self.inner, self.marker, self.workers = inner, marker, inner.workers

    def describe(self) -> dict:
        return self.inner.describe()

    def map(self, fn, items, *, shared=None, progress=None):
        return self.inner.map(_DiesOnce(fn, self.marker), items, shared=shared, progress=progress)


def test_a_worker_that_dies_is_retried_and_nothing_counts_twice(executor, default_run: Path, tmp_path: Path):
    args = (str(default_run / "model_int8.tflite"), str(NPZ))
    kw = {"reference": str(default_run / "model_fp32.onnx"), "batch_size": 16}
    marker = tmp_path / "died"
    done = []
    sharded = run_validate(*args, **kw, executor=_Dying(executor, marker), progress=done.append)
    assert marker.exists()  # a worker did die
    assert sum(done) == 500  # every shard reported once
    assert _without_executor(sharded) == run_validate(*args, **kw)


def test_unreadable_images_are_skipped_and_reported_once(executor, default_run: Path, digits_folder: Path,
                                                         tmp_path: Path):
    import shutil

    data = tmp_path / "digits"
    shutil.copytree(digits_folder, data)
    files = sorted(data.glob("*/*.png"))
    for i in (0, 150, 499):  # the batches after them shift: the figures still agree
        files[i].write_bytes(b"not a png")
    args = (default_run / "model_int8.tflite", "--data", data)
    sequential, sharded = invoke("validate", *args, "--json"), invoke("validate", *args, "--json", "--ray")
    assert sequential.exit_code == sharded.exit_code == 0, sharded.output + sharded.stderr
    assert json.loads(sequential.stdout) == _without_executor(json.loads(sharded.stdout))
    assert json.loads(sharded.stdout)["count"] == 497
    assert sharded.stderr == sequential.stderr and sharded.stderr.count("skipped 3 of 500 images") == 1


def test_an_error_in_a_task_reaches_the_driver_as_itself(executor, default_run: Path, digits_folder: Path,
                                                        tmp_path: Path):
    import shutil

    data = tmp_path / "digits"
    shutil.copytree(digits_folder, data)
    bad = sorted(data.glob("*/*.png"))[-1]
    bad.write_bytes(b"not a png")
    result = invoke("validate", default_run / "model_int8.tflite", "--data", data, "--on-bad-image", "error",
                    "--ray", executor.address)
    assert_one_line_error(result, 4, f"unreadable image {bad}")


# --------------------------------------------------------------------------- fresh processes


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def test_plain_ray_starts_a_private_local_ray_with_the_same_figures(default_run: Path, digits_folder: Path):
    _need_ray()
    args = [str(default_run / "model_int8.tflite"), "--data", str(digits_folder), "--reference",
            str(default_run / "model_fp32.onnx"), "--json"]
    proc = subprocess.run([sys.executable, "-m", "edgeres", "validate", *args, "--ray"], capture_output=True,
                          text=True, env=_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sharded = json.loads(proc.stdout)  # stdout is the JSON alone: Ray printed nothing there
    ex = sharded.pop("executor")
    assert (ex["backend"], ex["address"], ex["nodes"]) == ("ray", "local", 1) and ex["shards"] > 1
    assert sharded == _validate_json(*args[:-1])


_CLI = """
import json, sys
from click.testing import CliRunner
from edgeres.cli import cli

def run(*extra):
    r = CliRunner().invoke(cli, ["validate", *sys.argv[1:], *extra])
    return [r.exit_code, r.stdout, r.stderr]
"""

_ERRORS = _CLI + """
sys.modules["ray"] = None  # as if Ray were not installed
import edgeres.cluster.ray_executor, edgeres.measure.validate  # still import; the light one never loads Ray
assert "edgeres.cluster" not in sys.modules or "edgeres.measure.validate" in sys.modules
out = {"missing": run("--ray"), "light": sorted(m for m in sys.modules if m.startswith("ray"))}
del sys.modules["ray"]
out |= {"format": run("--ray", "no-port-here"), "refused": run("--ray", "127.0.0.1:1"),
        "client": run("--ray", "ray://127.0.0.1:1")}
print(json.dumps(out))
"""


def test_ray_errors_are_one_line(default_run: Path):
    _need_ray()
    proc = subprocess.run([sys.executable, "-c", _ERRORS, str(default_run / "model_int8.tflite"), "--data",
                           str(NPZ)], capture_output=True, text=True, env=_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out.pop("light") == ["ray"]  # only the None that stands for a missing Ray
    expected = {"format": (2, "--ray takes local, auto, HOST:PORT or ray://HOST:PORT, got 'no-port-here'"),
                "refused": (7, "cannot connect to Ray at 127.0.0.1:1: "),
                "client": (7, "cannot connect to Ray at ray://127.0.0.1:1: "),
                "missing": (7, "--ray needs Ray, which is not installed: pip install 'edgeres[cluster]'")}
    for case, (code, text) in expected.items():
        exit_code, _, stderr = out[case]
        assert exit_code == code, (case, stderr)
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"edgeres: error: {text}"), (case, stderr)


def test_ray_client_and_auto_reach_a_running_cluster(cluster, executor, default_run: Path):
    """In a fresh process (this one is connected already): ray://HOST:PORT through Ray Client, and auto with
    RAY_ADDRESS set, as a user of a shared cluster would."""
    args = [str(default_run / "model_int8.tflite"), "--data", str(NPZ), "--reference",
            str(default_run / "model_fp32.onnx"), "--json"]
    # Ray Client's proxy starts a server process for each client connection; with the rest of the suite on every
    # core that start can miss the proxy's deadline ("Initialization failure from server", seen once in CI-like
    # runs): a user would connect again, and so does this test, up to 3 times
    script = _CLI + f"""
import time
def client():
    for attempt in range(3):
        out = run("--ray", "ray://127.0.0.1:{cluster.client_port}")
        if out[0] != 7 or "Initialization failure from server" not in out[2]:
            break
        time.sleep(5)
    return out
print(json.dumps([client(), run("--ray", "auto")]))
"""
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                          env=_env() | {"RAY_ADDRESS": cluster.address}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sequential = _validate_json(*args[:-1])
    for (code, stdout, stderr), address in zip(json.loads(proc.stdout), (f"ray://127.0.0.1:{cluster.client_port}",
                                                                            executor.address)):
        assert code == 0, stderr
        sharded = json.loads(stdout)
        ex = sharded.pop("executor")
        assert sharded == sequential
        assert (ex["address"], ex["nodes"], ex["cpus"]) == (address, 2, 2)  # auto: where it went


def test_ray_and_remote_do_not_mix(default_run: Path):
    result = invoke("validate", default_run / "model_int8.tflite", "--data", NPZ, "--remote", "dev", "--ray")
    assert result.exit_code != 0 and len(result.stderr.strip().splitlines()) == 1, result.stderr
