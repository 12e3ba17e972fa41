"""Finding a package's plug-in classes by looking through its modules: adding a modification (reference/mods/)
or a KV layout (reference/layouts/) is its module alone, no list to edit."""
from __future__ import annotations

import importlib
import pkgutil


def subclasses_by_key(package: str, path, base: type) -> dict[str, type]:
    """{cls.key: cls} of every `base` subclass with a truthy `key` defined in a module of `package` (its
    `__path__` is `path`), in module-name order. Classes merely imported into a module are not counted twice."""
    found = {}
    for info in sorted(pkgutil.iter_modules(path), key=lambda i: i.name):
        module = importlib.import_module(f"{package}.{info.name}")
        for value in vars(module).values():
            if (isinstance(value, type) and issubclass(value, base) and value.key
                    and value.__module__ == module.__name__):
                found[value.key] = value
    return found
