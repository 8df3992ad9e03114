"""The forms prospects and admins fill in. Messages are Chinese first, English second."""

from __future__ import annotations

import re
from datetime import date
from functools import cache
from zoneinfo import available_timezones

from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_babel import lazy_pgettext
from flask_wtf.file import FileAllowed, FileField, FileRequired, FileSize
from werkzeug.datastructures import FileStorage
from wtforms import (
    BooleanField,
    HiddenField,
    RadioField,
    SelectChoice,
    SelectField,
    SelectMultipleField,
    StringField,
    SubmitField,
    TextAreaField,
)
from wtforms.validators import (
    URL,
    DataRequired,
    Email,
    InputRequired,
    Length,
    NumberRange,
    Optional,
    Regexp,
    ValidationError,
)
from wtforms.widgets import CheckboxInput, ListWidget

from core.forms import DateField, Form, IntegerField, MoneyField, TokenWhenShown, half_width
from core.i18n import LOCALES
from core.money import CURRENCIES
from membership.models import (
    NUMBER_PATTERN,
    ContactKind,
    QuestionKind,
    ScreeningQuestion,
    TierAudience,
    TierKind,
)
from membership.platforms import PLATFORMS

REQUIRED = _l("Required")


#: Where a code can go, as a person picks it.
CONTACT_CHOICES = [
    SelectChoice(ContactKind.PHONE.value, _l("Phone")),
    SelectChoice(ContactKind.EMAIL.value, _l("E-mail")),
]
TOO_LONG = _l("Too long")


#: What a typed name never needs and a forged one abuses: control characters (a NUL in a
#: page or a CSV) and the marks that turn the direction of the text after them (a name
#: that reads backwards). Tabs and line breaks stay, for the text areas.
_UNSEEN = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]"
)
#: Spaces nobody sees, which ``str.strip`` keeps.
_ZERO_WIDTH = "\u200b\u2060\ufeff"


def strip_text(value: str | None) -> str | None:
    """Typed text as it is kept: without :data:`_UNSEEN` characters, and without space,
    seen or not, at either end (a name of zero-width spaces is then empty: required)."""
    if not isinstance(value, str):
        return value
    return _UNSEEN.sub("", value).strip().strip(_ZERO_WIDTH).strip()


#: How each kind of contact must look.
CONTACT_RULES: dict[ContactKind, tuple[re.Pattern[str], str]] = {
    ContactKind.WECHAT: (
        re.compile(r"[A-Za-z][-_A-Za-z0-9]{5,19}", re.ASCII),
        _l("A WeChat ID has 6–20 letters, digits, - or _, starting with a letter"),
    ),
    ContactKind.PHONE: (
        re.compile(r"(\+?86)?1[3-9][0-9]{9}|\+[1-9][0-9]{6,14}", re.ASCII),
        _l("Enter an 11-digit mobile number, or a number with its country code"),
    ),
}


def coupon_code_field() -> StringField:
    """The optional coupon code a payer types before paying (see :mod:`payments.discounts`)."""
    return StringField(
        _l("Coupon code (optional)"),
        filters=[strip_text, half_width],
        validators=[Length(max=40, message=_l("Unknown coupon code"))],
        render_kw={"autocomplete": "off", "autocapitalize": "characters"},
    )


class JoinForm(Form):
    """The join page's form. What moderators recognise someone by (``wechat_id``) is asked
    apart from the channel we send to (``contact_kind`` and ``contact_value``: a phone or
    an e-mail address, proven by a code before the join goes on). Inside WeChat, where the
    silent OAuth proves the applicant, the view sets :attr:`channel_optional`: a WeChat ID
    alone will do."""

    class Meta:
        csrf_class = TokenWhenShown

    #: Set by the view inside WeChat (see the class's docstring).
    channel_optional = False

    display_name = StringField(
        _l("Display name"),
        filters=[strip_text],
        validators=[DataRequired(REQUIRED), Length(max=40, message=_l("At most 40 characters"))],
        render_kw={"autocomplete": "nickname"},
    )
    wechat_id = StringField(
        _l("WeChat ID or group nickname"),
        filters=[strip_text, half_width],
        validators=[Length(max=64, message=_l("At most 64 characters"))],
        render_kw={"autocomplete": "off", "autocapitalize": "off"},
    )
    contact_kind = RadioField(
        _l("Where we reach you"),
        choices=CONTACT_CHOICES,
        default=ContactKind.PHONE.value,
        validators=[InputRequired(REQUIRED)],
    )
    contact_value = StringField(
        _l("Phone or e-mail"),
        filters=[strip_text, half_width],
        validators=[Length(max=254, message=TOO_LONG)],
    )
    accept_rules = BooleanField(
        _l("I have read and accept the rules"),
        validators=[DataRequired(_l("Please accept the rules"))],
    )
    coupon = coupon_code_field()
    provider = RadioField(_l("Pay with"), validators=[InputRequired(REQUIRED)])
    #: Never shown, so labelled with nothing: a field without a label has WTForms load its
    #: own catalog from disk to translate one made from its name, on every form made.
    submission_key = HiddenField("", validators=[DataRequired(), Regexp(r"^[A-Za-z0-9_-]{16,64}$")])
    #: The tier's price in minor units when the form was shown: a price changed since
    #: (an admin's edit) is shown to the payer before any order is made.
    shown_price = HiddenField("", validators=[Optional(), Regexp(r"^[0-9]{1,12}$")])

    def validate_contact_value(self, field: StringField) -> None:
        if not field.data:
            if not getattr(self, "channel_optional", False):
                raise ValidationError(
                    _("Enter a phone number or an e-mail address: your code goes there")
                )
            if "wechat_id" in self and not self.wechat_id.data:
                raise ValidationError(_("Enter a phone number, an e-mail address or a WeChat ID"))
            return
        kind = self.contact_kind.data
        if kind == ContactKind.EMAIL:
            Email(_("Not a valid e-mail address"))(self, field)
        elif kind in CONTACT_RULES:
            pattern, message = CONTACT_RULES[ContactKind(kind)]
            value = field.data or ""
            if kind == ContactKind.PHONE:
                value = value.replace(" ", "").replace("-", "")  # as people type them
            if not pattern.fullmatch(value):
                raise ValidationError(str(message))


class PayAgainForm(Form):
    """Pay an application's open order again, after a failure or a cancel."""

    provider = RadioField(_l("Pay with"), validators=[InputRequired(REQUIRED)])


class PayForm(PayAgainForm):
    """Pay an order nothing was tried on yet (a personal pay link, a renewal): a coupon
    code may still be applied to it."""

    coupon = coupon_code_field()


def checkbox_list(label: object) -> SelectMultipleField:
    """A choice of several rows (tiers, groups, courses) as a list of checkboxes, which a
    thumb can tick, not a multiple select that wants Ctrl-click."""
    return SelectMultipleField(
        label,
        coerce=int,
        widget=ListWidget(prefix_label=False),
        option_widget=CheckboxInput(),
    )


#: The zones our communities are usually in, offered first.
COMMON_TIME_ZONES = (
    "Asia/Shanghai",
    "Asia/Hong_Kong",
    "Asia/Taipei",
    "Asia/Singapore",
    "Asia/Kuala_Lumpur",
    "Asia/Tokyo",
    "Asia/Seoul",
    "Australia/Sydney",
    "Europe/London",
    "Europe/Berlin",
    "America/Los_Angeles",
    "America/New_York",
    "America/Toronto",
    "UTC",
)


@cache
def all_time_zones() -> frozenset[str]:
    """Every IANA zone this machine knows (read once: it walks the zone files)."""
    return frozenset(available_timezones())


def time_zone_choices() -> dict[str, list[SelectChoice]]:
    """The community form's zones: the common ones first, then every other, by name."""
    others = sorted(all_time_zones() - set(COMMON_TIME_ZONES))
    return {
        _("Common"): [SelectChoice(zone, zone) for zone in COMMON_TIME_ZONES],
        _("All zones"): [SelectChoice(zone, zone) for zone in others],
    }


class CommunityForm(Form):
    name = StringField(
        _l("Name"), filters=[strip_text], validators=[DataRequired(REQUIRED), Length(max=60)]
    )
    slug = StringField(
        _l("Slug (/join/…)"),
        filters=[strip_text],
        validators=[
            DataRequired(REQUIRED),
            Regexp(
                r"^[a-z0-9][a-z0-9-]{1,39}$",
                message=_l("2–40 lowercase letters, digits or -"),
            ),
        ],
    )
    pitch = TextAreaField(_l("Pitch"), validators=[Length(max=4000)])
    rules = TextAreaField(_l("Rules"), validators=[Length(max=8000)])
    currency = SelectField(_l("Currency"), choices=sorted(CURRENCIES))
    time_zone = SelectField(
        _l("Time zone"),
        choices=lambda: time_zone_choices(),
        default="Asia/Shanghai",
        validate_choice=False,
        validators=[DataRequired(REQUIRED)],
    )
    locale = SelectField(
        _l("Language of its pages"),
        choices=lambda: [
            SelectChoice("", _("The visitor's browser decides")),
            *(SelectChoice(code, name) for code, name in LOCALES.items()),
        ],
        coerce=lambda value: value or None,
        default="zh_CN",
    )
    member_number_pattern = StringField(
        _l("Member number pattern"),
        default="####",
        validators=[
            DataRequired(REQUIRED),
            Regexp(
                NUMBER_PATTERN.pattern,
                message=_l("One run of #, e.g. #### or LS-##"),
            ),
        ],
    )

    staff_number_pattern = StringField(
        _l("Staff number pattern"),
        default="LS-##",
        validators=[
            DataRequired(REQUIRED),
            Regexp(NUMBER_PATTERN.pattern, message=_l("One run of #")),
        ],
    )
    pay_link_days = IntegerField(
        _l("Days an approved applicant's pay link works"),
        default=7,
        validators=[InputRequired(REQUIRED), NumberRange(min=1, max=90)],
    )
    reminder_days = IntegerField(
        _l("Remind members this many days before their term ends"),
        default=7,
        validators=[InputRequired(REQUIRED), NumberRange(min=1, max=60)],
    )

    def validate_time_zone(self, field: SelectField) -> None:
        if field.data not in all_time_zones():
            raise ValidationError(_("Unknown time zone"))


def url_code_field() -> StringField:
    """The code that names a tier or a course in its URLs: a-z, 0-9 and -."""
    return StringField(
        _l("Code"),
        filters=[strip_text],
        validators=[
            DataRequired(REQUIRED),
            Regexp(r"^[a-z0-9][a-z0-9-]{0,39}$", message=_l("a-z, 0-9 or -")),
        ],
    )


def _whole_number(label, *, default: int, low: int, high: int) -> IntegerField:
    """An optional whole number from ``low`` to ``high`` that reads as ``default`` when it
    is left out or empty."""
    return IntegerField(
        label,
        default=default,
        filters=[lambda value: default if value is None else value],
        validators=[Optional(), NumberRange(min=low, max=high)],
    )


class TierForm(Form):
    code = url_code_field()
    name = StringField(
        _l("Name"), filters=[strip_text], validators=[DataRequired(REQUIRED), Length(max=60)]
    )
    includes = TextAreaField(_l("Includes, one per line"), validators=[Length(max=4000)])
    kind = SelectField(
        _l("Kind"),
        choices=[
            SelectChoice(TierKind.PAID.value, _l("Paid")),
            SelectChoice(TierKind.FREE.value, _l("Free")),
        ],
    )
    price = MoneyField(_l("Price"), default="0")
    renewal_price = MoneyField(_l("Renewal price (empty = the price)"), validators=[Optional()])
    duration_days = IntegerField(
        _l("Days (empty = lifetime)"),
        validators=[Optional(), NumberRange(min=1, max=36500)],
    )
    audience = SelectField(
        _l("For"),
        choices=[
            SelectChoice(TierAudience.EVERYONE.value, _l("Everyone")),
            SelectChoice(TierAudience.RETURNING.value, _l("Returning members")),
            SelectChoice(TierAudience.MEMBERS.value, _l("Current members")),
        ],
    )
    active = BooleanField(_l("Open"), default=True)
    sort_order = IntegerField(_l("Sort order"), default=0, validators=[Optional()])
    requires_screening = BooleanField(_l("Applicants are screened"))
    is_lobby = BooleanField(_l("The lobby screened applicants wait in"))
    groups = checkbox_list(_l("Groups"))
    # Renewal by band (``membership.renewal``): percentages of the renewal price. Left out
    # or left empty, each keeps its default (today's behaviour: 100 %, no grace days).
    #: The renewal fields, saved on the tier as they are.
    renewal_fields = (
        "renewal_early_percent",
        "renewal_grace_days",
        "renewal_grace_percent",
        "renewal_late_percent",
        "renewal_window_days",
    )
    renewal_early_percent = _whole_number(
        _l("Renewal price before the end (percent)"), default=100, low=1, high=500
    )
    renewal_grace_days = _whole_number(
        _l("Grace days after the end (0: none)"), default=0, low=0, high=365
    )
    renewal_grace_percent = _whole_number(
        _l("Renewal price within the grace days (percent)"), default=100, low=1, high=500
    )
    renewal_late_percent = _whole_number(
        _l("Renewal price later (percent)"), default=100, low=1, high=500
    )
    renewal_window_days = _whole_number(
        _l("The renew button appears this many days before the end"),
        default=30,
        low=1,
        high=3650,
    )


class ImageUploadField(FileField):
    """An uploaded image: only a file sent with the form is its data. A plain value under
    its name is a form error, and the stored image of the object being edited (bytes) is
    not taken for an upload."""

    def process_data(self, value: object) -> None:
        self.data = None

    def process_formdata(self, valuelist: list) -> None:
        if any(value and not isinstance(value, FileStorage) for value in valuelist):
            raise ValueError(_("Send the image as a file"))
        super().process_formdata(valuelist)


class GroupForm(Form):
    name = StringField(
        _l("Name"), filters=[strip_text], validators=[DataRequired(REQUIRED), Length(max=60)]
    )
    platform = SelectField(
        _l("Platform"), choices=[SelectChoice(p.key, p.label) for p in PLATFORMS.values()]
    )
    capacity = IntegerField(
        _l("Capacity"), validators=[InputRequired(REQUIRED), NumberRange(min=0, max=200_000)]
    )
    join_link = StringField(
        _l("Join link"),
        filters=[strip_text],
        validators=[Optional(), URL(message=_l("Not a link")), Length(max=500)],
    )
    telegram_chat_id = StringField(
        _l("Telegram chat id (the bot must be an admin)"),
        filters=[strip_text],
        validators=[Optional(), Regexp(r"^-?[0-9]{5,20}$|^@[A-Za-z0-9_]{5,32}$")],
    )
    wecom_chat_id = StringField(
        _l("WeCom customer group's chat id"),
        filters=[strip_text],
        validators=[Optional(), Regexp(r"^[A-Za-z0-9_-]{1,64}$")],
        render_kw={"list": "wecom-chats"},
    )
    qr_expires_at = DateField(_l("QR code expires on"), validators=[Optional()])
    qr_image = ImageUploadField(
        _l("QR image"),
        validators=[
            FileAllowed(["png", "jpg", "jpeg", "webp"], _l("Images only")),
            FileSize(max_size=2 * 1024 * 1024, message=_l("At most 2 MB")),
        ],
    )

    def validate_capacity(self, field: IntegerField) -> None:
        limit = PLATFORMS[self.platform.data].max_members if self.platform.data in PLATFORMS else 0
        if field.data is not None and field.data > limit:
            raise ValidationError(_("At most %(limit)s on this platform", limit=limit))


class MemberLoginForm(Form):
    """A member asks for a one-time code at their phone number or e-mail address."""

    contact_kind = RadioField(
        _l("Get the code by"),
        choices=CONTACT_CHOICES,
        default=ContactKind.PHONE.value,
        validators=[InputRequired(REQUIRED)],
    )
    contact_value = StringField(
        _l("The phone or e-mail you joined with"),
        filters=[strip_text, half_width],
        validators=[DataRequired(REQUIRED), Length(max=254, message=TOO_LONG)],
    )

    validate_contact_value = JoinForm.validate_contact_value


class ChannelForm(Form):
    """A member adds a channel we can reach them on: a code goes to it (``/me``)."""

    channel_optional = False
    contact_kind = MemberLoginForm.contact_kind
    contact_value = StringField(
        _l("Phone or e-mail"),
        filters=[strip_text, half_width],
        validators=[DataRequired(REQUIRED), Length(max=254, message=TOO_LONG)],
    )

    validate_contact_value = JoinForm.validate_contact_value


class LoginCodeForm(Form):
    code = StringField(
        lazy_pgettext("login", "Code"),
        filters=[strip_text, half_width],
        validators=[
            DataRequired(REQUIRED),
            Regexp(r"^[0-9]{6}$", message=_l("Six digits")),
        ],
        # Phones open the number pad and offer the code that just came by SMS.
        render_kw={
            "inputmode": "numeric",
            "autocomplete": "one-time-code",
            "pattern": "[0-9]*",
            "maxlength": "6",
        },
    )


class ActivityForm(Form):
    """Members seen taking part: numbers or nicknames, typed or in a CSV's first column."""

    identifiers = TextAreaField(
        _l("Member numbers or nicknames, one per line"),
        validators=[Length(max=200_000)],
    )
    csv_file = FileField(
        _l("Or a CSV file (first column)"),
        validators=[FileAllowed(["csv", "txt"], _l("CSV only"))],
    )


class PurgeForm(Form):
    inactive_since = DateField(
        _l("Purge members not active since"),
        validators=[InputRequired(REQUIRED)],
    )
    #: The community's today, set by the view: a later day would purge members active now.
    today: date

    def validate_inactive_since(self, field: DateField) -> None:
        if field.data is not None and field.data > self.today:
            raise ValidationError(_l("Choose today or a day before it."))


def with_questions(form_class: type[Form], questions: list[ScreeningQuestion]):
    """``form_class`` with one field per screening question, named ``q_<id>``."""
    fields = {}
    for question in questions:
        needed = [DataRequired(REQUIRED)] if question.required else [Optional()]
        choices = [SelectChoice(choice, choice) for choice in question.choice_list]
        if question.kind is QuestionKind.TEXT:
            field = TextAreaField(question.prompt, validators=[*needed, Length(max=2000)])
        elif question.kind is QuestionKind.SINGLE:
            single_needed = [InputRequired(REQUIRED)] if question.required else [Optional()]
            field = RadioField(question.prompt, choices=choices, validators=single_needed)
        else:
            field = SelectMultipleField(
                question.prompt,
                choices=choices,
                validators=needed,
                widget=ListWidget(prefix_label=False),
                option_widget=CheckboxInput(),
            )
        fields[f"q_{question.id}"] = field
    return type(f"{form_class.__name__}WithQuestions", (form_class,), fields)


def answers_of(form: Form, questions: list[ScreeningQuestion]) -> dict[str, object]:
    return {str(q.id): form[f"q_{q.id}"].data for q in questions}


class QuestionForm(Form):
    prompt = StringField(
        _l("Question"),
        filters=[strip_text],
        validators=[DataRequired(REQUIRED), Length(max=300)],
    )
    kind = SelectField(
        _l("Kind"),
        choices=[
            SelectChoice(QuestionKind.TEXT.value, _l("Text")),
            SelectChoice(QuestionKind.SINGLE.value, _l("One choice")),
            SelectChoice(QuestionKind.MULTIPLE.value, _l("Several choices")),
        ],
    )
    choices = TextAreaField(_l("Choices, one per line"), validators=[Length(max=4000)])
    required = BooleanField(_l("Required"), default=True)
    auto_approve_answer = StringField(
        _l("Auto-approve on this answer (optional, one of the choices)"),
        filters=[strip_text],
        validators=[Optional(), Length(max=300)],
    )

    def validate_auto_approve_answer(self, field: StringField) -> None:
        choices = [line.strip() for line in (self.choices.data or "").splitlines()]
        if field.data and (self.kind.data == QuestionKind.TEXT or field.data not in choices):
            raise ValidationError(_("Must be one of the choices"))

    def validate_choices(self, field: TextAreaField) -> None:
        lines = [line for line in (field.data or "").splitlines() if line.strip()]
        if self.kind.data != QuestionKind.TEXT and len(lines) < 2:
            raise ValidationError(_("A choice question needs two choices"))


class ReviewForm(Form):
    """Approve or reject one or more applications."""

    reason = StringField(_l("Reason, to reject"), validators=[Length(max=300)])


class SeasonForm(Form):
    """Invite the members of one tier to this tier's groups: a new season."""

    from_tier = SelectField(_l("Members of"), coerce=int)
    mode = RadioField(
        _l("How"),
        choices=[
            SelectChoice("free", _l("Invite them free")),
            SelectChoice("fee", _l("Ask them to pay this tier's fee")),
        ],
        default="free",
        validators=[InputRequired(REQUIRED)],
    )


class ExportForm(Form):
    first_day = DateField(_l("From"), validators=[InputRequired(_l("Choose the first day."))])
    last_day = DateField(
        _l("To (inclusive)"), validators=[InputRequired(_l("Choose the last day."))]
    )
    format = RadioField(
        _l("Format"),
        choices=[SelectChoice("csv", "CSV"), SelectChoice("xlsx", _l("Excel workbook (XLSX)"))],
        default="csv",
    )

    def validate_last_day(self, field: DateField) -> None:
        if self.first_day.data and field.data and field.data < self.first_day.data:
            raise ValidationError(_l("The range ends before it starts."))


class AccessForm(Form):
    """Grant a tier to a member by hand, or end one of their memberships."""

    action = RadioField(
        _l("Action"),
        choices=[
            SelectChoice("grant", _l("Grant a tier")),
            SelectChoice("end", _l("End a membership")),
            SelectChoice("staff", _l("Give a staff number")),
        ],
        validators=[InputRequired(REQUIRED)],
    )
    tier = SelectField(_l("Tier"), coerce=int, validate_choice=False)
    membership = SelectField(_l("Membership"), coerce=int, validate_choice=False)
    reason = StringField(
        _l("Reason (kept in the log)"),
        filters=[strip_text],
        validators=[DataRequired(REQUIRED), Length(max=200)],
    )


class ImportForm(Form):
    csv_file = FileField(
        _l("Members CSV"),
        validators=[
            FileRequired(_l("Choose a file.")),
            FileAllowed(["csv", "txt"], _l("Only CSV files can be imported.")),
        ],
    )
    dry_run = SubmitField(_l("Dry run"))
    run = SubmitField(_l("Import"))
