"""The pages of the review app: login, queue, document, data, models."""
