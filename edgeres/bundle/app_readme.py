"""The bundle's README.md: how an Android (Kotlin) or iOS (Swift) app loads the model and converts its input
and output, with every constant taken from the manifest (``tests/test_bundle.py`` parses them back).

LIGHT: standard library only.
"""

from __future__ import annotations


def _f(v: float) -> str:
    return f"{float(v)!r}f"


def _floats(vs) -> str:
    return ", ".join(_f(v) for v in vs)


def _swift_floats(vs) -> str:
    return ", ".join(repr(float(v)) for v in vs)


def render(manifest: dict) -> str:
    tfl = next(x for x in manifest["models"] if x["format"] == "tflite")
    inp, out, pre = tfl["input"], tfl["output"], tfl["preprocessing"]
    _, h, w, c = inp["shape"]
    k = out["shape"][-1]
    folded = pre["folded"]
    lines = [f"# {manifest['name']}: app bundle", "",
             f"Made by edgeres {manifest['tools']['edgeres']} from a validated run; `edgeres verify .` checks that "
             "every file is still the one listed in `manifest.json` (SHA-256 and size).", "",
             "| File | What it is |", "| --- | --- |"]
    for x in manifest["models"]:
        lines.append(f"| `{x['file']}` | {x['format']} int8 model, input {x['input']['dtype']} "
                     f"{'x'.join(map(str, x['input']['shape']))}, output {x['output']['dtype']} "
                     f"{'x'.join(map(str, x['output']['shape']))} |")
    lines += [f"| `{manifest['labels']['file']}` | {k} class names, one per line, in output order |",
              "| `manifest.json` | hashes, shapes, quantization, preprocessing, validation figures, tool versions |",
              ""]
    val = tfl.get("validation") or {}
    if val.get("top1") is not None:
        lines += [f"Validated: top-1 {val['top1']:.2f}% on {val.get('images')} images "
                  f"({val.get('top1_drop', 0):+.2f} points against float32, {val.get('agreement', 0):.2f}% "
                  f"top-1 agreement), p50 {val.get('p50_ms', 0):.3f} ms on {val.get('machine', 'the run machine')}.",
                  ""]
    lines += ["## Input", ""]
    if folded:
        lines += [f"The preprocessing is folded into `{tfl['file']}`: feed raw {inp['color_space']} pixels, "
                  f"0..255, as uint8, {w}x{h}x{c} ({pre['resize']}: {_resize_text(pre['resize'])}). "
                  "No normalisation code is needed.", ""]
    else:
        lines += [f"Resize to {w}x{h} ({pre['resize']}: {_resize_text(pre['resize'])}), then per channel "
                  f"`x = (pixel * {pre['scale']!r} - mean) / std` with mean {pre['mean']} and std {pre['std']}, "
                  f"then quantize: `q = clamp(round_half_even(x / {inp['scale']!r}) + {inp['zero_point']}, "
                  f"{_lo(inp['dtype'])}, {_hi(inp['dtype'])})` as {inp['dtype']}.", ""]
    lines += ["## Output", "",
              f"{k} {out['scores']}, one per line of `{manifest['labels']['file']}`; the top-1 is the largest."]
    if out.get("scale") is not None:
        lines += [f"The output is {out['dtype']}: `score = {out['scale']!r} * (q - ({out['zero_point']}))`."]
    if out.get("host_activation"):
        lines += [f"The model ends before its {out['host_activation']} (the target needs a full-integer model): "
                  f"apply {out['host_activation']} to the scores for probabilities; the top-1 is the same."]
    lines += ["", "## Android (Kotlin, LiteRT Interpreter)", "", "```kotlin", *_kotlin(tfl), "```", "",
              "The TFLite Task Library (`ImageClassifier.createFromFile(context, \"" + tfl["file"] + "\")`) reads "
              "the same constants from the TFLite Metadata inside the model"
              + ("." if folded and out["dtype"] == "float32" else
                 "; it takes only uint8 or float32 input and output, so bundle with --fold-preprocessing for it."),
              "", "## iOS (Swift, TensorFlowLiteSwift)", "", "```swift", *_swift(tfl), "```", ""]
    return "\n".join(lines)


def _resize_text(mode: str) -> str:
    return ("keep the aspect ratio, scale the short side to fit, centre-crop" if mode == "crop"
            else "stretch to the size")


def _lo(dtype: str) -> int:
    return 0 if dtype == "uint8" else -128


def _hi(dtype: str) -> int:
    return 255 if dtype == "uint8" else 127


def _kotlin(m: dict) -> list[str]:
    inp, out, pre = m["input"], m["output"], m["preprocessing"]
    _, h, w, c = inp["shape"]
    k = out["shape"][-1]
    lines = [f"const val INPUT_WIDTH = {w}", f"const val INPUT_HEIGHT = {h}", f"const val CHANNELS = {c}",
             f"const val NUM_CLASSES = {k}"]
    if not pre["folded"]:
        lines += [f"const val PIXEL_SCALE = {_f(pre['scale'])}",
                  f"val MEAN = floatArrayOf({_floats(pre['mean'])})", f"val STD = floatArrayOf({_floats(pre['std'])})",
                  f"const val INPUT_SCALE = {_f(inp['scale'])}", f"const val INPUT_ZERO_POINT = {inp['zero_point']}"]
    if out.get("scale") is not None:
        lines += [f"const val OUTPUT_SCALE = {_f(out['scale'])}", f"const val OUTPUT_ZERO_POINT = {out['zero_point']}"]
    lines += ["", f'val interpreter = Interpreter(FileUtil.loadMappedFile(context, "{m["file"]}"))',
              "val input = ByteBuffer.allocateDirect(INPUT_WIDTH * INPUT_HEIGHT * CHANNELS)"
              ".order(ByteOrder.nativeOrder())",
              "// pixels: IntArray of ARGB from a Bitmap already resized to INPUT_WIDTH x INPUT_HEIGHT",
              "for (p in pixels) {",
              "    val rgb = intArrayOf((p shr 16) and 0xFF, (p shr 8) and 0xFF, p and 0xFF)"
              if c == 3 else "    val rgb = intArrayOf((((p shr 16) and 0xFF) * 19595 + ((p shr 8) and 0xFF) * 38470 + "
                             "(p and 0xFF) * 7471 + 32768) shr 16)  // luma, as Pillow's convert(\"L\")",
              "    for (ch in 0 until CHANNELS) {"]
    if pre["folded"]:
        lines += ["        input.put(rgb[ch].toByte())  // raw 0..255"]
    else:
        lines += ["        val x = (rgb[ch] * PIXEL_SCALE - MEAN[ch % MEAN.size]) / STD[ch % STD.size]",
                  "        val q = (Math.rint((x / INPUT_SCALE).toDouble()).toInt() + INPUT_ZERO_POINT)"
                  f".coerceIn({_lo(inp['dtype'])}, {_hi(inp['dtype'])})",
                  "        input.put(q.toByte())"]
    lines += ["    }", "}"]
    if out.get("scale") is not None:
        lines += ["val raw = Array(1) { ByteArray(NUM_CLASSES) }", "interpreter.run(input, raw)",
                  "val scores = FloatArray(NUM_CLASSES) { i -> OUTPUT_SCALE * ("
                  + ("raw[0][i].toInt()" if out["dtype"] == "int8" else "(raw[0][i].toInt() and 0xFF)")
                  + " - OUTPUT_ZERO_POINT) }"]
    else:
        lines += ["val scores = Array(1) { FloatArray(NUM_CLASSES) }", "interpreter.run(input, scores)"]
    return lines


def _swift(m: dict) -> list[str]:
    inp, out, pre = m["input"], m["output"], m["preprocessing"]
    _, h, w, c = inp["shape"]
    lines = [f"let inputWidth = {w}, inputHeight = {h}, channels = {c}, numClasses = {out['shape'][-1]}"]
    if not pre["folded"]:
        lines += [f"let pixelScale: Float = {float(pre['scale'])!r}",
                  f"let mean: [Float] = [{_swift_floats(pre['mean'])}]",
                  f"let std: [Float] = [{_swift_floats(pre['std'])}]",
                  f"let inputScale: Float = {float(inp['scale'])!r}", f"let inputZeroPoint = {inp['zero_point']}"]
    if out.get("scale") is not None:
        lines += [f"let outputScale: Float = {float(out['scale'])!r}", f"let outputZeroPoint = {out['zero_point']}"]
    lines += [f'let path = Bundle.main.path(forResource: "{m["file"].rsplit(".", 1)[0]}", ofType: "tflite")!',
              "let interpreter = try Interpreter(modelPath: path)", "try interpreter.allocateTensors()",
              "// rgb: [UInt8], inputHeight * inputWidth * channels values, row-major, already resized"
              + ("" if c == 3 else "; gray = (R*19595 + G*38470 + B*7471 + 32768) >> 16, as Pillow")]
    if pre["folded"]:
        lines += ["try interpreter.copy(Data(rgb), toInputAt: 0)  // raw 0..255"]
    else:
        lo, hi = _lo(inp["dtype"]), _hi(inp["dtype"])
        kind = "UInt8" if inp["dtype"] == "uint8" else "Int8"
        lines += ["let q: [" + kind + "] = rgb.enumerated().map { i, p in",
                  "    let ch = i % channels",
                  "    let x = (Float(p) * pixelScale - mean[ch % mean.count]) / std[ch % std.count]",
                  f"    return {kind}(max({lo}, min({hi}, "
                  "Int((x / inputScale).rounded(.toNearestOrEven)) + inputZeroPoint)))",
                  "}", "try interpreter.copy(q.withUnsafeBufferPointer { Data(buffer: $0) }, toInputAt: 0)"]
    lines += ["try interpreter.invoke()", "let output = try interpreter.output(at: 0)"]
    if out.get("scale") is not None:
        kind = "Int8" if out["dtype"] == "int8" else "UInt8"
        lines += [f"let scores = [{kind}](output.data).map {{ outputScale * Float(Int($0) - outputZeroPoint) }}"]
    else:
        lines += ["let scores = output.data.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }"]
    return lines
