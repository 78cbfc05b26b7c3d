"""Which runtime loads which model: the published tables edgeres checks against.  DATA, NOT CODE.

Nothing here is computed; edit a row only with its source.  Read by :mod:`edgeres.devices.compat`.

TFLITE_OP_VERSIONS -- TFLite's own table of the minimum TF Lite runtime for each builtin op version.
  Repository tensorflow/tensorflow, path tensorflow/compiler/mlir/lite/tools/versioning/runtime_version.cc
  (the copy that replaced tensorflow/lite/tools/versioning/runtime_version.cc; the google-ai-edge/LiteRT copy,
  tflite/tools/versioning/runtime_version.cc at 05215c29, is older), commit 03f49db5a23ec2b22a59f3f3d72e5744469ea30b.
  The stored copy carries no date; its newest entries name 2.23.0, so it is TF master after the 2.22 branch cut
  (the other stored version of that path, 6ee57630, is older).  Extracted from the ``op_version_map`` of
  FindMinimumRuntimeVersionForOp(): each ``{{BuiltinOperator_OP, N}, "X.Y.Z"}`` entry (420 of them) was copied
  in the file's order to a list, which a script wrote here one op per line.  A string lists the
  minimum runtime of versions 1, 2, 3, ... of the op; "-" marks a version the table leaves out (BROADCAST_TO 1
  was rolled back).  An op or version not listed is unknown to TFLite's table.
  Checked by loading: every (op, version) of this table, plus the next 6 versions of each op and versions 1-2
  of every builtin op the table leaves out (1,527 one-op probes, made by adding an operator code to a real
  model), went through Interpreter(model_path).allocate_tensors() in tflite-runtime 2.14.0, tensorflow 2.21.0
  (tf.lite) and ai-edge-litert 1.0.1, 1.1.2, 1.2.0, 1.3.0, 1.4.0, 2.0.3, 2.1.6, 2.2.0 and 2.3.0.  tflite-runtime
  2.14.0 loads exactly what this table gives for 2.14.0 (TRANSPOSE 7, dated 2.14.4, included: it refuses it).
  The measured differences for the other runtimes are TFLITE_ERRATA and the rows of TFLITE_RUNTIMES.
"""

from __future__ import annotations

# Version N of an op needs a TF Lite runtime at least as new as the N-th entry (tensorflow@03f49db5).
TFLITE_OP_VERSIONS: dict[str, str] = {
    "AVERAGE_POOL_2D": "1.5.0 1.14.0 2.3.0",
    "BATCH_MATMUL": "2.3.0 2.3.0 2.4.0 2.5.0",
    "BROADCAST_TO": "- 2.5.0 2.5.0",
    "CONV_2D": "1.5.0 1.14.0 1.14.0 2.3.0 2.4.0 2.9.0 2.11.0 2.15.0",
    "DEPTHWISE_CONV_2D": "1.5.0 1.12.0 1.14.0 2.2.0 2.3.0 2.3.0 2.11.0",
    "ADD": "1.5.0 1.14.0 2.4.0 2.6.0 2.13.0 2.23.0",
    "ADD_N": "1.14.0",
    "SPACE_TO_BATCH_ND": "1.6.0 1.14.0 2.3.0 2.12.0",
    "SUB": "1.6.0 1.14.0 2.3.0 2.4.0 2.4.0",
    "DENSIFY": "2.2.0",
    "DIV": "1.6.0 2.3.0",
    "BATCH_TO_SPACE_ND": "1.6.0 1.14.0 2.3.0 2.12.0",
    "CAST": "1.5.0 2.7.0 2.8.0 2.9.0 2.12.0 2.15.0 2.17.0 2.21.0",
    "CONCATENATION": "1.5.0 1.14.0 2.3.0 2.14.0 2.21.0",
    "DEPTH_TO_SPACE": "2.1.0 2.5.0",
    "EMBEDDING_LOOKUP": "1.13.0 1.14.0 1.14.0 2.18.0 2.21.0",
    "EMBEDDING_LOOKUP_SPARSE": "1.5.0",
    "FAKE_QUANT": "1.5.0 1.10.0",
    "FULLY_CONNECTED": "1.5.0 1.10.0 1.14.0 1.14.0 2.0.0 2.1.0 2.3.0 2.3.0 2.3.0 2.11.0 2.15.0 2.17.0 2.18.0 2.21.0",
    "GATHER": "1.6.0 1.14.0 1.15.0 2.4.0 2.5.0 2.13.0 2.15.0",
    "GATHER_ND": "1.14.0 2.3.0 2.5.0 2.13.0 2.16.0",
    "HASHTABLE_LOOKUP": "1.5.0",
    "SVDF": "1.5.0 1.14.0 2.2.0 2.3.0",
    "L2_NORMALIZATION": "1.5.0 1.14.0",
    "L2_POOL_2D": "1.5.0",
    "LOCAL_RESPONSE_NORMALIZATION": "1.5.0",
    "MAX_POOL_2D": "1.5.0 1.14.0 2.3.0",
    "MAXIMUM": "1.14.0 1.14.0 2.3.0 2.3.0",
    "MINIMUM": "1.14.0 1.14.0 2.3.0 2.3.0",
    "MUL": "1.5.0 1.14.0 1.15.0 2.3.0 2.6.0 2.11.0 2.13.0 2.23.0",
    "NON_MAX_SUPPRESSION_V4": "2.1.0",
    "NON_MAX_SUPPRESSION_V5": "2.1.0",
    "PAD": "1.5.0 1.14.0 2.4.0 2.6.0 2.20.0",
    "TILE": "1.10.1 2.2.0 2.8.0",
    "PADV2": "1.9.0 1.14.0 2.4.0 2.6.0 2.20.0",
    "RESHAPE": "1.5.0",
    "SOFTMAX": "1.5.0 1.14.0 2.3.0",
    "SPACE_TO_DEPTH": "1.5.0 1.14.0",
    "TRANSPOSE": "1.6.0 1.14.0 1.15.0 2.3.0 2.4.0 2.12.0 2.14.4 2.22.0",
    "LSTM": "1.7.0 1.10.0 1.14.0 2.3.0",
    "UNIDIRECTIONAL_SEQUENCE_LSTM": "1.13.1 1.14.0 2.3.0 2.12.0",
    "BIDIRECTIONAL_SEQUENCE_LSTM": "1.14.0 1.14.0 1.14.0",
    "BIDIRECTIONAL_SEQUENCE_RNN": "1.14.0 1.14.0 2.3.0",
    "MEAN": "1.6.0 1.14.0 2.4.0",
    "SUM": "1.10.0 1.15.0",
    "REDUCE_MAX": "1.11.0 1.14.0 2.5.0",
    "REDUCE_MIN": "1.11.0 1.14.0 2.5.0",
    "REDUCE_PROD": "1.11.0 2.6.0",
    "REDUCE_ANY": "1.11.0",
    "RELU6": "1.5.0 1.14.0 2.5.0",
    "RESIZE_BILINEAR": "1.7.0 1.14.0 2.2.0 2.5.0",
    "RESIZE_NEAREST_NEIGHBOR": "1.13.1 1.14.0 2.3.0 2.4.0",
    "RNN": "1.5.0 1.14.0 2.3.0",
    "SKIP_GRAM": "1.5.0",
    "SQUEEZE": "1.6.0 2.5.0",
    "SPLIT": "1.5.0 1.14.0 1.14.0 2.3.0",
    "SPLIT_V": "1.13.1 2.3.0",
    "STRIDED_SLICE": "1.6.0 1.14.0 2.1.0 2.2.0 2.5.0 2.6.0 2.14.0 2.14.0",
    "TOPK_V2": "1.7.0 1.14.0 2.13.0",
    "ARG_MAX": "1.9.0 1.14.0 2.9.0",
    "ARG_MIN": "1.9.0 1.14.0 2.9.0",
    "TRANSPOSE_CONV": "1.9.0 2.2.0 2.3.0 2.13.0 2.15.0",
    "SPARSE_TO_DENSE": "1.9.0 1.14.0 1.15.0",
    "EXPAND_DIMS": "1.10.0",
    "PACK": "1.11.0 1.14.0 2.3.0 2.13.0",
    "SHAPE": "1.10.0",
    "SLICE": "1.14.0 1.14.0 1.14.0 2.4.0 2.5.0 2.14.0 2.21.0",
    "TANH": "1.14.0 1.14.0 2.3.0",
    "ONE_HOT": "1.11.0",
    "UNPACK": "1.11.0 1.14.0 2.2.0 2.3.0 2.22.0",
    "LEAKY_RELU": "1.13.1 2.3.0",
    "LOGISTIC": "1.14.0 1.14.0 2.3.0",
    "LOG_SOFTMAX": "1.14.0 1.14.0",
    "LSH_PROJECTION": "1.5.0",
    "SQUARED_DIFFERENCE": "1.13.1 2.5.0",
    "MIRROR_PAD": "1.13.1 2.3.0 2.12.0",
    "UNIQUE": "1.14.0",
    "UNIDIRECTIONAL_SEQUENCE_RNN": "1.14.0 1.14.0 2.3.0",
    "WHERE": "1.14.0 2.8.0",
    "DEQUANTIZE": "1.13.1 1.14.0 1.15.0 2.2.0 2.7.0 2.18.0 2.21.0 2.22.0",
    "REVERSE_SEQUENCE": "1.14.0",
    "EQUAL": "1.14.0 1.14.0 2.3.0 2.13.0 2.21.0",
    "NOT_EQUAL": "1.14.0 1.14.0 2.3.0 2.21.0",
    "GREATER": "1.14.0 1.14.0",
    "GREATER_EQUAL": "1.14.0 1.14.0 2.13.0",
    "LESS": "1.14.0 1.14.0 2.13.0",
    "LESS_EQUAL": "1.14.0 1.14.0",
    "SCATTER_ND": "2.1.0",
    "SEGMENT_SUM": "2.2.0",
    "SELECT": "1.14.0 1.14.0 2.12.0 2.12.0",
    "SELECT_V2": "2.2.0 2.12.0",
    "IF": "1.15.0",
    "FLOOR_DIV": "1.14.0 1.14.0 2.13.0",
    "FLOOR": "1.9.0",
    "CEIL": "1.14.0",
    "MATRIX_DIAG": "1.14.0",
    "MATRIX_SET_DIAG": "1.14.0",
    "ELU": "1.14.0",
    "QUANTIZE": "1.14.0 1.15.0 2.7.0 2.21.0 2.21.0 2.21.0",
    "ROUND": "1.14.0",
    "RELU": "1.5.0 2.1.0 2.5.0",
    "RELU_N1_TO_1": "1.5.0",
    "RELU_0_TO_1": "2.10.0",
    "PRELU": "1.8.0",
    "EXP": "1.7.0 2.12.0",
    "COS": "1.14.0",
    "NEG": "1.9.0",
    "POW": "1.10.0",
    "LOGICAL_OR": "1.11.0",
    "LOGICAL_AND": "1.11.0",
    "LOGICAL_NOT": "1.11.0",
    "FLOOR_MOD": "1.13.0 2.13.0",
    "RANGE": "1.13.0 2.14.0",
    "SIN": "1.9.0",
    "LOG": "1.14.0 2.15.0",
    "SQRT": "1.10.0 2.21.0",
    "RSQRT": "1.10.0 2.5.0 2.15.0",
    "SQUARE": "1.12.0",
    "ZEROS_LIKE": "1.12.0",
    "ABS": "1.13.0 2.4.0 2.5.0 2.6.0 2.12.0",
    "HARD_SWISH": "1.15.0",
    "FILL": "1.13.0 2.3.0 2.5.0 2.12.0",
    "REVERSE_V2": "1.14.0 2.2.0 2.5.0",
    "RANK": "1.14.0",
    "WHILE": "1.15.0",
    "CUMSUM": "2.4.0",
    "CALL_ONCE": "2.5.0",
    "RFFT2D": "2.5.0",
    "CONV_3D": "2.5.0",
    "IMAG": "2.5.0",
    "REAL": "2.5.0",
    "COMPLEX_ABS": "2.5.0",
    "HASHTABLE": "2.5.0",
    "HASHTABLE_FIND": "2.5.0",
    "HASHTABLE_IMPORT": "2.5.0",
    "HASHTABLE_SIZE": "2.5.0",
    "REDUCE_ALL": "2.6.0",
    "CONV_3D_TRANSPOSE": "2.6.0",
    "VAR_HANDLE": "2.6.0",
    "READ_VARIABLE": "2.6.0",
    "ASSIGN_VARIABLE": "2.6.0",
    "BROADCAST_ARGS": "2.6.0",
    "RANDOM_STANDARD_NORMAL": "2.8.0",
    "BUCKETIZE": "2.8.0",
    "RANDOM_UNIFORM": "2.8.0",
    "MULTINOMIAL": "2.8.0",
    "GELU": "2.9.0 2.9.0",
    "DYNAMIC_UPDATE_SLICE": "2.9.0 2.17.0 2.19.0 2.20.0 2.21.0 2.22.0",
    "UNSORTED_SEGMENT_PROD": "2.10.0",
    "UNSORTED_SEGMENT_MAX": "2.10.0",
    "UNSORTED_SEGMENT_MIN": "2.11.0",
    "UNSORTED_SEGMENT_SUM": "2.10.0",
    "ATAN2": "2.10.0",
    "SIGN": "2.11.0 2.12.0",
    "BITCAST": "2.13.0",
    "BITWISE_XOR": "2.13.0",
    "RIGHT_SHIFT": "2.13.0",
    "STABLEHLO_SCATTER": "2.15.0",
    "DILATE": "2.15.0",
    "STABLEHLO_RNG_BIT_GENERATOR": "2.15.0",
    "REDUCE_WINDOW": "2.15.0",
    "STABLEHLO_GATHER": "2.16.0",
    "STABLEHLO_ADD": "2.16.0",
    "STABLEHLO_MULTIPLY": "2.16.0",
    "STABLEHLO_REDUCE_WINDOW": "2.16.0",
    "STABLEHLO_MAXIMUM": "2.16.0",
    "STABLEHLO_MINIMUM": "2.16.0",
    "STABLEHLO_PAD": "2.16.0",
    "STABLEHLO_COMPOSITE": "2.17.0",
    "STABLEHLO_AND": "2.17.0",
    "STABLEHLO_SHIFT_LEFT": "2.17.0",
    "STABLEHLO_CBRT": "2.17.0",
    "STABLEHLO_CASE": "2.17.0",
}

# Measured corrections to the table, applied for every runtime: (op, version) -> the runtime that loads it, or
# None when no runtime edgeres measured loads it.
TFLITE_ERRATA: dict[tuple[str, int], str | None] = {
    # Dated 2.21.0, but tf.lite 2.21.0 refuses both; ai-edge-litert 2.1.6 and later (the 2.23 level) load them.
    ("QUANTIZE", 5): "2.22.0",
    ("QUANTIZE", 6): "2.22.0",
    # Dated 2.17.0, but no runtime measured registers a kernel for it (tf.lite 2.21.0, ai-edge-litert 1.0.1-2.3.0).
    ("STABLEHLO_CBRT", 1): None,
}

# (package, "MAJOR.MINOR") -> (the table level it loads, {op: highest version it loads, where that differs
# from the table at that level}, source).  Measured by loading the probes described at the top (ai-edge-litert
# at the patch release named in the source; other patch releases of the same minor are assumed to match).
# A tflite-runtime or tensorflow version with no row is read from the table at its own version, unmeasured.
TFLITE_RUNTIMES: dict[tuple[str, str], tuple[str, dict[str, int], str]] = {
    ("tflite-runtime", "2.14"): ("2.14.0", {}, "measured: tflite-runtime 2.14.0 loads exactly the 2.14.0 rows"),
    ("tensorflow", "2.21"): ("2.21.0", {}, "measured: tf.lite of tensorflow 2.21.0"),
    ("ai-edge-litert", "1.0"): ("2.18.0", {"CAST": 6, "TRANSPOSE": 6, "STABLEHLO_AND": 0, "STABLEHLO_CASE": 0,
                                          "STABLEHLO_SHIFT_LEFT": 0}, "measured: ai-edge-litert 1.0.1"),
    ("ai-edge-litert", "1.1"): ("2.19.0", {"TRANSPOSE": 6}, "measured: ai-edge-litert 1.1.2"),
    ("ai-edge-litert", "1.2"): ("2.19.0", {}, "measured: ai-edge-litert 1.2.0"),
    ("ai-edge-litert", "1.3"): ("2.19.0", {"DYNAMIC_UPDATE_SLICE": 4}, "measured: ai-edge-litert 1.3.0"),
    ("ai-edge-litert", "1.4"): ("2.19.0", {"DYNAMIC_UPDATE_SLICE": 4}, "measured: ai-edge-litert 1.4.0"),
    ("ai-edge-litert", "2.0"): ("2.20.0", {"SQRT": 2}, "measured: ai-edge-litert 2.0.3"),
    ("ai-edge-litert", "2.1"): ("2.23.0", {"CONCATENATION": 6, "COS": 2, "GELU": 3, "SIN": 2, "SLICE": 8,
                                          "SOFTMAX": 4, "TRANSPOSE": 9}, "measured: ai-edge-litert 2.1.6"),
    # 2.2.0 and 2.3.0 load the same versions beyond the table (identical results on all probes).
    ("ai-edge-litert", "2.2"): ("2.23.0", {"BROADCAST_TO": 4, "CAST": 9, "CONCATENATION": 7, "COS": 2,
                                          "DEQUANTIZE": 9, "FILL": 5, "GATHER": 8, "GATHER_ND": 6, "GELU": 3,
                                          "PACK": 5, "PAD": 6, "PADV2": 6, "REVERSE_V2": 4, "SIN": 2, "SLICE": 8,
                                          "SOFTMAX": 4, "SPLIT": 5, "SPLIT_V": 3, "TRANSPOSE": 9, "UNPACK": 6},
                                "measured: ai-edge-litert 2.2.0"),
    ("ai-edge-litert", "2.3"): ("2.23.0", {"BROADCAST_TO": 4, "CAST": 9, "CONCATENATION": 7, "COS": 2,
                                          "DEQUANTIZE": 9, "FILL": 5, "GATHER": 8, "GATHER_ND": 6, "GELU": 3,
                                          "PACK": 5, "PAD": 6, "PADV2": 6, "REVERSE_V2": 4, "SIN": 2, "SLICE": 8,
                                          "SOFTMAX": 4, "SPLIT": 5, "SPLIT_V": 3, "TRANSPOSE": 9, "UNPACK": 6},
                                "measured: ai-edge-litert 2.3.0"),
}

# Custom ops every stock TFLite op resolver registers.  Measured with one node of each in a real model, in
# tflite-runtime 2.14.0, tensorflow 2.21.0 and ai-edge-litert 2.3.0: an unknown name fails with "Encountered
# unresolved custom op"; these three resolve (their kernels then reject the probe's dummy inputs).  Flex ops
# ("Flex..." custom codes) need the Flex delegate: tflite-runtime and ai-edge-litert refuse them ("Select
# TensorFlow op(s) ... not supported by this interpreter"), tf.lite resolves them.
TFLITE_STOCK_CUSTOM_OPS = frozenset({"TFLite_Detection_PostProcess", "Mfcc", "AudioSpectrogram"})

# The warning for tflite-runtime and int8 models.  Measured on edgeres' development machine (AMD EPYC, 2 cores,
# AVX-512 VNNI): a random-weight int8 ResNet-50 at 224x224 (edgeres.backends.tflite.to_int8), p50 of 15 runs,
# two alternating rounds: tflite-runtime 2.14.0 100-101 ms at 1 thread and 76-82 ms at 2 threads; ai-edge-litert
# 2.3.0 (XNNPACK) 13.7-14.1 ms and 6.7-7.1 ms.
TFLITE_RUNTIME_SLOW_INT8 = ("tflite-runtime has no XNNPACK int8 path, so int8 ops run on its built-in kernels: "
                            "ResNet-50 int8 ran 7x (1 thread) to 11x (2 threads) slower than on ai-edge-litert 2.3 "
                            "on edgeres' development machine")

# The warning for models with int16 tensors (16x8 quantization).  Measured: tensorflow 2.21's converter writes
# RSQRT version 2 for an int16 RSQRT (int16 is version 3, from 2.15.0, per the table above); tflite-runtime 2.14.0
# resolves version 2 and then fails in allocate_tensors ("Type INT16 is unsupported by op Rsqrt").
INT16_UNDER_DECLARED = ("the model has int16 tensors (16x8 quantization): converters have written op versions too "
                        "low for int16 kernels (TensorFlow 2.21 writes RSQRT version 2 for int16, which needs "
                        "version 3), so an older runtime may still refuse an op in allocate_tensors")

# Distributions `--runtime installed` looks for, in the order edgeres' own runners prefer them.
INSTALLED_DISTRIBUTIONS = {"tflite": ("ai-edge-litert", "tflite-runtime", "tensorflow", "tensorflow-cpu"),
                           "onnx": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml")}

# onnxruntime "MAJOR.MINOR" -> (highest ai.onnx opset, highest ai.onnx.ml opset, highest IR version, source).
# "docs": the version matrix of https://onnxruntime.ai/docs/reference/compatibility.html (repository
# microsoft/onnxruntime, branch gh-pages, docs/reference/compatibility.md at 109c0baa; it stops at 1.20).
# "measured": loading a model stamped opset 99, ai.onnx.ml 99 or IR 99 with that release (x.y.patch named) and
# reading its refusal ("Current official support for domain ai.onnx is till opset N", "max supported IR
# version: N").  Where both exist they agree on opset and IR; the docs give ai.onnx.ml 4 for 1.18-1.20, the
# releases accept 5.
ORT_LIMITS: dict[str, tuple[int, int, int, str]] = {
    "0.1": (8, 1, 3, "docs"), "0.2": (8, 1, 3, "docs"), "0.3": (9, 1, 3, "docs"), "0.4": (10, 1, 5, "docs"),
    "0.5": (10, 1, 5, "docs"), "1.0": (11, 2, 6, "docs"), "1.1": (11, 2, 6, "docs"), "1.2": (11, 2, 6, "docs"),
    "1.3": (12, 2, 7, "docs"), "1.4": (12, 2, 7, "docs"), "1.5": (12, 2, 7, "docs"), "1.6": (13, 2, 7, "docs"),
    "1.7": (13, 2, 7, "docs"), "1.8": (14, 2, 7, "docs"), "1.9": (15, 2, 8, "docs"), "1.10": (15, 2, 8, "docs"),
    "1.11": (16, 2, 8, "docs"), "1.12": (17, 3, 8, "docs"), "1.13": (17, 3, 8, "docs"),
    "1.14": (18, 3, 8, "docs"), "1.15": (19, 3, 8, "docs"),
    "1.16": (19, 3, 9, "docs; measured 1.16.3"), "1.17": (20, 4, 9, "docs; measured 1.17.3"),
    "1.18": (21, 5, 10, "docs; measured 1.18.1"), "1.19": (21, 5, 10, "docs; measured 1.19.2"),
    "1.20": (21, 5, 10, "docs; measured 1.20.1"), "1.21": (22, 5, 10, "measured 1.21.1"),
    "1.22": (22, 5, 10, "measured 1.22.1"), "1.23": (23, 5, 11, "measured 1.23.2"),
    "1.24": (25, 5, 13, "measured 1.24.4"), "1.25": (26, 5, 13, "measured 1.25.1"),
    "1.26": (26, 5, 13, "measured 1.26.0"), "1.27": (26, 5, 13, "measured 1.27.0"),
    "1.28": (26, 5, 13, "measured 1.28.0"), "1.29": (26, 5, 13, "measured 1.29.0"),
    "1.30": (26, 5, 13, "measured 1.30.0"), "1.31": (26, 5, 13, "measured 1.31.1"),
    "1.32": (28, 5, 14, "measured 1.32.0"),
}

# ONNX domains whose operators onnxruntime itself implements (contrib and internal ops); any other domain used by
# a node needs a custom-op library registered with the session, which edgeres cannot check.
ORT_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft", "com.microsoft.nchwc",
                         "com.microsoft.experimental", "com.ms.internal.nhwc", "ai.onnx.preview.training",
                         "ai.onnx.training"})
