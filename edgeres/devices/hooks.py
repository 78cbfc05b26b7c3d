"""Device steps that follow conversion, by target delegate.  LIGHT layer.

A target whose device needs more than a ``.tflite`` file (today: the Coral
Edge TPU, whose models are compiled ahead of time) registers one step here.
The step gets the run folder and the int8 TFLite file name, and returns what
the report records under the step's name; its ``notes`` also reach the report.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from edgeres.core.errors import RuntimeUnavailableError
from edgeres.core.quiet import quiet
from edgeres.devices.targets import Target

Step = Callable[[Target, Path, str], dict]


def edgetpu_step(target: Target, run_dir: Path, filename: str) -> dict:
    """Check the int8 model against the Edge TPU's rules, and compile it when edgetpu_compiler is installed."""
    from edgeres.devices.edgetpu import ON_CHIP_BYTES, check_model, compile_model

    chk = check_model(run_dir / filename, target.constraints.max_tensor_bytes or ON_CHIP_BYTES)
    chk["path"] = filename  # inside the run folder, not the staging folder it was checked in
    result: dict = {"check": chk, "notes": []}
    if not chk["compatible"]:
        first = chk["first_unsupported"]
        result["notes"].append("Edge TPU: " + (chk["errors"][0] if chk["errors"] else
                               f"op #{first['index']} {first['op']} runs on the CPU and splits the graph "
                               f"({first['reason']})"))
    try:
        with quiet():
            compiled = compile_model(run_dir / filename, run_dir)
        compiled["compiled_path"] = Path(compiled["compiled_path"]).name
        result["compiler"] = compiled
        result["notes"].append(f"Edge TPU compiler: {compiled.get('ops_on_tpu')} ops on the TPU, "
                               f"{compiled.get('ops_on_cpu')} on the CPU")
    except RuntimeUnavailableError as exc:
        result["compiler"] = None
        result["notes"].append(f"not compiled for the Edge TPU: {exc}")
    return result


#: target TFLite delegate -> (stage and report key, step)
HOOKS: dict[str, tuple[str, Step]] = {"edgetpu": ("edgetpu", edgetpu_step)}


def hook_for(target: Target) -> tuple[str, Step] | None:
    return HOOKS.get(target.tflite.delegate)
