"""Grand-Challenge entry point: one case from --input (default /input) to --output (default /output)."""

import sys

from hecktor.apps.cli import inference_main

if __name__ == "__main__":
    sys.exit(inference_main())
