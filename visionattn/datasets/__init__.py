"""Readers of the real on-disk dataset formats, and their transforms."""
