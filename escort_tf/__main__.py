"""`python -m escort_tf`: the same as the `escort-tf` command."""

import sys

from escort_tf.cli import main

sys.exit(main())
