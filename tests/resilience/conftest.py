import os
import sys

# The fake trainer is started by path; keep any torch in child processes to one thread.
sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("OMP_NUM_THREADS", "1")
