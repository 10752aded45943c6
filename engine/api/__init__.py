"""The HTTP API (FastAPI under uvicorn): a finished run's prediction server
(`visionboard serve-model`) and the automation API for scripts (`visionboard api`, started by
`visionboard serve`). One job per module:

- batcher.py: requests that arrive together are predicted in one batch; a bounded queue;
- inputs.py: images out of a request (multipart files or JSON base64), with its limits;
- serving.py: one run's model behind a batcher, and the prediction server's app;
- automation.py: the automation API (runs, metrics, datasets, predictions) with API tokens;
- server.py: running an app under uvicorn.

Imports nothing heavy here: torch comes with serving's Predictor only.
"""
