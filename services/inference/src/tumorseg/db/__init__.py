"""The PostgreSQL engine of tumorseg's state (``TUMORSEG_DATABASE_URL``): the connection pool
(``pool``), the versioned schema and its migrations (``migrate``, ``migrations/``), the job store
(``jobs``), the result store (``results``), moving an old SQLite store in (``importer``) and the
``tumorseg db`` commands (``cli``).

The stores implement the interfaces of ``tumorseg.jobstore.JobStore`` and ``tumorseg.results.ResultStore``
with the same methods as their SQLite/directory twins; one test suite runs against both.
"""
