"""`python -m llmserve.launch serve|wrap|drain ...`: see llmserve/launch/tritonserver.py."""

import sys

from llmserve.launch.tritonserver import main

sys.exit(main())
