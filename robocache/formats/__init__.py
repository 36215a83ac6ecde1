"""Readers for the dataset formats people have. Each returns a `TrajectorySource`; the store
turns that into device arrays (`TrajectoryStore.from_source`)."""

from .source import TrajectorySource

__all__ = ["TrajectorySource"]
