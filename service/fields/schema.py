"""The field schema (config section ``fields``): what a document's results are, field by field.

Each field names a SER label of ``kie.labels``, says what kind of value it holds (its ``type``),
whether a document has one value or several, whether it is found by a printed key ("TOTAL",
"Date:") or by itself (a company name at the top), and whether a document needs it to go through
without review. Light module (pydantic only): the config imports it.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

FieldType = Literal["text", "date", "amount", "number", "pattern"]
DEFAULT_CURRENCIES = {"RM": "MYR", "MYR": "MYR", "$": "USD", "US$": "USD", "USD": "USD", "€": "EUR", "EUR": "EUR",
                      "£": "GBP", "GBP": "GBP", "S$": "SGD", "SGD": "SGD"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class FieldSpec(_Strict):
    """One field of the schema."""

    name: str = Field(min_length=1)  # the SER label that marks it (one of kie.labels)
    type: FieldType = "text"
    multiple: bool = False  # several values per document (line items); else the most probable one
    found_by: Literal["key", "self"] = "self"  # a printed key ("TOTAL") announces it, or it stands alone
    keys: list[str] = []  # the printed keys, for found_by: key (also to choose among repeated values); a key
    # counts where it heads its label: list compound labels (grand total), as TAX TOTAL is not a total
    pattern: str | None = None  # a regular expression, for type: pattern (group 1, or the whole match)
    # text fields: a word at either end of the value that this regular expression matches in full is not part
    # of it (a registration number printed after a company name); case is ignored
    trim_words: str | None = None
    required: bool = True  # a document without it (or below its threshold) goes to review

    @model_validator(mode="after")
    def _pattern_fits_type(self) -> "FieldSpec":
        if self.type == "pattern":
            if not self.pattern:
                raise ValueError(f"field {self.name!r}: type pattern needs a pattern")
            self._check_expression("pattern", self.pattern)
        elif self.pattern is not None:
            raise ValueError(f"field {self.name!r}: pattern is only for type pattern")
        if self.trim_words is not None:
            if self.type != "text":
                raise ValueError(f"field {self.name!r}: trim_words is only for type text")
            self._check_expression("trim_words", self.trim_words)
        if self.found_by == "key" and not self.keys:
            raise ValueError(f"field {self.name!r}: found_by key needs keys (the printed names)")
        return self

    def _check_expression(self, option: str, expression: str) -> None:
        try:
            re.compile(expression)
        except re.error as exc:
            raise ValueError(f"field {self.name!r}: bad {option} {expression!r}: {exc}") from exc


class FieldsConfig(_Strict):
    """The field schema and how values are read: ``fields.fields`` lists the fields (none by default)."""

    fields: list[FieldSpec] = []
    date_order: Literal["DMY", "MDY", "YMD"] = "DMY"  # how to read 07/03/2018 (DMY: 7 March)
    currencies: dict[str, str] = dict(DEFAULT_CURRENCIES)  # printed symbol → ISO 4217 code
    # Import of known values (`paperloop import values`): a value matches OCR words whose normalized
    # edit distance to it (case, spaces and punctuation ignored) is at most this.
    match_max_distance: float = Field(0.2, ge=0, lt=1)

    @field_validator("fields")
    @classmethod
    def _unique(cls, fields: list[FieldSpec]) -> list[FieldSpec]:
        names = [f.name for f in fields]
        if len(set(names)) != len(names):
            raise ValueError(f"field names must be unique: {names}")
        return fields

    def get(self, name: str) -> FieldSpec | None:
        """The field called ``name``, if the schema has it."""
        return next((f for f in self.fields if f.name == name), None)

    @property
    def names(self) -> list[str]:
        """The field names, in schema order."""
        return [f.name for f in self.fields]
