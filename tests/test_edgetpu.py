"""The Edge TPU static checker on real Keras models and real TFLite conversions, and the compiler wrapper.

The Edge TPU compiler and hardware are not installed here: the checker is tested on models
converted by the real TFLite converter, the compiler's log parser on a realistic log, and
compile_model's plumbing on stand-in executables.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from edgeres.core.errors import ConversionError, ModelError, RuntimeUnavailableError
from edgeres.devices.edgetpu import SUPPORTED_OPS, check_model, compile_model, format_check, parse_compiler_log
from tests.conftest import ROOT

keras = pytest.importorskip("keras")


# ------------------------------------------------------------------ helpers and fixtures

def calib(size: int, n: int = 8) -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 255, (n, size, size, 3)).astype("float32")


def batch_one(model):
    """The same model with a static batch of 1 (what the Edge TPU needs)."""
    h, w, c = model.input_shape[1:]
    x = keras.Input(shape=(h, w, c), batch_size=1)
    return keras.Model(x, model(x))


def interpreter_ops(path: Path) -> list[str]:
    """Op names in execution order, from the real TFLite interpreter (an independent reading)."""
    from edgeres.core.runtime import tflite_module

    mod, _ = tflite_module()
    interp = mod.Interpreter(model_path=str(path))
    return [o["op_name"] for o in interp._get_ops_details()]


def write(tmp: Path, name: str, data: bytes) -> Path:
    p = tmp / name
    p.write_bytes(data)
    return p


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Zoo models converted to full-int8 TFLite with uint8 I/O: dynamic batch and batch 1."""
    from edgeres.backends.tflite import to_int8
    from edgeres.zoo.registry import create_model

    keras.utils.set_random_seed(0)
    tmp = tmp_path_factory.mktemp("edgetpu")
    r8 = create_model("resnet8", input_size=32, num_classes=10)
    r18 = create_model("resnet18", input_size=64, num_classes=10)
    return {
        "resnet8_dynamic": write(tmp, "resnet8_dynamic.tflite", to_int8(r8, calib(32), "uint8")),
        "resnet8": write(tmp, "resnet8_b1.tflite", to_int8(batch_one(r8), calib(32), "uint8")),
        "resnet18": write(tmp, "resnet18_b1.tflite", to_int8(batch_one(r18), calib(64), "uint8")),
    }


def small_cnn(middle) -> keras.Model:
    x = keras.Input(shape=(16, 16, 3), batch_size=1)
    y = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    y = middle(y)
    y = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(y)
    y = keras.layers.GlobalAveragePooling2D()(y)
    return keras.Model(x, keras.layers.Dense(10)(y))


# ------------------------------------------------------------------ zoo models

def test_dynamic_batch_conversion_gets_the_static_shape_error(models):
    r = check_model(models["resnet8_dynamic"])
    assert r["compatible"] is False
    assert len(r["errors"]) == 1
    err = r["errors"][0]
    assert err.startswith("dynamic shapes:")
    assert "[-1,32,32,3]" in err and "fixed batch of 1" in err and "batch_size=1" in err
    # The ops themselves are all on the list: the shape is the only problem.
    assert r["first_unsupported"] is None and r["ops_mappable"] == r["ops_total"]
    assert "ERROR: dynamic shapes" in format_check(r)


@pytest.mark.parametrize("name", ["resnet8", "resnet18"])
def test_batch_one_zoo_models_map_completely(models, name):
    path = models[name]
    r = check_model(path)
    ops = interpreter_ops(path)
    assert r["ops_total"] == len(ops)
    assert set(ops) <= set(SUPPORTED_OPS), set(ops) - set(SUPPORTED_OPS)
    assert r["errors"] == []
    assert r["first_unsupported"] is None and r["cpu_ops"] == []
    assert r["ops_mappable"] == r["ops_total"]
    assert r["compatible"] is True
    assert 0 < r["parameter_bytes"] < path.stat().st_size
    text = format_check(r)
    assert f"{r['ops_total']} of {r['ops_total']} ops would map to the Edge TPU" in text
    assert text.endswith("compatible: yes")
    big = r["parameter_bytes"] > 8 * 2**20
    assert big == (name == "resnet18")  # ~11.2M int8 weights do not fit the 8 MiB cache
    assert any("on-chip cache" in w for w in r["warnings"]) == big
    assert r["compatible"]  # streaming weights is slower, not incompatible


def test_parameter_budget_follows_the_coral_target(models):
    from edgeres.devices.targets import resolve_target

    budget = resolve_target("coral-edgetpu").constraints.max_tensor_bytes
    assert budget == 8 * 2**20
    r = check_model(models["resnet8"], max_tensor_bytes=budget)
    assert not r["warnings"]
    small = check_model(models["resnet8"], max_tensor_bytes=r["parameter_bytes"] - 1)
    assert any("streams from host memory" in w for w in small["warnings"])
    assert small["compatible"]


# ------------------------------------------------------------------ unsupported ops

@pytest.mark.parametrize("layer, op", [
    (lambda: keras.layers.Activation("hard_silu"), "HARD_SWISH"),
    (lambda: keras.layers.LeakyReLU(negative_slope=0.1), "LEAKY_RELU"),
], ids=["hard_silu", "leaky_relu"])
def test_unsupported_op_in_the_middle_splits_the_graph(tmp_path, layer, op):
    from edgeres.backends.tflite import to_int8

    path = write(tmp_path, "m.tflite", to_int8(small_cnn(layer()), calib(16), "uint8"))
    ops = interpreter_ops(path)
    assert op in ops
    k = ops.index(op)
    assert 0 < k < len(ops) - 1  # really in the middle
    r = check_model(path)
    assert r["first_unsupported"] == {"index": k, "op": op,
                                      "reason": r["first_unsupported"]["reason"]}
    assert r["first_unsupported"]["reason"].startswith("not on the Edge TPU supported-op list")
    assert r["ops_mappable"] == k
    assert [c["index"] for c in r["cpu_ops"]] == list(range(k, len(ops)))
    assert [c["op"] for c in r["cpu_ops"]] == ops[k:]
    assert all("follows the first unsupported op" in c["reason"] for c in r["cpu_ops"][1:])
    assert r["errors"] == [] and r["compatible"] is False
    text = format_check(r)
    assert f"{k} of {len(ops)} ops would map to the Edge TPU" in text
    assert f"the first op that runs on the CPU is #{k} {op}" in text
    assert "splits the graph: everything after it" in text


def test_documented_limitations_are_checked(tmp_path):
    """Softmax over a 4-D tensor, a strided slice with stride 2, a channel mean over 6 channels."""
    from edgeres.backends.tflite import to_int8

    x = keras.Input(shape=(16, 16, 3), batch_size=1)
    y = keras.layers.Conv2D(6, 3, padding="same")(x)
    y = keras.layers.Softmax(axis=-1)(y)
    y = keras.layers.Lambda(lambda t: t[:, ::2, ::2, :])(y)
    y = keras.layers.Lambda(lambda t: keras.ops.mean(t, axis=-1, keepdims=True))(y)
    y = keras.layers.Dense(10)(keras.layers.Flatten()(y))
    path = write(tmp_path, "limits.tflite", to_int8(keras.Model(x, y), calib(16), "uint8"))
    r = check_model(path)
    by_op = {c["op"]: c for c in r["cpu_ops"]}
    first = r["first_unsupported"]
    assert first["op"] == "SOFTMAX" and "not 1-D" in first["reason"] and "[1,16,16,6]" in first["reason"]
    assert by_op["STRIDED_SLICE"]["reason"] == "strides [1,2,2,1] are not all 1"
    assert "must be a multiple of 4" in by_op["MEAN"]["reason"]
    assert "follows the first unsupported op" in by_op["FULLY_CONNECTED"]["reason"]
    text = format_check(r)
    assert "also unsupported: #" in text and "STRIDED_SLICE" in text


# ------------------------------------------------------------------ quantization

def test_float32_model_is_not_fully_quantized(tmp_path):
    from edgeres.backends.tflite import to_float32

    path = write(tmp_path, "f32.tflite", to_float32(small_cnn(keras.layers.Activation("relu"))))
    r = check_model(path)
    assert r["compatible"] is False
    assert any(e.startswith("not fully quantized") for e in r["errors"])
    assert r["first_unsupported"]["index"] == 0
    assert "computes in float" in r["first_unsupported"]["reason"]
    assert r["ops_mappable"] == 0 and len(r["cpu_ops"]) == r["ops_total"]
    assert "ERROR: not fully quantized" in format_check(r)


def test_float_io_quantize_dequantize_are_boundary_cpu_ops(tmp_path):
    from edgeres.backends.tflite import to_int8

    model = small_cnn(keras.layers.Activation("relu6"))
    path = write(tmp_path, "fio.tflite", to_int8(model, calib(16), "float32"))
    ops = interpreter_ops(path)
    assert ops[0] == "QUANTIZE" and ops[-1] == "DEQUANTIZE"
    r = check_model(path)
    assert r["compatible"] is True and r["first_unsupported"] is None and r["errors"] == []
    assert [(c["index"], c["op"], c["boundary"]) for c in r["cpu_ops"]] == [
        (0, "QUANTIZE", True), (len(ops) - 1, "DEQUANTIZE", True)]
    assert r["ops_mappable"] == len(ops) - 2
    assert any("float model I/O" in w for w in r["warnings"])
    assert "boundary: #0 QUANTIZE" in format_check(r)


# ------------------------------------------------------------------ bad input

def test_not_a_tflite_file_is_a_model_error(tmp_path):
    junk = tmp_path / "model.tflite"
    junk.write_text("this is not a flatbuffer\n" * 10)
    with pytest.raises(ModelError) as exc:
        check_model(junk)
    msg = str(exc.value)
    assert "\n" not in msg and "is not a TFLite model" in msg and str(junk) in msg
    with pytest.raises(ModelError, match="does not exist"):
        check_model(tmp_path / "missing.tflite")
    corrupt = tmp_path / "corrupt.tflite"
    corrupt.write_bytes(b"\xff\xff\xff\x7fTFL3" + b"\x00" * 8)
    with pytest.raises(ModelError) as exc:
        check_model(corrupt)
    assert "\n" not in str(exc.value) and "TFLite" in str(exc.value)


def test_check_is_light_no_tensorflow(models):
    script = textwrap.dedent(f"""
        import sys
        from edgeres.devices.edgetpu import check_model, format_check
        r = check_model({str(models['resnet8'])!r})
        assert r["compatible"], r
        format_check(r)
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras"))
        assert not heavy, heavy
        print("light ok")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "light ok" in proc.stdout


# ------------------------------------------------------------------ the compiler

# The layout of `edgetpu_compiler -s` output (compiler 16.0.384591198): header and memory lines as
# in google-coral/edgetpu issue #512, the operator table as in issues #490 and #342
# (https://github.com/google-coral/edgetpu/issues/512, /490, /342).  Counts are for a ResNet-18
# with one LeakyReLU, so 73 + 2 = 75 ops.
COMPILER_LOG = """\
Edge TPU Compiler version 16.0.384591198
Started a compilation timeout timer of 180 seconds.

Model compiled successfully in 1208 ms.

Input model: model_int8.tflite
Input size: 10.93MiB
Output model: out/model_int8_edgetpu.tflite
Output size: 11.02MiB
On-chip memory used for caching model parameters: 6.12MiB
On-chip memory remaining for caching model parameters: 1.25KiB
Off-chip memory used for streaming uncached model parameters: 4.53MiB
Number of Edge TPU subgraphs: 1
Total number of operations: 75
Operation log: out/model_int8_edgetpu.log

Model successfully compiled but not all operations are supported by the Edge TPU. A percentage of \
the model will instead run on the CPU, which is slower. If possible, consider updating your model to \
use only operations supported by the Edge TPU. For details, visit g.co/coral/model-reqs.
Number of operations that will run on Edge TPU: 73
Number of operations that will run on CPU: 2

Operator                       Count      Status

QUANTIZE                       1          Mapped to Edge TPU
MUL                            1          Mapped to Edge TPU
ADD                            17         Mapped to Edge TPU
PAD                            4          Mapped to Edge TPU
CONV_2D                        44         Mapped to Edge TPU
MAX_POOL_2D                    1          Mapped to Edge TPU
MEAN                           1          Mapped to Edge TPU
CONCATENATION                  4          Mapped to Edge TPU
LEAKY_RELU                     1          Operation not supported
FULLY_CONNECTED                1          More than one subgraph is not supported
Compilation child process completed within timeout period.
Compilation succeeded!
"""


def test_parse_compiler_log():
    r = parse_compiler_log(COMPILER_LOG)
    assert r["version"] == "16.0.384591198"
    assert r["output_model"] == "out/model_int8_edgetpu.tflite"
    assert (r["ops_on_tpu"], r["ops_on_cpu"], r["ops_total"], r["subgraphs"]) == (73, 2, 75, 1)
    assert r["on_chip_bytes"] == round(6.12 * 2**20)
    assert r["on_chip_remaining_bytes"] == 1280
    assert r["off_chip_bytes"] == round(4.53 * 2**20)
    assert len(r["op_table"]) == 10
    assert sum(row["count"] for row in r["op_table"] if row["mapped"]) == 73
    assert r["op_table"][-2] == {"op": "LEAKY_RELU", "count": 1, "status": "Operation not supported",
                                 "mapped": False}
    assert r["op_table"][-1]["status"] == "More than one subgraph is not supported"


def test_parse_compiler_log_counts_from_the_table_when_lines_are_missing():
    fully_mapped = "\n".join(ln for ln in COMPILER_LOG.splitlines()
                             if not ln.startswith(("Number of operations", "Total number")))
    r = parse_compiler_log(fully_mapped)
    assert (r["ops_on_tpu"], r["ops_on_cpu"], r["ops_total"]) == (73, 2, 75)
    empty = parse_compiler_log("")
    assert empty["op_table"] == [] and empty["ops_on_tpu"] is None and empty["on_chip_bytes"] is None


def test_compile_model_without_the_compiler(models, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty PATH: no edgetpu_compiler here
    with pytest.raises(RuntimeUnavailableError) as exc:
        compile_model(models["resnet8"], tmp_path / "out")
    msg = str(exc.value)
    assert "\n" not in msg
    assert "apt-get install edgetpu-compiler" in msg and "coral-edgetpu-stable" in msg
    assert "x86-64" in msg


def fake_compiler(bindir: Path, body: str) -> None:
    bindir.mkdir(exist_ok=True)
    exe = bindir / "edgetpu_compiler"
    exe.write_text("#!/bin/sh\nPATH=/usr/bin:/bin\n" + body)
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)


@pytest.mark.skipif(os.name != "posix", reason="stand-in compiler is a shell script")
def test_compile_model_runs_and_parses_the_compiler(models, tmp_path, monkeypatch):
    log = tmp_path / "log.txt"
    log.write_text(COMPILER_LOG)
    # edgetpu_compiler -s -o OUT MODEL: write OUT/<stem>_edgetpu.tflite and print the log
    fake_compiler(tmp_path / "bin", f'[ "$1" = "-s" ] && [ "$2" = "-o" ] || exit 9\n'
                                    f'cp "$4" "$3/$(basename "$4" .tflite)_edgetpu.tflite"\n'
                                    f'cat {log}\n')
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    r = compile_model(models["resnet8"], tmp_path / "out")
    assert Path(r["compiled_path"]) == tmp_path / "out" / "resnet8_b1_edgetpu.tflite"
    assert Path(r["compiled_path"]).is_file()
    assert (r["ops_on_tpu"], r["ops_on_cpu"]) == (73, 2)
    assert r["on_chip_bytes"] and r["off_chip_bytes"] and len(r["op_table"]) == 10
    assert r["log"].startswith("Edge TPU Compiler version")


@pytest.mark.skipif(os.name != "posix", reason="stand-in compiler is a shell script")
def test_compile_model_failure_is_a_conversion_error(models, tmp_path, monkeypatch):
    # What compiler 15 printed for an op version it did not know (google-coral/edgetpu issue #384).
    fake_compiler(tmp_path / "bin", "echo 'Edge TPU Compiler version 15.0.340273435'\n"
                                    "echo \"ERROR: Didn't find op for builtin opcode 'RSQRT' version '2'\"\n"
                                    "echo\necho 'ERROR: Registration failed.'\necho\nexit 1\n")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    with pytest.raises(ConversionError) as exc:
        compile_model(models["resnet8"], tmp_path / "out")
    msg = str(exc.value)
    assert "\n" not in msg and "exit 1" in msg and msg.endswith("ERROR: Registration failed.")
