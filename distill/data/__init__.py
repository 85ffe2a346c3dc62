"""The data layer: real images from every supported dataset format, as `Source` objects."""

from distill.data.catalog import build_source
from distill.data.classes import ClassInfo, imagenet_classes, imagenet_name
from distill.data.dataset import ResizedImages, collate_images
from distill.data.records import SkipRecord, SourceItem, write_skipped_csv
from distill.data.sources import Source

__all__ = [
    "ClassInfo",
    "ResizedImages",
    "SkipRecord",
    "Source",
    "SourceItem",
    "build_source",
    "collate_images",
    "imagenet_classes",
    "imagenet_name",
    "write_skipped_csv",
]
