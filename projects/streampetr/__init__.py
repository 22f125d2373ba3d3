"""StreamPETR on the MMDetection3D 1.x API; importing registers the model and data modules."""
from . import datasets, models  # noqa: F401
