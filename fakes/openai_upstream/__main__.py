import sys

from fakes.openai_upstream.cli import main

sys.exit(main())
