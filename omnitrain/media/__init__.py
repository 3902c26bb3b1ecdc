"""Real media in and out: MP4 through PyAV, PNG/JPEG through Pillow, clips fitted to resolution/duration buckets."""
