"""Dataset readers; each returns an :class:`ArraySource` (images in memory) or a file list."""
from pipeline.data.sources.base import ArraySource, DataError

__all__ = ["ArraySource", "DataError"]
