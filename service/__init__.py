"""Paperloop: a document-processing service that gets better the more it is used."""

__version__ = "0.1.0"
