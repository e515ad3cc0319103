"""``python -m eiger_server``: the server's command line."""
import sys

from eiger_server.app.cli import main

sys.exit(main())
