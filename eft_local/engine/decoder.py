"""The EFT decoder's public names, where they have always been imported from.

``EftEngine`` (the models of a mixture) lives in ``engine/eft_engine.py``; one generation —
the prompt, then rounds of draft → verify → accept/resample → commit — in
``engine/generation.py``.
"""

from eft_local.engine.eft_engine import EftEngine
from eft_local.engine.generation import Eval, Generation, ModelPlan, keep_row, uniforms

__all__ = ["EftEngine", "Eval", "Generation", "ModelPlan", "keep_row", "uniforms"]
