"""Training's data, for the stages that score a model the way training sees it (``appliance.evaluation``).

The prepared-dataset reader and the tokenisation (chat template, prompt truncation, EOS), without the rest of
training: evaluation imports this module, not ``appliance.training`` (whose run imports evaluation), so the two
stages do not import each other in a loop (``tests/test_imports.py``).
"""

from __future__ import annotations

from appliance.training._data import PreparedDataset, Record, encode, prompt_text, read_prepared

__all__ = ["PreparedDataset", "Record", "encode", "prompt_text", "read_prepared"]
