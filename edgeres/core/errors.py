"""One error hierarchy for everything a user can get wrong.

The CLI turns any :class:`EdgeresError` into one line on stderr and the exit
code stored on the class.  Anything else escaping to the top is a bug in
edgeres and keeps its traceback.  Standard library only.
"""

from __future__ import annotations


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-blank line of an exception's message, for a one-line error."""
    text = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class EdgeresError(Exception):
    """Base class: a problem with the user's input or environment."""

    exit_code = 1


class UsageError(EdgeresError):
    """Bad option values or combinations."""

    exit_code = 2


class ModelError(EdgeresError):
    """A model path that is missing, corrupt, not a model, or unsupported."""

    exit_code = 3


class DataError(EdgeresError):
    """Calibration or validation data that is missing, empty, or unreadable."""

    exit_code = 4


class ShapeError(EdgeresError):
    """Input shapes, dtypes or class counts that do not fit the model."""

    exit_code = 5


class ConversionError(EdgeresError):
    """A converter or quantizer failed, e.g. an op with no int8 kernel."""

    exit_code = 6


class RuntimeUnavailableError(EdgeresError):
    """A runtime, delegate or optional dependency is not installed."""

    exit_code = 7


class ClusterError(RuntimeUnavailableError):
    """Ray is not installed, its cluster cannot be reached or its workers cannot import edgeres, or it lost a
    task beyond its retries (exit 7, as a missing runtime)."""


class OutputExistsError(EdgeresError):
    """The output folder exists and is not empty, and --force was not given."""

    exit_code = 8


class OutputWriteError(EdgeresError):
    """The run folder could not be written (an unwritable folder, a full disk): exit 8, as OutputExistsError."""

    exit_code = 8


class BudgetExceededError(EdgeresError):
    """An accuracy budget (--max-drop) was not met, or an int8 model collapsed.

    The run folder is still written; ``report`` is the run's report, for the
    caller to show.
    """

    exit_code = 10

    def __init__(self, message: str, report: object = None):
        super().__init__(message)
        self.report = report


class BundleError(EdgeresError):
    """An app bundle that fails its check: a file changed or missing, a manifest that is not JSON, or a
    bundle from a newer schema.  Nothing in it is run."""

    exit_code = 9


def no_model_file(path) -> ModelError:
    """The error for a model path that is not a file: a run or bundle folder gets the files to pass instead."""
    from pathlib import Path

    p = Path(path)
    if p.is_dir():
        models = sorted(f.name for f in p.iterdir() if f.suffix.lower() in (".tflite", ".onnx"))
        if models:
            return ModelError(f"{p} is a folder: give one of its models ({', '.join(str(p / m) for m in models[:4])})")
        return ModelError(f"{p} is a folder, not a .tflite or .onnx model file")
    return ModelError(f"model file {p} does not exist")


def unloadable_build(exc: ModelError, what: str) -> ConversionError:
    """A model edgeres converted that its own runtime will not load (XNNPACK refuses a requantization scale out
    of its range, say) is a conversion failure, exit 6, not a bad model file; said without the temporary path."""
    return ConversionError(f"{what} does not load in its runtime: {str(exc).split(' model: ', 1)[-1]}")
