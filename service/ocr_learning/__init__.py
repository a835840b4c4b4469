"""Detection and recognition in the learning loop: gold pages in, fine-tuned registry versions out.

* :mod:`~service.ocr_learning.pages`: the gold documents' page images and boxes;
* :mod:`~service.ocr_learning.det`: DB fine-tuning on crops of gold pages, holdout P/R/Hmean;
* :mod:`~service.ocr_learning.rec`: CTC fine-tuning on gold line crops mixed with synthetic lines,
  holdout line and character accuracy;
* :mod:`~service.ocr_learning.synthetic`: text lines rendered with real fonts (the forgetting guard).
"""
