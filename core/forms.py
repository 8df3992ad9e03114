"""What every package's forms share: an amount of money typed by an admin, whole numbers
and days within what the database and the calendar hold, a CSRF token signed only when a
page shows it, and their fields' labels for the audit log.

Forms are declared before their currency is known (it is the community's, the payment's),
so a :class:`MoneyField` is told its currency by the view before the form is validated.
"""

from __future__ import annotations

import codecs
import unicodedata
from datetime import date, datetime

import wtforms
from flask_babel import lazy_gettext as _l
from flask_babel.speaklater import LazyString
from flask_wtf import FlaskForm
from flask_wtf.csrf import _FlaskFormCSRF
from werkzeug.datastructures import CombinedMultiDict, MultiDict
from wtforms import StringField
from wtforms.fields.core import UnboundField
from wtforms.validators import ValidationError

from core.db import LARGEST_ID
from core.money import AmountError, Money

#: The days a form takes: any a community could mean, and none whose local midnight, or
#: the day after, falls outside what Python's dates hold.
FIRST_DAY, LAST_DAY = date(1900, 1, 1), date(9000, 12, 31)


def half_width(value: str | None) -> str | None:
    """Typed text with full-width digits, letters and signs (a Chinese keyboard's
    "１３８…", "ＶＩＰ２０", "＠") as their ASCII twins (Unicode's NFKC): a filter for what
    must be read as ASCII (a phone number, an e-mail, a code)."""
    if not isinstance(value, str):
        return value
    return unicodedata.normalize("NFKC", value)


class UnreadableFile(ValueError):
    """An uploaded file that is not CSV text; the message says why, in the reader's
    language."""


def uploaded_text(data: bytes) -> str:
    """The text of an uploaded CSV, in the encodings spreadsheets save it in: UTF-8 (with
    or without Excel's byte-order mark), UTF-16 with its mark (Excel's "Unicode text"),
    else GB18030, the superset of GBK that Excel on a Chinese Windows saves "CSV" in (read
    as UTF-8 it was mojibake, or refused). Raises :class:`UnreadableFile` for a workbook
    or bytes that are none of these."""
    if data.startswith(b"PK\x03\x04"):
        raise UnreadableFile(
            _l("This is an Excel workbook, not a CSV: save it from Excel as CSV first.")
        )
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return data.decode("utf-16")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("gb18030")
    except UnicodeDecodeError:
        raise UnreadableFile(
            _l("The file is not text in UTF-8, UTF-16 or GBK: save it as CSV.")
        ) from None


def csv_delimiter(text: str) -> str:
    """The delimiter of the CSV ``text``: a tab when its first line has tabs and no comma
    (Excel's "Unicode text"), else a comma."""
    first = text.partition("\n")[0]
    return "\t" if "\t" in first and "," not in first else ","


class Form(FlaskForm):
    """The product's forms: Flask-WTF's, except that a file sent in a request goes to a
    file field only. Flask-WTF looks a name up in the files first, so a file part named as
    a text field (a forged request) reached that field's validators as a file: a 500."""

    class Meta(FlaskForm.Meta):
        def wrap_formdata(self, form: FlaskForm, formdata):
            formdata = super().wrap_formdata(form, formdata)
            if not isinstance(formdata, CombinedMultiDict):
                return formdata
            files, fields = formdata.dicts
            takes_files = {
                name for name, field in form._fields.items() if isinstance(field, wtforms.FileField)
            }
            kept = MultiDict((k, v) for k, v in files.items(multi=True) if k in takes_files)
            return CombinedMultiDict((kept, fields))


class TokenWhenShown(_FlaskFormCSRF):
    """Flask-WTF's CSRF for a form (``csrf_class`` of its ``Meta``), whose new token is
    signed when the form is drawn, not when it is made: a form sent and answered with a
    redirect never signs one (the token sent was checked by :data:`core.security.csrf`
    before the view ran; a token signed for nobody cost a tenth of the join POST's form)."""

    def generate_csrf_token(self, csrf_token_field) -> LazyString:
        return LazyString(super().generate_csrf_token, csrf_token_field)


class MoneyField(StringField):
    """An amount typed in major units ("99", "99.00"), read by :meth:`Money.parse_major`.

    ``data`` stays the text typed (a refused amount is shown again as it was typed);
    ``money`` is the amount once the form has validated, else None. The view sets
    ``currency`` before validating; an empty field is an amount of zero unless the field
    has a validator that stops on empty input (``Optional``, ``DataRequired``)."""

    def __init__(self, label=None, validators=None, currency: str | None = None, **kwargs):
        super().__init__(label, validators, **kwargs)
        self.currency = currency
        self.money: Money | None = None

    def process_formdata(self, valuelist: list) -> None:
        """What was typed, trimmed; a form sent without the field typed nothing (never
        the object's amount in minor units, which a form filled from a model holds)."""
        self.data = valuelist[0].strip() if valuelist else ""

    def post_validate(self, form, validation_stopped: bool) -> None:
        """Called by WTForms after the field's validators: read the amount, unless a
        validator already settled the field (an optional field left empty)."""
        self.money = None
        if validation_stopped or self.errors:
            return
        if self.currency is None:
            raise RuntimeError(f"set {self.name}.currency before validating the form")
        try:
            self.money = Money.parse_major(self.data or "0", self.currency)
        except AmountError as refused:
            raise ValidationError(str(refused.message)) from refused


def field_labels(*forms: type[wtforms.Form]) -> dict[str, object]:
    """The label of each field of ``forms``, by the field's name: what the audit log calls
    the fields an edit changed (:func:`core.audit.register_details`), as the form did."""
    labels = {}
    for form in forms:
        for name in dir(form):
            field = getattr(form, name)
            if not isinstance(field, UnboundField):
                continue
            label = field.kwargs.get("label") or next(iter(field.args), None)
            if label is not None:
                labels[name] = label
    return labels


class IntegerField(wtforms.IntegerField):
    """A whole number that fits the database's integer columns (PostgreSQL's are 32-bit;
    SQLite's driver cannot bind a larger one): a larger one is refused on the form, never
    given to a statement."""

    def process_formdata(self, valuelist: list) -> None:
        super().process_formdata(valuelist)
        if self.data is not None and not -LARGEST_ID <= self.data <= LARGEST_ID:
            self.data = None
            raise ValueError(_l("That number is too large"))


class _DaysWeKnow:
    """A day, or a moment, from :data:`FIRST_DAY` to :data:`LAST_DAY`."""

    def process_formdata(self, valuelist: list) -> None:
        super().process_formdata(valuelist)
        day = self.data.date() if isinstance(self.data, datetime) else self.data
        if day is not None and not FIRST_DAY <= day <= LAST_DAY:
            self.data = None
            raise ValueError(
                _l("Choose a day from %(first)s to %(last)s", first=FIRST_DAY, last=LAST_DAY)
            )


class DateField(_DaysWeKnow, wtforms.DateField):
    pass


class DateTimeLocalField(_DaysWeKnow, wtforms.DateTimeLocalField):
    pass
