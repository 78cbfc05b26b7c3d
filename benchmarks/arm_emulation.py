"""Validate edgeres' runtime-only install and an int8 model on aarch64 under qemu-user.

    python benchmarks/arm_emulation.py [--tflite RUN/model_int8.tflite] [--data NPZ_OR_DIR] [--limit 500]

Sets up (once, cached in --cache) an arm64 Python 3.11 from Debian's arm64 .debs
and aarch64 wheels (tflite-runtime 2.14, numpy 1.26.4, click, Pillow, and
ai-edge-litert 2.3), then runs `edgeres validate --json` and a raw int8 logit dump
under `qemu-aarch64-static` and on x86 with the same wheels, and compares them.
Needs root (apt-get) the first time.  Host side: standard library + numpy only.
See docs/arm.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from _common import table

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
WHEELS = ["tflite-runtime==2.14.0", "numpy==1.26.4", "click", "pillow", "filelock"]
LITERT = ["ai-edge-litert==2.3.0"]
ROOT_PKGS = ["python3.11-minimal:arm64", "libpython3.11-stdlib:arm64", "libstdc++6:arm64"]
NOT_NEEDED = ("dpkg:", "tar:", "install-info:", "perl")  # pre-depends of the closure that python never loads
# MIDR of each qemu CPU model, for the fake /proc/cpuinfo (see docs/arm.md: cpuinfo crash).
MIDR = {"cortex-a53": (0x41, 0xd03), "cortex-a57": (0x41, 0xd07), "cortex-a72": (0x41, 0xd08),
        "cortex-a76": (0x41, 0xd0b), "neoverse-n1": (0x41, 0xd0c), "a64fx": (0x46, 0x001)}
EMULATED = "emulated, NOT representative of real ARM latency"

# `python -c VALIDATE ARGS` = `edgeres validate ARGS`, asserting that a runtime-only env has no TensorFlow.
VALIDATE = r"""
import importlib.util, os, sys
no_tf = os.environ.get("EDGERES_ARM_NO_TF") == "1"
assert not (no_tf and importlib.util.find_spec("tensorflow")), "tensorflow is importable in the runtime-only env"
sys.argv = ["edgeres", "validate", *sys.argv[1:]]
try:
    from edgeres.cli import main
    main()
finally:
    if no_tf and "tensorflow" in sys.modules:
        print("edgeres-arm: tensorflow was imported", file=sys.stderr)
        os._exit(9)
"""

HELPER = r'''"""task npz: decode images to an .npz; task logits: raw int8 logits, batch 1 (x86 and qemu)."""
import hashlib, importlib, json, os, platform, sys, time
import numpy as np
a = json.loads(sys.argv[1])
if a["task"] == "npz":  # decode the first images (balanced over classes) into an npz, with edgeres.core.data
    from dataclasses import replace
    from edgeres.core.data import Preprocess, open_dataset
    from tflite_runtime.interpreter import Interpreter
    it = Interpreter(model_path=a["model"])
    hwc = tuple(int(v) for v in it.get_input_details()[0]["shape"][1:])
    ds = open_dataset(a["src"], "data")
    labels = ds.labels if ds.labels is not None else np.zeros(len(ds), np.int64)
    per = [np.flatnonzero(labels == k) for k in np.unique(labels)]
    idx = [int(i) for row in zip(*per) for i in row][:a["limit"]] if len(per) > 1 else list(range(a["limit"]))
    ds = replace(ds, items=tuple(ds.items[i] for i in idx), labels=labels[idx])
    x, _ = ds.load(hwc, Preprocess(), on_error="error")
    if np.array_equal(x, np.round(x)) and x.min() >= 0 and x.max() <= 255:
        x = x.astype(np.uint8)
    np.savez(a["out"], x=x, y=labels[idx])
    sys.exit(0)
mod = importlib.import_module(a["runtime"] + ".interpreter")
kw = {"experimental_op_resolver_type": mod.OpResolverType.BUILTIN_REF} if a["mode"] == "reference" else {}
it = mod.Interpreter(model_path=a["model"], num_threads=1, **kw)
it.allocate_tensors()
inp, out = it.get_input_details()[0], it.get_output_details()[0]
with np.load(a["npz"]) as z:
    x = z["x"].astype(np.float32)
p = a["preprocess"]
if (p["scale"], p["mean"], p["std"]) != (1.0, [0.0], [1.0]):
    x = (x * np.float32(p["scale"]) - np.asarray(p["mean"], np.float32)) / np.asarray(p["std"], np.float32)
scale, zero = inp["quantization"]
if scale:
    info = np.iinfo(inp["dtype"])
    x = np.clip(np.round(x / scale) + zero, info.min, info.max)
xq = x.astype(inp["dtype"])
logits = []
for i in range(len(xq)):
    it.set_tensor(inp["index"], xq[i:i + 1])
    it.invoke()
    logits.append(it.get_tensor(out["index"]).reshape(-1).copy())
np.save(a["out"], np.stack(logits))
ms = []
for _ in range(a["timing_runs"]):
    t0 = time.perf_counter()
    it.invoke()
    ms.append((time.perf_counter() - t0) * 1e3)
ops = [o["op_name"] for o in it._get_ops_details()]
if os.environ.get("EDGERES_ARM_NO_TF") == "1":
    assert "tensorflow" not in sys.modules, "tensorflow was imported"
from importlib.metadata import version
print(json.dumps({"machine": platform.machine(), "python": platform.python_version(), "numpy": np.__version__,
                  "runtime_version": version(a["runtime"].replace("_", "-")), "ops": len(ops) - ops.count("DELEGATE"),
                  "delegate_nodes": ops.count("DELEGATE"), "out_quant": list(out["quantization"]),
                  "input_sha256": hashlib.sha256(xq.tobytes()).hexdigest()[:16], "invoke_ms": ms}))
'''


def log(msg: str) -> None:
    print(f"[arm] {msg}", flush=True)


def fail(msg: str) -> None:
    sys.exit(f"arm_emulation: error: {msg}")


def run(cmd, what: str, **kw) -> subprocess.CompletedProcess:
    try:
        p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=3600, **kw)
    except (OSError, subprocess.TimeoutExpired) as exc:
        fail(f"{what}: {exc}")
    if p.returncode != 0:
        lines = (p.stderr.strip() or p.stdout.strip() or "no output").splitlines()
        fail(f"{what} failed (exit {p.returncode}): {lines[-1]}")
    return p


def need_root(what: str) -> None:
    if os.geteuid() != 0:
        fail(f"{what} needs root (apt-get/dpkg); run once as root to fill the cache")


def setup_qemu() -> str:
    qemu = shutil.which("qemu-aarch64-static")
    if qemu is None:
        need_root("installing qemu-user-static")
        log("installing qemu-user-static with apt-get")
        run(["apt-get", "update", "-qq"], "apt-get update")
        run(["apt-get", "install", "-y", "-qq", "qemu-user-static"], "apt-get install qemu-user-static")
        qemu = shutil.which("qemu-aarch64-static") or fail("qemu-aarch64-static not found after install")
    return qemu


def setup_rootfs(cache: Path) -> Path:
    rootfs, done = cache / "rootfs", cache / "rootfs" / ".complete"
    if done.is_file():
        log(f"arm64 rootfs: cached at {rootfs}")
        return rootfs
    need_root("building the arm64 rootfs")
    if "arm64" not in run(["dpkg", "--print-foreign-architectures"], "dpkg").stdout.split():
        log("enabling the arm64 architecture in dpkg (dpkg --add-architecture arm64)")
        run(["dpkg", "--add-architecture", "arm64"], "dpkg --add-architecture arm64")
        run(["apt-get", "update", "-qq"], "apt-get update")
    elif subprocess.run(["apt-cache", "show", ROOT_PKGS[0]], capture_output=True).returncode != 0:
        run(["apt-get", "update", "-qq"], "apt-get update")
    log("resolving the dependency closure of python3.11:arm64")
    out = run(["apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests", "--no-conflicts",
               "--no-breaks", "--no-replaces", "--no-enhances", *ROOT_PKGS], "apt-cache depends").stdout
    pkgs = sorted({ln.strip() for ln in out.splitlines() if ln.endswith(":arm64") and not ln.startswith((" ", "<"))
                   and not ln.startswith(NOT_NEEDED)})
    debs = cache / "debs"
    shutil.rmtree(debs, ignore_errors=True)
    shutil.rmtree(rootfs, ignore_errors=True)
    debs.mkdir(parents=True)
    log(f"downloading {len(pkgs)} arm64 .debs (apt-get download)")
    run(["apt-get", "download", *pkgs], "apt-get download", cwd=debs)
    for deb in sorted(debs.glob("*.deb")):
        run(["dpkg", "-x", deb, rootfs], f"dpkg -x {deb.name}")
    if not (rootfs / "usr/bin/python3.11").is_file():
        fail(f"{rootfs}/usr/bin/python3.11 missing after unpacking")
    (rootfs / "proc").mkdir(exist_ok=True)
    done.write_text("\n".join(pkgs) + "\n")
    return rootfs


def setup_wheels(cache: Path, name: str, arch: str, reqs: list[str]) -> Path:
    site, done = cache / f"site-{name}", cache / f"site-{name}" / ".complete"
    if done.is_file():
        log(f"{name} wheels: cached at {site}")
        return site
    wheels = cache / f"wheels-{name}"
    shutil.rmtree(site, ignore_errors=True)
    shutil.rmtree(wheels, ignore_errors=True)
    plats = [f"--platform=manylinux_2_{v}_{arch}" for v in (34, 28, 27, 17)] + [f"--platform=manylinux2014_{arch}"]
    log(f"downloading {arch} wheels: {' '.join(reqs)}")
    run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "--no-deps", "--python-version=3.11",
         *plats, "-d", wheels, *reqs], f"pip download of the {arch} wheels")
    for whl in sorted(wheels.glob("*.whl")):
        with zipfile.ZipFile(whl) as z:
            z.extractall(site)
    done.write_text("\n".join(sorted(w.name for w in wheels.glob("*.whl"))) + "\n")
    return site


def make_model(cache: Path) -> Path:
    out = cache / "resnet20-run"
    if (out / "model_int8.tflite").is_file():
        log(f"int8 model: cached at {out}")
        return out / "model_int8.tflite"
    log("converting ../shared/data/models/resnet20_cifar10.keras to int8 on the x86 host (edgeres convert)")
    run([sys.executable, "-m", "edgeres", "convert", SHARED / "models/resnet20_cifar10.keras", "--int8",
         "--calib", SHARED / "cifar10/calib", "--data", SHARED / "cifar10/test", "--val-size", "500",
         "-o", out, "--force"], "edgeres convert", cwd=REPO)
    return out / "model_int8.tflite"


@dataclass
class Launcher:
    """How to start Python for one side: x86 host env, x86 wheels-only, or qemu arm64."""

    label: str
    argv: list
    path: list
    no_tf: bool = True  # a runtime-only env: assert that TensorFlow is neither importable nor imported
    rootfs: Path | None = None
    cpu: str = ""

    def __call__(self, args, what: str) -> subprocess.CompletedProcess:
        if self.rootfs is not None:  # qemu 7.2 shows the host's x86 /proc/cpuinfo unless the -L root has one
            imp, part = MIDR.get(self.cpu, MIDR["cortex-a57"])
            cpu = (f"Features\t: fp asimd\nCPU implementer\t: {imp:#x}\nCPU architecture: 8\nCPU variant\t: 0x0\n"
                   f"CPU part\t: {part:#05x}\nCPU revision\t: 0\n\n")
            text = "".join(f"processor\t: {i}\n{cpu}" for i in range(os.cpu_count()))
            (self.rootfs / "proc/cpuinfo").write_text(text)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, self.path)),
               "EDGERES_ARM_NO_TF": "1" if self.no_tf else "0", "TF_CPP_MIN_LOG_LEVEL": "3"}
        return run([*self.argv, *args], f"{what} ({self.label})", env=env, cwd=REPO)


def launchers(qemu, rootfs, sites, cpus) -> dict[str, Launcher]:
    """x86: a -S Python on the x86 wheels only, and the host's own env; arm64: qemu per CPU model."""
    out = [Launcher("x86 tflite-runtime", [sys.executable, "-S"], [sites["x86"], REPO]),
           Launcher("x86 ai-edge-litert", [sys.executable], [REPO], no_tf=False)]
    for cpu in cpus:
        arm = [qemu, "-cpu", cpu, "-L", rootfs, rootfs / "usr/bin/python3.11", "-S"]
        out += [Launcher(f"arm64 {cpu} tflite-runtime", arm, [sites["arm"], REPO], rootfs=rootfs, cpu=cpu),
                Launcher(f"arm64 {cpu} ai-edge-litert", arm, [sites["litert"], sites["arm"], REPO],
                         rootfs=rootfs, cpu=cpu)]
    return {la.label: la for la in out}


def compare(a: np.ndarray, b: np.ndarray) -> dict:
    steps = np.abs(a.astype(np.int64) - b.astype(np.int64)) if a.dtype.kind in "iu" else None
    res = {"top1_agreement": float(np.mean(a.argmax(1) == b.argmax(1)) * 100),
           "logits_differ": float(np.mean(a != b) * 100), "images_any_differ": float(np.mean((a != b).any(1)) * 100)}
    if steps is not None:
        values, counts = np.unique(steps[steps > 0], return_counts=True)
        res.update(step_histogram={int(v): int(c) for v, c in zip(values, counts)}, max_steps=int(steps.max()))
    return res


def hist_text(h: dict | None) -> str:
    if h is None:
        return "-"
    big = sum(c for v, c in h.items() if v > 4)
    return " ".join([f"{v}:{c}" for v, c in h.items() if v <= 4] + ([f">4:{big}"] if big else [])) or "none"


def run_validate(run_, cpu, model, npz) -> list[dict]:
    validate = []
    for label in ("x86 tflite-runtime", f"arm64 {cpu} tflite-runtime", "x86 ai-edge-litert",
                  f"arm64 {cpu} ai-edge-litert"):
        log(f"edgeres validate --json: {label}")
        t0 = time.time()
        r = json.loads(run_[label](["-c", VALIDATE, model, "--data", npz, "--json"], "edgeres validate").stdout)
        validate.append({"side": label, "runtime": f"{r['runtime']} {r['runtime_version']}", "top1": r.get("top1"),
                         "count": r["count"], "tensorflow_free": run_[label].no_tf,
                         "seconds": round(time.time() - t0, 1)})
    return validate


def run_dumps(run_, cpus, helper, model, npz, preprocess, timing_runs, cache, y):
    jobs = [("x86 tflite-runtime", "tflite_runtime", "default"), ("x86 tflite-runtime", "tflite_runtime", "reference"),
            ("x86 ai-edge-litert", "ai_edge_litert", "default")]
    for i, cpu in enumerate(cpus):
        jobs += [(f"arm64 {cpu} tflite-runtime", "tflite_runtime", "default"),
                 (f"arm64 {cpu} ai-edge-litert", "ai_edge_litert", "default")]
        if i == 0:
            jobs.append((f"arm64 {cpu} tflite-runtime", "tflite_runtime", "reference"))
    dumps, logits = [], {}
    for side, runtime, mode in jobs:
        name = f"{side} [{mode}]"
        out = cache / f"logits-{len(dumps)}.npy"
        log(f"raw int8 logits, batch 1: {name}")
        t0 = time.time()
        meta = json.loads(run_[side]([helper, json.dumps({"task": "logits", "runtime": runtime, "mode": mode,
                                                          "model": str(model), "npz": str(npz), "out": str(out),
                                                          "preprocess": preprocess, "timing_runs": timing_runs})],
                                     "logit dump").stdout.strip().splitlines()[-1])
        logits[name] = np.load(out)
        ms = float(np.median(meta["invoke_ms"])) if meta["invoke_ms"] else None
        dumps.append({"name": name, **meta, "top1": float(np.mean(logits[name].argmax(1) == y) * 100),
                      "invoke_ms_median": ms, "timing": EMULATED if meta["machine"] == "aarch64" else "native x86",
                      "seconds": round(time.time() - t0, 1)})
    if len({d["input_sha256"] for d in dumps}) != 1:
        fail("the int8 input tensors differ between runs; the comparison would be meaningless")
    return dumps, logits


def compare_all(logits, cpus) -> list[dict]:
    a0, t, lt = f"arm64 {cpus[0]}", "tflite-runtime", "ai-edge-litert"
    pairs = [(f"{a0} {t} [default]", f"x86 {t} [default]"), (f"{a0} {t} [reference]", f"x86 {t} [reference]"),
             (f"{a0} {lt} [default]", f"x86 {lt} [default]"), (f"x86 {t} [default]", f"x86 {t} [reference]"),
             (f"{a0} {t} [default]", f"{a0} {t} [reference]"), (f"x86 {lt} [default]", f"x86 {t} [reference]")]
    pairs += [(f"arm64 {c} {r} [default]", f"{a0} {r} [default]") for c in cpus[1:] for r in (t, lt)]
    return [{"a": a, "b": b, **compare(logits[a], logits[b])} for a, b in pairs]


def print_tables(validate, dumps, comparisons, n) -> None:
    print("\nedgeres validate --json (runtime-only on every side but the host's ai-edge-litert):")
    print(table(("side", "runtime", "top-1 %", "images", "TF-free env", "wall s"),
                [(v["side"], v["runtime"], f"{v['top1']:.2f}", v["count"], "yes" if v["tensorflow_free"] else "no",
                  v["seconds"]) for v in validate]))
    print(f"\nraw int8 logits, batch 1, 1 thread ({n} images; same int8 input everywhere):")
    print(table(("run", "version", "top-1 %", "ops", "delegate partitions", "ms/inference", "timing"),
                [(d["name"], d["runtime_version"], f"{d['top1']:.2f}", d["ops"], d["delegate_nodes"],
                  f"{d['invoke_ms_median']:.2f}" if d["invoke_ms_median"] else "-", d["timing"]) for d in dumps]))
    print("\nlogit differences (1 step = 1 int8 unit of the output scale):")
    print(table(("a", "b", "top-1 agree %", "logits differ %", "images differ %", "steps: count", "max steps"),
                [(c["a"], c["b"], f"{c['top1_agreement']:.2f}", f"{c['logits_differ']:.2f}",
                  f"{c['images_any_differ']:.2f}", hist_text(c.get("step_histogram")), c.get("max_steps", "-"))
                 for c in comparisons]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tflite", type=Path, help="int8 .tflite (default: convert shared/data's ResNet-20)")
    ap.add_argument("--data", type=Path, help="labelled .npz or class-folder (default: shared/data/cifar10/test)")
    ap.add_argument("--limit", type=int, default=500, help="images, balanced over classes [500]")
    ap.add_argument("--cpus", default="cortex-a76,cortex-a72",
                    help="qemu CPU models, the first is the main one [cortex-a76,cortex-a72]")
    ap.add_argument("--timing-runs", type=int, default=5, help="timed invokes per logit dump [5]")
    ap.add_argument("--qemu", help="qemu-aarch64 binary [qemu-aarch64-static, apt-installed if missing]")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache/edgeres-arm", help="[~/.cache/edgeres-arm]")
    ap.add_argument("--json-out", type=Path, help="summary JSON [CACHE/results.json]")
    args = ap.parse_args()
    cpus = [c.strip() for c in args.cpus.split(",") if c.strip()]
    for given in (args.tflite, args.data):
        if given is not None and not given.exists():
            fail(f"{given} does not exist")
    if args.limit < 1 or not cpus:
        fail("--limit must be 1 or more and --cpus must name at least one qemu CPU model")
    if (args.tflite is None or args.data is None) and not SHARED.is_dir():
        log(f"skipped: {SHARED} is absent; pass both --tflite and --data")
        return
    cache = args.cache.expanduser().resolve()
    cache.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    qemu = args.qemu or setup_qemu()
    qemu_version = run([qemu, "--version"], "qemu --version").stdout.splitlines()[0]
    log(qemu_version)
    rootfs = setup_rootfs(cache)
    sites = {"arm": setup_wheels(cache, "aarch64", "aarch64", WHEELS),
             "x86": setup_wheels(cache, "x86_64", "x86_64", WHEELS),
             "litert": setup_wheels(cache, "litert-aarch64", "aarch64", LITERT)}
    model = (args.tflite or make_model(cache)).resolve()
    report = model.parent / "report.json"
    preprocess = json.loads(report.read_text())["preprocess"] if report.is_file() else {}
    preprocess = {"scale": float(preprocess.get("scale", 1.0)), "mean": list(preprocess.get("mean", [0.0])),
                  "std": list(preprocess.get("std", [1.0]))}
    helper = cache / "arm_helper.py"
    helper.write_text(HELPER)
    run_ = launchers(qemu, rootfs, sites, cpus)
    src = (args.data or SHARED / "cifar10/test").resolve()
    npz = cache / f"data-{hashlib.sha1(f'{src}|{model}|{args.limit}'.encode()).hexdigest()[:10]}.npz"
    log(f"writing {args.limit} images of {src} (balanced over classes) to {npz}")
    run_["x86 tflite-runtime"]([helper, json.dumps({"task": "npz", "src": str(src), "limit": args.limit,
                                                     "model": str(model), "out": str(npz)})], "decoding data")
    with np.load(npz) as z:
        y = z["y"]

    validate = run_validate(run_, cpus[0], model, npz)
    dumps, logits = run_dumps(run_, cpus, helper, model, npz, preprocess, args.timing_runs, cache, y)
    comparisons = compare_all(logits, cpus)
    print_tables(validate, dumps, comparisons, len(y))
    versions = {"qemu": qemu_version, "arm_python": next(d["python"] for d in dumps if d["machine"] == "aarch64"),
                "wheels": {k: (v / ".complete").read_text().split() for k, v in sites.items()}}
    summary = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "model": str(model), "data": str(src),
               "images": int(len(y)), "cpus": cpus, "versions": versions, "validate": validate, "logit_dumps": dumps,
               "comparisons": comparisons, "timing_note": f"aarch64 timings are {EMULATED}",
               "wall_seconds": round(time.time() - t_start, 1)}
    json_out = args.json_out or cache / "results.json"
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\n{qemu_version}; aarch64 ms/inference are {EMULATED}.\nwrote {json_out} ({summary['wall_seconds']} s)")


if __name__ == "__main__":
    main()
