"""The forms members and admins fill in for perks, coupons, courses and offers."""

from __future__ import annotations

from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from wtforms import (
    BooleanField,
    HiddenField,
    RadioField,
    SelectChoice,
    SelectField,
    StringField,
    TextAreaField,
)
from wtforms.validators import (
    URL,
    DataRequired,
    InputRequired,
    Length,
    NumberRange,
    Optional,
    Regexp,
    ValidationError,
)

from core.forms import DateTimeLocalField, Form, IntegerField, MoneyField
from membership.forms import (
    REQUIRED,
    checkbox_list,
    coupon_code_field,
    strip_text,
    url_code_field,
)
from perks.models import PerkKind

CODE = Regexp(r"^[A-Za-z0-9][-_A-Za-z0-9]{0,39}$", message=_l("Letters, digits, - or _"))


class CourseBuyForm(Form):
    coupon = coupon_code_field()
    provider = RadioField(_l("Pay with"), validators=[InputRequired(REQUIRED)])
    submission_key = HiddenField(validators=[DataRequired(), Regexp(r"^[A-Za-z0-9_-]{16,64}$")])


class EligibilityForm(Form):
    """The conditions of an :class:`~perks.models.EligibilityRule`; blank ones do not count."""

    tier_id = SelectField(_l("Holds tier"), coerce=int, default=0)
    min_tenure_days = IntegerField(
        _l("Member for at least (days)"),
        validators=[Optional(), NumberRange(min=1, max=36500)],
    )
    max_member_number = IntegerField(
        _l("Member number at most (founders)"),
        validators=[Optional(), NumberRange(min=1)],
    )
    min_seasons_paid = IntegerField(
        _l("Paid at least (times)"),
        validators=[Optional(), NumberRange(min=1, max=1000)],
    )
    staff_only = BooleanField(_l("Staff only"))
    active = BooleanField(_l("Active"), default=True)

    def rule_values(self) -> dict[str, object]:
        return {
            "tier_id": self.tier_id.data or None,
            "min_tenure_days": self.min_tenure_days.data,
            "max_member_number": self.max_member_number.data,
            "min_seasons_paid": self.min_seasons_paid.data,
            "staff_only": self.staff_only.data,
            "active": self.active.data,
        }


class PerkForm(EligibilityForm):
    name = StringField(
        _l("Name"), filters=[strip_text], validators=[DataRequired(REQUIRED), Length(max=60)]
    )
    description = TextAreaField(_l("Description"), validators=[Length(max=2000)])
    kind = SelectField(
        _l("Kind"),
        choices=[
            SelectChoice(PerkKind.LINK.value, _l("A download or link")),
            SelectChoice(PerkKind.ITEM.value, _l("A limited item")),
            SelectChoice(PerkKind.COUPON.value, _l("A coupon")),
            SelectChoice(PerkKind.COURSE.value, _l("A free course")),
        ],
    )
    link_url = StringField(
        _l("Link, or how to claim"),
        filters=[strip_text],
        validators=[Optional(), URL(message=_l("Enter a full URL")), Length(max=500)],
    )
    coupon_id = SelectField(_l("Coupon"), coerce=int, default=0)
    course_id = SelectField(_l("Course"), coerce=int, default=0)
    stock = IntegerField(
        _l("Stock (empty = no limit)"), validators=[Optional(), NumberRange(min=0)]
    )
    per_member_limit = IntegerField(
        _l("Per member"),
        default=1,
        validators=[InputRequired(REQUIRED), NumberRange(min=1, max=100)],
    )

    def validate_link_url(self, field: StringField) -> None:
        if self.kind.data == PerkKind.LINK and not field.data:
            raise ValidationError(_("A link perk needs its link"))

    def validate_coupon_id(self, field: SelectField) -> None:
        if self.kind.data == PerkKind.COUPON and not field.data:
            raise ValidationError(_("Choose the coupon"))

    def validate_course_id(self, field: SelectField) -> None:
        if self.kind.data == PerkKind.COURSE and not field.data:
            raise ValidationError(_("Choose the course"))


class CouponForm(EligibilityForm):
    code = StringField(_l("Code"), filters=[strip_text], validators=[DataRequired(REQUIRED), CODE])
    description = StringField(_l("Description"), filters=[strip_text], validators=[Length(max=200)])
    kind = RadioField(
        _l("Discount"),
        choices=[
            SelectChoice("percent", _l("Percent off")),
            SelectChoice("amount", _l("Amount off")),
        ],
        default="percent",
        validators=[InputRequired(REQUIRED)],
    )
    percent_off = IntegerField(
        _l("Percent off"),
        validators=[Optional(), NumberRange(min=1, max=100)],
    )
    amount_off = MoneyField(_l("Amount off"))
    min_amount = MoneyField(_l("Minimum order"), default="0")
    tiers = checkbox_list(_l("Tiers (none = all)"))
    courses = checkbox_list(_l("Courses"))
    valid_from = DateTimeLocalField(_l("Valid from"), validators=[Optional()])
    valid_until = DateTimeLocalField(_l("Valid until"), validators=[Optional()])
    max_uses = IntegerField(
        _l("Uses in all (empty = no limit)"),
        validators=[Optional(), NumberRange(min=1)],
    )
    max_uses_per_buyer = IntegerField(
        _l("Uses per person"),
        default=1,
        validators=[InputRequired(REQUIRED), NumberRange(min=1, max=100)],
    )
    issued_only = BooleanField(_l("Only members it is issued to"))

    def validate_percent_off(self, field: IntegerField) -> None:
        if self.kind.data == "percent" and not field.data:
            raise ValidationError(REQUIRED)

    def validate_amount_off(self, field: MoneyField) -> None:
        if self.kind.data == "amount" and not field.data:
            raise ValidationError(REQUIRED)

    def validate_valid_until(self, field: DateTimeLocalField) -> None:
        if self.valid_from.data and field.data and field.data <= self.valid_from.data:
            raise ValidationError(_("Must be after the start"))


class CampaignForm(CouponForm):
    """Generate many single codes with the same terms."""

    code = None
    prefix = StringField(
        _l("Prefix"),
        filters=[strip_text],
        validators=[
            Optional(),
            Regexp(r"^[A-Z0-9-]{0,12}$", message=_l("A-Z, 0-9 or -")),
        ],
    )
    campaign = StringField(
        _l("Campaign"),
        filters=[strip_text],
        validators=[DataRequired(REQUIRED), Length(max=60)],
    )
    count = IntegerField(
        _l("How many"), validators=[InputRequired(REQUIRED), NumberRange(min=1, max=10000)]
    )


class CourseForm(EligibilityForm):
    code = url_code_field()
    title = StringField(
        _l("Title"), filters=[strip_text], validators=[DataRequired(REQUIRED), Length(max=80)]
    )
    description = TextAreaField(_l("Description"), validators=[Length(max=4000)])
    price = MoneyField(_l("Price"), validators=[DataRequired(REQUIRED)])
    access_url = StringField(
        _l("Content link (shown once bought)"),
        filters=[strip_text],
        validators=[
            DataRequired(REQUIRED),
            URL(message=_l("Enter a full URL")),
            Length(max=500),
        ],
    )


class OfferForm(EligibilityForm):
    name = StringField(
        _l("Name (e.g. veterans' discount)"),
        filters=[strip_text],
        validators=[DataRequired(REQUIRED), Length(max=60)],
    )
    course_id = SelectField(_l("Course"), coerce=int)
    percent_off = IntegerField(
        _l("Percent off"), validators=[InputRequired(REQUIRED), NumberRange(min=1, max=99)]
    )
    valid_until = DateTimeLocalField(_l("Valid until"), validators=[Optional()])
