"""What the data tests' real-clip fixtures (conftest.py) are made of, importable by the tests themselves."""

from omnitrain.spec import BucketSpec, EncodersSpec
from omnitrain.trainer.data.shapes import ShapesSpec

QUIET = dict(log=lambda *_: None)
ENCODERS = EncodersSpec(buckets=BucketSpec(area=32 * 32, max_frames=9))
CLIPS = ShapesSpec(clips=12, seed=11, reference_fraction=0.34, context_fraction=0.34)
