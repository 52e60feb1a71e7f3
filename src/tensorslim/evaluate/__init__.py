"""Scoring finished models: perplexity and bits per byte of causal LMs on a text."""
