"""Data: the built-in digits set, CIFAR, image folders, and loaders through mindcv's factories."""
from .builder import (
    DATASETS,
    FOLDER_EXTENSIONS,
    IMAGE_EXTENSIONS,
    DatasetInfo,
    ImageFolderError,
    ImageListing,
    check_image_headers,
    create_file_loader,
    create_split_loader,
    find_unreadable_images,
    imagenet_class_names,
    list_image_folder,
    resolve_dataset,
    transform_settings,
    unreadable_images_error,
)
from .digits import default_cache_dir, prepare_digits

__all__ = [
    "DATASETS",
    "IMAGE_EXTENSIONS",
    "FOLDER_EXTENSIONS",
    "DatasetInfo",
    "ImageFolderError",
    "ImageListing",
    "create_split_loader",
    "create_file_loader",
    "imagenet_class_names",
    "list_image_folder",
    "find_unreadable_images",
    "check_image_headers",
    "unreadable_images_error",
    "resolve_dataset",
    "transform_settings",
    "default_cache_dir",
    "prepare_digits",
]
