import sys

from crocodile.cli import main

sys.exit(main())
