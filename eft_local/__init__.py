"""eft-local: emulated fine-tuning (EFT) on llama.cpp."""

__version__ = "0.1.0"
