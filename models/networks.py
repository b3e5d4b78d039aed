"""Network builders for the two-stage method of Liu et al. (BMC Med Inform Decis Mak 2021).

The *primary network* is a U-Net that segments lesion areas on T2 FLAIR (task b: background and
lesion). The *secondary network* is a small CNN that tells focal cerebral ischemia (FCI) from
lacunar infarction (LACI) on a T1 FLAIR ROI. Only stock Keras layers are used, so the saved
``.keras`` files load without this module.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from keras import layers

from models.preprocessing import ROI_INPUT_SIZE, widening_problem

PRIMARY_DEPTH = 5  # encoding path: 5 levels x 2 convolutions = the paper's 10 convolutions
# Keras' default BN momentum (0.99) leaves the moving statistics behind the weights after the
# few thousand steps a CPU training run takes; inference then misses lesions it saw in training.
BN_MOMENTUM = 0.9


def _conv_bn_relu(x: keras.KerasTensor, filters: int, name: str) -> keras.KerasTensor:
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def build_primary_network(
    base_filters: int = 16,
    num_classes: int = 2,
    context_slices: int = 1,
) -> keras.Model:
    """U-Net of the paper's Fig. 3.

    Input ``(rows, cols, context_slices)`` normalised T2 FLAIR (see
    :func:`models.preprocessing.slice_context`; the paper's network takes 1); rows and cols must
    be multiples of 16. Output ``(rows, cols, num_classes)`` softmax; channel 1 is the lesion
    probability.
    """
    if base_filters < 1:
        raise ValueError(f"base_filters must be positive, got {base_filters}")
    inputs = keras.Input(shape=(None, None, context_slices), name="t2_flair")
    x = inputs

    # Encoding path: two conv+BN+ReLU per level, 2x2 max-pooling between levels.
    skips: list[keras.KerasTensor] = []
    for level in range(PRIMARY_DEPTH):
        filters = base_filters * 2**level
        x = _conv_bn_relu(x, filters, f"enc{level}a")
        x = _conv_bn_relu(x, filters, f"enc{level}b")
        if level < PRIMARY_DEPTH - 1:
            skips.append(x)
            x = layers.MaxPooling2D(2, name=f"enc{level}_pool")(x)

    # Decoding path: 2x2 deconvolution halving the channels, BN+ReLU, concatenation with the
    # encoder's feature map, then two conv+BN+ReLU.
    for level in reversed(range(PRIMARY_DEPTH - 1)):
        filters = base_filters * 2**level
        x = layers.Conv2DTranspose(filters, 2, strides=2, use_bias=False, name=f"dec{level}_up")(x)
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"dec{level}_up_bn")(x)
        x = layers.ReLU(name=f"dec{level}_up_relu")(x)
        x = layers.Concatenate(name=f"dec{level}_concat")([x, skips[level]])
        x = _conv_bn_relu(x, filters, f"dec{level}a")
        x = _conv_bn_relu(x, filters, f"dec{level}b")

    # Two consecutive 1x1 convolutions map each feature vector to the classes.
    x = layers.Conv2D(base_filters, 1, activation="relu", name="head_1x1")(x)
    outputs = layers.Conv2D(num_classes, 1, activation="softmax", name="lesion_probability")(x)
    return keras.Model(inputs, outputs, name="primary_network")


def build_secondary_network(
    input_shape: tuple[int, int, int] = (ROI_INPUT_SIZE, ROI_INPUT_SIZE, 1),
    base_filters: int = 16,
    dropout_rate: float = 0.3,
) -> keras.Model:
    """Classifier of the paper's Fig. 4: five 3x3 convolutions, three average poolings, two
    fully connected layers with dropout.

    Input ``(64, 64, 1)``: a gamma-corrected T1 FLAIR ROI in [0, 1].
    Output ``(1,)``: the probability that the lesion is a lacunar infarction (LACI); below the
    manifest's threshold it is focal cerebral ischemia (FCI).
    """
    inputs = keras.Input(shape=input_shape, name="t1_flair_roi")
    x = inputs
    for block, convolutions in enumerate((2, 2, 1)):
        filters = base_filters * 2**block
        for index in range(convolutions):
            x = _conv_bn_relu(x, filters, f"block{block}_{index}")
        x = layers.AveragePooling2D(2, name=f"block{block}_pool")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dropout(dropout_rate, name="fc1_dropout")(x)
    x = layers.Dense(64, activation="relu", name="fc1")(x)
    x = layers.Dropout(dropout_rate, name="fc2_dropout")(x)
    outputs = layers.Dense(1, activation="sigmoid", name="laci_probability")(x)
    return keras.Model(inputs, outputs, name="secondary_network")


def widen_primary_context(primary: keras.Model, context_slices: int) -> keras.Model:
    """``primary`` taking ``context_slices`` adjacent T2 FLAIR slices instead of its own count
    (see :func:`models.preprocessing.slice_context`), computing at first exactly what it
    computed: every weight copied, the first convolution's kernel for the added neighbour
    channels zero. Fine-tuning then teaches it what the neighbours show."""
    old = int(primary.input_shape[-1])
    problem = widening_problem(old, context_slices)
    if problem is not None:
        raise ValueError(problem)
    config = primary.get_config()
    first = config["layers"][0]
    if first["class_name"] != "InputLayer":
        raise ValueError(f"{primary.name} does not start with its input layer")
    first["config"]["batch_shape"] = [*first["config"]["batch_shape"][:-1], context_slices]
    for layer_config in config["layers"]:
        # Each layer is built again from its input; a recorded input shape would contradict it.
        layer_config.pop("build_config", None)
    wide = keras.Model.from_config(config)
    offset = (context_slices - old) // 2  # the old channels are the middle ones
    for layer in wide.layers:
        weights = primary.get_layer(layer.name).get_weights()
        new = layer.get_weights()
        for index, (given, wanted) in enumerate(zip(weights, new, strict=True)):
            if given.shape == wanted.shape:
                new[index] = given
            elif given.ndim == 4 and (given.shape[:2], given.shape[3]) == (wanted.shape[:2],
                                                                           wanted.shape[3]):
                # A convolution on the input: the new channels start at zero.
                new[index] = np.zeros_like(wanted)
                new[index][:, :, offset : offset + old] = given
            else:
                raise ValueError(f"{layer.name}: weights {given.shape} cannot become {wanted.shape}")
        layer.set_weights(new)
    return wide


def average_networks(networks: Sequence[keras.Model], name: str) -> keras.Model:
    """An ensemble as one network: each member of ``networks`` kept whole (a nested model
    ``member_N``) on the same input, their outputs averaged. Members must take the same input
    and give the same output; the result saves and loads as any ``.keras`` network."""
    if len(networks) < 2:
        raise ValueError(f"an ensemble needs at least 2 networks, got {len(networks)}")
    first = networks[0]
    for network in networks[1:]:
        if (network.input_shape, network.output_shape) != (first.input_shape, first.output_shape):
            raise ValueError(f"networks differ: input {network.input_shape} -> output "
                             f"{network.output_shape}, not {first.input_shape} -> {first.output_shape}")
    inputs = keras.Input(shape=first.input_shape[1:], name=first.layers[0].name)
    members = [keras.Model(network.input, network.output, name=f"member_{number}")
               for number, network in enumerate(networks, start=1)]
    mean = layers.Average(name="mean")([member(inputs) for member in members])
    return keras.Model(inputs, mean, name=name)
