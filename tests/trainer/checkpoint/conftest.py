import os
import sys

# Spawned ranks (and the checkpoint writer processes) import the worker module by name.
sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("OMP_NUM_THREADS", "1")
