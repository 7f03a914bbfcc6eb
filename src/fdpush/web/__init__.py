"""The web layer: routes, request/response models, authentication, error mapping."""

from fdpush.web.app import create_app

__all__ = ["create_app"]
