import sys

from hecktor.cli import main

sys.exit(main())
