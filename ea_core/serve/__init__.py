"""Serve an adapted system over HTTP: OpenAI-compatible chat completions whose reply is the label,
a batch classify endpoint, feedback, Prometheus metrics (``python -m ea_core serve --bundle DIR``).

`settings` (limits, batching, LM settings), `engine` (the cascade, async, micro-batched),
`summaries` (a summarization bundle's cascade, same face), `protocol` (bodies in, replies out),
`metrics` (Prometheus, drift), `reqlog` (the request log and data from it), `app` (the FastAPI
app), `main` (the command, a server in a thread), `local` (the servers an app starts on 127.0.0.1
for its owners' runs).
"""
