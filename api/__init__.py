"""The public API (``/api/v1``): JSON for programs, authenticated by a community's API
tokens. It sits above every other package and writes only through their services."""
