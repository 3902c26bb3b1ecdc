"""omnitrain: a Kubernetes-native operator and training stack for video Diffusion Transformers."""

__version__ = "0.1.0"
