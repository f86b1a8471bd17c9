"""How a run runs, whatever it trains: the device mesh and shardings, several processes
(hosts), checkpoints and what a workdir was trained with, one run per workdir, Ctrl-C and
SIGTERM, printed lines and progress bars, atomic file writes, orbax's noise after a failure,
and the loops XLA compiled."""
