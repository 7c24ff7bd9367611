"""The tiny-BERT fixtures of test_classifier.py, shared with the other unit tests."""

from tests.unit.test_classifier import bert, classifier, tokenizer  # noqa: F401 - fixtures, found by name
