import faulthandler
import signal

from harness.cli import main

# `kill -USR1 PID` prints every thread's Python stack to stderr (the peer's log file): the
# runner asks for it when a scenario misses its deadline (harness.runner.stacks)
faulthandler.register(signal.SIGUSR1, all_threads=True)
main()
