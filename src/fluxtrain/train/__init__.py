"""fluxtrain.train"""
from .gradient import WithGradient, gradient, withgradient

__all__: list[str] = []
__all__ += ["gradient", "withgradient", "WithGradient"]
