"""The project's version, in one place; every checkpoint train.py writes records it (checkpoints.provenance)."""
__version__ = "1.0.0"
