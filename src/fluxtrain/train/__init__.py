"""fluxtrain.train"""
from .gradient import WithGradient, gradient, withgradient
from .loop import train, trainstep
from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .data import DataLoader
from .callbacks import early_stopping, patience, plateau, throttle

__all__: list[str] = []
__all__ += ["gradient", "withgradient", "WithGradient"]
__all__ += ["train", "trainstep", "save_checkpoint", "load_checkpoint", "Checkpoint"]
__all__ += ["DataLoader", "throttle", "patience", "early_stopping", "plateau"]
