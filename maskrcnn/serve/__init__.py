"""``maskrcnn serve``: a trained model behind HTTP (FastAPI + uvicorn), with a web page to try it.

- :mod:`.uploads` reads a ``multipart/form-data`` upload in memory with size
  limits and decodes its image as ``maskrcnn predict`` reads a file.
- :mod:`.batching` gathers requests that arrive together into one forward pass.
- :mod:`.app` is the application: ``GET /``, ``GET /health``, ``POST /predict``.
- :mod:`.command` is the ``serve`` subcommand; :mod:`.limits` the defaults both share.

This package imports FastAPI only in :mod:`.app`, so that the command line
can list ``serve`` without the ``serve`` extra installed.
"""
