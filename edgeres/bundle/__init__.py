"""App bundles (``edgeres bundle``, ``edgeres verify``).  LIGHT layer: numpy, flatbuffers and the TFLite schema.

* :mod:`.manifest`: manifest.json, and the hash check that ``verify``, ``validate`` and ``bench`` run first;
* :mod:`.fold`: the preprocessing folded exactly into an integer-input TFLite model;
* :mod:`.tflite_metadata`: TFLite Metadata for an image classifier, with the labels packed in;
* :mod:`.app_readme`: the bundle's README with Kotlin and Swift snippets.

The orchestration (reading the run, writing the folder atomically) is ``edgeres.pipeline.bundle``.
"""
