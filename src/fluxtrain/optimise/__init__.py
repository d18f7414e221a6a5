"""fluxtrain.optimise"""
__all__: list[str] = []
