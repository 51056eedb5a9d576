"""The field's model families as generic experts: a local weights folder plus a small card becomes tools.

Families: ``zero_shot`` (CLIP/SigLIP/open_clip zero-shot and linear-probe classification),
``promptable_segmentation`` (SAM/MedSAM), ``detection`` (Grounding DINO, OWLv2), ``image_text_retrieval``
(image and text towers for cross-modal search), ``specialist_vlm`` (a vision model behind an OpenAI-compatible
API), and ``remote`` (the tools of an expert service in another process). See :mod:`medagent.families.card`.
"""

from medagent.families.card import FamilyCard, FamilyCardError, load_card, parse_card
from medagent.families.registry import configured_tools, family_tools

__all__ = ["FamilyCard", "FamilyCardError", "configured_tools", "family_tools", "load_card", "parse_card"]
