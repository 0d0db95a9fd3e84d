"""The tracking server: `mlflow-steps server {serve,gc,db-upgrade,check}`.

One job per module: ``config`` (inputs, TTLs, redaction), ``store`` (engines and schema
revisions), ``check`` (pre-flight checks), ``auth`` (the token gate), ``app`` (the ASGI app
uvicorn serves), ``serve``, ``gc``, ``db_upgrade`` and ``cli``.
"""
