"""The miniature EFT family: a made-up world, one tokenizer, four tiny llama models trained here.

Not part of the installed package (JAX is only needed to *build* the family); the built GGUFs
ship in ``eft_local/models/miniature``. Entry point: ``scripts/miniature.py``.
"""
