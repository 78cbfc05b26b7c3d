"""`edgeres check MODEL --runtime SPEC`: the prediction against what the runtimes really do when they load a file.

Fast: tiny models built from the TFLite schema (no TensorFlow) and with the onnx package, loaded by the installed
runtimes in this process.  Slow: tflite-runtime 2.14.0 in a venv built once under /tmp/edgeres-test-venvs loads
real conversions (the default run, a zoo model, ops TF 2.21 writes in post-2.14 versions) and one probe per entry
of TensorFlow's op-version table.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from edgeres.core.errors import UsageError
from edgeres.core.tflite_schema import schema
from edgeres.devices.compat import check_onnx, check_runtime, check_tflite, parse_runtime_spec, read_onnx_header
from edgeres.devices.compat_tables import ORT_LIMITS, TFLITE_ERRATA, TFLITE_OP_VERSIONS, TFLITE_RUNTIMES
from tests.conftest import ROOT, assert_one_line_error, invoke
from tests.side_venv import side_venv

flatbuffers = pytest.importorskip("flatbuffers")
TFLITE_RUNTIME = "2.14.0"


def tiny_tflite(codes, *, dtype="FLOAT32", used=True) -> bytes:
    """A runnable one-ADD model (z = x + y, [1, 4]) whose operator codes also hold ``codes``: (op, version),
    "custom:NAME" for custom ops; each used by an operator, or only declared (the interpreter resolves both)."""
    s = schema()
    m, sg = s.ModelT(), s.SubGraphT()
    m.version, m.buffers, m.operatorCodes, sg.operators, sg.tensors = 3, [s.BufferT()], [], [], []
    for name in "xyz":
        t = s.TensorT()
        t.shape, t.type, t.name, t.buffer = [1, 4], getattr(s.TensorType, dtype), name.encode(), 0
        sg.tensors.append(t)
    sg.inputs, sg.outputs = [0, 1], [2]
    for i, (op, version) in enumerate([("ADD", 1), *codes]):
        oc = s.OperatorCodeT()
        code = s.BuiltinOperator.CUSTOM if op.startswith("custom:") else getattr(s.BuiltinOperator, op, None)
        code = int(op.split("_")[-1]) if code is None else code
        oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = code, min(code, 127), version
        oc.customCode = op[7:].encode() if op.startswith("custom:") else None
        m.operatorCodes.append(oc)
        if i == 0 or used:
            o = s.OperatorT()
            o.opcodeIndex, o.inputs, o.outputs = i, [0, 1], [2]
            sg.operators.append(o)
    m.subgraphs = [sg]
    b = flatbuffers.Builder(0)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def write(tmp: Path, name: str, data: bytes) -> Path:
    p = tmp / name
    p.write_bytes(data)
    return p


def probes() -> list[tuple[str, int]]:
    """Every (op, version) of TensorFlow's table, the next two versions, and version 1 of each op it leaves out."""
    s = schema()
    out = [(op, v) for op, row in TFLITE_OP_VERSIONS.items() for v in range(1, len(row.split()) + 3)]
    out += [(op, 1) for op in vars(s.BuiltinOperator) if op.isupper() and op not in TFLITE_OP_VERSIONS
            and op not in ("CUSTOM", "DELEGATE", "PLACEHOLDER_FOR_GREATER_OP_CODES")]
    return out


def test_tables_are_well_formed():
    s = schema()
    for op, row in TFLITE_OP_VERSIONS.items():
        assert hasattr(s.BuiltinOperator, op), op  # a transcription error would name no op
        needs = [tuple(map(int, n.split("."))) for n in row.split() if n != "-"]
        assert all(len(n) == 3 for n in needs) and needs == sorted(needs), (op, row)
    assert TFLITE_OP_VERSIONS["FULLY_CONNECTED"].split()[11] == "2.17.0"
    assert all(len(TFLITE_OP_VERSIONS[op].split()) >= v for op, v in TFLITE_ERRATA)
    levels = {n for row in TFLITE_OP_VERSIONS.values() for n in row.split()}
    for (package, minor), (level, overrides, source) in TFLITE_RUNTIMES.items():
        assert package in ("tflite-runtime", "tensorflow", "ai-edge-litert") and "measured" in source
        assert level in levels and level.startswith(minor + ".") == (package != "ai-edge-litert"), (minor, level)
        assert all(hasattr(s.BuiltinOperator, op) for op in overrides), overrides
    opsets = [ORT_LIMITS[m] for m in sorted(ORT_LIMITS, key=lambda m: tuple(map(int, m.split("."))))]
    assert [o[0] for o in opsets] == sorted(o[0] for o in opsets) and [o[2] for o in opsets] == sorted(
        o[2] for o in opsets)


@pytest.mark.parametrize("spec, expected", [
    ("tflite-runtime==2.14", ("tflite-runtime", "2.14")), ("tflite_runtime==2.14.0", ("tflite-runtime", "2.14.0")),
    ("ai-edge-litert==1.2", ("ai-edge-litert", "1.2")), ("onnxruntime==1.16", ("onnxruntime", "1.16")),
    (" TensorFlow == 2.21 ", ("tensorflow", "2.21")),
])
def test_runtime_specs(spec, expected):
    rt = parse_runtime_spec(spec)
    assert (rt.package, rt.version) == expected
    assert parse_runtime_spec("installed") is None


@pytest.mark.parametrize("spec", ["tflite-runtime", "tflite-runtime>=2.14", "litert==1.2", "onnxruntime==one",
                                  "tflite-runtime==2.15", "", "ai-edge-litert==0.9", "ai-edge-litert==1.5",
                                  "onnxruntime==1.16"])
def test_bad_specs_are_one_usage_line(tmp_path, spec):
    model = write(tmp_path, "m.tflite", tiny_tflite([]))
    result = invoke("check", model, "--runtime", spec)
    assert_one_line_error(result, 2, *(["runs .onnx models"] if spec == "onnxruntime==1.16" else []))
    if "==" not in spec or spec.startswith("litert") or "one" in spec:
        assert "tflite-runtime==2.14, ai-edge-litert==1.2, onnxruntime==1.16), or 'installed'" in result.stderr


@pytest.mark.parametrize("code, spec, verdict, words", [
    (("FULLY_CONNECTED", 12), "tflite-runtime==2.14", False,
     "op FULLY_CONNECTED version 12 needs TFLite runtime >= 2.17.0; tflite-runtime 2.14 has up to version 10"),
    (("FULLY_CONNECTED", 12), "ai-edge-litert==1.2", True, ""),
    (("TRANSPOSE", 7), "tflite-runtime==2.14.0", False, "needs TFLite runtime >= 2.14.4"),
    (("CAST", 7), "ai-edge-litert==1.0", False, "not registered in ai-edge-litert 1.0 (measured"),
    (("SQRT", 2), "ai-edge-litert==2.0.3", True, ""),
    (("SQRT", 2), "ai-edge-litert==1.4", False, "needs TFLite runtime >= 2.21.0"),
    (("QUANTIZE", 5), "tensorflow==2.21", False, "needs TFLite runtime >= 2.22.0"),
    (("STABLEHLO_CBRT", 1), "ai-edge-litert==2.3", False, "no kernel in any TFLite runtime"),
    (("STABLEHLO_ABS", 1), "ai-edge-litert==2.3", False, "in no TFLite runtime edgeres knows"),
    (("CAST", 9), "ai-edge-litert==2.3.0", True, ""),
    (("CAST", 10), "ai-edge-litert==2.3.0", False, "newer than every TFLite runtime edgeres knows"),
    (("BROADCAST_TO", 1), "ai-edge-litert==2.3", False, "not a version any TFLite runtime registers"),
    (("BUILTIN_250", 1), "ai-edge-litert==2.3", False, "op BUILTIN_250"),
    (("custom:TFLite_Detection_PostProcess", 1), "tflite-runtime==2.14", True, ""),
    (("custom:FlexAddV2", 1), "ai-edge-litert==2.3", False, "needs the Flex delegate"),
    (("custom:FlexAddV2", 1), "tensorflow==2.21", True, ""),
    (("custom:MyOp", 1), "tensorflow==2.21", False, "custom op MyOp has no kernel"),
])
def test_tflite_verdicts(tmp_path, code, spec, verdict, words):
    r = check_runtime(write(tmp_path, "m.tflite", tiny_tflite([code])), spec)
    assert r["compatible"] is verdict, r["problems"]
    if not verdict:
        assert len(r["problems"]) == 1 and words in r["problems"][0]["reason"], r["problems"]
        assert "(first use: op #1, 1 use)" in r["problems"][0]["reason"]


def test_newer_than_known_runtimes_warn_instead_of_failing(tmp_path):
    model = write(tmp_path, "m.tflite", tiny_tflite([("CAST", 12)]))
    for spec in ("ai-edge-litert==2.9", "tensorflow==2.30"):
        r = check_runtime(model, spec)
        assert r["compatible"] and "CAST version 12" in r["warnings"][0], r
        assert "not measured" in r["runtime"]["source"]
    with pytest.raises(UsageError, match="no such release"):
        check_runtime(model, "ai-edge-litert==1.5")  # between measured rows: not a real release


def test_declared_but_unused_codes_count(tmp_path):
    r = check_runtime(write(tmp_path, "m.tflite", tiny_tflite([("GELU", 3)], used=False)), "ai-edge-litert==2.0")
    assert not r["compatible"] and "declared, unused" in r["problems"][0]["reason"]


def test_cli_names_the_first_op_that_is_too_new(tmp_path):
    model = write(tmp_path, "m.tflite", tiny_tflite([("MUL", 1), ("LOG", 2), ("FULLY_CONNECTED", 12)]))
    result = invoke("check", model, "--runtime", "tflite-runtime==2.14")
    assert_one_line_error(result, 6, "m.tflite cannot be loaded by tflite-runtime 2.14: op LOG version 2 needs "
                                     "TFLite runtime >= 2.15.0; tflite-runtime 2.14 has up to version 1")
    assert "too new: op LOG version 2" in result.stdout and "too new: op FULLY_CONNECTED" in result.stdout
    assert result.stdout.rstrip().endswith("compatible: no")
    data = json.loads(invoke("check", model, "--runtime", "tflite-runtime==2.14", "--json").stdout)
    assert [p["op"] for p in data["problems"]] == ["LOG", "FULLY_CONNECTED"] and data["needs_runtime"] == "2.17.0"
    ok = invoke("check", model, "--runtime", "ai-edge-litert==1.2", "--json")
    assert ok.exit_code == 0 and json.loads(ok.stdout)["compatible"] is True and not ok.stderr


def test_slow_int8_warning_is_for_tflite_runtime_only(tmp_path):
    model = write(tmp_path, "m.tflite", tiny_tflite([], dtype="INT8"))
    result = invoke("check", model, "--runtime", "tflite-runtime==2.14")
    assert result.exit_code == 0 and "warning: tflite-runtime has no XNNPACK int8 path" in result.stdout
    assert not result.stderr
    assert not check_runtime(model, "ai-edge-litert==2.3")["warnings"]
    assert not check_runtime(write(tmp_path, "f.tflite", tiny_tflite([])), "tflite-runtime==2.14")["warnings"]


def test_runtime_and_target_together_fail_if_either_fails(tmp_path):
    model = write(tmp_path, "m.tflite", tiny_tflite([]))  # float: loads anywhere, not Edge TPU compatible
    result = invoke("check", model, "--runtime", "tflite-runtime==2.14", "--target", "coral-edgetpu", "--json")
    assert_one_line_error(result, 6, "is not Edge TPU compatible")
    both = json.loads(result.stdout)
    assert both["runtime"]["compatible"] is True and both["edgetpu"]["compatible"] is False
    alone = invoke("check", model, "--runtime", "tflite-runtime==2.14")
    assert alone.exit_code == 0 and "Edge TPU" not in alone.stdout


def test_garbage_is_a_model_error(tmp_path):
    for name, data in [("junk.tflite", b"\x00" * 8 + b"TFL3" + bytes(range(200))), ("junk.onnx", b"\xff" * 64),
                       ("empty.onnx", b""), ("text.onnx", b"hello onnx")]:
        result = invoke("check", write(tmp_path, name, data), "--runtime", "installed")
        assert_one_line_error(result, 3, name)
    assert_one_line_error(invoke("check", tmp_path / "missing.onnx", "--runtime", "onnxruntime==1.16"), 3)


def test_installed_tflite_runtime_loads_what_is_predicted(tmp_path):
    """Every probe, loaded for real by the installed runtime (ai-edge-litert here), in this process."""
    from edgeres.core.runtime import tflite_module

    mod, info = tflite_module()
    rt = parse_runtime_spec(f"{info.name}=={info.version}") if info.name != "tensorflow.lite" else None
    if rt is None or (rt.package, rt.minor) not in TFLITE_RUNTIMES:
        pytest.skip(f"{info.name} {info.version} is not a measured row of TFLITE_RUNTIMES")
    wrong = []
    for op, v in probes():
        path = write(tmp_path, f"{op}_{v}.tflite", tiny_tflite([(op, v)], used=False))
        try:
            mod.Interpreter(model_path=str(path)).allocate_tensors()
            loads = True
        except (RuntimeError, ValueError):
            loads = False
        if check_tflite(path, rt)["compatible"] != loads:
            wrong.append((op, v, loads))
    assert not wrong, wrong


def onnx_model(path: Path, opset: int = 17, ir: int = 8, domains=(), subgraph_domain: str | None = None) -> Path:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    nodes = [helper.make_node("Identity", ["x"], ["y"])]
    nodes += [helper.make_node(f"Op{i}", ["x"], [f"o{i}"], domain=d) for i, d in enumerate(domains)]
    if subgraph_domain:
        out = helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 4])
        body = helper.make_graph([helper.make_node("Deep", ["x"], ["b"], domain=subgraph_domain)], "b", [], [out])
        nodes.append(helper.make_node("If", ["c"], ["z"], then_branch=body, else_branch=body))
    imports = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in {*domains, subgraph_domain} if d]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=imports)
    model.ir_version = ir
    onnx.save(model, str(path))
    return path


def test_onnx_wire_reader_matches_the_onnx_package(tmp_path):
    onnx = pytest.importorskip("onnx")
    path = onnx_model(tmp_path / "m.onnx", opset=19, ir=9, domains=("com.microsoft", "my.ops", "my.ops"),
                      subgraph_domain="deep.ops")
    info, ref = read_onnx_header(path), onnx.load(str(path))
    assert info["ir_version"] == ref.ir_version == 9
    assert info["opsets"] == {(o.domain or "ai.onnx"): o.version for o in ref.opset_import}
    assert info["nodes"] == {"ai.onnx": 2, "com.microsoft": 1, "my.ops": 2, "deep.ops": 2}  # If: both branches
    r = check_onnx(path, parse_runtime_spec("onnxruntime==1.16"))
    assert r["compatible"] and len(r["warnings"]) == 2 and "custom domain 'my.ops'" in r["warnings"][0]
    assert "onnxruntime's own com.microsoft ops" in r["notes"][0]


def test_onnx_opset_and_ir_too_new(tmp_path):
    path = onnx_model(tmp_path / "m.onnx", opset=21, ir=10)
    result = invoke("check", path, "--runtime", "onnxruntime==1.16")
    assert_one_line_error(result, 6, "m.onnx cannot be loaded by onnxruntime 1.16: IR version 10 needs "
                                     "onnxruntime >= 1.18; onnxruntime 1.16 reads up to IR 9")
    assert "ai.onnx opset 21 needs onnxruntime >= 1.18; onnxruntime 1.16 supports up to opset 19" in result.stdout
    assert invoke("check", path, "--runtime", "onnxruntime==1.18.1").exit_code == 0


def test_installed_onnxruntime_loads_what_is_predicted(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    rt = parse_runtime_spec(f"onnxruntime=={ort.__version__}")
    if rt.minor not in ORT_LIMITS:
        pytest.skip(f"onnxruntime {ort.__version__} is not a row of ORT_LIMITS")
    opset, _, ir, _ = ORT_LIMITS[rt.minor]
    for name, kw in [("ok", {}), ("opset", {"opset": opset + 1}), ("ir", {"ir": ir + 1}),
                     ("top", {"opset": opset, "ir": ir})]:
        path = onnx_model(tmp_path / f"{name}.onnx", **kw)
        try:
            ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            loads = True
        except Exception:  # noqa: BLE001 - onnxruntime raises its own Fail/InvalidGraph types
            loads = False
        assert check_runtime(path, "installed")["compatible"] is loads, (name, kw)


def test_runtime_check_is_light(tmp_path):
    tfl, onx = write(tmp_path, "m.tflite", tiny_tflite([])), onnx_model(tmp_path / "m.onnx")
    script = textwrap.dedent(f"""
        import sys
        from edgeres.devices.compat import check_runtime, format_runtime_check
        for model, spec in (({str(tfl)!r}, "tflite-runtime==2.14"), ({str(onx)!r}, "onnxruntime==1.16")):
            format_runtime_check(check_runtime(model, spec))
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "onnx", "onnxruntime"))
        assert not heavy, heavy
        print("light ok")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0 and "light ok" in proc.stdout, proc.stdout + proc.stderr


@pytest.fixture(scope="session")
def tflite_runtime_python() -> Path:
    """The python of a venv with tflite-runtime 2.14.0 (built once, kept in /tmp/edgeres-test-venvs)."""
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "aarch64") or sys.version_info >= (3, 12):
        pytest.skip(f"tflite-runtime {TFLITE_RUNTIME} has wheels only for CPython 3.8-3.11 on Linux x86_64/aarch64 "
                    f"(this is Python {platform.python_version()} on {sys.platform} {platform.machine()})")
    return side_venv(f"tflite-runtime-{TFLITE_RUNTIME}", [f"tflite-runtime=={TFLITE_RUNTIME}", "numpy<2"])


LOADER = """
import json, sys
from tflite_runtime.interpreter import Interpreter
out = {}
for path in sys.argv[1:]:
    try:
        Interpreter(model_path=path).allocate_tensors()
        out[path] = "ok"
    except Exception as exc:
        out[path] = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
print(json.dumps(out))
"""


def load_in_tflite_runtime(python: Path, paths) -> dict[str, str]:
    proc = subprocess.run([str(python), "-c", LOADER, *map(str, paths)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def real_models(default_run, tmp_path_factory) -> dict[str, Path]:
    """Real conversions: the default run, a zoo ResNet-8 at 16x16, and ops TF 2.21 writes in post-2.14 versions."""
    keras = pytest.importorskip("keras")
    from edgeres.backends.tflite import to_int8
    from edgeres.zoo.registry import create_model

    tmp = tmp_path_factory.mktemp("compat")
    keras.utils.set_random_seed(0)
    calib = np.random.default_rng(0).uniform(0, 255, (8, 16, 16, 3)).astype("float32")

    def with_op(fn):  # conv -> fn -> pool -> dense, full int8
        x = keras.Input((16, 16, 3), batch_size=1)
        y = fn(keras.layers.Conv2D(4, 3, padding="same", activation="relu")(x) + 0.1)
        return keras.Model(x, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(y)))

    files = {"default fp32": default_run / "model_fp32.tflite", "default int8": default_run / "model_int8.tflite",
             "resnet8 int8": write(tmp, "resnet8.tflite", to_int8(create_model("resnet8", input_size=16,
                                                                                num_classes=10), calib)),
             "log int8": write(tmp, "log.tflite", to_int8(with_op(keras.ops.log), calib)),      # LOG v2: 2.15.0
             "sqrt int8": write(tmp, "sqrt.tflite", to_int8(with_op(keras.ops.sqrt), calib))}   # SQRT v2: 2.21.0
    # No natural conversion here writes FULLY_CONNECTED 12 (per-channel dense, 2.17.0): the default int8 model
    # with that one version number patched in its flatbuffer stands in for one.
    s = schema()
    m = s.ModelT.InitFromPackedBuf(files["default int8"].read_bytes(), 0)
    fc = next(oc for oc in m.operatorCodes if oc.builtinCode == s.BuiltinOperator.FULLY_CONNECTED)
    fc.version = 12
    b = flatbuffers.Builder(0)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    files["patched FC v12"] = write(tmp, "fc12.tflite", bytes(b.Output()))
    return files


@pytest.mark.slow
def test_prediction_is_what_tflite_runtime_214_does_with_real_models(tflite_runtime_python, real_models):
    actual = load_in_tflite_runtime(tflite_runtime_python, real_models.values())
    expected_failures = {"log int8": ("LOG", 2), "sqrt int8": ("SQRT", 2), "patched FC v12": ("FULLY_CONNECTED", 12)}
    for name, path in real_models.items():
        r = check_runtime(path, "tflite-runtime==2.14")
        assert r["compatible"] is (actual[str(path)] == "ok") is (name not in expected_failures), (name, r, actual)
        if name in expected_failures:  # the op edgeres names is the op the runtime refuses
            op, v = expected_failures[name]
            assert f"Didn't find op for builtin opcode '{op}' version '{v}'" in actual[str(path)]
            assert r["problems"][0]["reason"].startswith(f"op {op} version {v} needs TFLite runtime >= ")
    result = invoke("check", real_models["log int8"], "--runtime", "tflite-runtime==2.14.0")
    assert_one_line_error(result, 6, "op LOG version 2 needs TFLite runtime >= 2.15.0")


@pytest.mark.slow
def test_every_table_entry_is_what_tflite_runtime_214_does(tflite_runtime_python, tmp_path):
    paths = {(op, v): write(tmp_path, f"{op}_{v}.tflite", tiny_tflite([(op, v)], used=False)) for op, v in probes()}
    actual = load_in_tflite_runtime(tflite_runtime_python, paths.values())
    rt = parse_runtime_spec(f"tflite-runtime=={TFLITE_RUNTIME}")
    wrong = [(op, v, actual[str(p)]) for (op, v), p in paths.items()
             if check_tflite(p, rt)["compatible"] != (actual[str(p)] == "ok")]
    assert not wrong, wrong
    assert sum(a == "ok" for a in actual.values()) > 300  # the probes do load when they should
