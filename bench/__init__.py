"""The benchmark harness for issue 7: ``python -m bench.run`` (see docs/performance.md).

Everything runs on 127.0.0.1 in separate processes, so the relay, the load generator and the
receivers do not share an event loop or a GIL: ``apps`` (receivers, a bare handler, a slow Slack,
the naive receiver), ``load`` (the load generator), ``procs`` (starting and stopping them),
``scenarios`` (one module per measured target), ``report`` (table, JSON, plot).
"""
