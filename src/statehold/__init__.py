"""Statehold: stateful storage for Kubernetes.

The kernel moves the bytes; Python decides. See docs/ and ARCHITECTURE in the design notes.
"""

__version__ = "0.1.0"
