"""Image I/O, image sets (folders, arrays, named references) and training datasets."""

from .folder import ImageFolder
from .imageset import ImageSource, open_folder, select_split
from .io import array_to_images, load_array_file, load_image, sha256_file
from .sources import open_source

__all__ = [
    "ImageFolder", "ImageSource", "array_to_images", "load_array_file", "load_image", "open_folder",
    "open_source", "select_split", "sha256_file",
]
