"""fluxtrain.train"""
from .gradient import WithGradient, gradient, withgradient
from .data import DataLoader
from .callbacks import early_stopping, patience, plateau, throttle

__all__: list[str] = []
__all__ += ["gradient", "withgradient", "WithGradient"]
__all__ += ["DataLoader", "throttle", "patience", "early_stopping", "plateau"]
