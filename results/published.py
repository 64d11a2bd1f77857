"""The paper's published numbers: a reference row in the tables of the SD profiles.

Zhou et al., "Long and Short Guidance in Score identity Distillation for One-Step
Text-to-Image Generation", Table 1: FID on COCO-2014 (30k prompts) and CLIP score of the
SiD-LSG one-step generators at each κ. Not shown for the embedded profile, whose world
has nothing in common with those numbers.
"""

from __future__ import annotations

import math

SOURCE = "Zhou et al., Table 1"
CITATION = ('Zhou et al., "Long and Short Guidance in Score identity Distillation for '
            'One-Step Text-to-Image Generation", Table 1 (FID on COCO-2014, 30k prompts)')
MODEL_NAMES = {"sd15": "SD1.5", "sd21base": "SD2.1-base"}
# profile -> κ -> (FID, CLIP score)
PUBLISHED = {
    "sd15": {1.5: (8.71, 0.302), 2.0: (9.56, 0.313), 3.0: (13.21, 0.314)},
    "sd21base": {1.5: (9.52, 0.308), 2.0: (10.97, 0.318), 3.0: (13.50, 0.321)},
}


def published(profile: str | None, kappa) -> tuple[float, float] | None:
    """(FID, CLIP) the paper reports for this profile and κ; None where it reports none."""
    if profile not in PUBLISHED or not isinstance(kappa, (int, float)) or math.isnan(kappa):
        return None
    return PUBLISHED[profile].get(float(kappa))
