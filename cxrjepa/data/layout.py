"""Names inside a dataset artifact (see docs/artifacts.md, kind ``dataset``)."""

ZARR = "data.zarr"  # zarr v3 group
IMAGES = "images"  # array (frames, y, x), one frame per chunk, shards of SHARD_FRAMES frames
MASKS = "masks"  # optional array (frames, y, x) uint8 label maps aligned with images
METADATA = "metadata.parquet"  # one row per sample
FAILURES = "failures.jsonl"  # failure ledger: one JSON object per rejected input
DIMENSION_NAMES = ("frame", "y", "x")
SHARD_FRAMES = 64

#: metadata columns every dataset has (labels joined from a CSV come after these)
INDEX_COLUMNS = ("sample_id", "patient_key", "frame_start", "frame_count")
