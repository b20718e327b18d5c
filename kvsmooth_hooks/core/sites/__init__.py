"""Sites: where smoothing rewrites keys and values. One file each, registered by name.

To add a site: write ``sites/my_site.py`` with a :class:`Site` subclass decorated by
``@register_site("my_site")``, import it below and add its name to ``config.Site``.
"""

from .base import DECODE, EXTEND, PREFILL, SITES, Site, SiteError, build_site, register_site  # noqa: F401
from . import attn_out, cache, kv_proj  # noqa: F401,E402

__all__ = ["DECODE", "EXTEND", "PREFILL", "SITES", "Site", "SiteError", "build_site", "register_site"]
