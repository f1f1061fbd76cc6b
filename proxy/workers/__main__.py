"""`python -m proxy.workers ...`: one worker process, started by `serving-sidecar run --workers N`."""

import sys

from proxy.workers.worker import main

sys.exit(main())
