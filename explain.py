"""What your own digit asks of every weight: ``python explain.py CHECKPOINT IMAGE [--label 7]``.

    python explain.py outputs/<run>/checkpoints/last.ckpt my_seven.png --label 7

Draws one backpropagation sweep for the image (read like predict.py reads it) into
IMAGE_backprop.png; see handprop.explain.
"""

import sys

from handprop.explain import main

if __name__ == "__main__":
    sys.exit(main())
