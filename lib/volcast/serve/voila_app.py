"""Voilà as ``serve`` runs it (``python -m volcast.serve.voila_app NOTEBOOK ...``): Voilà's own app with
two of its URLs made harmless. ``/logout`` (volcast's dashboard has no login) and template paths that
are not ``<template>/static/<file>`` answered 500 from an exception inside Voilà; both are now 404.
Kernel culling is configured on the command line (``launch.voila_command``)."""

from __future__ import annotations

import tornado.web
from voila.app import Voila
from voila.static_file_handler import TemplateStaticFileHandler


class _TemplateFiles(TemplateStaticFileHandler):
    def parse_url_path(self, path: str) -> str:
        parts = path.split("/", 2)
        if len(parts) < 3 or parts[1] != "static" or not parts[2]:
            raise tornado.web.HTTPError(404)
        return super().parse_url_path(path)


class DashboardVoila(Voila):
    def init_handlers(self) -> list:
        handlers = []
        for spec in super().init_handlers():
            pattern, handler = spec[0], spec[1]
            if str(pattern).rstrip("$").endswith("/logout"):
                continue  # no login, so nothing to log out of
            if handler is TemplateStaticFileHandler:
                spec = (pattern, _TemplateFiles, *spec[2:])
            handlers.append(spec)
        return handlers


if __name__ == "__main__":
    DashboardVoila.launch_instance()
