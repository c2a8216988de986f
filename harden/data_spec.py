"""The grammar of `--data SPEC`, apart from the loaders so that `harden --help` needs no torch."""

from typing import Final

DATA_SPEC_HELP: Final = "synthetic | cityscapes:PATH | voc:PATH | ade20k:PATH | folder:IMAGES,MASKS[,CLASSES]"
