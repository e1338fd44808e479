"""A stand-in driver for tests/test_forkserver.py: what a forked child does, by command."""

import json
import os
import subprocess
import sys
import time


def main(argv):
    cmd = argv[0]
    if cmd == "env":  # write the environment variable and directory the child runs with
        print("to the log", flush=True)
        print("and its stderr", file=sys.stderr, flush=True)
        with open(argv[2], "w") as f:
            json.dump({"value": os.environ.get(argv[1]), "cwd": os.getcwd(), "sid": os.getsid(0) == os.getpid()}, f)
    elif cmd == "exit":
        os._exit(int(argv[1]))
    elif cmd == "raise":
        raise ValueError("a driver error")
    elif cmd == "sleep":  # a grandchild in the same session (as the driver's kernel is), then hang
        child = subprocess.Popen(["sleep", "300"])
        with open(argv[1], "w") as f:
            f.write(str(child.pid))
        time.sleep(300)
