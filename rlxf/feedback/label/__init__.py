"""The labelling web app (``rlxf label``): people judge model outputs in a browser.

* :mod:`~rlxf.feedback.label.db`: the database (SQLAlchemy models, SQLite or PostgreSQL, Alembic migrations);
* :mod:`~rlxf.feedback.label.auth`: password hashes, login sessions, CSRF checks, permission dependencies;
* :mod:`~rlxf.feedback.label.app`: the FastAPI app (JSON API and pages) and the library functions behind
  the ``rlxf label`` commands;
* :mod:`~rlxf.feedback.label.agreement`: inter-annotator agreement (percent agreement, Krippendorff's alpha);
* :mod:`~rlxf.feedback.label.export`: answers to preference / ratings / raw records (majority, mean rating,
  Bradley-Terry for rankings).

Needs the ``label`` extra: ``pip install 'rlxf[label]'``.
"""
