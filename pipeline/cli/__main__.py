"""`python -m pipeline.cli …` (how a submitted job runs the pipeline on a cluster)."""

import sys

from pipeline.cli import main

sys.exit(main())
