"""HEAVY layer: Keras loading and the TFLite / ONNX back ends (TensorFlow, tf2onnx, ONNX Runtime quantization)."""
