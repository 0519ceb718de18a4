"""Defaults of the server's limits, shared by the app and the command (which must not import FastAPI)."""

DEFAULT_MAX_BATCH = 4
DEFAULT_MAX_UPLOAD_MB = 20.0
# 8000 x 8000: a 48-megapixel phone photo fits; decoded, such an image is 192 MB of RGB.
# Below PIL's own guard (Image.MAX_IMAGE_PIXELS, 89.5 million), which then never fires first.
DEFAULT_MAX_PIXELS = 64_000_000
