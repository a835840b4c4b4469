"""The Streamlit review app (``paperloop review``): queue, document editor, gold data, models.

The logic it shows lives in :mod:`service.review`; ``app.py`` is the Streamlit entry point.
"""
