"""Read your own digits with a trained checkpoint: ``python predict.py CHECKPOINT IMAGE [IMAGE ...]``.

    python predict.py outputs/<run>/checkpoints/last.ckpt my_seven.png photo_of_a_3.jpg

Any PNG or JPEG, any size, dark on light or light on dark; see handprop.predict.
"""

import sys

from handprop.predict import main

if __name__ == "__main__":
    sys.exit(main())
