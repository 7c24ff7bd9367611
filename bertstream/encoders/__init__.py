"""Encoders built from packages that ship weights in their own formats (see `bertstream encoders`)."""
