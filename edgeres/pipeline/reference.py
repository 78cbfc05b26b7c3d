"""The Keras float32 reference of the validate stage, a large chunk at a time.  HEAVY (Keras)."""

from __future__ import annotations

import numpy as np

REFERENCE_IMAGES = 256       # images per Keras reference call: its best batch throughput here
REFERENCE_BYTES = 64 * 2**20  # and at most this much decoded input (224x224x3: 111 images)


def _chunk_images(hwc) -> int:
    return max(1, min(REFERENCE_IMAGES, REFERENCE_BYTES // (4 * int(np.prod(hwc)))))


def reference_chunk(hwc, batch_size: int) -> int:
    """Images in each full chunk :func:`with_reference` computes at once, for ``batch_size`` batches: shards
    that start at its multiples see the same chunks as one pass over all the images."""
    return -(-_chunk_images(hwc) // batch_size) * batch_size


def with_reference(batches, model, hwc):
    """The decoded batches, each with the Keras reference outputs, computed a large chunk at a time; yielded a
    chunk (a list of batches) at a time, for :func:`edgeres.core.metrics.tally_batches` to run each artifact
    over the whole chunk in turn.

    The reference runs at its best batch throughput, and TensorFlow's thread pools are busy once per
    chunk instead of between every artifact's batch (where their spinning threads slowed the runtimes).
    Memory stays flat in the number of images: one chunk of decoded images at a time.
    """
    from edgeres.backends.keras_io import reference

    fn = reference(model)
    chunk_images = _chunk_images(hwc)
    pending: list = []

    def flush() -> list:
        ref = fn(np.concatenate([x for x, _ in pending]))
        chunk, at = [], 0
        for x, y in pending:
            chunk.append((x, y, ref[at:at + len(x)]))
            at += len(x)
        pending.clear()
        return chunk

    for x, y in batches:
        pending.append((x, y))
        if sum(len(p[0]) for p in pending) >= chunk_images:
            yield flush()
    if pending:
        yield flush()
