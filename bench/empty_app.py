"""The baseline of bench/ingest.py: a Flask app whose one POST route answers 202 with a small
JSON body and does nothing else (the body is left for gunicorn to drain).

    gunicorn --pythonpath bench empty_app:app
"""

from __future__ import annotations

from flask import Flask, jsonify

app = Flask(__name__)


@app.post("/v1/webhooks/<name>")
def receive(name: str) -> object:
    return jsonify(queued=[], source=name), 202
