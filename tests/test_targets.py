"""Tests for edgeres.devices.targets: bundled device profiles and strict TOML loading."""

import platform
import re

import pytest

from edgeres.core.errors import UsageError
from edgeres.devices.targets import (
    Constraints,
    Target,
    default_target_name,
    list_targets,
    load_target,
    resolve_target,
    targets_dir,
)

BUNDLED = {"x86-64", "aarch64", "rpi4", "rpi5", "coral-edgetpu", "android-cpu"}


def _write(tmp_path, text, name="custom.toml"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


# --------------------------------------------------------------------------- bundled profiles


def test_every_bundled_profile_loads():
    found = list_targets()
    names = [t.name for t in found]
    assert set(names) >= BUNDLED
    assert names == sorted(names)
    for t in found:
        assert isinstance(t, Target)
        assert t.threads >= 1
        assert t.description
        assert t.onnx_scheme in ("U8S8", "S8S8")
        assert t.path.endswith(f"{t.name}.toml")
        assert t.to_dict()["name"] == t.name


def test_x86_64_profile():
    t = resolve_target("x86-64")
    assert t.arch == "x86_64"
    assert t.onnx.activation_type == "uint8"
    assert t.onnx_scheme == "U8S8"
    assert t.onnx.providers == ("CPUExecutionProvider",)
    assert t.tflite.delegate == "xnnpack"
    assert t.constraints == Constraints()


@pytest.mark.parametrize("name", ["rpi4", "rpi5"])
def test_raspberry_pi_profiles(name):
    t = resolve_target(name)
    assert t.name == name
    assert t.arch == "aarch64"
    assert t.threads == 4
    assert t.tflite.delegate == "xnnpack"
    assert t.onnx_scheme == "S8S8"


def test_fields_nothing_read_are_gone(tmp_path):
    """isa and onnx.per_channel were never read (the recipe sets per-channel weights): they are unknown keys now."""
    for text, key in (('isa = "neon"\n', "isa"), ('[onnx]\nper_channel = true\n', "per_channel")):
        p = tmp_path / "t.toml"
        p.write_text(text)
        with pytest.raises(UsageError, match=f"unknown key .*'{key}'"):
            load_target(p)


def test_threads_have_an_upper_bound(tmp_path):
    p = tmp_path / "t.toml"
    p.write_text("threads = 100000\n")
    with pytest.raises(UsageError, match="at most 256"):
        load_target(p)


def test_coral_edgetpu_profile():
    t = resolve_target("coral-edgetpu")
    assert t.tflite.delegate == "edgetpu"
    assert t.tflite.io_dtype == "uint8"
    c = t.constraints
    assert c.batch_one and c.static_shapes and c.full_int8
    assert c.max_tensor_bytes == 8 * 1024 * 1024


def test_android_cpu_profile():
    t = resolve_target("android-cpu")
    assert t.arch == "aarch64"
    assert t.tflite.delegate == "xnnpack"
    assert t.tflite.io_dtype == "int8"
    assert not t.constraints.batch_one


def test_resolve_none_and_auto_give_the_host_default():
    expected = "aarch64" if platform.machine().lower() in ("aarch64", "arm64") else "x86-64"
    assert default_target_name() == expected
    assert resolve_target(None).name == expected
    assert resolve_target("auto").name == expected
    assert resolve_target(None) == resolve_target(expected)


def test_resolve_bundled_path(tmp_path):
    p = targets_dir() / "rpi5.toml"
    assert resolve_target(str(p)) == resolve_target("rpi5")


def test_targets_dir_holds_the_bundled_files():
    assert {p.stem for p in targets_dir().glob("*.toml")} >= BUNDLED


# --------------------------------------------------------------------------- custom files


def test_custom_file_defaults_and_name_from_stem(tmp_path):
    p = _write(tmp_path, 'arch = "aarch64"\nthreads = 3\n', name="my-board.toml")
    t = resolve_target(str(p))
    assert t.name == "my-board"
    assert t.threads == 3
    assert t.path == str(p)
    assert t.tflite.delegate == "xnnpack" and t.tflite.io_dtype == "int8"
    assert t.onnx_scheme == "U8S8"
    assert t.constraints == Constraints()


def test_custom_file_explicit_name_and_all_sections(tmp_path):
    p = _write(tmp_path, """
name = "board"
threads = 1
[tflite]
delegate = "none"
io_dtype = "float32"
[onnx]
activation_type = "int8"
providers = ["CPUExecutionProvider", "Other"]
kernels = "symmetric"
[constraints]
batch_one = true
max_tensor_bytes = 1024
""")
    t = load_target(p)
    assert t.name == "board"
    assert t.tflite.delegate == "none" and t.tflite.io_dtype == "float32"
    assert t.onnx.providers == ("CPUExecutionProvider", "Other")
    assert t.onnx_scheme == "S8S8" and t.onnx.kernels == "symmetric"
    assert t.constraints.batch_one and not t.constraints.full_int8
    assert t.constraints.max_tensor_bytes == 1024


def test_typo_at_top_level_names_file_and_key(tmp_path):
    p = _write(tmp_path, 'thraeds = 4\n')
    with pytest.raises(UsageError) as ei:
        resolve_target(str(p))
    msg = str(ei.value)
    assert str(p) in msg
    assert "'thraeds'" in msg
    assert "threads" in msg  # the allowed keys are listed
    assert ei.value.exit_code == 2


def test_typo_inside_tflite_section_names_file_and_key(tmp_path):
    p = _write(tmp_path, '[tflite]\ndelgate = "xnnpack"\n')
    with pytest.raises(UsageError) as ei:
        load_target(p)
    msg = str(ei.value)
    assert str(p) in msg
    assert "[tflite]" in msg and "'delgate'" in msg
    assert "delegate" in msg and "io_dtype" in msg


def test_unknown_section(tmp_path):
    p = _write(tmp_path, '[tflight]\ndelegate = "xnnpack"\n')
    with pytest.raises(UsageError, match="tflight"):
        load_target(p)


@pytest.mark.parametrize("text, key", [
    ('threads = "4"', "threads"),
    ("threads = 4.0", "threads"),
    ("threads = true", "threads"),
    ("arch = 64", "arch"),
    ('[constraints]\nfull_int8 = "yes"', "constraints.full_int8"),
    ('[onnx]\nproviders = "CPUExecutionProvider"', "onnx.providers"),
    ("[onnx]\nproviders = [1, 2]", "onnx.providers"),
    ("[constraints]\nbatch_one = 1", "constraints.batch_one"),
    ('[constraints]\nmax_tensor_bytes = "8MB"', "constraints.max_tensor_bytes"),
])
def test_wrong_types(tmp_path, text, key):
    p = _write(tmp_path, text + "\n")
    with pytest.raises(UsageError, match=re.escape(f"'{key}' must be")) as ei:
        load_target(p)
    assert str(p) in str(ei.value)


def test_section_given_as_a_value(tmp_path):
    p = _write(tmp_path, 'tflite = "xnnpack"\n')
    with pytest.raises(UsageError, match=r"'tflite' must be a \[tflite\] table"):
        load_target(p)


@pytest.mark.parametrize("text, key, allowed", [
    ('[tflite]\nio_dtype = "int4"', "tflite.io_dtype", "int8, uint8, float32"),
    ('[tflite]\ndelegate = "gpu"', "tflite.delegate", "xnnpack"),
    ('[onnx]\nactivation_type = "int16"', "onnx.activation_type", "uint8, int8"),
    ('[onnx]\nkernels = "amx"', "onnx.kernels", "measure, symmetric"),
])
def test_bad_choices(tmp_path, text, key, allowed):
    p = _write(tmp_path, text + "\n")
    with pytest.raises(UsageError) as ei:
        load_target(p)
    msg = str(ei.value)
    assert f"'{key}'" in msg and "is not one of" in msg and allowed in msg
    assert str(p) in msg


@pytest.mark.parametrize("threads", [0, -2])
def test_threads_must_be_positive(tmp_path, threads):
    p = _write(tmp_path, f"threads = {threads}\n")
    with pytest.raises(UsageError, match="'threads' must be 1 or more"):
        load_target(p)


def test_invalid_toml_syntax(tmp_path):
    p = _write(tmp_path, 'threads = 4\n[tflite\ndelegate = "xnnpack"\n')
    with pytest.raises(UsageError, match="not valid TOML") as ei:
        resolve_target(str(p))
    assert str(p) in str(ei.value)


def test_non_utf8_file(tmp_path):
    p = tmp_path / "latin.toml"
    p.write_bytes(b'description = "caf\xe9"\n')
    with pytest.raises(UsageError, match="cannot read target file"):
        load_target(p)


def test_unknown_target_name_lists_known_names():
    with pytest.raises(UsageError) as ei:
        resolve_target("rpi9")
    msg = str(ei.value)
    assert "unknown target 'rpi9'" in msg
    for name in BUNDLED:
        assert name in msg


def test_missing_toml_path(tmp_path):
    missing = tmp_path / "nowhere" / "board.toml"
    with pytest.raises(UsageError, match="does not exist") as ei:
        resolve_target(str(missing))
    assert str(missing) in str(ei.value)



def test_a_target_for_an_architecture_no_runtime_has_is_refused(tmp_path):
    from tests.conftest import assert_one_line_error, invoke

    bad = tmp_path / "sparc.toml"
    bad.write_text('arch = "sparc"\n')
    assert_one_line_error(invoke("convert", "--int8", "--target", bad, "-o", tmp_path / "run"), 2,
                          "'arch' = 'sparc' is not one of x86_64, aarch64, armv7l, riscv64")
