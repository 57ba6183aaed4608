"""Load and validate labelled datasets (text, text pairs, images) into train/validation/test splits.

The public API; `loader` decides what a source is, `sources`/`formats` read tables, `images` reads
image sources, `text_task`/`image_task` build the task, `columns`/`labels`/`splitting` hold the
rules both share.
"""

from ea_core.data.columns import LABEL_COLUMNS, PAIR_COLUMNS, SPLIT_COLUMNS, TEXT_COLUMNS, SourceInfo, find_column
from ea_core.data.formats import SUPPORTED_FORMATS
from ea_core.data.image_task import (
    ImageSourceInfo,
    describe_images,
    inspect_image_source,
    inspect_image_table,
    load_image_dataset,
    load_image_parts,
)
from ea_core.data.images import (
    IMAGE_COLUMNS,
    IMAGE_DEMO_DATASETS,
    IMAGE_EXTENSIONS,
    MAX_IMAGE_SIDE,
    convert_image,
    image_column,
    image_preview,
    is_image_source,
    read_image_inputs,
)
from ea_core.data.labels import normalize_label
from ea_core.data.loader import describe, inspect_source, load_dataset
from ea_core.data.sources import DEMO_DATASETS, DEMO_TWEETS_DEFAULT_SIZE, check_data_path, read_table

__all__ = [
    "DEMO_DATASETS", "DEMO_TWEETS_DEFAULT_SIZE", "SUPPORTED_FORMATS", "load_dataset", "normalize_label",
    "check_data_path", "read_table", "describe", "inspect_source", "SourceInfo",
    "TEXT_COLUMNS", "PAIR_COLUMNS", "LABEL_COLUMNS", "SPLIT_COLUMNS", "find_column",
    "IMAGE_DEMO_DATASETS", "IMAGE_EXTENSIONS", "IMAGE_COLUMNS", "MAX_IMAGE_SIDE", "ImageSourceInfo",
    "is_image_source", "image_column", "load_image_dataset", "load_image_parts", "inspect_image_source",
    "inspect_image_table", "image_preview", "describe_images", "convert_image", "read_image_inputs",
]
