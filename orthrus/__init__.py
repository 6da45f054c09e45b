"""orthrus: benchmark and analysis suite for Orthrus dual-view diffusion decoding."""

__version__ = "0.1.0"
