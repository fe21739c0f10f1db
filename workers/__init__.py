"""medgraph's Celery side: the app (``celery_app``) and thin task modules (``tasks``).

The work itself lives in ``services``; ``workers`` imports ``services``, never the reverse
(``services.jobs`` enqueues tasks by name). Importing ``services`` first also sets torch's
OpenMP wait policy before any task loads torch (see ``services/__init__.py``).
"""
