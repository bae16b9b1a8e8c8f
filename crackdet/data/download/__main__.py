"""Run the data set download: `python -m crackdet.data.download --help`."""

import sys

from crackdet.data.download.cli import main

sys.exit(main())
