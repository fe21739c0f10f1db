"""Celery task modules: each task calls the services that do the work (listed in
``workers.celery_app.TASK_MODULES``; task names are fixed by ``name=``, see ``services.jobs``)."""
