"""hlbd: train small transformers on HLBD datasets and keep an honest run record."""

__version__ = "0.1.0"
