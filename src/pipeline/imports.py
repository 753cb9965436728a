"""A class or function named by its dotted path in a config, or one line saying which key could not be imported."""
import importlib

from pipeline.errors import ConfigError, first_line


def import_object(path: str, key: str):
    """`path` ("package.module.Name") imported; a ConfigError naming `key` if it cannot be."""
    module_name, _, name = str(path).rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ConfigError(f"{key}={path!r} cannot be imported: {first_line(error)}") from None
