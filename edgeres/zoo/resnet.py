"""The ResNet family, built by one configurable Keras 3 functional builder.

Models are plain functional graphs of built-in Keras layers, so a saved
``.keras`` file loads with ``keras.saving.load_model(path, safe_mode=True)``.
Layer names follow ``keras.applications`` (``conv1_conv``,
``conv3_block2_1_bn``, ``post_bn``, ``predictions``...), so ImageNet weights
copy over by layer name.  Variants (all from :func:`build_resnet`):

* ``resnet18/34``: torchvision basic blocks (bias-free convs, BN eps 1e-5);
  trainable parameters equal torchvision's.
* ``resnet50/101/152`` and ``resnet50v2/101v2/152v2`` (``preact=True``):
  identical to the ``keras.applications`` models of the same name.
* ``resnet8/20/32/44/56/110``: CIFAR ResNets (He et al. 2016, sec. 4.2) with
  option-A (parameter-free) or option-B (projection) shortcuts.

Inputs are raw pixels 0..255 (float32, NHWC), normalised inside by one
per-channel ``Rescaling`` named ``preprocess_normalize``:

* ``caffe`` (v1 50/101/152): ``keras.applications.resnet.preprocess_input``
  flips RGB to BGR and subtracts the BGR ImageNet mean.  These models keep
  RGB and subtract the RGB mean (123.68, 116.779, 103.939); when ImageNet
  weights are loaded, the input-channel axis of the ``conv1_conv`` kernel is
  reversed instead, which is exactly equivalent (convolving channel-reversed
  input equals convolving with a channel-reversed kernel).
* ``tf`` (v2): ``x / 127.5 - 1``.
* ``torch`` (resnet18/34) and ``cifar``: ``x / 255``, then the torchvision or
  CIFAR-10 per-channel mean/std.  With ``channels != 3`` every channel uses
  mean 0.5, std 0.25 (``caffe``: mean 127.5).

Outputs are logits (``predictions`` has no activation).
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
from keras import layers

from edgeres.zoo.registry import register_model

TORCH_MEAN, TORCH_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CAFFE_MEAN_RGB = (123.68, 116.779, 103.939)  # BGR mean of keras 'caffe', reversed
GENERIC_MEAN, GENERIC_STD = 0.5, 0.25  # used when channels != 3


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
    """Everything that distinguishes one ResNet variant from another."""

    block: str  # "basic" (two 3x3 convs) or "bottleneck" (1x1, 3x3, 1x1 x4)
    layers: tuple[int, ...]  # residual blocks per stage
    preact: bool = False  # v2: BN-ReLU before each conv, stride in last block
    stem: str = "imagenet"  # "imagenet": 7x7/2 conv + 3x3/2 max pool; "cifar": 3x3 conv
    base_width: int = 64  # filters of the stem and the first stage
    use_bias: bool = False  # bias in convs (keras.applications uses it)
    bn_epsilon: float = 1e-5
    bn_momentum: float = 0.9  # torch momentum 0.1
    kernel_initializer: str = "he_normal"
    preprocessing: str = "torch"  # "caffe" | "tf" | "torch" | "cifar"
    # Strided kxk convs: True pads explicitly and symmetrically (torch), False
    # uses Keras "same".  CIFAR models use "same": with explicit padding, the
    # int8 TFLite quantizer leaves PAD+CONV in float next to an option-A
    # shortcut (both branches need the same scale on the shared input).
    symmetric_padding: bool = True


def _preprocessing(x, mode: str, channels: int):
    """Map raw 0..255 pixels to what the network was designed for.

    One ``Rescaling`` layer computes ``(x - mean) / std`` per channel as
    ``x * (1 / std) + (-mean / std)``, with mean/std on the 0..255 scale.
    Rescaling keeps its values as plain config floats, which become graph
    constants (``Normalization`` stores tensors that tf.function-based
    exporters see as captured inputs).
    """
    if mode == "tf":
        return layers.Rescaling(1 / 127.5, offset=-1.0, name="preprocess_normalize")(x)
    if mode == "caffe":
        mean = CAFFE_MEAN_RGB if channels == 3 else (255 * GENERIC_MEAN,)
        std = (1.0,)
    else:
        mean, std = {"torch": (TORCH_MEAN, TORCH_STD), "cifar": (CIFAR10_MEAN, CIFAR10_STD)}[mode]
        if channels != 3:
            mean, std = (GENERIC_MEAN,), (GENERIC_STD,)
        mean, std = [255 * m for m in mean], [255 * s for s in std]
    mean, std = np.broadcast_to(mean, channels), np.broadcast_to(std, channels)
    scale = [float(1 / s) for s in std]
    offset = [float(-m / s) for m, s in zip(mean, std)]
    return layers.Rescaling(scale, offset=offset, name="preprocess_normalize")(x)


def _conv(x, filters, kernel, stride, name, cfg, *, use_bias=None, pad=None):
    """Conv2D named ``{name}_conv``.

    ``pad=True`` pads explicitly and symmetrically (``{name}_pad``, then a
    "valid" conv), like torch; ``pad=False`` uses Keras "same" (asymmetric
    when strided).  The default pads explicitly only strided kxk convs of
    configs with ``symmetric_padding``.
    """
    if pad is None:
        pad = kernel > 1 and stride > 1 and cfg.symmetric_padding
    if pad:
        x = layers.ZeroPadding2D(kernel // 2, name=f"{name}_pad")(x)
    return layers.Conv2D(
        filters,
        kernel,
        strides=stride,
        padding="valid" if pad else "same",
        use_bias=cfg.use_bias if use_bias is None else use_bias,
        kernel_initializer=cfg.kernel_initializer,
        name=f"{name}_conv",
    )(x)


def _bn(x, name, cfg):
    return layers.BatchNormalization(
        axis=-1, epsilon=cfg.bn_epsilon, momentum=cfg.bn_momentum, name=f"{name}_bn"
    )(x)


def _relu(x, name):
    return layers.Activation("relu", name=name)(x)


def _conv_bn(x, filters, kernel, stride, name, cfg, *, relu=True, **conv_kw):
    """``{name}_conv`` -> ``{name}_bn`` (-> ``{name}_relu``)."""
    x = _bn(_conv(x, filters, kernel, stride, name, cfg, **conv_kw), name, cfg)
    return _relu(x, f"{name}_relu") if relu else x


def _shortcut(x, out_channels, stride, name, cfg, mode):
    """The identity path of a post-activation block, adapted when shapes change.

    mode "B": 1x1 conv + BN projection (``{name}_0_conv``/``{name}_0_bn``).
    mode "A": parameter-free; subsample with a 1x1 max pool of stride 2
    (``{name}_0_pool``) and zero-pad channels by concatenating a zeroed copy
    (``{name}_0_zeros`` is ``Rescaling(0)``, ``{name}_0_pad`` the concat).
    """
    in_channels = x.shape[-1]
    if in_channels == out_channels and stride == 1:
        return x
    if mode == "B":
        return _conv_bn(x, out_channels, 1, stride, f"{name}_0", cfg, relu=False)
    if stride > 1:
        x = layers.MaxPooling2D(1, strides=stride, name=f"{name}_0_pool")(x)
    if out_channels != in_channels:
        if out_channels != 2 * in_channels:
            raise ValueError(f"option-A shortcut cannot pad {in_channels} to {out_channels}")
        zeros = layers.Rescaling(0.0, name=f"{name}_0_zeros")(x)
        x = layers.Concatenate(name=f"{name}_0_pad")([x, zeros])
    return x


def basic_block(x, filters, stride, name, cfg, shortcut="B"):
    """Two 3x3 convs (torchvision BasicBlock / He et al. CIFAR block)."""
    sc = _shortcut(x, filters, stride, name, cfg, shortcut)
    x = _conv_bn(x, filters, 3, stride, f"{name}_1", cfg)
    x = _conv_bn(x, filters, 3, 1, f"{name}_2", cfg, relu=False)
    x = layers.Add(name=f"{name}_add")([sc, x])
    return _relu(x, f"{name}_out")


def bottleneck_block(x, filters, stride, name, cfg, shortcut="B"):
    """keras.applications ``residual_block_v1``: stride on the first 1x1 conv."""
    sc = _shortcut(x, 4 * filters, stride, name, cfg, shortcut)
    x = _conv_bn(x, filters, 1, stride, f"{name}_1", cfg)
    x = _conv_bn(x, filters, 3, 1, f"{name}_2", cfg)
    x = _conv_bn(x, 4 * filters, 1, 1, f"{name}_3", cfg, relu=False)
    x = layers.Add(name=f"{name}_add")([sc, x])
    return _relu(x, f"{name}_out")


def preact_bottleneck_block(x, filters, stride, name, cfg, shortcut="B"):
    """keras.applications ``residual_block_v2`` (pre-activation, v2).

    BN-ReLU of the input feeds the main path and a projection shortcut; a
    strided identity shortcut subsamples the raw input with a 1x1 max pool
    (named ``{name}_0_pool`` here; keras.applications leaves it unnamed).
    The convs that feed a BN have no bias; the others use cfg.use_bias.
    ``shortcut`` is ignored: v2 always projects when channels change.
    """
    preact = _relu(_bn(x, f"{name}_preact", cfg), f"{name}_preact_relu")
    if x.shape[-1] != 4 * filters:
        sc = _conv(preact, 4 * filters, 1, stride, f"{name}_0", cfg)
    elif stride > 1:
        sc = layers.MaxPooling2D(1, strides=stride, name=f"{name}_0_pool")(x)
    else:
        sc = x
    x = _conv_bn(preact, filters, 1, 1, f"{name}_1", cfg, use_bias=False)
    x = _conv_bn(x, filters, 3, stride, f"{name}_2", cfg, use_bias=False, pad=True)
    x = _conv(x, 4 * filters, 1, 1, f"{name}_3", cfg)
    return layers.Add(name=f"{name}_out")([sc, x])


# (block kind, pre-activation) -> block function
_BLOCKS = {
    ("basic", False): basic_block,
    ("bottleneck", False): bottleneck_block,
    ("bottleneck", True): preact_bottleneck_block,
}


def build_resnet(
    cfg: ResNetConfig,
    *,
    name: str,
    input_size: tuple[int, int],
    num_classes: int,
    channels: int = 3,
    width: float = 1.0,
    shortcut: str | None = None,
) -> keras.Model:
    """Build any ResNet variant described by ``cfg``.

    Stage ``i`` (named ``conv{i+2}`` as in keras.applications) has
    ``base * 2**i`` filters, where ``base = max(1, round(cfg.base_width *
    width))``; keeping the doubling exact lets option-A shortcuts zero-pad by
    concatenation at any width.  ``shortcut`` ("A"/"B", default "B") only
    changes how post-activation blocks project.
    """
    block_fn = _BLOCKS[cfg.block, cfg.preact]
    base = max(1, round(cfg.base_width * width))

    inputs = keras.Input(shape=(*input_size, channels), dtype="float32", name="input")
    x = _preprocessing(inputs, cfg.preprocessing, channels)

    if cfg.stem == "imagenet":  # 7x7/2 conv (conv1_pad, conv1_conv), 3x3/2 max pool
        x = _conv(x, base, 7, 2, "conv1", cfg, pad=True)
        if not cfg.preact:
            x = _relu(_bn(x, "conv1", cfg), "conv1_relu")
        x = layers.ZeroPadding2D(1, name="pool1_pad")(x)
        x = layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
    else:  # cifar: one 3x3 conv, no pooling
        x = _conv_bn(x, base, 3, 1, "conv1", cfg)

    last_stage = len(cfg.layers) - 1
    for i, blocks in enumerate(cfg.layers):
        # v1 downsamples in the first block of stages 2+; keras' v2 (after the
        # TF-slim original) in the last block of all stages but the last.
        if cfg.preact:
            stage_stride, strided_block = (1 if i == last_stage else 2), blocks - 1
        else:
            stage_stride, strided_block = (1 if i == 0 else 2), 0
        for j in range(blocks):
            stride = stage_stride if j == strided_block else 1
            block_name = f"conv{i + 2}_block{j + 1}"
            x = block_fn(x, base * 2**i, stride, block_name, cfg, shortcut or "B")

    if cfg.preact:
        x = _relu(_bn(x, "post", cfg), "post_relu")
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = layers.Dense(num_classes, name="predictions")(x)
    return keras.Model(inputs, outputs, name=name)


# --------------------------------------------------------------------------
# Registered variants.  Entry functions receive the resolved create_model
# arguments (input_size, num_classes, channels, width, shortcut).

_TORCHVISION = ResNetConfig("basic", ())
# keras.applications conventions: biased convs, BN eps 1.001e-5, Keras defaults.
_KERAS_V1 = ResNetConfig(
    "bottleneck", (), use_bias=True, bn_epsilon=1.001e-5, bn_momentum=0.99,
    kernel_initializer="glorot_uniform", preprocessing="caffe",
)
_KERAS_V2 = dataclasses.replace(_KERAS_V1, preact=True, preprocessing="tf")
_CIFAR = ResNetConfig(
    "basic", (), stem="cifar", base_width=16, preprocessing="cifar", symmetric_padding=False
)

_IMAGENET_DEFAULTS = {"input_size": 224, "num_classes": 1000, "min_input_size": 32}
_CIFAR_DEFAULTS = {"input_size": 32, "num_classes": 10, "min_input_size": 8, "shortcuts": ("A", "B")}


def _build(base: ResNetConfig, layer_counts, name, **kw) -> keras.Model:
    return build_resnet(dataclasses.replace(base, layers=layer_counts), name=name, **kw)


@register_model(**_IMAGENET_DEFAULTS)
def resnet18(**kw):
    """ResNet-18, torchvision layout (11,689,512 trainable params)."""
    return _build(_TORCHVISION, (2, 2, 2, 2), "resnet18", **kw)


@register_model(**_IMAGENET_DEFAULTS)
def resnet34(**kw):
    """ResNet-34, torchvision layout (21,797,672 trainable params)."""
    return _build(_TORCHVISION, (3, 4, 6, 3), "resnet34", **kw)


@register_model(**_IMAGENET_DEFAULTS, keras_application="ResNet50", flip_conv1_bgr=True)
def resnet50(**kw):
    """ResNet-50 v1, identical to keras.applications.ResNet50."""
    return _build(_KERAS_V1, (3, 4, 6, 3), "resnet50", **kw)


@register_model(**_IMAGENET_DEFAULTS, keras_application="ResNet101", flip_conv1_bgr=True)
def resnet101(**kw):
    """ResNet-101 v1, identical to keras.applications.ResNet101."""
    return _build(_KERAS_V1, (3, 4, 23, 3), "resnet101", **kw)


@register_model(**_IMAGENET_DEFAULTS, keras_application="ResNet152", flip_conv1_bgr=True)
def resnet152(**kw):
    """ResNet-152 v1, identical to keras.applications.ResNet152."""
    return _build(_KERAS_V1, (3, 8, 36, 3), "resnet152", **kw)


@register_model(**_IMAGENET_DEFAULTS, keras_application="ResNet50V2")
def resnet50v2(**kw):
    """ResNet-50 v2 (pre-activation), identical to keras.applications.ResNet50V2."""
    return _build(_KERAS_V2, (3, 4, 6, 3), "resnet50v2", **kw)


@register_model(**_IMAGENET_DEFAULTS, keras_application="ResNet101V2")
def resnet101v2(**kw):
    """ResNet-101 v2 (pre-activation), identical to keras.applications.ResNet101V2."""
    return _build(_KERAS_V2, (3, 4, 23, 3), "resnet101v2", **kw)


@register_model(**_IMAGENET_DEFAULTS, keras_application="ResNet152V2")
def resnet152v2(**kw):
    """ResNet-152 v2 (pre-activation), identical to keras.applications.ResNet152V2."""
    return _build(_KERAS_V2, (3, 8, 36, 3), "resnet152v2", **kw)


@register_model(**_CIFAR_DEFAULTS)
def resnet8(**kw):
    """CIFAR ResNet-8 (n=1), tiny, for fast tests."""
    return _build(_CIFAR, (1, 1, 1), "resnet8", **kw)


@register_model(**_CIFAR_DEFAULTS)
def resnet20(**kw):
    """CIFAR ResNet-20 (n=3), 0.27M params."""
    return _build(_CIFAR, (3, 3, 3), "resnet20", **kw)


@register_model(**_CIFAR_DEFAULTS)
def resnet32(**kw):
    """CIFAR ResNet-32 (n=5), 0.46M params."""
    return _build(_CIFAR, (5, 5, 5), "resnet32", **kw)


@register_model(**_CIFAR_DEFAULTS)
def resnet44(**kw):
    """CIFAR ResNet-44 (n=7), 0.66M params."""
    return _build(_CIFAR, (7, 7, 7), "resnet44", **kw)


@register_model(**_CIFAR_DEFAULTS)
def resnet56(**kw):
    """CIFAR ResNet-56 (n=9), 0.85M params."""
    return _build(_CIFAR, (9, 9, 9), "resnet56", **kw)


@register_model(**_CIFAR_DEFAULTS)
def resnet110(**kw):
    """CIFAR ResNet-110 (n=18), 1.7M params."""
    return _build(_CIFAR, (18, 18, 18), "resnet110", **kw)
