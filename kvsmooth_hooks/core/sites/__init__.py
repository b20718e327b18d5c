"""Sites: where smoothing rewrites keys and values. One file each, registered by name.

To add a site: write ``sites/my_site.py`` with a :class:`Site` subclass decorated by ``@register_site("my_site")``
(the file name is the site name). Nothing else changes: this package imports every module in its folder, and
configs, the JSON Schema and the command lines take their choices from :func:`~kvsmooth_hooks.core.registry.site_names`.
"""

import importlib
import pkgutil

from .base import DECODE, EXTEND, PREFILL, SITES, Site, SiteError, build_site, register_site  # noqa: F401

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["DECODE", "EXTEND", "PREFILL", "SITES", "Site", "SiteError", "build_site", "register_site"]
