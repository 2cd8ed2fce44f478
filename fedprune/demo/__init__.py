"""The embedded demo model: a small Llama trained on the Python standard library's docstrings.

``locate_or_build()`` returns a :class:`DemoModel` from the user's cache, training it first (minutes on
two CPU cores) when the cache has no build of the recipe. See ``docs/DEMO_MODEL.md``.
"""

from fedprune.demo.build import (
    DemoModel,
    build_demo_model,
    cache_key,
    locate_demo_model,
    locate_or_build,
    participant_document_files,
    participant_files,
)
from fedprune.demo.cache import default_cache_dir
from fedprune.demo.corpus import DOCUMENT_SEPARATOR, Topic
from fedprune.demo.recipe import DEFAULT, TINY, DemoRecipe, recipe_hash

__all__ = [
    "DEFAULT",
    "DOCUMENT_SEPARATOR",
    "TINY",
    "DemoModel",
    "DemoRecipe",
    "Topic",
    "build_demo_model",
    "cache_key",
    "default_cache_dir",
    "locate_demo_model",
    "locate_or_build",
    "participant_document_files",
    "participant_files",
    "recipe_hash",
]
