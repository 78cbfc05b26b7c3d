"""Can a given runtime release load this model?  ``edgeres check MODEL --runtime SPEC``, before deployment.

LIGHT: the TFLite schema bindings read ``.tflite`` files, a small protobuf wire-format reader ``.onnx`` files (no
interpreter, no ``onnx`` package).  The verdicts come from :mod:`edgeres.devices.compat_tables` (data, sourced).
"""

from __future__ import annotations

import functools
import importlib.metadata
import mmap
import re
from dataclasses import dataclass
from pathlib import Path

from edgeres.core.errors import ModelError, RuntimeUnavailableError, UsageError, no_model_file
from edgeres.core.tflite_schema import schema
from edgeres.devices.compat_tables import (
    INSTALLED_DISTRIBUTIONS,
    INT16_UNDER_DECLARED,
    ORT_DOMAINS,
    ORT_LIMITS,
    TFLITE_ERRATA,
    TFLITE_OP_VERSIONS,
    TFLITE_RUNTIME_SLOW_INT8,
    TFLITE_RUNTIMES,
    TFLITE_STOCK_CUSTOM_OPS,
)
from edgeres.devices.edgetpu.graph import read_tflite

_PACKAGES = {"tflite-runtime": "tflite", "ai-edge-litert": "tflite", "tensorflow": "tflite", "onnxruntime": "onnx"}


def _vkey(version: str) -> tuple[int, ...]:
    """Versions in order: '2.14' -> (2, 14, 0)."""
    parts = [int(p) for p in re.findall(r"\d+", version)[:3]]
    return tuple(parts + [0] * (3 - len(parts)))


@dataclass(frozen=True)
class Runtime:
    """A runtime release: package (normalised), version as given, the model format it runs."""

    package: str
    version: str
    fmt: str

    @property
    def minor(self) -> str:
        return ".".join(str(p) for p in _vkey(self.version)[:2])

    def __str__(self) -> str:
        return f"{self.package} {self.version}"


def parse_runtime_spec(spec: str) -> Runtime | None:
    """``NAME==VERSION`` as a :class:`Runtime`, None for ``installed``; UsageError listing the forms otherwise."""
    text = spec.strip()
    if text.lower() == "installed":
        return None
    m = re.fullmatch(r"([A-Za-z][A-Za-z0-9_.-]*)\s*==\s*(\d+\.\d+(?:\.\d+)?)", text)
    package = m and m.group(1).lower().replace("_", "-")
    if not m or package not in _PACKAGES:
        raise UsageError(f"--runtime {spec!r} is not understood: give NAME==VERSION with NAME one of "
                         f"{', '.join(_PACKAGES)} (e.g. tflite-runtime==2.14, ai-edge-litert==1.2, "
                         "onnxruntime==1.16), or 'installed'")
    if package == "tflite-runtime" and _vkey(m.group(2)) > (2, 14, 0):
        raise UsageError(f"--runtime {spec!r}: tflite-runtime's last release is 2.14.0; its successor is "
                         "ai-edge-litert (e.g. ai-edge-litert==1.2)")
    return Runtime(package, m.group(2), _PACKAGES[package])


def installed_runtime(fmt: str) -> Runtime:
    """The runtime this machine would run a ``fmt`` model with, read from the installed distributions."""
    for dist in INSTALLED_DISTRIBUTIONS[fmt]:
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
        package = "onnxruntime" if fmt == "onnx" else "tensorflow" if dist.startswith("tensorflow") else dist
        return Runtime(package, version, fmt)
    raise RuntimeUnavailableError(f"--runtime installed: no {fmt.upper()} runtime is installed here "
                                  f"(looked for {', '.join(INSTALLED_DISTRIBUTIONS[fmt])})")


@functools.lru_cache(maxsize=1)
def _table() -> dict[str, dict[int, str | None]]:
    """TFLITE_OP_VERSIONS as {op: {version: minimum runtime or None}}, with TFLITE_ERRATA applied."""
    table = {op: {v: None if need == "-" else need for v, need in enumerate(row.split(), 1)}
             for op, row in TFLITE_OP_VERSIONS.items()}
    for (op, v), need in TFLITE_ERRATA.items():
        table[op][v] = need
    return table


@dataclass(frozen=True)
class _TfliteLimits:
    """The table level a runtime loads, its measured differences, and whether it is newer than anything known."""

    level: str
    overrides: dict[str, int]
    source: str
    open_ended: bool  # versions beyond what is known are then "unknown", not refused


def tflite_limits(rt: Runtime) -> _TfliteLimits:
    row = TFLITE_RUNTIMES.get((rt.package, rt.minor))
    if row:
        return _TfliteLimits(row[0], row[1], row[2], False)
    if rt.package == "ai-edge-litert":
        known = sorted((m for p, m in TFLITE_RUNTIMES if p == rt.package), key=_vkey)
        if _vkey(rt.version) < _vkey(known[-1]):
            raise UsageError(f"--runtime {rt.package}=={rt.version}: no such release in edgeres' table "
                             f"({', '.join(known)})")
        level, overrides, source = TFLITE_RUNTIMES[(rt.package, known[-1])]
        return _TfliteLimits(level, overrides, f"not measured: assumed to load at least what ai-edge-litert "
                                               f"{known[-1]} loads ({source})", True)
    level = ".".join(str(p) for p in _vkey(rt.version))
    return _TfliteLimits(level, {}, f"not measured: TensorFlow's table read at {level}",
                         _vkey(level) > max(_vkey(n) for row in _table().values() for n in row.values() if n))


def _highest(op: str, lim: _TfliteLimits) -> int:
    if op in lim.overrides:
        return lim.overrides[op]
    return max((v for v, need in _table().get(op, {}).items() if need and _vkey(need) <= _vkey(lim.level)),
               default=0)


def _judge_builtin(op: str, v: int, rt: Runtime, lim: _TfliteLimits) -> tuple[str, str]:
    """("ok"|"too_new"|"unknown", reason) for builtin ``op`` at version ``v``."""
    row, top = _table().get(op) or {}, _highest(op, lim)
    has = f"{rt} has up to version {top}" if top else f"{rt} does not have this op"
    low = min((k for k, need in row.items() if need), default=1)
    if low <= v <= top:
        return "ok", ""
    need = row.get(v, "beyond")
    if need == "beyond" and lim.open_ended:
        return "unknown", f"op {op} version {v} is not in TensorFlow's op-version table; {rt} may load it"
    if not row:
        return "too_new", f"op {op} is in no TFLite runtime edgeres knows (TensorFlow's table has no entry for it)"
    if v < low:
        return "too_new", f"op {op} version {v} is not a version any TFLite runtime registers"
    if need == "beyond":
        return "too_new", (f"op {op} version {v} is newer than every TFLite runtime edgeres knows "
                           f"(TensorFlow's table stops at version {max(row)}); {has}")
    if need is None:
        return "too_new", f"op {op} version {v} has no kernel in any TFLite runtime edgeres measured; {has}"
    if _vkey(need) > _vkey(lim.level):
        return "too_new", f"op {op} version {v} needs TFLite runtime >= {need}; {has}"
    return "too_new", (f"op {op} version {v} is not registered in {rt} (measured; TensorFlow's table dates it "
                       f"{need}); {has}")


def _judge_custom(name: str, rt: Runtime) -> tuple[str, str]:
    if name in TFLITE_STOCK_CUSTOM_OPS or name.startswith("Flex") and rt.package == "tensorflow":
        return "ok", ""
    if name.startswith("Flex"):
        return "too_new", f"custom op {name} is a TensorFlow (Flex) op: it needs the Flex delegate, which {rt} lacks"
    return "too_new", f"custom op {name} has no kernel in {rt}: the application must register one"


def read_tflite_ops(path: str | Path) -> dict:
    """Every operator code of a ``.tflite`` file (name, version, uses, first use), int8-ness and metadata."""
    p, data = read_tflite(path)
    s = schema()
    names = {v: k for k, v in vars(s.BuiltinOperator).items() if k.isupper() and isinstance(v, int)}
    int8, int16 = {s.TensorType.INT8, s.TensorType.UINT8}, s.TensorType.INT16
    try:
        model = s.Model.GetRootAs(data, 0)
        codes = []
        for oc in (model.OperatorCodes(i) for i in range(model.OperatorCodesLength())):
            code = max(int(oc.BuiltinCode()), int(oc.DeprecatedBuiltinCode()))
            name = names.get(code)
            custom = name == "CUSTOM" and oc.CustomCode() and oc.CustomCode().decode("utf-8", "replace")
            codes.append({"op": custom or name or f"BUILTIN_{code}", "version": int(oc.Version()),
                          "custom": name == "CUSTOM", "uses": 0, "first_use": None})
        types = set()
        for g in range(model.SubgraphsLength()):
            sg = model.Subgraphs(g)
            types.update(sg.Tensors(t).Type() for t in range(sg.TensorsLength()))
            for i in range(sg.OperatorsLength()):
                c = codes[sg.Operators(i).OpcodeIndex()]
                c["uses"] += 1
                c["first_use"] = c["first_use"] or (f"#{i}" if g == 0 else f"subgraph {g} #{i}")
        stamped = None
        for i in range(model.MetadataLength()):
            md = model.Metadata(i)
            buf = model.Buffers(md.Buffer()) if 0 < md.Buffer() < model.BuffersLength() else None
            if md.Name() == b"min_runtime_version" and buf is not None and buf.DataLength():
                stamped = bytes(buf.DataAsNumpy()).split(b"\0")[0].decode("ascii", "replace")
    except Exception as exc:  # noqa: BLE001 - flatbuffers raises IndexError/struct.error/TypeError on garbage
        raise ModelError(f"{p} is a corrupt TFLite flatbuffer ({type(exc).__name__}: {exc})") from None
    return {"model": str(p), "codes": codes, "int8": bool(types & int8), "int16": int16 in types,
            "min_runtime_version": stamped}


def check_tflite(path: str | Path, rt: Runtime) -> dict:
    info = read_tflite_ops(path)
    lim = tflite_limits(rt)
    problems, warnings, ops = [], [], []
    for c in info["codes"]:
        status, reason = (_judge_custom(c["op"], rt) if c["custom"]
                          else _judge_builtin(c["op"], c["version"], rt, lim))
        row = None if c["custom"] else _table().get(c["op"]) or {}
        ops.append({**c, "status": status, "needs": None if row is None else row.get(c["version"]),
                    "runtime_max": None if row is None else _highest(c["op"], lim)})
        where = f" (first use: op {c['first_use']}, {c['uses']} use{'s' * (c['uses'] != 1)})" if c["uses"] else \
            " (declared, unused: the interpreter still resolves it)"
        if status == "too_new":
            problems.append({"op": c["op"], "version": c["version"], "reason": reason + where})
        elif status == "unknown":
            warnings.append(reason + where)
    if rt.package == "tflite-runtime" and info["int8"]:
        warnings.append(TFLITE_RUNTIME_SLOW_INT8)
    if info["int16"]:
        warnings.append(INT16_UNDER_DECLARED)
    needs = [o["needs"] for o in ops if o["needs"]]
    return {"model": info["model"], "format": "tflite",
            "runtime": {"name": rt.package, "version": rt.version, "loads_table_level": lim.level,
                        "source": lim.source},
            "compatible": not problems, "problems": problems, "warnings": warnings, "ops": ops,
            "needs_runtime": max(needs, key=_vkey) if needs else None,
            "min_runtime_version": info["min_runtime_version"]}


def _varint(buf, i: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while i < end and shift < 64:
        value |= (buf[i] & 0x7F) << shift
        shift, i = shift + 7, i + 1
        if not buf[i - 1] & 0x80:
            return value, i
    raise ValueError("truncated varint")


def _fields(buf, start: int, end: int):
    """(field number, value): an int for varints, a (start, end) span for length-delimited fields."""
    i = start
    while i < end:
        tag, i = _varint(buf, i, end)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, i = _varint(buf, i, end)
            yield field, value
        elif wire == 2:
            n, i = _varint(buf, i, end)
            if i + n > end:
                raise ValueError("field runs past its message")
            yield field, (i, i + n)
            i += n
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
        else:
            raise ValueError(f"wire type {wire}")
    if i != end:
        raise ValueError("message overruns its length")


def _text(buf, span) -> str:
    return bytes(buf[span[0]:span[1]]).decode("utf-8", "replace")


def _graph_nodes(buf, span, domains: dict[str, list[str]], depth: int = 0) -> None:
    """Collect {domain: [op types]} of a GraphProto's nodes, subgraphs (If/Loop/Scan bodies) included."""
    if depth > 64:
        raise ValueError("subgraphs nested more than 64 deep")
    for field, node in _fields(buf, *span):
        if field != 1 or not isinstance(node, tuple):
            continue
        op_type = domain = ""
        for f, value in _fields(buf, *node):
            if f == 4 and isinstance(value, tuple):
                op_type = _text(buf, value)
            elif f == 7 and isinstance(value, tuple):
                domain = _text(buf, value)
            elif f == 5 and isinstance(value, tuple):  # AttributeProto: g = 6, graphs = 11
                for af, av in _fields(buf, *value):
                    if af in (6, 11) and isinstance(av, tuple):
                        _graph_nodes(buf, av, domains, depth + 1)
        domains.setdefault("ai.onnx" if domain in ("", "ai.onnx") else domain, []).append(op_type)


def read_onnx_header(path: str | Path) -> dict:
    """IR version, opset imports and node domains of an ``.onnx`` file, read from its protobuf wire format."""
    p = Path(path)
    if not p.is_file():
        raise no_model_file(p)
    try:
        with p.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            ir, opsets, domains, graph = 0, {}, {}, None
            for field, value in _fields(buf, 0, len(buf)):
                if field == 1 and isinstance(value, int):
                    ir = value
                elif field == 8 and isinstance(value, tuple):
                    entry = dict(_fields(buf, *value))
                    dom = _text(buf, entry[1]) if isinstance(entry.get(1), tuple) else ""
                    opsets["ai.onnx" if dom in ("", "ai.onnx") else dom] = int(entry.get(2, 0))
                elif field == 7 and isinstance(value, tuple):
                    graph = value
            if graph is None or ir <= 0:
                raise ValueError("no graph or no IR version")
            _graph_nodes(buf, graph, domains)
    except (OSError, ValueError) as exc:
        raise ModelError(f"{p} is not a readable ONNX model ({exc})") from None
    return {"model": str(p), "ir_version": ir, "opsets": opsets,
            "domains": {d: sorted(set(ops)) for d, ops in domains.items()},
            "nodes": {d: len(ops) for d, ops in domains.items()}}


def _ort_row(rt: Runtime) -> tuple[tuple[int, int, int, str], str | None]:
    row = ORT_LIMITS.get(rt.minor)
    if row:
        return row, None
    newest = max(ORT_LIMITS, key=_vkey)
    if _vkey(rt.version) > _vkey(newest):
        return ORT_LIMITS[newest], (f"onnxruntime {rt.version} is newer than edgeres' table; assumed to support at "
                                    f"least what onnxruntime {newest} does")
    raise UsageError(f"--runtime onnxruntime=={rt.version}: no such onnxruntime release in edgeres' table "
                     f"({min(ORT_LIMITS, key=_vkey)} to {newest})")


def _first_ort(index: int, value: int) -> str:
    return next((m for m in sorted(ORT_LIMITS, key=_vkey) if ORT_LIMITS[m][index] >= value), "none yet")


def check_onnx(path: str | Path, rt: Runtime) -> dict:
    info = read_onnx_header(path)
    (max_opset, max_ml, max_ir, source), assumed = _ort_row(rt)
    problems, warnings, notes = [], [assumed] if assumed else [], []
    if info["ir_version"] > max_ir:
        problems.append({"op": "IR", "version": info["ir_version"], "reason": (
            f"IR version {info['ir_version']} needs onnxruntime >= {_first_ort(2, info['ir_version'])}; "
            f"{rt} reads up to IR {max_ir}")})
    for domain, index, top in (("ai.onnx", 0, max_opset), ("ai.onnx.ml", 1, max_ml)):
        v = info["opsets"].get(domain, 0)
        if v > top:
            used = info["domains"].get(domain, [])
            problems.append({"op": f"{domain} opset", "version": v, "reason": (
                f"{domain} opset {v} needs onnxruntime >= {_first_ort(index, v)}; {rt} supports up to opset "
                f"{top}" + (f" (the model's {info['nodes'][domain]} {domain} nodes, e.g. {used[0]}, are "
                            f"stamped with it)" if used else ""))})
    for domain, ops in info["domains"].items():
        if domain.startswith("com.microsoft"):
            notes.append(f"{info['nodes'][domain]} node(s) use onnxruntime's own {domain} ops "
                         f"({', '.join(ops)}): fine with onnxruntime, not portable to other ONNX runtimes")
        elif domain not in ORT_DOMAINS:
            warnings.append(f"{info['nodes'][domain]} node(s) in custom domain '{domain}' ({', '.join(ops)}) need "
                            "a custom-op library registered with onnxruntime; edgeres cannot check it")
    return {"model": info["model"], "format": "onnx",
            "runtime": {"name": rt.package, "version": rt.version, "max_opset": max_opset, "max_ml_opset": max_ml,
                        "max_ir_version": max_ir, "source": source},
            "compatible": not problems, "problems": problems, "warnings": warnings, "notes": notes,
            "ir_version": info["ir_version"], "opsets": info["opsets"], "nodes": info["nodes"]}


def model_format(path: str | Path) -> str:
    """'tflite' or 'onnx': by suffix, else by the TFLite file identifier."""
    p = Path(path)
    if p.suffix.lower() in (".onnx", ".tflite") or not p.is_file():
        return "onnx" if p.suffix.lower() == ".onnx" else "tflite"
    with p.open("rb") as f:
        return "tflite" if f.read(8)[4:8] == b"TFL3" else "onnx"


def check_runtime(model: str | Path, spec: str) -> dict:
    """Whether the runtime named by ``spec`` can load ``model`` (.tflite or .onnx), and why not."""
    rt = parse_runtime_spec(spec)
    fmt = model_format(model)
    if rt is None:
        rt = installed_runtime(fmt)
    if rt.fmt != fmt:
        raise UsageError(f"--runtime {spec}: {rt.package} runs .{rt.fmt} models, and {Path(model).name} "
                         f"is a .{fmt} model")
    return check_tflite(model, rt) if fmt == "tflite" else check_onnx(model, rt)


def format_runtime_check(r: dict) -> str:
    rt = r["runtime"]
    lines = [f"{Path(r['model']).name} on {rt['name']} {rt['version']} ({rt['source']})"]
    if r["format"] == "tflite":
        listed = ", ".join(f"{o['op']} v{o['version']}" for o in r["ops"])
        lines.append(f"  {len(r['ops'])} operator codes: {listed}")
        if r["needs_runtime"]:
            stamp = f"; the converter stamped {r['min_runtime_version']}" if r["min_runtime_version"] else ""
            lines.append(f"  TensorFlow's table: the model needs TFLite runtime >= {r['needs_runtime']}{stamp}")
    else:
        shown = {d: v for d, v in r["opsets"].items() if d in ("ai.onnx", "ai.onnx.ml") or d in r["nodes"]}
        opsets = ", ".join(f"{d} {v}" for d, v in shown.items()) + (
            f" (+{len(r['opsets']) - len(shown)} imported, unused)" if len(shown) < len(r["opsets"]) else "")
        lines.append(f"  IR {r['ir_version']}; opsets: {opsets}; {rt['name']} {rt['version']} supports opset "
                     f"{rt['max_opset']}, ai.onnx.ml {rt['max_ml_opset']}, IR {rt['max_ir_version']}")
    for label, items in (("too new", [p["reason"] for p in r["problems"]]), ("note", r.get("notes", [])),
                         ("warning", r["warnings"])):
        lines += [f"  {label}: {item}" for item in items]
    lines.append(f"compatible: {'yes' if r['compatible'] else 'no'}")
    return "\n".join(lines)
