"""The one registry of backends, shared by both suites.

In-repo backends register with `@register` in their own module under
`implementations/`; every module there is imported by `discover()`, so a new
backend is one new file. External packages declare the entry-point group
`attnbench.backends`, each entry pointing at a module (imported, which runs its
`@register`) or at a Backend class or instance. A module or plugin that fails to
import is recorded in `load_errors()` and skipped; discovery never crashes.
"""
from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import sys
from importlib.metadata import entry_points

from attnbench.reference import AttentionInputError

from .base import Backend

ENTRY_POINT_GROUP = "attnbench.backends"
_BACKENDS: dict[str, Backend] = {}
_LOAD_ERRORS: dict[str, str] = {}
_ORIGINS: dict[str, str] = {}
_loading_from: str | None = None   # the entry point being loaded: the origin of what registers meanwhile
_discovered = False


class UnknownBackendError(AttentionInputError, KeyError):
    """A backend name that is neither registered nor a loadable 'module:function': the user's mistake, one line.

    A KeyError too, so callers that caught get_backend's KeyError keep working; str() is the plain message
    (KeyError's own quotes its argument)."""

    __str__ = BaseException.__str__


def register(backend):
    """Class decorator (or call on an instance): add a backend under its `name`. Names are unique."""
    instance = backend() if isinstance(backend, type) else backend
    if not isinstance(instance, Backend) or not instance.name:
        raise TypeError(f"register: expected a named attnbench Backend, got {backend!r}")
    existing = _BACKENDS.get(instance.name)
    if existing is not None and type(existing) is not type(instance):
        raise ValueError(f"register: backend name {instance.name!r} is already taken by {type(existing).__name__}")
    _BACKENDS[instance.name] = instance
    _ORIGINS.setdefault(instance.name, _origin_of(sys._getframe(1).f_globals.get("__name__", "")))
    return backend


def _origin_of(caller: str) -> str:
    """Where a registration comes from, given the module that called `register`.

    The caller, not the class's module: an in-repo file registers what it defines even when it imports another
    backend module first, and classes made with `type()` carry no useful `__module__`.
    """
    if _loading_from is not None:
        return _loading_from
    prefix = f"{__package__}."
    return f"implementations/{caller[len(prefix):]}.py" if caller.startswith(prefix) else caller


def _import_in_repo_modules() -> None:
    package = importlib.import_module(__package__)
    for module in pkgutil.iter_modules(package.__path__):
        if module.name in ("base", "registry") or module.name.startswith("_"):
            continue
        try:
            importlib.import_module(f"{__package__}.{module.name}")
        except Exception as exc:  # noqa: BLE001 - a broken module is reported, not fatal
            _LOAD_ERRORS[module.name] = f"{type(exc).__name__}: {exc}"


def _import_own_module(name: str) -> None:
    """Import implementations/<name>.py alone if there is one: a backend's file is usually named for it, and its
    siblings' packages (jax, torch.compile's machinery) cost seconds to import for a command that uses one backend.
    A name not registered by it falls back to discovering every backend."""
    if name.isidentifier() and not name.startswith("_") and name not in ("base", "registry"):
        if importlib.util.find_spec(f"{__package__}.{name}") is not None:
            try:
                importlib.import_module(f"{__package__}.{name}")
            except Exception:  # noqa: BLE001 - discover() records the error
                pass


def _load_entry_points() -> None:
    global _loading_from
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        _loading_from = f"plugin {ep.name} = {ep.value}"
        try:
            obj = ep.load()
            if isinstance(obj, Backend) or (isinstance(obj, type) and issubclass(obj, Backend)):
                register(obj)
        except Exception as exc:  # noqa: BLE001
            _LOAD_ERRORS[f"plugin:{ep.name}"] = f"{type(exc).__name__}: {exc}"
        finally:
            _loading_from = None


def discover() -> None:
    """Import every in-repo backend module and every declared plugin, once."""
    global _discovered
    if not _discovered:
        _discovered = True
        _import_in_repo_modules()
        _load_entry_points()


def rediscover() -> None:
    """Run discovery again: pick up backend files and plugins added since (already-imported modules stay registered)."""
    global _discovered
    _discovered = False
    _LOAD_ERRORS.clear()
    importlib.invalidate_caches()   # a file written after the first scan is otherwise invisible to the finder
    discover()


def all_backends() -> list[Backend]:
    """Every registered backend, available or not, sorted by name."""
    discover()
    return [_BACKENDS[name] for name in sorted(_BACKENDS)]


def get_backend(name: str) -> Backend:
    """The backend called `name`; an UnknownBackendError listing the known names otherwise. A name
    'module:function' (optionally '@bnhd') is a plain attention function, adapted and registered on first use
    (`implementations/_function.py`), so every command and suite takes it where it takes a name."""
    if name not in _BACKENDS:
        _import_own_module(name)
    if name not in _BACKENDS:
        discover()
    if name not in _BACKENDS and ":" in name:
        from ._function import function_backend

        _BACKENDS[name] = function_backend(name)
        _ORIGINS[name] = f"function {name.partition('@')[0]}"
    if name not in _BACKENDS:
        raise UnknownBackendError(f"unknown backend {name!r}; known: {', '.join(sorted(_BACKENDS))}; or a function "
                                  f"as 'package.module:function' (optionally '@bnhd')")
    return _BACKENDS[name]


def origin(name: str) -> str:
    """Where backend `name` was registered from: "implementations/<file>.py", "plugin <entry point>" or a module."""
    get_backend(name)
    return _ORIGINS[name]


def load_errors() -> dict[str, str]:
    """Modules or plugins that failed to load: name -> error."""
    discover()
    return dict(_LOAD_ERRORS)


def load_plugins(paths) -> None:
    """Import backend module files (each registers its backends on import), once per process: how `check`,
    `perf`, `compare` and `pytest conformance --plugin FILE.py` see a backend that is neither in
    implementations/ nor installed with an entry point."""
    from pathlib import Path

    for path in paths:
        if not Path(path).is_file():
            raise AttentionInputError(f"plugin: no such file {str(path)!r}")
        name = f"attnbench_plugin_{Path(path).stem}_{abs(hash(str(Path(path).resolve()))):x}"
        if name in sys.modules:
            continue
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise AttentionInputError(f"plugin: cannot import {path!r}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
