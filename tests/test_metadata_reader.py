"""The independent TFLite Metadata reader (tests/metadata_reader.py) on its own: it reads back what tflite-support's
own writer put in a real converted classifier, and refuses a model that has no metadata."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.metadata_reader import read_tflite_metadata, run_tflite_support

pytestmark = pytest.mark.slow

LABELS = "cat\ndog\nbird\nfish\n"

# tflite-support's own writer, in the same side venv as the reader: nothing of edgeres is involved.
WRITER = """
import sys
from tflite_support.metadata_writers import image_classifier
model, labels, out = sys.argv[1:]
writer = image_classifier.MetadataWriter.create_for_inference(open(model, "rb").read(), [127.5], [127.5], [labels])
open(out, "wb").write(writer.populate())
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """A float32 classifier converted by TensorFlow, without metadata ("plain") and with tflite-support's ("tagged")."""
    tf = pytest.importorskip("tensorflow")
    keras = pytest.importorskip("keras")
    tmp = tmp_path_factory.mktemp("metadata")
    keras.utils.set_random_seed(0)
    x = keras.Input((8, 8, 3), batch_size=1)
    y = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(x)
    y = keras.layers.Dense(4, activation="softmax")(keras.layers.GlobalAveragePooling2D()(y))
    plain, labels, tagged = tmp / "plain.tflite", tmp / "labels.txt", tmp / "tagged.tflite"
    plain.write_bytes(tf.lite.TFLiteConverter.from_keras_model(keras.Model(x, y)).convert())
    labels.write_text(LABELS)
    run_tflite_support(WRITER, plain, labels, tagged)
    return {"plain": plain, "tagged": tagged}


def test_reads_what_tflite_supports_writer_wrote(models):
    got = read_tflite_metadata(models["tagged"])
    assert got["packed_files"] == ["labels.txt"]
    assert got["files"] == {"labels.txt": LABELS}
    (sub,) = got["metadata"]["subgraph_metadata"]
    (image,), (probs,) = sub["input_tensor_metadata"], sub["output_tensor_metadata"]
    assert image["content"]["content_properties_type"] == "ImageProperties"
    assert image["process_units"] == [{"options_type": "NormalizationOptions",
                                       "options": {"mean": [127.5], "std": [127.5]}}]
    assert [(f["name"], f["type"]) for f in probs["associated_files"]] == [("labels.txt", "TENSOR_AXIS_LABELS")]


def test_a_model_without_metadata_is_an_assertion_error(models):
    with pytest.raises(AssertionError, match="does not have metadata"):
        read_tflite_metadata(models["plain"])
