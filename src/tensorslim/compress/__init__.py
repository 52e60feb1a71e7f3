"""A user's own transformers model, decomposed in place: factored projections reading factors
stored once, saved and loaded by transformers itself, merged back to dense on export."""

from .section import register

register()
