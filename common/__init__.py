"""dtrain's shared library. Importing it starts the launcher watchdog in a launcher's worker
(common/launcher.py): the earliest point a worker runs this project's code."""
from common import launcher

launcher.watch()
