"""fluxtrain.losses: every loss of ``Flux.Losses`` with Flux's numbers, on NumPy, PyTorch
and JAX arrays, plus the helpers they use (``xlogy``, ``softmax``, ...).

Every loss is ``NAME(ŷ, y, *, ...)`` with the prediction first. Flux's ``dims=d`` is
``axis=-d`` (batch-first arrays; default ``axis=-1``). ``agg`` is ``"mean"`` (default),
``"sum"``, ``"none"`` or a callable. See docs/losses.md.
"""
from .._backend.math import logsigmoid, logsoftmax, sigmoid, softmax, xlogx, xlogy
from .ctc import ctc_loss
from .classification import (binary_focal_loss, binarycrossentropy, crossentropy, focal_loss,
                             kldivergence, label_smoothing, logitbinarycrossentropy,
                             logitcrossentropy)
from .margin import hinge_loss, siamese_contrastive_loss, squared_hinge_loss
from .regression import huber_loss, mae, mse, msle, poisson_loss
from .segmentation import dice_coeff_loss, tversky_loss

__all__ = [
    "mae", "mse", "msle", "huber_loss", "crossentropy", "logitcrossentropy",
    "binarycrossentropy", "logitbinarycrossentropy", "kldivergence", "poisson_loss",
    "hinge_loss", "squared_hinge_loss", "dice_coeff_loss", "tversky_loss",
    "binary_focal_loss", "focal_loss", "siamese_contrastive_loss", "label_smoothing",
    "xlogx", "xlogy", "softmax", "logsoftmax", "sigmoid", "logsigmoid",
    "ctc_loss",
]

# ctc_loss (owned by losses/ctc.py) is added here:
