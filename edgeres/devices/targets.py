"""Device profiles: ``targets/*.toml`` loaded into typed, frozen config.

Foundation layer: standard library only.  A profile holds no code.  Unknown
keys and wrong types are errors that name the file, the key and what is
allowed, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import platform
from dataclasses import dataclass, field
from pathlib import Path

from edgeres.core.limits import check_threads
from edgeres.core.typed_toml import load_typed, resolve_toml

IO_DTYPES = ("int8", "uint8", "float32")
ONNX_ACTIVATIONS = ("uint8", "int8")  # U8S8 / S8S8 (weights are always int8)
ONNX_KERNELS = ("measure", "symmetric")  # see edgeres.backends.onnx_kernels
TFLITE_DELEGATES = ("xnnpack", "none", "reference", "edgetpu")


@dataclass(frozen=True)
class TFLiteSettings:
    delegate: str = "xnnpack"
    io_dtype: str = "int8"


@dataclass(frozen=True)
class OnnxSettings:
    activation_type: str = "uint8"  # "uint8": U8S8, "int8": S8S8 (weights are always int8, per the recipe)
    providers: tuple[str, ...] = ("CPUExecutionProvider",)  # ONNX Runtime execution providers, in order
    # "measure": when converting on the target's own architecture, time each int8 convolution on ORT's two
    # kernels and keep the faster (an exact rewrite); "symmetric": ORT's default kernels, no measurement
    kernels: str = "measure"


@dataclass(frozen=True)
class Constraints:
    batch_one: bool = False       # convert with a fixed batch of 1
    static_shapes: bool = False   # no dynamic dimensions (also converts with a fixed batch of 1)
    full_int8: bool = False       # refuse recipes and searches that keep layers float or use int16
    max_tensor_bytes: int = 0     # on-chip parameter memory the device check uses; 0: its own default


@dataclass(frozen=True)
class Target:
    name: str
    description: str = ""
    arch: str = "x86_64"
    threads: int = 2
    ssh_host: str = ""    # a device to run 'bench' and 'validate' on over SSH by default (user@host or an alias)
    ssh_python: str = ""  # its interpreter with edgeres[runtime]; "" means python3
    tflite: TFLiteSettings = field(default_factory=TFLiteSettings)
    onnx: OnnxSettings = field(default_factory=OnnxSettings)
    constraints: Constraints = field(default_factory=Constraints)
    path: str = ""

    @property
    def onnx_scheme(self) -> str:
        return {"uint8": "U8S8", "int8": "S8S8"}[self.onnx.activation_type]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    # what host_arch() reports on the CPUs TFLite (XNNPACK) and ONNX Runtime are built for
    ("", "arch"): ("x86_64", "aarch64", "armv7l", "riscv64", "ppc64le", "s390x"),
    ("tflite", "delegate"): TFLITE_DELEGATES,
    ("tflite", "io_dtype"): IO_DTYPES,
    ("onnx", "activation_type"): ONNX_ACTIVATIONS,
    ("onnx", "kernels"): ONNX_KERNELS,
}


def targets_dir() -> Path:
    """Bundled profiles: ``targets/`` at the project root, or ``edgeres/_targets`` in a wheel."""
    here = Path(__file__).resolve().parents[1]  # the edgeres package
    for cand in (here / "_targets", here.parent / "targets"):
        if cand.is_dir():
            return cand
    return here.parent / "targets"


def list_targets() -> list[Target]:
    return [load_target(p) for p in sorted(targets_dir().glob("*.toml"))]


def host_arch() -> str:
    """This machine's architecture, spelled as the profiles' ``arch``."""
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def default_target_name() -> str:
    """The profile for the machine edgeres runs on."""
    return "aarch64" if host_arch() == "aarch64" else "x86-64"


def resolve_target(spec: str | None) -> Target:
    """A target from a bundled name, a path to a TOML file, or the host default."""
    if spec is None or spec == "auto":
        spec = default_target_name()
    return load_target(resolve_toml(spec, targets_dir(), "target"))


def load_target(path: Path) -> Target:
    return load_typed(Target, path, "target file", _CHOICES, _CHECKS)


def _check_threads(value, key: str, path: Path, kind: str) -> None:
    check_threads(value, f"{kind} {path}: '{key}'")


def _check_ssh_host(value, key: str, path: Path, kind: str) -> None:
    from edgeres.core.errors import UsageError
    from edgeres.devices.remote import check_host

    if value:
        try:
            check_host(value)
        except UsageError as exc:
            raise UsageError(f"{kind} {path}: '{key}': {exc}") from None


_CHECKS = {"threads": _check_threads, "ssh_host": _check_ssh_host}
