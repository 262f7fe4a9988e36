"""meshdns: one service directory and DNS server for Kubernetes and VMs."""

__version__ = "0.1.0"
