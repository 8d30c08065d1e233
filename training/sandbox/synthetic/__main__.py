"""`python -m training.sandbox.synthetic` (torchrun / accelerate launch): the same as `rrg data`."""

import sys

from training.cli import main as rrg

sys.exit(rrg(["data", *sys.argv[1:]]))
