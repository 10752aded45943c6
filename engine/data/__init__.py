"""Dataset readers and transforms."""
