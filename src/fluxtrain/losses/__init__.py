"""fluxtrain.losses"""
__all__: list[str] = []
