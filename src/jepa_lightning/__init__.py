"""jepa-lightning: train Joint Embedding Predictive Architectures with PyTorch Lightning."""

__version__ = "0.1.0"
