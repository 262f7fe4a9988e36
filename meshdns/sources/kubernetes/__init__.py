"""Kubernetes clusters as catalog sources (DESIGN §3), and the reverse sync into them."""
from .source import KubernetesSource

__all__ = ["KubernetesSource"]
