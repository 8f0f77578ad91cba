"""HTTP service for a model folder: a JSON API (`/predict`, `/info`, `/health`) and one web page.

`app` (create_app, serve) needs the `serve` extra (FastAPI, uvicorn); `command` (the CLI's
`serve`) imports it only when it runs, so this package imports nothing heavy by itself.
"""
