"""edgeres: take a Keras ResNet (or any Keras image classifier) to int8 TFLite and ONNX.

The top-level package is light: importing it never imports TensorFlow.
"""

__version__ = "0.1.0"
