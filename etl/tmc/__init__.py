"""The platform's message service (TMC) as an id source: pull → topic table → enqueue → confirm.

:mod:`etl.tmc.messages` is pure (the topic table, message parsing); :mod:`etl.tmc.consumer` pulls,
queues through :mod:`etl.db.tmc` and confirms. Like every id source it only writes to the queue.
"""
