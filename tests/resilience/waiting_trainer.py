"""A training pod's stand-in that runs until the test says it is done: it waits (polling every 0.1 s) for a file
`finish` in its node-local checkpoint folder (checkpoint.localPath, a per-node folder on the local cluster) and
exits 0; SIGTERM (pod deletion) ends it at once. Lets a test hold a gang Running for as long as a fault takes."""

import time
from pathlib import Path

import yaml

from omnitrain.contract import CONFIG_PATH

config = yaml.safe_load(Path(CONFIG_PATH).read_text())
finish = Path(config["spec"]["checkpoint"]["localPath"]) / "finish"
while not finish.exists():
    time.sleep(0.1)  # a stand-in process, not a test: nothing to wait on but the file
