"""Attention primitives: one file per op, each with a reference path and a fast path."""
