"""Fine-tuning the registry's OCR models as trainable dygraph networks."""
