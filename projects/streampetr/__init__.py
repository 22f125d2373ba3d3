"""StreamPETR on the MMDetection3D 1.x API; importing registers the model and data modules."""
from . import datasets, frozen_backbone, models  # noqa: F401
