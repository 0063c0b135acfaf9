import sys

from hecktor.apps.cli import main

sys.exit(main())
