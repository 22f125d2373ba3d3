"""The latency model registry."""
from mmengine.registry import Registry

# `locations` makes the registry import the model modules on first use.
LATENCY_MODELS = Registry('latency_model', locations=['mmdp.latency.models'])
