"""Data: the built-in digits set, CIFAR, image folders, and loaders through mindcv's factories."""
from .builder import (
    DATASETS,
    IMAGE_EXTENSIONS,
    DatasetInfo,
    check_image_headers,
    create_file_loader,
    create_split_loader,
    empty_class_folders,
    find_unreadable_images,
    imagenet_class_names,
    list_class_folder,
    resolve_dataset,
    transform_settings,
    unreadable_images_error,
)
from .digits import default_cache_dir, prepare_digits

__all__ = [
    "DATASETS",
    "IMAGE_EXTENSIONS",
    "DatasetInfo",
    "create_split_loader",
    "create_file_loader",
    "imagenet_class_names",
    "list_class_folder",
    "find_unreadable_images",
    "empty_class_folders",
    "check_image_headers",
    "unreadable_images_error",
    "resolve_dataset",
    "transform_settings",
    "default_cache_dir",
    "prepare_digits",
]
