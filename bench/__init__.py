"""The benchmark harness for issue 7: ``python -m bench.run`` (see docs/performance.md).

Everything runs on 127.0.0.1 in separate processes, so the relay, the load generator and the
receivers share no event loop and no GIL: ``apps`` (the receiver, a bare handler, a slow Slack,
the naive receiver), ``load`` (the load generator), ``procs`` (starting, watching and stopping
them), ``harness`` (what scenarios share), ``scenarios`` (one module per target), ``report`` and
``plot`` (table, JSON, PNG). ``python -m bench.profile`` shows where the relay's time goes.
"""
