"""The grammar of `--data SPEC`, apart from the loaders so that `harden --help` needs no torch."""

from typing import Final

# Image limits (README, "Exit codes"): outside them a command refuses with exit 2 before any work.
MAX_IMAGE_PIXELS: Final = 50_000_000  # a decoded RGB image or --image-size: 50 MP (Cityscapes is 2 MP)
MIN_IMAGE_SIDE: Final = 16  # below this the models' strided stems leave nothing to segment
# Iteration limits of attacks (--iters, --queries): beyond them a run takes days, not a release check.
MAX_ITERS: Final = 10_000
MAX_QUERIES: Final = 100_000

DATA_SPEC_HELP: Final = "synthetic | cityscapes:PATH | voc:PATH | ade20k:PATH | folder:IMAGES,MASKS[,CLASSES]"
