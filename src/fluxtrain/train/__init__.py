"""fluxtrain.train"""
__all__: list[str] = []
